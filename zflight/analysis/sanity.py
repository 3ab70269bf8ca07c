"""Sanity checks for attribution maps (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

A map that explains the *model* must change when the model changes, and a map that explains the
*class* must change when the class changes.

- :func:`model_randomization`: re-initialize the parametrized layers, from the top down
  (``"cascading"``: layer after layer, cumulatively) or one at a time (``"independent"``),
  recompute the maps, and compare each with the original map of the trained model.
- :func:`class_sensitivity`: compare the maps of the top-1 class with those of the least likely
  class of the same image.

Both compare maps by their pixel relevance ``r = sum_c |a_c|`` (as the metrics in
:mod:`zflight.analysis.evaluation`; Adebayo et al. compare absolute maps too) with

- the Spearman rank correlation of the ``H*W`` values (ties get their average rank; NaN when a
  map is constant, where no correlation is defined);
- SSIM (Wang et al., 2004) of the maps scaled to ``[0, 1]`` by their maximum (all-zero maps stay
  zero), with a Gaussian window of 11 taps and sigma 1.5, constants ``K1 = 0.01``, ``K2 =
  0.03``, data range 1, population (co)variances, averaged over the positions where the window
  fits inside the image: what ``skimage.metrics.structural_similarity(a, b,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` computes.

High similarity after randomization (or for another class) means the method does not depend on
what was randomized. The model is left exactly as found: weights (the same parameter and buffer
objects, bit-identical values), every submodule's ``training`` flag, and every hook table are
restored in ``finally``, also when the method raises midway. The global random number generator
is not advanced (re-initialization runs in a forked RNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zflight.analysis.evaluation import relevance
from zflight.attribution._args import per_image_ints
from zflight.attribution._guard import preserve_model
from zflight.attribution._layers import resolve_layer
from zflight.attribution.methods import Method, get_method

__all__ = [
    "RandomizationResult",
    "ClassSensitivity",
    "model_randomization",
    "class_sensitivity",
    "spearman",
    "ssim",
]

_SSIM_TAPS = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
# Parameters of a layer without reset_parameters() are drawn from N(0, _FALLBACK_STD^2).
_FALLBACK_STD = 0.01


@dataclass(frozen=True)
class RandomizationResult:
    """Similarity of each randomized model's maps to the trained model's maps.

    Attributes:
        layers: the re-initialized layers' dotted names, in the order they were randomized (top
            first). Row ``i`` of the scores is the model with ``layers[: i + 1]`` randomized
            (``"cascading"``) or with ``layers[i]`` alone (``"independent"``).
        spearman: ``[L, N]`` Spearman rank correlation of each map with the original.
        ssim: ``[L, N]`` SSIM of each (max-scaled) map with the original.
        mode: ``"cascading"`` or ``"independent"``.
        seed: the seed of the re-initialization (layer ``i`` uses ``seed + i``).
    """

    layers: tuple[str, ...]
    spearman: torch.Tensor
    ssim: torch.Tensor
    mode: str
    seed: int


@dataclass(frozen=True)
class ClassSensitivity:
    """Similarity of the maps of each image's top-1 class to those of its least likely class.

    Attributes:
        top_class: ``[N]`` (int64) the most probable class of each image.
        bottom_class: ``[N]`` (int64) the least probable class.
        spearman: ``[N]`` Spearman rank correlation of the two maps.
        ssim: ``[N]`` SSIM of the two (max-scaled) maps.
    """

    top_class: torch.Tensor
    bottom_class: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the Spearman rank correlation of the relevance of two batches of maps, per image.

    Args:
        a: ``[N, H, W]`` or ``[N, C, H, W]`` maps; compared by ``r = sum_c |a_c|``.
        b: maps of the same ``N, H, W``.

    Returns:
        ``[N]`` float64 correlations in ``[-1, 1]``; NaN where either map is constant.

    Raises:
        ValueError: bad shapes or NaN/inf (named).

    Example:
        >>> spearman(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[[1.0, 5.0, 9.0]]]))
        tensor([1.], dtype=torch.float64)
    """
    ra, rb = _pair(a, b)
    xa, xb = _average_ranks(ra.flatten(1)), _average_ranks(rb.flatten(1))
    xa = xa - xa.mean(dim=1, keepdim=True)
    xb = xb - xb.mean(dim=1, keepdim=True)
    denom = (xa.square().sum(dim=1) * xb.square().sum(dim=1)).sqrt()
    corr = (xa * xb).sum(dim=1) / denom
    return torch.where(denom > 0, corr, torch.full_like(corr, float("nan")))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the SSIM of the max-scaled relevance of two batches of maps, per image.

    See the module docstring for the window, constants and border handling.

    Args:
        a: ``[N, H, W]`` or ``[N, C, H, W]`` maps, ``H, W >= 11``; compared by
            ``r = sum_c |a_c|`` divided by its maximum.
        b: maps of the same ``N, H, W``.

    Returns:
        ``[N]`` float64 SSIM values in ``[-1, 1]``.

    Raises:
        ValueError: bad shapes, maps smaller than the window, or NaN/inf (named).

    Example:
        >>> x = torch.rand(2, 16, 16)
        >>> ssim(x, x)
        tensor([1., 1.], dtype=torch.float64)
    """
    ra, rb = _pair(a, b)
    if min(ra.shape[-2:]) < _SSIM_TAPS:
        raise ValueError(
            f"maps must be at least {_SSIM_TAPS}x{_SSIM_TAPS} for SSIM's window, got "
            f"{tuple(ra.shape[-2:])}"
        )
    x, y = _max_scaled(ra)[:, None], _max_scaled(rb)[:, None]
    t = torch.arange(_SSIM_TAPS, dtype=torch.float64, device=x.device) - _SSIM_TAPS // 2
    g = torch.exp(-0.5 * (t / _SSIM_SIGMA) ** 2)
    g = g / g.sum()
    row, col = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian, "valid": only positions where the whole window fits.
        return F.conv2d(F.conv2d(z, row), col)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def model_randomization(
    model: nn.Module,
    method: str | Method,
    inputs: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    *,
    mode: Literal["cascading", "independent"] = "cascading",
    seed: int = 0,
    layers: Sequence[str | nn.Module] | None = None,
) -> RandomizationResult:
    """Re-initialize layers, recompute the maps and score their similarity to the originals.

    Layers are re-initialized by their own ``reset_parameters()`` (the initialization PyTorch
    gives a fresh layer; batch norm also resets its running statistics), or, for a layer
    without one, every parameter from ``N(0, 0.01^2)``; layer ``i`` under the seed
    ``seed + i``, so a layer gets the same random weights in both modes. The model runs in
    ``eval()`` mode.

    Args:
        model: a classifier returning logits ``[N, classes]``.
        method: a name in :data:`zflight.attribution.methods.METHODS` or a callable
            ``(model, inputs, target) -> maps [N, C or 1, H, W]``.
        inputs: images ``[N, C, H, W]``.
        target: the class per image: an int, ``N`` ints or a 1-D integer tensor.
        mode: ``"cascading"`` (top layer first, each step adds the next layer down) or
            ``"independent"`` (one layer at a time, the others trained).
        seed: seed of the re-initialization.
        layers: the layers to randomize, in this order (names or modules); ``None``: every
            module with parameters of its own, from the last registered to the first (the top
            of the network first for models that register layers in forward order, as
            ``nn.Sequential``, zfnet and torchvision CNNs do).

    Returns:
        A :class:`RandomizationResult`.

    Raises:
        ValueError: unknown ``method`` or ``mode``, a ``layers`` entry that is not a module of
            the model or has no parameters, a model without parametrized layers, bad
            ``target``, maps of the wrong shape; whatever ``method`` raises is re-raised after
            the model is restored.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> res = model_randomization(model, "gradcam", torch.randn(2, 3, 64, 64), [1, 2])
        >>> res.layers[0], res.spearman.shape
        ('classifier.fc8', torch.Size([8, 2]))
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    fn = _resolve_method(method)
    tgt = per_image_ints(target, _batch_size(inputs), "target").to(inputs.device)
    chosen = _layers_to_randomize(model, layers)

    rows_rho, rows_ssim = [], []
    with preserve_model(model, weights=True):
        model.eval()
        original = _maps(fn, model, inputs, tgt)
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for i, (_, module) in enumerate(chosen):
            if mode == "independent" and i > 0:
                model.load_state_dict(trained)
            _reinitialize(module, seed + i)
            maps = _maps(fn, model, inputs, tgt)
            rows_rho.append(spearman(original, maps))
            rows_ssim.append(ssim(original, maps))
    return RandomizationResult(
        layers=tuple(name for name, _ in chosen),
        spearman=torch.stack(rows_rho),
        ssim=torch.stack(rows_ssim),
        mode=mode,
        seed=seed,
    )


def class_sensitivity(
    model: nn.Module, method: str | Method, inputs: torch.Tensor
) -> ClassSensitivity:
    """Compare each image's maps for its top-1 class with those for its least likely class.

    The classes come from one forward pass in ``eval()`` mode without gradients. The model is
    left as found (modes, hooks, weights).

    Args:
        model: a classifier returning logits ``[N, classes]``.
        method: a registered method name or a callable ``(model, inputs, target) -> maps``.
        inputs: images ``[N, C, H, W]``.

    Returns:
        A :class:`ClassSensitivity`.

    Raises:
        ValueError: unknown ``method``, bad ``inputs``, maps of the wrong shape; whatever
            ``method`` raises is re-raised after the model is restored.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> class_sensitivity(model, "saliency", torch.randn(2, 3, 64, 64)).ssim.shape
        torch.Size([2])
    """
    fn = _resolve_method(method)
    _batch_size(inputs)
    with preserve_model(model, weights=True):
        model.eval()
        with torch.no_grad():
            logits = model(inputs)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError("model must return logits [N, classes]")
        top, bottom = logits.argmax(dim=1), logits.argmin(dim=1)
        a, b = _maps(fn, model, inputs, top), _maps(fn, model, inputs, bottom)
    return ClassSensitivity(
        top_class=top, bottom_class=bottom, spearman=spearman(a, b), ssim=ssim(a, b)
    )


def _resolve_method(method: str | Method) -> Method:
    if isinstance(method, str):
        return get_method(method)
    if not callable(method):
        raise ValueError(
            f"method must be a registered name or a callable, got {type(method).__name__}"
        )
    return method


def _batch_size(inputs: torch.Tensor) -> int:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a floating [N, C, H, W] batch, got {shape}")
    if min(inputs.shape[-2:]) < _SSIM_TAPS:
        # Checked before any map is computed: SSIM would refuse the maps only at the end.
        raise ValueError(
            f"inputs must be at least {_SSIM_TAPS}x{_SSIM_TAPS} (SSIM's window), got "
            f"{tuple(inputs.shape[-2:])}"
        )
    return inputs.shape[0]


def _maps(fn: Method, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    maps = fn(model, inputs, target)
    n, _, h, w = inputs.shape
    if not isinstance(maps, torch.Tensor) or maps.shape[0] != n or tuple(maps.shape[-2:]) != (h, w):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"method returned maps of shape {shape}; expected [{n}, C or 1, {h}, {w}]")
    # Compared in float64: SSIM's constants are tiny and correlations of near-equal maps matter.
    return maps.detach().to(torch.float64)


def _layers_to_randomize(
    model: nn.Module, layers: Sequence[str | nn.Module] | None
) -> list[tuple[str, nn.Module]]:
    if layers is None:
        found = [
            (name, m)
            for name, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False))
        ]
        if not found:
            raise ValueError(f"model ({type(model).__name__}) has no parametrized layer")
        return found[::-1]
    if isinstance(layers, (str, nn.Module)):
        raise ValueError("layers must be a sequence of names or modules, e.g. ['fc8', 'conv5']")
    chosen = []
    for layer in layers:
        name, module = resolve_layer(model, layer)
        if not any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"layers: {name!r} has no parameters of its own to randomize")
        chosen.append((name, module))
    if not chosen:
        raise ValueError("layers must name at least one layer")
    return chosen


def _reinitialize(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters under ``seed`` without touching the global RNG."""
    cuda = sorted(
        {p.device.index or 0 for p in module.parameters(recurse=False) if p.device.type == "cuda"}
    )
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, _FALLBACK_STD)


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ra, rb = relevance(a, argument="a"), relevance(b, argument="b")
    if ra.shape != rb.shape:
        raise ValueError(
            f"a and b must have the same N, H, W, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return ra.double(), rb.double()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Per row, the rank of each value (0-based), ties getting the mean of their ranks."""
    n, m = x.shape
    values, order = x.sort(dim=1, stable=True)
    pos = torch.arange(m, device=x.device).expand(n, -1)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    # First and last position of each value's tie group, by running max / reversed running min.
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    last_rev = torch.where(ends, pos, torch.full_like(pos, m)).flip(1).cummin(dim=1).values
    avg = (first + last_rev.flip(1)).to(torch.float64) / 2
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, order, avg)
    return ranks


def _max_scaled(r: torch.Tensor) -> torch.Tensor:
    top = r.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(top > 0, r / top.clamp_min(torch.finfo(r.dtype).tiny), torch.zeros_like(r))
