"""The paper's Fig. 7 as a picture: occlusion maps beside the tracked feature map's projection.

:func:`occlusion_figure` draws the results of :func:`zflight.analysis.occlusion.occlusion_analysis`
(which runs the model); this module runs none.

One row per image, five panels, as in the paper's Fig. 7 (b)-(e):

1. the image, with the occluder square at the position where the target probability is lowest
   (dashed) and, in the title, the target class and its unoccluded probability;
2. the total activation of the tracked feature map as a function of where the square is;
3. the deconvnet projection of that feature map's strongest activation on the unoccluded image
   (:meth:`zflight.DeconvNet.project`, shown with :func:`zflight.figures.normalize_projection`);
4. the probability of the target class as a function of where the square is;
5. the most probable class as a function of where the square is, one colour per class, with
   class names in a legend beside it (the target marked).

Every map is drawn in image coordinates: the value of position ``(r, c)`` fills the
``stride × stride`` cell around the square's center ``(r*stride + size/2, c*stride + size/2)``,
so a blob in a map lies over the part of the image whose occlusion caused it.

Drawing uses matplotlib's object API with the Agg canvas (no ``pyplot``, no global backend
switch), so it works headless and in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from zflight.analysis.occlusion import class_namer
from zflight.attribution._layers import layer_label
from zflight.attribution.occlusion import OcclusionMaps

__all__ = ["occlusion_figure"]


def occlusion_figure(
    display: torch.Tensor,
    maps: OcclusionMaps,
    projections: torch.Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
) -> Any:
    """Return a matplotlib ``Figure``: one row of five panels per image (the paper's Fig. 7).

    Args:
        display: ``[N, 3, H, W]`` (or ``[N, 1, H, W]``) the images for display, in [0, 1].
        maps: the occlusion maps of those images.
        projections: ``[N, C, H, W]`` deconvnet projections (from :func:`occlusion_analysis`);
            ``None`` leaves that panel out (as it does the activation panel without a layer).
        class_names: names of the classes, for titles and the label map's legend.
        titles: one line per image shown above its row (e.g. ``"val #3"``).

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas: save it with :func:`save_figure`.

    Raises:
        ValueError: the number of images, maps, projections or titles disagree.

    Example:
        >>> fig = occlusion_figure(display, maps, proj, class_names=ds.classes)  # doctest: +SKIP
        >>> save_figure(fig, "occlusion.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    n = maps.prob.shape[0]
    if display.dim() != 4 or display.shape[0] != n:
        raise ValueError(f"display must be [N={n}, 3, H, W], got {tuple(display.shape)}")
    if projections is not None and projections.shape[0] != n:
        raise ValueError(f"projections must hold {n} images, got {projections.shape[0]}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must hold {n} strings, got {len(titles)}")
    panels = ["image"]
    if maps.activation is not None:
        panels.append("activation")
    if projections is not None:
        panels.append("projection")
    panels += ["prob", "label"]

    h, w = maps.image_size
    fig = Figure(figsize=(2.9 * len(panels) + 1.3, 2.9 * n + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    # A last, narrow column holds the label map's legend: a legend hanging outside an axes
    # would be cut off by the figure's edge.
    axes = np.asarray(
        fig.subplots(n, len(panels) + 1, squeeze=False, width_ratios=[1.0] * len(panels) + [0.45])
    )
    # Each map value is drawn in the stride×stride cell around its square's center.
    half = maps.size / 2 - maps.stride / 2
    extent = (
        half - 0.5,
        half + maps.grid[1] * maps.stride - 0.5,
        half + maps.grid[0] * maps.stride - 0.5,
        half - 0.5,
    )
    lowest = maps.lowest_prob_position()
    name = class_namer(class_names)
    classes_shown = sorted(set(maps.label.unique().tolist()) | set(maps.targets.tolist()))
    palette = _palette(max(classes_shown) + 1)

    for i in range(n):
        row = axes[i]
        image = display[i].detach().float().clamp(0, 1).cpu()
        target = int(maps.targets[i])
        row[-1].axis("off")
        for ax in row[:-1]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
        col = 0
        ax = row[col]
        ax.imshow(_hwc(image), interpolation="nearest")
        x0, y0, x1, y1 = maps.square(*lowest[i].tolist())
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.5,
                      ls="--")
        )
        head = f"{titles[i]}: " if titles is not None else ""
        ax.set_title(f"{head}{name(target)} (p={float(maps.base_prob[i]):.2f})", fontsize=9)
        col += 1
        if maps.activation is not None:
            ax = row[col]
            im = ax.imshow(maps.activation[i].cpu().numpy(), extent=extent, cmap="jet",
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{layer_label(maps.layer or '')} map {int(maps.channel[i])}: total", fontsize=9)
            col += 1
        if projections is not None:
            from zflight.figures.grids import normalize_projection

            ax = row[col]
            shown = normalize_projection(projections[i].detach().cpu())
            ax.imshow(_hwc(shown), interpolation="nearest")
            ax.set_title(f"{layer_label(maps.layer or '')} map {int(maps.channel[i])}: projection",
                         fontsize=9)
            col += 1
        ax = row[col]
        im = ax.imshow(maps.prob[i].cpu().numpy(), extent=extent, cmap="jet", vmin=0.0,
                       vmax=max(1e-6, float(maps.prob[i].max())), interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(f"p({name(target)})", fontsize=9)
        col += 1
        ax = row[col]
        labels = maps.label[i].cpu().numpy()
        cmap = ListedColormap(palette)
        norm = BoundaryNorm(np.arange(len(palette) + 1) - 0.5, len(palette))
        ax.imshow(labels, extent=extent, cmap=cmap, norm=norm, interpolation="nearest")
        present = sorted(set(labels.ravel().tolist()) | {target})
        handles = [
            Patch(color=palette[k], label=name(k) + (" (target)" if k == target else ""))
            for k in present
        ]
        row[-1].legend(handles=handles, fontsize=7, loc="center left", frameon=False)
        ax.set_title("most probable class", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------ internals
def _hwc(image: torch.Tensor) -> np.ndarray:
    if image.shape[0] == 1:
        return image[0].numpy()
    return image.permute(1, 2, 0).numpy()


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    base = colormaps["tab10" if n <= 10 else "tab20"]
    return [base(k % base.N) for k in range(max(n, 1))]
