"""The paper's Fig. 5: :class:`~zflight.analysis.invariance.InvarianceCurves` as a figure.

:func:`invariance_figure` is used by ``python -m zflight invariance`` and by the
:class:`~zflight.callbacks.InvarianceFigures` callback, so a figure made while training and one
made from a checkpoint look the same; :func:`example_strip` picks the example images of its
first column. Nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from zflight.analysis.invariance import InvarianceCurves, transform_images
from zflight.attribution._layers import layer_label

__all__ = ["invariance_figure", "example_strip"]


def invariance_figure(
    curves: Sequence[InvarianceCurves],
    *,
    examples: dict[str, torch.Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    relative: bool = True,
    titles: Sequence[str] | None = None,
) -> Any:
    """Return a matplotlib ``Figure`` of the paper's Fig. 5: one row per transformation.

    Columns: (when ``examples`` are given) the first image at a few amounts; then, per layer,
    the feature distance against the amount, one line per image; last, the probability of the
    true label against the amount.

    Args:
        curves: one :class:`InvarianceCurves` per transformation (same images).
        examples: transform name → ``[K, 3, H, W]`` display images in [0, 1] (e.g. one image
            at K amounts); ``None`` leaves the column out.
        class_names: names of the classes, for the legend.
        relative: plot ``relative`` distances (divided by the original's feature norm) rather
            than the raw ``distance``.
        titles: one legend entry per image (default: its class name).

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas (no pyplot, works headless).

    Raises:
        ValueError: ``curves`` is empty or its entries disagree on the images.

    Example:
        >>> fig = invariance_figure([curves_t, curves_s, curves_r])  # doctest: +SKIP
        >>> save_figure(fig, "invariance.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = list(curves)
    if not curves:
        raise ValueError("curves must hold at least one InvarianceCurves")
    n = curves[0].prob.shape[0]
    if any(c.prob.shape[0] != n for c in curves):
        raise ValueError("curves must all describe the same images")
    layers = curves[0].layers
    with_examples = bool(examples)
    ncols = int(with_examples) + len(layers) + 1
    fig = Figure(figsize=(3.2 * ncols, 2.7 * len(curves) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(curves), ncols, squeeze=False))
    labels = curves[0].labels.tolist()
    names = list(titles) if titles is not None else [
        str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else f"class {k}"
        for k in labels
    ]
    units = {"translate": "vertical shift (px)", "scale": "scale factor", "rotate": "rotation (deg)"}
    colors = [f"C{i % 10}" for i in range(n)]
    for row, c in zip(axes, curves):
        col = 0
        x = c.amounts.numpy()
        if with_examples:
            ax = row[col]
            col += 1
            shown = examples.get(c.transform) if examples else None
            if shown is not None:
                strip = torch.cat(list(shown.detach().float().clamp(0, 1).cpu()), dim=-1)
                ax.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{c.transform}", fontsize=9)
        for name in c.layers:
            ax = row[col]
            col += 1
            values = (c.relative if relative else c.distance)[name].numpy()
            for i in range(n):
                ax.plot(x, values[i], "-o", ms=2.5, lw=1.2, color=colors[i], label=names[i])
            short = layer_label(name)
            ax.set_title(f"{short}: {'relative ' if relative else ''}distance", fontsize=9)
            ax.set_xlabel(units[c.transform], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(bottom=0)
        ax = row[col]
        for i in range(n):
            ax.plot(x, c.prob[i].numpy(), "-o", ms=2.5, lw=1.2, color=colors[i], label=names[i])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("p(true class)", fontsize=9)
        ax.set_xlabel(units[c.transform], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def example_strip(image: torch.Tensor, transform: str, amounts: Sequence[float], *,
                  fill: float = 0.0, count: int = 5) -> torch.Tensor:
    """Return ``[K, C, H, W]``: one image under ``count`` evenly spread amounts, for display.

    Args:
        image: ``[C, H, W]`` in the model's input space.
        transform: the transformation.
        amounts: its amounts (``count`` of them are picked evenly).
        fill: value of uncovered pixels.
        count: how many examples.

    Returns:
        The transformed images, still in the model's input space (denormalize for display).

    Example:
        >>> example_strip(torch.zeros(3, 8, 8), "rotate", [0, 90, 180], count=2).shape
        torch.Size([2, 3, 8, 8])
    """
    picks = np.unique(np.linspace(0, len(amounts) - 1, min(count, len(amounts))).round().astype(int))
    return torch.cat([transform_images(image[None], transform, float(amounts[k]), fill=fill)  # type: ignore[arg-type]
                      for k in picks])
