"""Pictures of how attribution maps score: maps beside the object, deletion curves, sanity curves.

Drawing only: :func:`evaluation_figure` draws what :func:`zflight.analysis.explanations.score_methods`
computed (a :class:`~zflight.analysis.explanations.ScoreTable`'s kept maps and curves), and
:func:`sanity_figure` draws :func:`zflight.analysis.sanity.model_randomization` results. Neither
runs a model.

Maps are shown as their pixel relevance ``r = sum_c |a_c|`` (what the metrics score), each scaled
on its own by its 99th percentile (:data:`zflight.figures.grids.DISPLAY_PERCENTILE`) so one hot
pixel does not turn the rest black; the object's outline is drawn over every map.

Drawing uses matplotlib's object API on an Agg canvas (no ``pyplot``), so it works headless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zflight.analysis.sanity import RandomizationResult
from zflight.attribution._layers import layer_label
from zflight.figures.grids import DISPLAY_PERCENTILE

__all__ = ["evaluation_figure", "sanity_figure"]


def evaluation_figure(
    display: torch.Tensor,
    masks: torch.Tensor | None,
    maps: Mapping[str, torch.Tensor],
    fractions: torch.Tensor | None = None,
    curves: Mapping[str, torch.Tensor] | None = None,
    *,
    titles: Sequence[str] | None = None,
    curve_label: str = "deletion",
) -> Any:
    """Return a figure: per image, the image, its object mask, each method's map, its curves.

    One row per image. Columns: the image with the object's outline, the mask (when there are
    masks), one column per method (its relevance, outline on top), and, when ``curves`` are given, the target
    probability along each method's deletion curve (one line per method, the legend on the first
    row).

    Args:
        display: ``[K, 3, H, W]`` (or ``[K, 1, H, W]``) images for display, in [0, 1].
        masks: ``[K, H, W]`` bool object masks, or ``None`` without masks (no mask column and
            no outlines).
        maps: method name → ``[K, H, W]`` relevance (or ``[K, C, H, W]`` maps, shown as
            ``sum_c |a_c|``).
        fractions: ``[S]`` the fraction of pixels removed at each point of the curves.
        curves: method name → ``[K, S]`` target probabilities along the curve.
        titles: one line per image, shown on its row (e.g. ``"val #3: star"``).
        curve_label: what the curves are (``"deletion"`` or ``"insertion"``), for the title.

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas (save with
        :func:`zflight.figures.save_figure`).

    Raises:
        ValueError: the numbers of images disagree, a map's size differs from the images', or
            ``curves`` without ``fractions`` (or of another length).

    Example:
        >>> deletion = {m: c["deletion_auc"][:4] for m, c in table.curves.items()}  # doctest: +SKIP
        >>> fig = evaluation_figure(display, masks, table.maps, table.fractions, deletion)  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(display, torch.Tensor) or display.dim() != 4:
        raise ValueError(f"display must be [K, 3, H, W], got {_shape(display)}")
    k, _, h, w = display.shape
    if masks is not None and (not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool
                              or tuple(masks.shape) != (k, h, w)):
        raise ValueError(f"masks must be a bool tensor [K={k}, H={h}, W={w}], got {_shape(masks)}")
    if not maps:
        raise ValueError("maps must hold at least one method's maps")
    shown: dict[str, np.ndarray] = {}
    for name, m in maps.items():
        if not isinstance(m, torch.Tensor) or m.dim() not in (3, 4) or m.shape[0] != k or tuple(m.shape[-2:]) != (h, w):
            raise ValueError(f"maps[{name!r}] must be [K={k}, H={h}, W={w}], got {_shape(m)}")
        r = m.detach().abs().double()
        shown[name] = _display_scale(r.sum(dim=1) if r.dim() == 4 else r)
    if curves is not None:
        if fractions is None:
            raise ValueError("curves need their fractions")
        for name, c in curves.items():
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (k, fractions.numel()):
                raise ValueError(
                    f"curves[{name!r}] must be [K={k}, S={fractions.numel()}], got {_shape(c)}"
                )
    if titles is not None and len(titles) != k:
        raise ValueError(f"titles must hold {k} strings, got {len(titles)}")

    first = 2 if masks is not None else 1  # the image, and its mask when there is one
    ncols = first + len(shown) + int(curves is not None)
    fig = Figure(figsize=(1.7 * ncols + (1.6 if curves is not None else 0), 1.85 * k + 0.3),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(k, ncols, squeeze=False))
    images = display.detach().float().clamp(0, 1).cpu()
    mask_np = masks.cpu().numpy() if masks is not None else [None] * k
    colors = {name: f"C{i % 10}" for i, name in enumerate(shown)}
    for i in range(k):
        row = axes[i]
        img = images[i].permute(1, 2, 0).numpy()
        _show(row[0], img if img.shape[-1] == 3 else img[..., 0], mask_np[i], cmap="gray")
        row[0].set_title(titles[i] if titles is not None else f"image {i}", fontsize=8)
        if masks is not None:
            _show(row[1], mask_np[i].astype(float), None, cmap="gray")
            row[1].set_title("object mask" if i == 0 else "", fontsize=8)
        for j, (name, r) in enumerate(shown.items()):
            _show(row[first + j], r[i], mask_np[i], cmap="inferno")
            if i == 0:
                row[first + j].set_title(name.replace("_", " "), fontsize=8)
        if curves is not None:
            ax = row[-1]
            x = fractions.detach().double().cpu().numpy()
            for name, c in curves.items():
                ax.plot(x, c[i].detach().double().cpu().numpy(), lw=1.1, color=colors.get(name),
                        label=name.replace("_", " "))
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=6)
            ax.set_ylabel("p(target)", fontsize=7)
            if i == k - 1:
                ax.set_xlabel("fraction removed" if curve_label == "deletion" else "fraction revealed",
                              fontsize=7)
            if i == 0:
                ax.set_title(f"{curve_label} curves", fontsize=8)
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def sanity_figure(results: Mapping[str, RandomizationResult]) -> Any:
    """Return the model-randomization curves (Adebayo et al., 2018): similarity per layer.

    Two panels, Spearman rank correlation and SSIM of each method's maps to the trained model's
    maps, against the layers randomized (left: none, then one more layer at each step for a
    cascading result). A line is the mean over images (NaN correlations of constant maps left
    out), the band the mean ± one standard error. A method whose maps explain the model falls
    towards 0 as soon as the top layer is randomized.

    Args:
        results: method name → its :class:`~zflight.analysis.sanity.RandomizationResult` (the
            same layers for all).

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas.

    Raises:
        ValueError: ``results`` is empty, or the results disagree on the layers.

    Example:
        >>> fig = sanity_figure({"deconvnet": model_randomization(model, "deconvnet", x, y)})  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("results must hold at least one method's RandomizationResult")
    first = next(iter(results.values()))
    if any(r.layers != first.layers for r in results.values()):
        raise ValueError("results must all randomize the same layers")
    labels = ["none"] + [layer_label(name) for name in first.layers]
    if first.mode == "cascading":
        labels = [labels[0]] + [f"+{name}" if j else name for j, name in enumerate(labels[1:])]
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(7.0, 0.55 * len(labels) * 2 + 2.5), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, what in zip(axes, ("spearman", "ssim")):
        lowest = 0.0
        for c, (name, res) in enumerate(results.items()):
            values = getattr(res, what).double()  # [L, N]
            mean, sem = _nan_mean_sem(values)
            # The trained model's maps against themselves: 1 by definition.
            y = np.concatenate([[1.0], mean])
            band = np.concatenate([[0.0], sem])
            ax.plot(x, y, "-o", ms=3, lw=1.3, color=f"C{c % 10}", label=name.replace("_", " "))
            ax.fill_between(x, y - band, y + band, color=f"C{c % 10}", alpha=0.15, lw=0)
            lowest = min(lowest, float(np.nanmin(y - band)))
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        # Down to the lowest band (both measures can be negative), at least a little below 0.
        ax.set_ylim(max(-1.05, min(lowest, 0.0) - 0.05), 1.05)
        ax.set_title("Spearman rank correlation" if what == "spearman" else "SSIM", fontsize=9)
        ax.set_xlabel(f"layers randomized ({first.mode}, top first)", fontsize=8)
    axes[0].set_ylabel("similarity to the trained model's maps", fontsize=8)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


# ------------------------------------------------------------------------------------ internals
def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _display_scale(r: torch.Tensor) -> np.ndarray:
    """``r / p99(r)`` per map, clipped to [0, 1]; an all-zero map stays black."""
    flat = r.flatten(1)
    rank = max(1, math.ceil(flat.shape[1] * DISPLAY_PERCENTILE / 100.0))
    scale = flat.kthvalue(rank, dim=1).values
    # A sparse map (most pixels zero) would have a zero percentile: fall back to its maximum.
    scale = torch.where(scale > 0, scale, flat.amax(dim=1)).clamp_min(1e-300)
    return (r / scale[:, None, None]).clamp(0, 1).cpu().numpy()


def _show(ax: Any, image: np.ndarray, mask: np.ndarray | None, cmap: str) -> None:
    ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
    ax.set_xticks([])
    ax.set_yticks([])


def _nan_mean_sem(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the mean and standard error over the finite entries (NaN when none)."""
    v = values.cpu().numpy()
    ok = np.isfinite(v)
    n = ok.sum(axis=1)
    safe = np.where(ok, v, 0.0)
    mean = np.divide(safe.sum(axis=1), n, out=np.full(len(v), np.nan), where=n > 0)
    dev = np.where(ok, v - mean[:, None], 0.0)
    var = np.divide((dev**2).sum(axis=1), n - 1, out=np.zeros(len(v)), where=n > 1)
    return mean, np.sqrt(var / np.maximum(n, 1))
