"""Network Dissection pictures and captions: Bau et al.'s Fig. 2, and unit labels for zflight's figures.

- :func:`dissection_panel`: per unit, its most activating images with the unit's mask
  ``M_k`` on them (outside dimmed, the edge outlined), captioned with the unit's label and IoU;
- :func:`unit_label` / :func:`unit_caption`: the text every zflight figure puts beside a unit
  when a dissection is available, ``conv5 unit 12 · object/ring 0.21``. A unit whose best IoU
  does not exceed the dissection's ``iou_threshold`` (not a detector) shows its best concept in
  parentheses: ``conv5 unit 3 · (color/red 0.02)``.

Nothing here runs a model: :func:`zflight.analysis.dissection.unit_examples` computes the
images and masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from zflight.figures.grids import MIN_TILE, _with_title, caption_strip, enlarge

__all__ = ["dissection_panel", "unit_caption", "unit_label"]

# Outside the mask the image keeps this fraction of its brightness (the rest is white), so the
# unit's region stands out and the context stays readable (Bau et al. show only the region).
_DIM = 0.5
# The mask's edge, drawn in yellow: visible on every colour of the embedded shapes but yellow.
_EDGE = (1.0, 0.85, 0.0)
_TILE_GAP, _UNIT_GAP = 1, 8


def unit_label(result: Any, layer: str, unit: int) -> str | None:
    """The label text of ``unit`` of ``layer`` in a dissection, or ``None`` when it has none.

    Args:
        result: a :class:`~zflight.analysis.dissection.Dissection`, or ``None``.
        layer: the layer as keyed in the dissection, its dotted name, or the end of it
            (``conv5`` for ``features.conv5``).
        unit: the unit (channel) index.

    Returns:
        ``"object/ring 0.21"`` for a detector, ``"(color/red 0.02)"`` for a unit whose best IoU
        does not exceed the threshold; ``None`` if ``result`` is ``None``, lacks ``layer`` or
        has fewer units.

    Example:
        >>> unit_label(None, "conv5", 12) is None
        True
    """
    if result is None:
        return None
    try:
        ld = result._layer(layer)
    except ValueError:
        # A dissection keyed by dotted names ("features.conv5") labels the short name too.
        ld = next((d for d in result.layers.values() if d.name.endswith("." + layer)), None)
    if ld is None or not 0 <= unit < ld.num_units:
        return None
    return _label_text(ld.labels[unit], float(ld.best_iou[unit]), bool(ld.detectors[unit]))


def unit_caption(layer: str, unit: int, result: Any = None, *, prefix: str | None = None) -> str:
    """A unit's caption: ``"conv5 unit 12"``, with ``" · object/ring 0.21"`` when labelled.

    Args:
        layer: the layer's name as shown (and looked up in ``result``).
        unit: the unit index.
        result: a :class:`~zflight.analysis.dissection.Dissection` or ``None``.
        prefix: the text before the label (default ``"<layer> unit <unit>"``).

    Returns:
        The caption.

    Example:
        >>> unit_caption("conv5", 12)
        'conv5 unit 12'
        >>> unit_caption("conv5", 12, prefix="unit 12")
        'unit 12'
    """
    head = f"{layer} unit {unit}" if prefix is None else prefix
    label = unit_label(result, layer, unit)
    return head if label is None else f"{head} · {label}"


def dissection_panel(
    examples: Any,
    *,
    units_per_row: int = 2,
    title: str | None = None,
    min_tile: int = MIN_TILE,
) -> torch.Tensor:
    """Bau et al.'s Fig. 2 for one layer: each unit's top images, masked by ``M_k``, captioned.

    Each unit gets a cell: its ``k`` images side by side, the pixels outside its mask dimmed
    towards white and the mask's edge outlined in yellow, under the caption
    ``conv5 unit 12 · object/ring 0.21`` (:func:`unit_caption`). Cells are laid out
    ``units_per_row`` to a row; tiles are enlarged to at least ``min_tile`` pixels (nearest
    neighbour).

    Args:
        examples: a :class:`~zflight.analysis.dissection.UnitExamples` (``images``
            ``[U, k, 3, H, W]`` in [0, 1], ``masks`` ``[U, k, h, w]`` bool at the size they
            were scored, drawn scaled to the images by nearest neighbour, ``units``,
            ``labels``, ``iou``, ``detectors``, ``layer``).
        units_per_row: unit cells per row.
        title: a line above the panel.
        min_tile: tiles smaller than this are enlarged.

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: ``images`` and ``masks`` do not match, or a bad ``units_per_row``.

    Example:
        >>> panel = dissection_panel(examples, title="conv5")  # doctest: +SKIP
        >>> panel.shape[0]  # doctest: +SKIP
        3
    """
    images, masks = examples.images, examples.masks
    if images.dim() != 5 or masks.dim() != 4 or images.shape[:2] != masks.shape[:2]:
        raise ValueError(
            "examples.images must be [units, k, 3, H, W] and examples.masks [units, k, h, w] of the "
            f"same units and k, got {tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if masks.shape[-2:] != images.shape[-2:]:
        # Scored at another size (Broden's masks are half the image): each scored pixel
        # becomes a block of display pixels, nothing is re-thresholded.
        size = tuple(images.shape[-2:])
        masks = F.interpolate(masks.reshape(-1, 1, *masks.shape[-2:]).float(), size=size, mode="nearest")
        masks = masks.reshape(*images.shape[:2], *size) > 0.5
    if isinstance(units_per_row, bool) or not isinstance(units_per_row, int) or units_per_row < 1:
        raise ValueError(f"units_per_row must be a positive int, got {units_per_row!r}")
    u, k = images.shape[:2]
    big = enlarge(images.float().clamp(0, 1), min_tile)  # [U, k, 3, S, S]
    inside = enlarge(masks[:, :, None].float(), min_tile)[:, :, 0] > 0.5  # [U, k, S, S]
    edge = _edge(inside)
    shown = torch.where(inside[:, :, None], big, _DIM * big + (1.0 - _DIM))
    color = torch.tensor(_EDGE).view(1, 1, 3, 1, 1).expand_as(shown)
    shown = torch.where(edge[:, :, None], color, shown)
    cells = []
    for i in range(u):
        row = make_grid(shown[i], nrow=k, padding=_TILE_GAP, pad_value=1.0)
        label = _label_text(examples.labels[i], float(examples.iou[i]), bool(examples.detectors[i]))
        caption = f"{examples.layer} unit {int(examples.units[i])} · {label}"
        cells.append(torch.cat([caption_strip([caption], [row.shape[2] // 2], row.shape[2]), row], dim=1))
    panel = make_grid(torch.stack(cells), nrow=units_per_row, padding=_UNIT_GAP, pad_value=1.0)
    return _with_title(panel, title)


def _edge(inside: torch.Tensor) -> torch.Tensor:
    """Pixels of the mask with a 4-neighbour outside it (the image border counts as outside)."""
    flat = inside.reshape(-1, 1, *inside.shape[-2:]).float()
    # Erosion as 1 - dilation of the complement, on a 3x3 cross's bounding box (max_pool).
    outside = F.pad(1.0 - flat, (1, 1, 1, 1), value=1.0)
    near_outside = F.max_pool2d(outside, 3, stride=1) > 0
    width = max(1, math.ceil(inside.shape[-1] / 128))  # about one line per 128 px, at least 1
    edge = (flat > 0) & near_outside
    for _ in range(width - 1):
        edge = (flat > 0) & (F.max_pool2d(edge.float(), 3, stride=1, padding=1) > 0)
    return edge.reshape(inside.shape)


def _label_text(label: str, iou: float, detector: bool) -> str:
    text = f"{label} {iou:.2f}"
    return text if detector else f"({text})"
