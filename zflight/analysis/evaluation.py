"""Scores for attribution maps: do they point at the object, and does the model need what they show?

Localization (the object's pixels are known, e.g. :meth:`zflight.data.ShapesDataset.mask`):

- :func:`pointing_game` (Zhang et al., 2016): is the most relevant pixel on the object?
- :func:`relevance_mass` (Arras et al., 2022, CLEVR-XAI): the share of the relevance on it.
- :func:`relevance_rank` (Arras et al., 2022): with ``K`` object pixels, the share of the ``K``
  most relevant pixels that lie on it.

Faithfulness (Petsiuk et al., 2018, RISE):

- :func:`deletion_auc`: remove the most relevant pixels first; a good map makes the target's
  probability fall fast (low area under the curve is good).
- :func:`insertion_auc`: reveal them first on a blank image; a good map makes it rise fast
  (high area is good). :func:`perturbation_curves` returns the curves themselves.

Every function takes ``maps`` ``[N, H, W]`` or ``[N, C, H, W]`` and scores each map by its pixel
relevance ``r = sum_c |a_c|`` (``|a|`` for maps without channels). All are vectorized over
images and pixels: no Python loop per image or pixel.

Ties in ``r``. Localization scores are the *expected* score under a uniformly random tie-break,
which is deterministic and independent of where the tied pixels are:

- pointing game: the fraction of the maximal pixels that lie in the mask (1 or 0 when the
  maximum is unique). A constant map thus scores ``|mask| / (H W)``, the chance level.
- relevance rank: pixels strictly above the ``K``-th largest value count fully; the pixels equal
  to it share the remaining places in proportion to how many of them lie in the mask.

The perturbation curves need one order: decreasing ``r``, ties in row-major order (the pixel
with the smaller flat index ``row * W + col`` goes first; a stable sort).

Relation to Quantus (0.6; ``PointingGame``, ``RelevanceMassAccuracy``,
``RelevanceRankAccuracy``): Quantus scores the raw attribution unless ``abs=True`` and divides it
by its maximum unless ``normalise=False``; it takes channel-less maps. On ``r`` (Quantus with
``abs=True, normalise=False`` on ``a_batch = r``) the three agree wherever ``r`` has no ties,
with these differences: Quantus's pointing game counts a hit when *any* tied maximum is in the
mask (a constant map scores 1.0), its rank accuracy breaks ties by ``np.argsort`` order (not
stable, not documented), and it returns NaN (with a warning) for an empty mask where zflight
raises; an all-zero map gives Quantus NaN mass and an arbitrary rank, zflight raises. Quantus's
pointing game has no tolerance; neither has zflight's (Zhang et al. allow 15 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zflight.attribution._args import check_inputs, per_image_ints
from zflight.attribution._layers import preserve_modes

__all__ = [
    "relevance",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "PerturbationCurves",
    "perturbation_curves",
    "deletion_auc",
    "insertion_auc",
]

Baseline = Literal["zeros", "blur"] | float | torch.Tensor
Targets = int | Sequence[int] | torch.Tensor | None

# Show a progress bar by default once a call runs at least this many perturbed forwards (the
# same threshold as occlusion_maps).
_PROGRESS_MIN_FORWARDS = 2048

# The blurred baseline of RISE's insertion metric: a Gaussian of 11 taps, sigma 5.
_BLUR_TAPS = 11
_BLUR_SIGMA = 5.0


def _first_bad(bad: torch.Tensor) -> int:
    return int(bad.nonzero()[0, 0])


def relevance(maps: torch.Tensor, *, argument: str = "maps") -> torch.Tensor:
    """Return the pixel relevance ``r = sum_c |a_c|`` of a batch of maps, after checking them.

    Args:
        maps: ``[N, H, W]`` or ``[N, C, H, W]`` floating-point maps.
        argument: the name used for ``maps`` in error messages.

    Returns:
        ``[N, H, W]`` relevance, in the dtype of ``maps``.

    Raises:
        TypeError: ``maps`` is not a tensor.
        ValueError: ``maps`` has the wrong number of dimensions, is not floating point, or holds
            NaN/inf (the message names the first such item), or is empty.

    Example:
        >>> relevance(torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]]))
        tensor([[[4.0000, 2.5000]]])
    """
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() not in (3, 4):
        raise ValueError(
            f"{argument} must be [N, H, W] or [N, C, H, W], got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise ValueError(f"{argument} must be floating point, got {maps.dtype}")
    if maps.numel() == 0:
        raise ValueError(f"{argument} must not be empty, got shape {tuple(maps.shape)}")
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{argument}[{_first_bad(~finite)}] holds NaN or inf")
    r = maps.abs()
    return r.sum(dim=1) if maps.dim() == 4 else r


def _check_pair(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``maps``/``masks`` and return ``(r, masks)`` flattened to ``[N, H*W]``."""
    r = relevance(maps)
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.BoolTensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got {masks.dtype}")
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    if masks.shape != r.shape:
        raise ValueError(
            f"masks has shape {tuple(masks.shape)} but maps {tuple(maps.shape)} needs "
            f"{tuple(r.shape)} (N, H, W must match)"
        )
    if masks.device != r.device:
        raise ValueError(f"masks is on {masks.device} but maps on {r.device}")
    r, m = r.flatten(1), masks.flatten(1)
    total = r.sum(dim=1)
    if not bool((total > 0).all()):
        raise ValueError(f"maps[{_first_bad(total <= 0)}] is all zero: it points nowhere")
    size = m.sum(dim=1)
    if not bool((size > 0).all()):
        raise ValueError(f"masks[{_first_bad(size == 0)}] is empty: there is no object to hit")
    return r, m


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Return 1.0 where the pixel of maximal relevance lies in the mask, else 0.0 (Zhang et al.).

    With several pixels at the maximum, the score is the fraction of them in the mask (the
    expected hit of a random tie-break; see the module docstring).

    Args:
        maps: ``[N, H, W]`` or ``[N, C, H, W]`` attribution maps; ``r = sum_c |a_c|``.
        masks: ``[N, H, W]`` bool, the object's pixels.

    Returns:
        ``[N]`` float scores in ``[0, 1]``, in the dtype of ``maps``.

    Raises:
        ValueError: bad shapes, non-bool ``masks``, an all-zero map, an empty mask or NaN/inf;
            the message names the argument and the first bad item.

    Example:
        >>> maps = torch.tensor([[[0.0, 3.0], [1.0, 0.0]]])
        >>> pointing_game(maps, torch.tensor([[[False, True], [False, False]]]))
        tensor([1.])
    """
    r, m = _check_pair(maps, masks)
    at_max = r == r.amax(dim=1, keepdim=True)
    # Counts divided in float64 (an int/int division would give float32 for float64 maps).
    hits = (at_max & m).sum(dim=1).double()
    return (hits / at_max.sum(dim=1)).to(r.dtype)


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Return the share of the relevance inside the mask, ``sum_mask r / sum r`` (Arras et al.).

    Args:
        maps: ``[N, H, W]`` or ``[N, C, H, W]`` attribution maps; ``r = sum_c |a_c|``.
        masks: ``[N, H, W]`` bool, the object's pixels.

    Returns:
        ``[N]`` float scores in ``[0, 1]``, in the dtype of ``maps``.

    Raises:
        ValueError: as :func:`pointing_game`.

    Example:
        >>> maps = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
        >>> relevance_mass(maps, torch.tensor([[[False, True], [False, False]]]))
        tensor([0.7500])
    """
    r, m = _check_pair(maps, masks)
    # Summed in float64: a 224x224 map has 50k terms, and 1 - mass matters near 1.
    inside = (r.double() * m).sum(dim=1)
    return (inside / r.double().sum(dim=1)).to(r.dtype)


def relevance_rank(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Return the fraction of the ``K = |mask|`` most relevant pixels that lie in the mask.

    (Arras et al., 2022.) Pixels tied with the ``K``-th largest value share the places left
    after the larger ones, in proportion to how many of them lie in the mask (the expected score
    of a random tie-break; see the module docstring).

    Args:
        maps: ``[N, H, W]`` or ``[N, C, H, W]`` attribution maps; ``r = sum_c |a_c|``.
        masks: ``[N, H, W]`` bool, the object's pixels.

    Returns:
        ``[N]`` float scores in ``[0, 1]``, in the dtype of ``maps``.

    Raises:
        ValueError: as :func:`pointing_game`.

    Example:
        >>> maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
        >>> relevance_rank(maps, torch.tensor([[[True, False], [True, False]]]))
        tensor([0.5000])
    """
    r, m = _check_pair(maps, masks)
    k = m.sum(dim=1)
    # The K-th largest value per row, K differing between rows: the sorted top max(K) of every
    # row (a partial sort; cheaper than sorting whole rows when the objects are small).
    ordered = r.topk(int(k.max()), dim=1, largest=True, sorted=True).values
    kth = ordered.gather(1, (k - 1)[:, None])
    above, tied = r > kth, r == kth
    places_left = (k - above.sum(dim=1)).double()
    tied_in = (tied & m).sum(dim=1)
    hits = (above & m).sum(dim=1) + places_left * tied_in / tied.sum(dim=1)
    return (hits / k).to(r.dtype)


@dataclass(frozen=True)
class PerturbationCurves:
    """Target probabilities as pixels are deleted or inserted, most relevant first.

    Attributes:
        fractions: ``[steps + 1]`` the fraction of pixels removed (deletion) or revealed
            (insertion) at each point, from 0 to 1.
        probs: ``[N, steps + 1]`` softmax probability of the target class at each point.
        auc: ``[N]`` the area under each curve over ``[0, 1]`` (trapezoid rule).
        targets: ``[N]`` (int64) the classes whose probabilities ``probs`` holds.
        mode: ``"deletion"`` or ``"insertion"``.
    """

    fractions: torch.Tensor
    probs: torch.Tensor
    auc: torch.Tensor
    targets: torch.Tensor
    mode: str


def perturbation_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets = None,
    *,
    mode: Literal["deletion", "insertion"] = "deletion",
    steps: int = 32,
    baseline: Baseline = "zeros",
    batch_size: int = 256,
    progress: bool | None = None,
) -> PerturbationCurves:
    """Return RISE's deletion or insertion curves (Petsiuk et al., 2018) and their areas.

    Pixels are ranked by decreasing relevance ``r = sum_c |a_c|`` (ties in row-major order).
    At point ``k = 0 ... steps`` the first ``n_k = floor(k * H * W / steps)`` pixels (all
    channels) are replaced by the baseline (``"deletion"``: the image loses its most relevant
    pixels) or taken from the image with the rest from the baseline (``"insertion"``: they are
    revealed on the baseline), and the model gives the softmax probability of the target. The
    area is the trapezoid rule over the fractions ``n_k / (H W)``, so it lies in ``[0, 1]``.

    The ``N * (steps + 1)`` perturbed images are built and classified in chunks of
    ``batch_size``, so a call costs about ``N * (steps + 1) / batch_size`` forward passes (one
    more of ``N`` images when ``targets`` is ``None``). The model runs in ``eval()`` mode
    without gradients; every submodule's ``training`` flag is restored afterwards.

    Args:
        model: a classifier returning logits ``[B, classes]`` for images ``[B, C, H, W]``.
        inputs: ``[N, C, H, W]`` floating-point images, normalized as the model expects.
        maps: ``[N, H, W]`` or ``[N, C', H, W]`` attribution maps of ``inputs``.
        targets: the class per image: an int for all, ``N`` ints, or ``None`` for each image's
            predicted class.
        mode: ``"deletion"`` or ``"insertion"``.
        steps: number of steps from no pixel to all pixels, ``>= 1``.
        baseline: what a removed (deletion) or not yet revealed (insertion) pixel holds:
            ``"zeros"`` (default: 0 in the normalized input, i.e. the data mean, the paper's
            gray), ``"blur"`` (the image blurred by a Gaussian of 11 taps, sigma 5, reflecting
            at the border: RISE's insertion baseline), a number, or a tensor broadcastable to
            ``inputs``.
        batch_size: perturbed images per forward pass, ``>= 1``.
        progress: show a tqdm bar; ``None`` shows one when the call runs at least 2048
            perturbed forwards.

    Returns:
        A :class:`PerturbationCurves`.

    Raises:
        TypeError: ``inputs`` or ``model`` of the wrong type.
        ValueError: a bad argument, named in the message: ``inputs`` not a 4-D floating batch,
            ``maps`` not matching its ``N, H, W`` (or NaN/inf in it), a target out of range,
            a bad ``mode``, ``steps``, ``baseline`` or ``batch_size``, a model that does not
            return ``[B, classes]``.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> curves = perturbation_curves(model, x, torch.rand(2, 64, 64), [1, 2], steps=8)
        >>> curves.probs.shape, curves.auc.shape
        (torch.Size([2, 9]), torch.Size([2]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_inputs(inputs, not_tensor=TypeError)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")
    n, c, h, w = inputs.shape
    r = relevance(maps)
    if r.shape != (n, h, w):
        raise ValueError(
            f"maps has shape {tuple(maps.shape)} but inputs {tuple(inputs.shape)} needs maps "
            f"of N, H, W = {(n, h, w)}"
        )
    x = inputs.detach()
    base = _baseline(baseline, x)

    # rank[i, p]: the position of pixel p in image i's deletion order (0 = most relevant).
    order = r.reshape(n, -1).sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(n, -1))
    rank = rank.reshape(n, 1, h, w)
    counts = torch.arange(steps + 1, device=x.device) * (h * w) // steps  # n_k, exact ints
    fractions = counts.to(torch.float64) / (h * w)

    total = n * (steps + 1)
    show = total >= _PROGRESS_MIN_FORWARDS if progress is None else progress
    probs = torch.empty(total, dtype=x.dtype, device=x.device)
    with preserve_modes(model, eval_mode=True), torch.no_grad():
        tgt = _targets(model, x, targets, batch_size)
        with tqdm(total=total, desc=mode, unit="img", disable=not show) as bar:
            for start in range(0, total, batch_size):
                pair = torch.arange(start, min(start + batch_size, total), device=x.device)
                img, step = pair // (steps + 1), pair % (steps + 1)
                # Pixel p of image img is removed (deletion) / revealed (insertion) at step k
                # when its rank is below n_k: one broadcast comparison for the whole chunk.
                chosen = rank[img] < counts[step].view(-1, 1, 1, 1)
                # A constant baseline stays a scalar: no [B, C, H, W] copy of it per chunk.
                fill = base if isinstance(base, float) else base[img]
                if mode == "deletion":
                    batch = torch.where(chosen, fill, x[img])
                else:
                    batch = torch.where(chosen, x[img], fill)
                logits = model(batch)
                _check_logits(logits, batch.shape[0])
                if start == 0:
                    _check_target_range(tgt, logits.shape[1])
                # At least float32 for the softmax: half-precision probabilities are coarse.
                p = logits.softmax(dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
                probs[pair] = p.gather(1, tgt[img][:, None]).squeeze(1).to(x.dtype)
                bar.update(pair.numel())
    probs = probs.reshape(n, steps + 1)
    auc = torch.trapezoid(probs.double(), fractions.to(probs.device), dim=1).to(x.dtype)
    return PerturbationCurves(
        fractions=fractions.to(x.dtype), probs=probs, auc=auc, targets=tgt, mode=mode
    )


def deletion_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets = None,
    *,
    steps: int = 32,
    baseline: Baseline = "zeros",
    batch_size: int = 256,
    progress: bool | None = None,
) -> torch.Tensor:
    """Return RISE's deletion score per image: the area under the probability as pixels go.

    Lower is better: a faithful map names the pixels without which the model loses the class.
    See :func:`perturbation_curves` for the arguments, the order and the baseline.

    Returns:
        ``[N]`` areas in ``[0, 1]``.

    Raises:
        ValueError, TypeError: as :func:`perturbation_curves`.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> deletion_auc(model, torch.randn(2, 3, 64, 64), torch.rand(2, 64, 64), steps=8).shape
        torch.Size([2])
    """
    return perturbation_curves(
        model, inputs, maps, targets, mode="deletion", steps=steps, baseline=baseline,
        batch_size=batch_size, progress=progress,
    ).auc


def insertion_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets = None,
    *,
    steps: int = 32,
    baseline: Baseline = "zeros",
    batch_size: int = 256,
    progress: bool | None = None,
) -> torch.Tensor:
    """Return RISE's insertion score per image: the area under the probability as pixels come.

    Higher is better: a faithful map names the pixels that suffice for the class. See
    :func:`perturbation_curves` for the arguments, the order and the baseline (RISE inserts on
    a blurred image: ``baseline="blur"``).

    Returns:
        ``[N]`` areas in ``[0, 1]``.

    Raises:
        ValueError, TypeError: as :func:`perturbation_curves`.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> insertion_auc(model, torch.randn(2, 3, 64, 64), torch.rand(2, 64, 64), steps=8).shape
        torch.Size([2])
    """
    return perturbation_curves(
        model, inputs, maps, targets, mode="insertion", steps=steps, baseline=baseline,
        batch_size=batch_size, progress=progress,
    ).auc


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _baseline(baseline: Baseline, x: torch.Tensor) -> float | torch.Tensor:
    """The baseline: one number for all pixels, or an image per input ``[N, C, H, W]``."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return 0.0
        if baseline == "blur":
            return _blur(x)
        raise ValueError(f"baseline must be 'zeros', 'blur', a number or a tensor, got {baseline!r}")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline!r}")
        return float(baseline)
    if isinstance(baseline, torch.Tensor):
        try:
            base = torch.broadcast_to(baseline.to(x.device, x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to inputs of "
                f"shape {tuple(x.shape)}"
            ) from None
        if not bool(torch.isfinite(base).all()):
            raise ValueError("baseline holds NaN or inf")
        return base
    raise ValueError(
        f"baseline must be 'zeros', 'blur', a number or a tensor, got {type(baseline).__name__}"
    )


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Each channel blurred by a separable Gaussian (11 taps, sigma 5), reflecting at borders."""
    half = _BLUR_TAPS // 2
    if min(x.shape[-2:]) <= half:
        raise ValueError(
            f"baseline='blur' needs images larger than {half} pixels, got {tuple(x.shape[-2:])}"
        )
    t = torch.arange(_BLUR_TAPS, dtype=x.dtype, device=x.device) - half
    g = torch.exp(-0.5 * (t / _BLUR_SIGMA) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    y = F.pad(x, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _targets(model: nn.Module, x: torch.Tensor, targets: Targets, batch_size: int) -> torch.Tensor:
    """``targets`` as an int64 tensor ``[N]`` on ``x``'s device; ``None``: predicted classes."""
    n = x.shape[0]
    if targets is None:
        preds = []
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size])
            _check_logits(logits, min(batch_size, n - start))
            preds.append(logits.argmax(dim=1))
        return torch.cat(preds)
    return per_image_ints(targets, n, "targets").to(x.device)


def _check_target_range(tgt: torch.Tensor, classes: int) -> None:
    bad = (tgt < 0) | (tgt >= classes)
    if bool(bad.any()):
        raise ValueError(
            f"targets[{_first_bad(bad)}] = {int(tgt[bad][0])} is outside the model's "
            f"{classes} classes"
        )


def _check_logits(logits: object, batch: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits [B, classes] for B={batch}, got {shape}")
