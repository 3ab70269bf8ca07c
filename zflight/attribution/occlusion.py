"""Occlusion sensitivity (Zeiler & Fergus, Fig. 7): what the classifier loses when part of the image is hidden.

A gray square slides over the image. For every position of the square, :func:`occlusion_maps`
records the probability of the target class, the most probable class and, optionally, the
total activation of one feature map of an inner layer. Where the probability drops, the
classifier looked; where the activation drops, the feature map looked.

Relation to Captum's ``Occlusion``: Captum slides the same window, evaluates the same occluded
images and spreads ``f(x) - f(x_occluded)`` uniformly over the pixels of each window, averaging
where windows overlap. :meth:`OcclusionMaps.pixel_attribution` turns zflight's probability map
into exactly that image (when the model's output is the softmax and the window positions agree,
i.e. ``(H - size)`` and ``(W - size)`` are multiples of ``stride``; see ``docs/occlusion.md``).

The work is one forward pass per (image, occluder position), batched over positions. The step
that scores a batch of occluded images is :func:`_score_occluded`; for models whose
``features`` are a chain of convolutions, pooling and pointwise layers (zfnet, alexnet_zf,
torchvision AlexNet and VGG) :mod:`zflight.attribution._incremental` replaces it by exact
incremental inference: only the window of each feature map that the square can change is
recomputed and spliced into the cached unoccluded maps (``incremental=``, see
``docs/occlusion-incremental.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zflight.attribution._args import per_image_ints
from zflight.attribution._incremental import make_scorer
from zflight.attribution._layers import preserve_modes, resolve_layer

__all__ = ["OcclusionMaps", "occlusion_maps"]

# Show a progress bar by default once a call runs at least this many occluded forwards.
_PROGRESS_MIN_FORWARDS = 2048

Fill = float | Sequence[float] | torch.Tensor


@dataclass(frozen=True)
class OcclusionMaps:
    """Per occluder position: target probability, top class and (optionally) a feature map's total.

    Position ``(r, c)`` of every map is the square whose top-left pixel is
    ``(row, col) = (r * stride, c * stride)``; it covers rows ``r*stride ... r*stride+size-1``.

    Attributes:
        prob: ``[N, rows, cols]`` softmax probability of the target class with the square there.
        label: ``[N, rows, cols]`` (int64) the most probable class with the square there.
        activation: ``[N, rows, cols]`` spatially summed activation of feature map
            ``channel[n]`` of ``layer`` with the square there; ``None`` without a layer.
        channel: ``[N]`` (int64) the feature map of ``layer`` whose largest single activation is
            the highest on the unoccluded image; ``None`` without a layer.
        targets: ``[N]`` (int64) the classes whose probability ``prob`` holds.
        base_prob: ``[N]`` probability of the target on the unoccluded image.
        base_label: ``[N]`` the most probable class of the unoccluded image.
        base_activation: ``[N]`` the summed activation of ``channel`` on the unoccluded image;
            ``None`` without a layer.
        size: side of the square in pixels.
        stride: step between positions in pixels.
        image_size: ``(H, W)`` of the images.
        layer: the layer's dotted name, or ``None``.
        method: how the maps were computed: ``"full"`` (one full forward per occluded image),
            ``"incremental"`` (exact incremental inference) or ``"approximate"``.
        log_prob: ``[N, rows, cols]`` the target's log-probability with the square there,
            computed so that it does not round to 0 when the probability rounds to 1.
        base_log_prob: ``[N]`` the target's log-probability on the unoccluded image.
    """

    prob: torch.Tensor
    label: torch.Tensor
    activation: torch.Tensor | None
    channel: torch.Tensor | None
    targets: torch.Tensor
    base_prob: torch.Tensor
    base_label: torch.Tensor
    base_activation: torch.Tensor | None
    size: int
    stride: int
    image_size: tuple[int, int]
    layer: str | None
    method: str = "full"
    log_prob: torch.Tensor | None = None
    base_log_prob: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the maps."""
        return int(self.prob.shape[1]), int(self.prob.shape[2])

    @property
    def rows(self) -> torch.Tensor:
        """``[rows]`` top pixel row of the square at each map row: ``0, stride, ...``."""
        return torch.arange(self.grid[0]) * self.stride

    @property
    def cols(self) -> torch.Tensor:
        """``[cols]`` left pixel column of the square at each map column."""
        return torch.arange(self.grid[1]) * self.stride

    def subset(self, index: int | slice | Sequence[int] | torch.Tensor) -> OcclusionMaps:
        """Return the maps of some of the images (an int keeps the image dimension).

        Example:
            >>> maps.subset(0).prob.shape  # doctest: +SKIP
            torch.Size([1, 7, 7])
        """
        if isinstance(index, int) and not isinstance(index, bool):
            index = slice(index, index + 1 if index != -1 else None)
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.int64)
        return self._apply(lambda t: t[index])

    def to(self, device: torch.device | str) -> OcclusionMaps:
        """Return the maps with every tensor on ``device``.

        Example:
            >>> maps.to("cpu")  # doctest: +SKIP
        """
        return self._apply(lambda t: t.to(device))

    def _apply(self, fn: Any) -> OcclusionMaps:
        values = {
            name: fn(v) if isinstance(v, torch.Tensor) else v
            for name, v in ((f.name, getattr(self, f.name)) for f in fields(self))
        }
        return OcclusionMaps(**values)

    def lowest_prob_position(self) -> torch.Tensor:
        """Return ``[N, 2]`` map indices ``(r, c)`` where the target probability is lowest.

        Ties go to the first position in row-major order.

        Example:
            >>> maps.lowest_prob_position()  # doctest: +SKIP
            tensor([[3, 4], [0, 6]])
        """
        flat = self.prob.flatten(1).argmin(dim=1)
        return torch.stack([flat // self.grid[1], flat % self.grid[1]], dim=1)

    def square(self, r: int, c: int) -> tuple[int, int, int, int]:
        """Return the occluder at map position ``(r, c)`` as a pixel box ``(x0, y0, x1, y1)``.

        ``x1`` and ``y1`` are exclusive, like :meth:`zflight.data.ShapesDataset.box`.

        Example:
            >>> maps.square(1, 2)  # doctest: +SKIP
            (16, 8, 32, 24)
        """
        y0, x0 = int(r) * self.stride, int(c) * self.stride
        return x0, y0, x0 + self.size, y0 + self.size

    def pixel_attribution(self, *, log: bool = False) -> torch.Tensor:
        """Return ``[N, H, W]``: per pixel, ``base_prob - prob`` averaged over the squares covering it.

        This is what ``captum.attr.Occlusion`` computes for a model whose output is the softmax,
        with ``sliding_window_shapes=(C, size, size)``, ``strides=stride``, ``baselines=fill``
        and the same targets, whenever both slide the square over the same positions (that is,
        ``(H - size)`` and ``(W - size)`` are multiples of ``stride``). Pixels no square covers
        are 0.

        With ``log=True`` the drop is ``base_log_prob - log_prob``, the target's loss of
        log-probability: it ranks the squares of an image as the probability does, but where
        the model is so sure that the probability is 1.0 in float32 under most squares (and
        the plain map is zero almost everywhere), it still tells them apart.

        Args:
            log: the drop in log-probability rather than in probability.

        Raises:
            ValueError: ``log=True`` on maps made without log-probabilities.

        Example:
            >>> maps.pixel_attribution().shape  # doctest: +SKIP
            torch.Size([2, 64, 64])
        """
        h, w = self.image_size
        base, occluded = (self.base_log_prob, self.log_prob) if log else (self.base_prob, self.prob)
        if base is None or occluded is None:
            raise ValueError("log=True: these maps hold no log-probabilities (log_prob is None)")
        drop = (base[:, None, None].double() - occluded.double()).unsqueeze(1)
        ones = torch.ones(1, 1, self.size, self.size, dtype=torch.float64, device=drop.device)
        # A transposed convolution with a box kernel adds each position's value to its square.
        total = F.conv_transpose2d(drop, ones, stride=self.stride)
        count = F.conv_transpose2d(torch.ones_like(drop[:1]), ones, stride=self.stride)
        total = F.pad(total, (0, w - total.shape[-1], 0, h - total.shape[-2]))
        count = F.pad(count, (0, w - count.shape[-1], 0, h - count.shape[-2]))
        return (total / count.clamp(min=1)).squeeze(1).to(self.prob.dtype)


def occlusion_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None,
    *,
    size: int,
    stride: int,
    fill: Fill = 0.0,
    layer: str | nn.Module | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
    incremental: bool | None = None,
    approximate: float | None = None,
) -> OcclusionMaps:
    """Return the class probability, top class and a feature map's total under a sliding gray square.

    A square of side ``size``, filled with ``fill`` in the model's input space (0.0 is the data
    mean after normalization: the paper's gray), is placed with its top-left corner at rows and
    columns ``0, stride, 2*stride, ...`` up to ``H - size`` (``W - size``). For every image and
    position the occluded image is classified: ``prob`` is the softmax probability of the
    target, ``label`` the most probable class. With ``layer``, ``channel[n]`` is the feature map
    of ``layer`` whose largest single activation on the unoccluded image ``n`` is the highest
    (as in top-9 mining; the first such map on ties) and ``activation`` its spatially summed
    activation with the square at each position (a 2-D layer output counts as 1×1 maps).

    Every occluded image is scored in batches of ``batch_size`` (image, position) pairs; the
    result equals occluding and classifying one position at a time (to float rounding). For
    eligible models (a ``features`` chain of Conv2d / ReLU / MaxPool2d / AvgPool2d / eval
    BatchNorm2d / LocalResponseNorm / Dropout followed by ``classifier``, optionally through
    ``avgpool``: zfnet, alexnet_zf, torchvision AlexNet and VGG) the scoring is exact
    incremental inference: each feature map is recomputed only in the window the square can
    change and spliced into the cached unoccluded maps, switching to full maps where the window
    covers them (``docs/occlusion-incremental.md``). Other models get one full forward pass
    per occluded image. The model runs in ``eval()`` mode without gradients; every submodule's
    ``training`` flag is restored afterwards, and the forward hook on ``layer`` is removed even
    when the forward raises.

    Args:
        model: a classifier returning logits ``[B, classes]`` for images ``[B, C, H, W]``.
        images: ``[N, C, H, W]`` floating-point images, normalized as the model expects.
        targets: the class per image whose probability is tracked: an int for all, a sequence
            or 1-D tensor of ``N`` ints, or ``None`` for each image's predicted class.
        size: side of the square in pixels, ``1 <= size <= min(H, W)``.
        stride: step between square positions in pixels, ``>= 1``.
        fill: the square's value: a number, or one value per input channel.
        layer: a submodule of ``model`` or its dotted name (a unique suffix like ``"relu5"``
            works) whose feature map is tracked; ``None`` skips ``activation``/``channel``.
        batch_size: occluded images per forward pass.
        progress: show a tqdm bar; ``None`` shows one when the call runs at least 2048 occluded
            forwards.
        incremental: ``None`` (default) uses incremental inference when the model is eligible
            and a cost model expects it to be faster, else full forwards; ``False`` always runs
            full forwards; ``True`` always runs incremental inference and raises a
            ``ValueError`` saying why when the model is not eligible.
        approximate: off (``None``) by default. NOT EXACT: a fraction ``tau`` in ``(0, 1]``
            caps every recomputed window at ``ceil(tau * map size)`` rows and columns around
            the change and treats the change outside it as zero (projective field
            thresholding). Faster, with an error measured in ``docs/occlusion-incremental.md``;
            needs an eligible model.

    Returns:
        An :class:`OcclusionMaps` with ``prob``, ``label``, ``activation`` (``[N, rows, cols]``)
        and ``channel`` (``[N]``), on the device of ``images``.

    Raises:
        ValueError: a bad argument, named in the message: ``images`` not a 4-D floating batch,
            ``size`` outside ``[1, min(H, W)]``, ``stride < 1``, a target outside the model's
            classes, an unknown ``layer`` or one the forward never reaches, a bad ``fill`` or
            ``batch_size``, a model that does not return ``[B, classes]``, a bad
            ``incremental`` or ``approximate``, or ``incremental=True`` / ``approximate`` on a
            model that is not eligible for incremental inference.
        TypeError: ``images`` is not a tensor.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> maps = occlusion_maps(model, torch.randn(2, 3, 64, 64), [3, 7], size=16, stride=8,
        ...                       layer="relu5")
        >>> maps.prob.shape, maps.channel.shape
        (torch.Size([2, 7, 7]), torch.Size([2]))
    """
    _check_images(images)
    n, c, h, w = images.shape
    _check_int("size", size, 1)
    if size > min(h, w):
        raise ValueError(
            f"size={size} is larger than the images ({h}x{w}): the square must fit inside"
        )
    _check_int("stride", stride, 1)
    _check_int("batch_size", batch_size, 1)
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")
    if incremental is not None and not isinstance(incremental, bool):
        raise ValueError(f"incremental must be True, False or None, got {incremental!r}")
    if approximate is not None and (
        isinstance(approximate, bool)
        or not isinstance(approximate, (int, float))
        or not 0.0 < approximate <= 1.0
    ):
        raise ValueError(f"approximate must be None or a number in (0, 1], got {approximate!r}")
    if approximate is not None and incremental is False:
        raise ValueError("approximate needs incremental inference; it cannot be combined with "
                         "incremental=False")
    fill_t = _fill_tensor(fill, c, images)
    probe = _LayerProbe(model, layer) if layer is not None else None

    rows, cols = (h - size) // stride + 1, (w - size) // stride + 1
    # All (image, position) pairs, image-major: pair k is image k // P at position k % P.
    n_pos = rows * cols
    top_left = torch.stack(
        torch.meshgrid(torch.arange(rows) * stride, torch.arange(cols) * stride, indexing="ij"),
        dim=-1,
    ).reshape(n_pos, 2)
    total = n * n_pos
    show = progress if progress is not None else total >= _PROGRESS_MIN_FORWARDS

    with preserve_modes(model, eval_mode=True), torch.no_grad():
        base_logits, base_acts = _score_batches(model, images, probe, batch_size)
        base_probs, base_scores = _class_scores(base_logits, n)
        num_classes = base_probs.shape[1]
        tgt = _targets(targets, n, num_classes, base_probs, images.device)
        channel = base_act = None
        if probe is not None:
            channel = base_acts[:, 0].argmax(dim=1)  # [N]; the first map on ties
            base_act = base_acts[:, 1].gather(1, channel[:, None]).squeeze(1)
        scorer = make_scorer(
            model,
            images,
            size=size,
            stride=stride,
            probe_module=probe.module if probe is not None else None,
            incremental=incremental,
            approximate=float(approximate) if approximate is not None else None,
            reference=base_logits[:1],
        )

        prob = torch.empty(total, dtype=base_probs.dtype, device=images.device)
        log_prob = torch.empty_like(prob)
        label = torch.empty(total, dtype=torch.int64, device=images.device)
        activation = (
            torch.empty(total, dtype=base_probs.dtype, device=images.device)
            if probe is not None
            else None
        )
        bar = _progress_bar(show, total)
        try:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                pair = torch.arange(start, stop)
                which, where = pair // n_pos, top_left[pair % n_pos]
                chans = channel[which.to(images.device)] if channel is not None else None
                if scorer is not None:
                    logits, acts = scorer.score(images, which.to(images.device), where, fill_t, chans)
                else:
                    logits, acts = _score_occluded(
                        model,
                        images,
                        which.to(images.device),
                        where,
                        size=size,
                        fill=fill_t,
                        probe=probe,
                        channels=chans,
                    )
                probs, scores = _class_scores(logits, stop - start)
                prob[start:stop] = probs.gather(1, tgt[which.to(images.device), None]).squeeze(1)
                log_prob[start:stop] = _target_log_prob(scores, tgt[which.to(images.device)])
                label[start:stop] = probs.argmax(dim=1)
                if activation is not None:
                    activation[start:stop] = acts
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()

    return OcclusionMaps(
        prob=prob.view(n, rows, cols),
        label=label.view(n, rows, cols),
        activation=activation.view(n, rows, cols) if activation is not None else None,
        channel=channel,
        targets=tgt,
        base_prob=base_probs.gather(1, tgt[:, None]).squeeze(1),
        base_label=base_probs.argmax(dim=1),
        base_activation=base_act,
        size=size,
        stride=stride,
        image_size=(h, w),
        layer=probe.name if probe is not None else None,
        method="full" if scorer is None else ("approximate" if approximate else "incremental"),
        log_prob=log_prob.view(n, rows, cols),
        base_log_prob=_target_log_prob(base_scores, tgt),
    )


# ----------------------------------------------------------------------------- the scoring step
class _LayerProbe:
    """Records one layer's output during a forward pass: whole maps, or one map's sum per sample.

    The hook lives only inside :meth:`run` and is removed in ``finally``.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module) -> None:
        self.name, self.module = resolve_layer(model, layer)
        self.model = model

    def run(
        self, x: torch.Tensor, channels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, recorded)``.

        ``recorded`` is ``[B, 2, C]`` (each map's largest activation, then its sum) when
        ``channels`` is ``None``, else ``[B]``: the summed activation of map ``channels[b]`` of
        sample ``b``.
        """
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() < 2:
                raise ValueError(
                    f"layer={self.name!r} returns {type(out).__name__}"
                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}; it needs "
                    "feature maps [B, C, ...]"
                )
            if captured:
                return  # only the first call of a module used twice
            flat = out.detach().reshape(out.shape[0], out.shape[1], -1)
            if channels is None:
                # Reduced right here, before an in-place layer after this one overwrites it.
                captured.append(torch.stack([flat.amax(dim=2), flat.sum(dim=2)], dim=1))
            else:
                rows = torch.arange(out.shape[0], device=out.device)
                captured.append(flat[rows, channels].sum(dim=1))

        handle = self.module.register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if not captured:
            raise ValueError(
                f"layer={self.name!r} ({type(self.module).__name__}) is never called in the "
                f"forward pass of {type(self.model).__name__}"
            )
        return logits, captured[0]


def _logits(
    model: nn.Module,
    x: torch.Tensor,
    probe: _LayerProbe | None,
    channels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits ``[B, K]`` for ``x`` (shape checked) and, with a probe, what it records."""
    if probe is None:
        logits, recorded = model(x), None
    else:
        logits, recorded = probe.run(x, channels)
    _check_logits(logits, x.shape[0])
    return logits, recorded


def _check_logits(logits: Any, batch: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"model must return class scores [B, classes] for a batch of B images, got {shape}"
        )


def _class_scores(logits: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[B, K]`` and the logits in float32 at least, shape checked."""
    _check_logits(logits, batch)
    # float32 at least, so that fp16 logits do not make every small change vanish.
    logits = logits.float()
    return torch.softmax(logits, dim=1), logits


def _target_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B]`` log-probability of each row's target, without rounding to 0 when it is near 1.

    ``log p_t = -softplus(logsumexp_{j != t} z_j - z_t)``: ``log_softmax`` subtracts
    ``log(1 + tiny)``, which is 0 in float32 (and float64) once the target's margin passes
    ~17 (~37); ``softplus`` goes through ``log1p`` and keeps the tiny value.
    """
    target = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return -F.softplus(others.logsumexp(dim=1) - target)


def _score_batches(
    model: nn.Module,
    images: torch.Tensor,
    probe: _LayerProbe | None,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unoccluded pass: logits ``[N, K]`` and (with a probe) each map's max and sum."""
    logits, recs = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        out, r = _logits(model, x, probe, None)
        logits.append(out)
        recs.append(r)
    return torch.cat(logits), (torch.cat(recs) if probe is not None else None)


def _score_occluded(
    model: nn.Module,
    images: torch.Tensor,
    which: torch.Tensor,
    top_left: torch.Tensor,
    *,
    size: int,
    fill: torch.Tensor,
    probe: _LayerProbe | None,
    channels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Score one batch of occluded images with full forward passes.

    Sample ``b`` is ``images[which[b]]`` with the square whose top-left pixel is
    ``top_left[b] = (row, col)`` set to ``fill``. This is the one step a faster exact path
    (incremental inference) replaces; it must return the same values.

    Args:
        model: the classifier, already in eval mode, called under ``no_grad``.
        images: ``[N, C, H, W]`` all unoccluded images.
        which: ``[B]`` image index of each sample (on the images' device).
        top_left: ``[B, 2]`` (CPU) row and column of each square.
        size: side of the square.
        fill: ``[C, 1, 1]`` the square's value per channel.
        probe: records the tracked layer, or ``None``.
        channels: ``[B]`` the feature map to sum per sample (with ``probe``).

    Returns:
        ``(logits [B, K], activation [B] or None)``.
    """
    x = images.index_select(0, which)
    h, w = x.shape[-2:]
    r0, c0 = top_left.to(x.device).unbind(1)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    # One mask for the whole batch, so the number of kernel launches does not grow with B.
    in_rows = (ys[None] >= r0[:, None]) & (ys[None] < r0[:, None] + size)  # [B, H]
    in_cols = (xs[None] >= c0[:, None]) & (xs[None] < c0[:, None] + size)  # [B, W]
    square = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # [B, 1, H, W]
    x = torch.where(square, fill, x)
    return _logits(model, x, probe, channels)


# ------------------------------------------------------------------------------- argument checks
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            "images must be a floating-point batch [N, C, H, W], got "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch: there is nothing to occlude")


def _fill_tensor(fill: Fill, channels: int, images: torch.Tensor) -> torch.Tensor:
    if isinstance(fill, bool):
        raise ValueError(f"fill must be a number or one number per channel, got {fill!r}")
    if isinstance(fill, (int, float)):
        values = torch.full((channels,), float(fill))
    else:
        try:
            values = torch.as_tensor(fill, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"fill must be a number or one number per channel, got {fill!r}"
            ) from None
        if values.numel() == 1:
            values = values.expand(channels)
        if values.numel() != channels:
            raise ValueError(
                f"fill has {values.numel()} values but the images have {channels} channels"
            )
    if not torch.isfinite(values).all():
        raise ValueError(f"fill must be finite, got {fill!r}")
    return values.to(images.device, images.dtype).view(channels, 1, 1)


def _targets(
    targets: int | Sequence[int] | torch.Tensor | None,
    n: int,
    num_classes: int,
    base_probs: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    if targets is None:
        return base_probs.argmax(dim=1).to(device)
    t = per_image_ints(targets, n, "targets")
    bad = (t < 0) | (t >= num_classes)
    if bad.any():
        raise ValueError(
            f"targets must be classes in [0, {num_classes - 1}] (the model has {num_classes}), "
            f"got {t[bad].tolist()[:5]}"
        )
    return t.to(device)


def _progress_bar(show: bool, total: int) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="occlusion", unit="img", leave=False)
