"""The paper's Fig. 6 observations as numbers: dead filters, filter spectra, layer-2 aliasing.

Zeiler & Fergus chose ZFNet's first layers (7×7 stride 2 instead of 11×11 stride 4) after
seeing, in the baseline, layer-1 filters that were "a mix of extremely high and low frequency
information, with little coverage of the mid frequencies", dead filters, and "aliasing
artifacts caused by the large stride 4" in layer 2 (Fig. 6 (b)-(e)). Each observation gets a
definition here, so two trained models can be compared by numbers:

- **Dead filters** (:func:`dead_filters`): a layer-1 filter is dead when its RMS
  (root-mean-square weight over ``in × kh × kw``) is below ``threshold`` (default 0.1) times the
  median RMS of the layer's filters. A second, activity-based reading
  (:func:`inactive_channels`): a channel whose output (default ``relu1``) is never above 0 on
  any pixel of any probe image.
- **Spectral bands** (:func:`spectral_bands`): each filter's 2-D DFT (per input channel,
  zero-padded to ``n_fft`` if given, else the kernel size: exact DFT bins), power ``|F|²`` summed
  over input channels. Frequencies ``(fx, fy)`` are in cycles per pixel, in [−0.5, 0.5); the
  normalized radius ``r = √(fx² + fy²) / 0.5`` is 1 at the Nyquist frequency of a single axis
  (up to √2 in the corners). Bands: **low** ``r < 1/3`` (the DC term included: flat colour is
  low frequency), **mid** ``1/3 ≤ r < 2/3``, **high** ``r ≥ 2/3``. A filter's shares sum to 1;
  the layer's share is the mean over its live (not dead) filters, so a dead filter's noise and
  one dominating filter count no more than any other.
- **Stride aliasing of layer 1** (:func:`stride_aliasing`): a conv with stride ``s`` samples
  its output every ``s`` pixels, whose Nyquist frequency is ``1/(2s)`` cycles per pixel; the
  share of each filter's power at ``max(|fx|, |fy|) > 1/(2s)`` folds back (aliases) into
  the layer-1 maps that layer 2 sees. Mean over live filters.
- **Shift aliasing of layer-2 features** (:func:`shift_aliasing`): an alias-free network's
  spatially averaged features barely change when the input moves by one pixel; aliasing makes
  them jump. For probe images ``x``, ``g(x)`` is the spatial mean of the layer's output
  (``relu2`` by default: ``[C]``); with ``S_d`` the circular shift of the input by ``d``
  pixels, the score is the mean, over images, over ``d = 0 … max_shift − 1`` and over both
  axes (rows, columns), of the one-pixel step ``‖g(S_{d+1} x) − g(S_d x)‖ / ‖g(x)‖``. Steps
  from every sub-stride phase count alike; ``max_shift=8`` covers the stride at layer 2's
  input of both networks (4·2 and 2·2). Circular shifts keep the content whole, but the seam
  and the zero padding at the border still add a little change even to an alias-free network
  (alike for both models), so compare scores between models rather than with 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zflight.attribution._layers import forward_to, preserve_modes, resolve_layer

__all__ = [
    "ArchitectureReport",
    "architecture_report",
    "dead_filters",
    "filter_rms",
    "inactive_channels",
    "shift_aliasing",
    "spectral_bands",
    "stride_aliasing",
    "layer_projections",
    "BAND_EDGES",
]

#: Edges of the low / mid / high bands on the normalized radius (1 = single-axis Nyquist).
BAND_EDGES: tuple[float, float] = (1 / 3, 2 / 3)


def _check_weight(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(
            "weight must be conv weights [out, in, kh, kw], got "
            + (str(tuple(weight.shape)) if isinstance(weight, torch.Tensor) else type(weight).__name__)
        )
    return weight.detach().float().cpu()


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """Return each filter's root-mean-square weight, ``[out]``.

    Example:
        >>> filter_rms(torch.ones(2, 3, 5, 5))
        tensor([1., 1.])
    """
    return _check_weight(weight).pow(2).mean(dim=(1, 2, 3)).sqrt()


def dead_filters(weight: torch.Tensor, *, threshold: float = 0.1) -> torch.Tensor:
    """Return ``[out]`` True for filters whose RMS is below ``threshold`` × the layer's median RMS.

    Args:
        weight: conv weights ``[out, in, kh, kw]``.
        threshold: fraction of the median RMS below which a filter counts as dead.

    Returns:
        A bool tensor.

    Example:
        >>> w = torch.randn(8, 3, 7, 7); w[5] *= 1e-3
        >>> dead_filters(w).nonzero().flatten().tolist()
        [5]
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    rms = filter_rms(weight)
    return rms < threshold * rms.median()


def _frequencies(n_h: int, n_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    fy = torch.fft.fftfreq(n_h)[:, None].expand(n_h, n_w)
    fx = torch.fft.fftfreq(n_w)[None, :].expand(n_h, n_w)
    return fy, fx


def _power(weight: torch.Tensor, n_fft: int | None) -> torch.Tensor:
    w = _check_weight(weight)
    kh, kw = w.shape[-2:]
    if n_fft is not None and (isinstance(n_fft, bool) or not isinstance(n_fft, int) or n_fft < max(kh, kw)):
        raise ValueError(f"n_fft must be an int >= the kernel size {max(kh, kw)}, or None; got {n_fft!r}")
    size = (n_fft, n_fft) if n_fft is not None else (kh, kw)
    return torch.fft.fft2(w, s=size).abs().pow(2).sum(dim=1)  # [out, n_h, n_w]


def spectral_bands(
    weight: torch.Tensor, *, edges: Sequence[float] = BAND_EDGES, n_fft: int | None = None
) -> torch.Tensor:
    """Return ``[out, 3]``: each filter's share of spectral power in the low, mid, high bands.

    Args:
        weight: conv weights ``[out, in, kh, kw]``.
        edges: the two band edges on the normalized radius (see the module docstring).
        n_fft: DFT size (zero padding); ``None``: the kernel size (exact bins).

    Returns:
        Shares in [0, 1] that sum to 1 per filter (all 0 for an all-zero filter).

    Example:
        >>> spectral_bands(torch.ones(1, 1, 7, 7)).round(decimals=6)  # flat: all DC, low
        tensor([[1., 0., 0.]])
    """
    low, high = float(edges[0]), float(edges[1])
    if not 0 < low < high:
        raise ValueError(f"edges must be two increasing positive radii, got {tuple(edges)}")
    power = _power(weight, n_fft)
    fy, fx = _frequencies(*power.shape[-2:])
    r = (fx.pow(2) + fy.pow(2)).sqrt() / 0.5
    bands = torch.stack([r < low, (r >= low) & (r < high), r >= high])  # [3, n_h, n_w]
    per_band = torch.einsum("ohw,bhw->ob", power, bands.float())
    total = power.sum(dim=(1, 2))[:, None]
    return torch.where(total > 0, per_band / total.clamp_min(1e-30), torch.zeros_like(per_band))


def stride_aliasing(weight: torch.Tensor, stride: int, *, n_fft: int | None = None) -> torch.Tensor:
    """Return ``[out]``: each filter's share of power above the Nyquist frequency of ``stride``.

    Power at ``max(|fx|, |fy|) > 1/(2·stride)`` cycles per pixel aliases when the conv output is
    sampled every ``stride`` pixels.

    Args:
        weight: conv weights ``[out, in, kh, kw]``.
        stride: the conv's stride (an int; the larger one if it differs per axis).
        n_fft: DFT size (zero padding); ``None``: the kernel size.

    Returns:
        Shares in [0, 1] (0 for stride 1: nothing aliases).

    Example:
        >>> w = torch.zeros(1, 1, 4, 4); w[0, 0] = torch.tensor([1., -1, 1, -1])  # 0.5 cycles/px in x
        >>> stride_aliasing(w, 2)
        tensor([1.])
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    power = _power(weight, n_fft)
    fy, fx = _frequencies(*power.shape[-2:])
    above = (torch.maximum(fx.abs(), fy.abs()) > 0.5 / stride).float()
    total = power.sum(dim=(1, 2))
    share = (power * above).sum(dim=(1, 2)) / total.clamp_min(1e-30)
    return torch.where(total > 0, share, torch.zeros_like(share))


@torch.no_grad()
def inactive_channels(
    model: nn.Module, images: torch.Tensor, layer: str | nn.Module, *, batch_size: int = 64
) -> torch.Tensor:
    """Return ``[C]`` True for channels of ``layer`` that are never > 0 on any probe pixel.

    Args:
        model: the network (run in eval mode, flags restored).
        images: ``[N, 3, H, W]`` probe images.
        layer: a layer with ``[N, C, ...]`` output, e.g. ``relu1``.
        batch_size: images per forward pass.

    Returns:
        A bool tensor.

    Example:
        >>> inactive_channels(model, x, "relu1").float().mean()  # doctest: +SKIP
    """
    _check_images(images)
    _, module = resolve_layer(model, layer)
    active = torch.zeros(0, dtype=torch.bool)
    with preserve_modes(model, eval_mode=True):
        for start in range(0, images.shape[0], batch_size):
            out = forward_to(model, module, images[start : start + batch_size].to(_device(model, images)))
            seen = (out > 0).transpose(0, 1).flatten(1).any(dim=1).cpu()
            active = seen if active.numel() == 0 else active | seen
    return ~active


@torch.no_grad()
def shift_aliasing(
    model: nn.Module,
    images: torch.Tensor,
    layer: str | nn.Module,
    *,
    max_shift: int = 8,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Return how much ``layer``'s spatially averaged features change per one-pixel input shift.

    See the module docstring for the definition. The model runs in eval mode (flags restored).

    Args:
        model: the network.
        layer: the layer whose output is averaged (``relu2`` for the paper's layer 2).
        images: ``[N, C, H, W]`` probe images.
        max_shift: one-pixel steps from shifts ``0 … max_shift − 1``, along rows and columns.
        batch_size: images per forward pass.

    Returns:
        ``{"score": float, "per_shift": {"rows": [...], "cols": [...]}, "max_shift": int}``:
        the mean relative change, and its mean over images per step ``d → d+1``.

    Raises:
        ValueError: a bad argument or layer.

    Example:
        >>> shift_aliasing(model, x, "relu2")["score"]  # doctest: +SKIP
        0.07
    """
    _check_images(images)
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 1:
        raise ValueError(f"max_shift must be an int >= 1, got {max_shift!r}")
    _, module = resolve_layer(model, layer)
    device = _device(model, images)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], batch_size):
            out = forward_to(model, module, x[start : start + batch_size].to(device))
            outs.append(out.flatten(2).mean(dim=2).cpu() if out.dim() > 2 else out.cpu())
        return torch.cat(outs)

    per_shift: dict[str, list[float]] = {"rows": [], "cols": []}
    changes = []
    with preserve_modes(model, eval_mode=True):
        ref = pooled(images)
        norm = ref.norm(dim=1).clamp_min(1e-12)
        for axis, dim in (("rows", -2), ("cols", -1)):
            previous = ref
            for d in range(1, max_shift + 1):
                current = pooled(torch.roll(images, d, dims=dim))
                rel = (current - previous).norm(dim=1) / norm
                changes.append(rel)
                per_shift[axis].append(float(rel.mean()))
                previous = current
    return {"score": float(torch.stack(changes).mean()), "per_shift": per_shift, "max_shift": max_shift}


@torch.no_grad()
def layer_projections(
    model: nn.Module, images: torch.Tensor, layer: str | nn.Module, *, maps: int = 16, batch_size: int = 64
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Return deconvnet projections of ``layer``'s most active feature maps (Fig. 6 (d), (e)).

    The ``maps`` channels with the highest single activation over the probe images are taken;
    each is projected (:meth:`zflight.DeconvNet.project`, ``mode="max"``) from the probe image
    where it is strongest.

    Args:
        model: the network.
        images: ``[N, 3, H, W]`` probe images.
        layer: e.g. ``relu2``.
        maps: how many feature maps.
        batch_size: images per pass.

    Returns:
        ``(projections [maps, 3, H, W], channels, image_indices)``.

    Example:
        >>> proj, chans, idx = layer_projections(model, x, "relu2", maps=9)  # doctest: +SKIP
    """
    from zflight.attribution.deconvnet import DeconvNet

    _check_images(images)
    _, module = resolve_layer(model, layer)
    device = _device(model, images)
    best_val = torch.empty(0)
    best_img = torch.empty(0, dtype=torch.long)
    with preserve_modes(model, eval_mode=True):
        for start in range(0, images.shape[0], batch_size):
            out = forward_to(model, module, images[start : start + batch_size].to(device))
            peak = out.flatten(2).amax(dim=2).cpu()  # [b, C]
            val, idx = peak.max(dim=0)
            idx = idx + start
            if best_val.numel() == 0:
                best_val, best_img = val, idx
            else:
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                best_img = torch.where(better, idx, best_img)
        channels = best_val.argsort(descending=True)[: min(maps, best_val.numel())].tolist()
        picks = [int(best_img[c]) for c in channels]
    with torch.enable_grad(), preserve_modes(model, eval_mode=True):
        proj = DeconvNet(model).project(images[picks].to(device), layer=layer, channels=channels,
                                        mode="max", batch_size=batch_size)
    return proj.detach().cpu(), channels, picks


@dataclass
class ArchitectureReport:
    """The Fig. 6 numbers of one model (see the module docstring for the definitions).

    Attributes:
        filter_layer: the layer-1 conv's full name.
        feature_layer: the layer-2 layer's full name.
        stride: the layer-1 conv's stride.
        dead_share: share of layer-1 filters that are dead by RMS.
        inactive_share: share of ``activity_layer`` channels never active on the probe images.
        bands: ``{"low", "mid", "high"}`` mean shares over live layer-1 filters.
        stride_aliasing: mean share of live layer-1 filter power above the stride's Nyquist.
        shift_aliasing: the layer-2 shift score and per-shift values.
        per_filter: per filter: ``rms``, ``dead``, ``bands`` ``[low, mid, high]``,
            ``stride_aliasing``.
    """

    filter_layer: str
    feature_layer: str
    stride: int
    dead_share: float
    inactive_share: float | None
    bands: dict[str, float]
    stride_aliasing: float
    shift_aliasing: dict[str, Any] | None
    per_filter: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the numbers as a JSON-ready dict.

        Example:
            >>> json.dumps(report.to_dict())  # doctest: +SKIP
        """
        return {
            "filter_layer": self.filter_layer,
            "feature_layer": self.feature_layer,
            "stride": self.stride,
            "dead_filter_share": self.dead_share,
            "inactive_channel_share": self.inactive_share,
            "spectral_bands": self.bands,
            "stride_aliasing": self.stride_aliasing,
            "shift_aliasing": self.shift_aliasing,
            "per_filter": self.per_filter,
            **self.meta,
        }


def architecture_report(
    model: nn.Module,
    images: torch.Tensor | None = None,
    *,
    filter_layer: str = "conv1",
    activity_layer: str = "relu1",
    feature_layer: str = "relu2",
    dead_threshold: float = 0.1,
    n_fft: int | None = None,
    max_shift: int = 8,
    batch_size: int = 64,
) -> ArchitectureReport:
    """Return the Fig. 6 numbers of one model: dead filters, spectral bands, aliasing.

    Args:
        model: the network.
        images: ``[N, 3, H, W]`` probe images for the activity-based numbers (inactive
            channels, shift aliasing); ``None`` computes only the weight-based ones.
        filter_layer: the first conv layer (``conv1``).
        activity_layer: the layer whose channels are checked for activity (``relu1``).
        feature_layer: the layer-2 layer of the shift-aliasing score (``relu2``).
        dead_threshold: see :func:`dead_filters`.
        n_fft: DFT size for the spectra (``None``: the kernel size).
        max_shift: see :func:`shift_aliasing`.
        batch_size: images per forward pass.

    Returns:
        An :class:`ArchitectureReport`.

    Raises:
        ValueError: ``filter_layer`` is not a ``Conv2d``, or another bad argument.

    Example:
        >>> report = architecture_report(alexnet_zf(num_classes=10, width=0.125, image_size=64), x)  # doctest: +SKIP
        >>> report.bands  # doctest: +SKIP
        {'low': 0.41, 'mid': 0.33, 'high': 0.26}
    """
    fname, conv = resolve_layer(model, filter_layer)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"filter_layer={filter_layer!r} must be a Conv2d, got {type(conv).__name__}")
    weight = conv.weight.detach()
    stride = int(max(conv.stride))
    dead = dead_filters(weight, threshold=dead_threshold)
    live = ~dead if (~dead).any() else torch.ones_like(dead)
    bands = spectral_bands(weight, n_fft=n_fft)
    alias = stride_aliasing(weight, stride, n_fft=n_fft)
    inactive_share, shift = None, None
    lname = resolve_layer(model, feature_layer)[0]
    if images is not None:
        inactive_share = float(inactive_channels(model, images, activity_layer, batch_size=batch_size).float().mean())
        shift = shift_aliasing(model, images, feature_layer, max_shift=max_shift, batch_size=batch_size)
    mean_bands = bands[live].mean(dim=0)
    return ArchitectureReport(
        filter_layer=fname,
        feature_layer=lname,
        stride=stride,
        dead_share=float(dead.float().mean()),
        inactive_share=inactive_share,
        bands={"low": float(mean_bands[0]), "mid": float(mean_bands[1]), "high": float(mean_bands[2])},
        stride_aliasing=float(alias[live].mean()),
        shift_aliasing=shift,
        per_filter={
            "rms": filter_rms(weight).tolist(),
            "dead": dead.tolist(),
            "bands": bands.tolist(),
            "stride_aliasing": alias.tolist(),
        },
        meta={"dead_threshold": dead_threshold, "band_edges": list(BAND_EDGES), "n_fft": n_fft,
              "activity_layer": activity_layer, "num_probe_images": 0 if images is None else int(images.shape[0])},
    )


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(
            "images must be a non-empty [N, C, H, W] tensor, got "
            + (str(tuple(images.shape)) if isinstance(images, torch.Tensor) else type(images).__name__)
        )


def _device(model: nn.Module, images: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else images.device
