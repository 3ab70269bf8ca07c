"""Tensors to pictures: the paper's projection display, Fig. 2 panels, Fig. 4 grids, filter grids.

Also the two writers every figure goes through: :func:`save_png` (a tensor image) and
:func:`save_figure` (a matplotlib figure), and :func:`figure_to_tensor` for ``add_image``.

Nothing here runs a model. Every builder takes tensors and returns one float ``[3, H, W]``
image in [0, 1], which is what ``SummaryWriter.add_image(tag, image, step)`` takes (CHW) and
what :func:`save_png` writes.

Display normalization (:func:`normalize_projection`), one rule for every picture zflight draws
(TensorBoard, PNGs, the report): a deconvnet projection is signed and its scale means nothing
across projections, so each one is shown on its own scale, centered on zero:
``0.5 + 0.5 * x / s``, clipped to [0, 1], where ``s`` is the 99th percentile of ``|x|`` over
the projection (floored at a tenth of ``max|x|``). Zero is mid gray and the sign is kept (a
negative weight shows as the complementary colour); the 1% strongest pixels saturate, so the
structure carried by the other 99% spans the whole range instead of hugging gray. A flat
projection stays gray instead of being stretched into noise.

Panels are made to be read at a glance: tiles smaller than ``min_tile`` (96 px) are enlarged by
an integer factor (nearest neighbour, no blur), separated by thin white lines, and captioned
(layer, unit, epoch) with Pillow's own default font, so nothing depends on system fonts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

__all__ = [
    "DISPLAY_PERCENTILE",
    "MIN_TILE",
    "normalize_projection",
    "enlarge",
    "caption_strip",
    "top_activation_panel",
    "evolution_grid",
    "filter_grid",
    "to_uint8",
    "save_png",
    "save_figure",
    "figure_to_tensor",
    "write_json",
]

# The percentile of |projection| shown at full contrast: the one display rule (module docstring).
DISPLAY_PERCENTILE = 99.0
# Panels enlarge tiles smaller than this (nearest neighbour, integer factor).
MIN_TILE = 96

# Gaps, in pixels: between tiles of one 3×3 block, between the projection block and the patch
# block of a map, and between maps. White separates, as in the paper's figures.
_TILE_GAP = 1
_BLOCK_GAP = 3
_MAP_GAP = 8
_WHITE = 1.0


def normalize_projection(
    x: torch.Tensor, eps: float = 1e-12, percentile: float = DISPLAY_PERCENTILE
) -> torch.Tensor:
    """Return projections scaled for display: each centered on zero, scaled robustly on its own.

    ``0.5 + 0.5 * x / s`` clipped to [0, 1] per projection (over its last three dimensions,
    ``[C, H, W]``), with ``s`` the ``percentile``-th percentile of ``|x|`` (floored at
    ``max|x| / 10``, so a sparse projection is not blown up into its noise). Zero shows as mid
    gray. An all-zero projection stays uniformly gray.

    Args:
        x: one projection ``[C, H, W]`` or a batch ``[..., C, H, W]``.
        eps: floor of the scale, so an all-zero projection does not divide by zero.
        percentile: the percentile of ``|x|`` shown at full contrast (100: the maximum).

    Returns:
        A float tensor of the same shape with values in [0, 1].

    Example:
        >>> normalize_projection(torch.tensor([[[-2.0, 0.0, 1.0]]]), percentile=100.0)
        tensor([[[0.0000, 0.5000, 0.7500]]])
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        raise ValueError(
            f"x must be a tensor [C, H, W] or [..., C, H, W], got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    x = x.float()
    magnitude = x.abs().flatten(-3)  # [..., C*H*W]
    peak = magnitude.amax(dim=-1, keepdim=True)
    # kthvalue is exact and much cheaper than torch.quantile on big batches; the rank is the
    # "lower" percentile (no interpolation), which is all a display scale needs.
    n = magnitude.shape[-1]
    rank = min(n, max(1, math.ceil(n * percentile / 100.0)))
    robust = magnitude.kthvalue(rank, dim=-1, keepdim=True).values
    scale = torch.maximum(robust, peak / 10.0).clamp_min(eps)
    return (0.5 + 0.5 * x / scale.unsqueeze(-1).unsqueeze(-1)).clamp(0.0, 1.0)


def top_activation_panel(
    projections: torch.Tensor,
    patches: torch.Tensor,
    *,
    maps_per_row: int = 4,
    normalize: bool = True,
    captions: Sequence[str] | None = None,
    title: str | None = None,
    min_tile: int = MIN_TILE,
) -> torch.Tensor:
    """Return the paper's Fig. 2 panel: per feature map, its projections beside their patches.

    Each feature map gets a cell: a square grid (3×3 for ``k=9``) of its top activations'
    projections on the left and the same grid of the image patches they come from on the right,
    with its caption (e.g. ``"conv5 unit 12"``) above. Cells are laid out ``maps_per_row`` to a
    row, separated by white; tiles are enlarged to at least ``min_tile`` pixels.

    Args:
        projections: ``[M, k, 3, h, w]``: ``M`` feature maps, ``k`` activations each, raw
            deconvnet projections (or display-ready ones with ``normalize=False``).
        patches: ``[M, k, 3, h, w]`` image patches in [0, 1], in the same order.
        maps_per_row: feature-map cells per row of the panel.
        normalize: apply :func:`normalize_projection` to each projection.
        captions: one caption per feature map, drawn above its cell.
        title: a line above the whole panel (e.g. ``"top-9 of conv5, epoch 10"``).
        min_tile: tiles smaller than this are enlarged (nearest neighbour, integer factor).

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: the shapes do not match or are not 5-D; ``maps_per_row`` is not positive;
            not one caption per map.

    Example:
        >>> panel = top_activation_panel(torch.randn(4, 9, 3, 16, 16), torch.rand(4, 9, 3, 16, 16))
        >>> panel.shape[0]
        3
    """
    if projections.dim() != 5 or projections.shape != patches.shape:
        raise ValueError(
            "projections and patches must both be [maps, k, 3, h, w] of the same shape, got "
            f"{tuple(projections.shape)} and {tuple(patches.shape)}"
        )
    _check_positive("maps_per_row", maps_per_row)
    m, k = projections.shape[:2]
    if captions is not None and len(captions) != m:
        raise ValueError(f"captions has {len(captions)} entries for {m} feature maps")
    side = math.ceil(math.sqrt(k))
    proj = normalize_projection(projections) if normalize else projections.float().clamp(0, 1)
    proj, shown = enlarge(proj, min_tile), enlarge(patches.float().clamp(0, 1), min_tile)
    cells = []
    for i in range(m):
        left = make_grid(proj[i], nrow=side, padding=_TILE_GAP, pad_value=_WHITE)
        right = make_grid(shown[i], nrow=side, padding=_TILE_GAP, pad_value=_WHITE)
        gap = torch.full((left.shape[0], left.shape[1], _BLOCK_GAP), _WHITE)
        cell = torch.cat([left, gap, right], dim=2)
        if captions is not None:
            cell = torch.cat([caption_strip([captions[i]], [cell.shape[2] // 2], cell.shape[2]), cell], dim=1)
        cells.append(cell)
    panel = make_grid(torch.stack(cells), nrow=maps_per_row, padding=_MAP_GAP, pad_value=_WHITE)
    return _with_title(panel, title)


def evolution_grid(
    columns: Sequence[torch.Tensor],
    *,
    labels: Sequence[str] | None = None,
    normalize: bool = True,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    min_tile: int = MIN_TILE,
) -> torch.Tensor:
    """Return the paper's Fig. 4 grid: one row per feature map, one column per epoch.

    Tiles are enlarged to at least ``min_tile`` pixels (nearest neighbour, integer factor).

    Args:
        columns: one ``[M, 3, h, w]`` tensor per column (epoch), the ``M`` feature maps in the
            same order in every column: raw projections, or display-ready ones in [0, 1] (or
            uint8) with ``normalize=False``.
        labels: a caption per column (e.g. the epoch), drawn above it.
        normalize: apply :func:`normalize_projection` to each tile.
        row_labels: a caption per row (e.g. ``"unit 12"``), drawn left of it.
        title: a line above the grid (e.g. ``"conv5"``).
        min_tile: tiles smaller than this are enlarged.

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: no columns, columns of different shapes, or a wrong number of labels.

    Example:
        >>> grid = evolution_grid([torch.randn(5, 3, 16, 16) for _ in range(3)], labels=["1", "2", "5"])
        >>> grid.shape[0]
        3
    """
    if len(columns) == 0:
        raise ValueError("columns is empty: the grid needs at least one epoch")
    shapes = {tuple(c.shape) for c in columns}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"columns must all be [maps, 3, h, w] of one shape, got {sorted(shapes)}")
    if labels is not None and len(labels) != len(columns):
        raise ValueError(f"labels has {len(labels)} entries for {len(columns)} columns")
    m = next(iter(shapes))[0]
    if row_labels is not None and len(row_labels) != m:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {m} rows")
    tiles = torch.stack([_as_unit(c) for c in columns], dim=1)  # [M, E, 3, h, w]
    if normalize:
        tiles = normalize_projection(tiles)
    tiles = enlarge(tiles, min_tile)
    e = tiles.shape[1]
    pad = _TILE_GAP + 1
    grid = make_grid(tiles.flatten(0, 1), nrow=e, padding=pad, pad_value=_WHITE)
    tile_h, tile_w = tiles.shape[-2:]
    if labels is not None:
        centers = [pad + j * (tile_w + pad) + tile_w // 2 for j in range(e)]
        grid = torch.cat([caption_strip([str(s) for s in labels], centers, grid.shape[2]), grid], dim=1)
    if row_labels is not None:
        offset = grid.shape[1] - (m * (tile_h + pad) + pad)  # the column captions' strip
        centers = [offset + pad + i * (tile_h + pad) + tile_h // 2 for i in range(m)]
        grid = torch.cat([_label_column([str(s) for s in row_labels], centers, grid.shape[1]), grid], dim=2)
    return _with_title(grid, title)


def filter_grid(weight: torch.Tensor, *, nrow: int | None = None, min_tile: int = 28) -> torch.Tensor:
    """Return the first layer's filters as an image grid (the paper's Fig. 6 (b), (c)).

    Each filter is normalized on its own like a projection (centered on zero, scaled by its
    largest magnitude) and enlarged by an integer factor (nearest neighbour) so a tile is at
    least ``min_tile`` pixels wide.

    Args:
        weight: conv weights ``[out, in, kh, kw]`` with ``in`` 3 (shown in colour) or 1 (gray).
        nrow: filters per row; ``None`` for a near-square grid.
        min_tile: smallest displayed filter side in pixels.

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: ``weight`` is not 4-D with 1 or 3 input channels.

    Example:
        >>> filter_grid(torch.randn(96, 3, 7, 7)).shape[0]
        3
    """
    if weight.dim() != 4 or weight.shape[1] not in (1, 3):
        raise ValueError(
            f"weight must be [out, 1 or 3, kh, kw] (a first layer's filters), got {tuple(weight.shape)}"
        )
    w = normalize_projection(weight.detach().cpu().float())
    if w.shape[1] == 1:
        w = w.expand(-1, 3, -1, -1)
    factor = max(1, math.ceil(min_tile / max(w.shape[-2:])))
    w = F.interpolate(w, scale_factor=factor, mode="nearest")
    if nrow is None:
        nrow = math.ceil(math.sqrt(w.shape[0]))
    _check_positive("nrow", nrow)
    return make_grid(w, nrow=nrow, padding=2, pad_value=_WHITE)


def enlarge(tiles: torch.Tensor, min_tile: int = MIN_TILE) -> torch.Tensor:
    """Enlarge ``[..., C, h, w]`` tiles by the smallest integer factor that makes them ``min_tile`` wide.

    Nearest neighbour: every pixel becomes a block, nothing is blurred or invented. Tiles at
    least ``min_tile`` wide are returned as they are.

    Example:
        >>> enlarge(torch.zeros(2, 3, 40, 40), 96).shape
        torch.Size([2, 3, 120, 120])
    """
    factor = max(1, math.ceil(min_tile / max(1, min(tiles.shape[-2:]))))
    if factor == 1:
        return tiles
    lead = tiles.shape[:-3]
    flat = tiles.reshape(-1, *tiles.shape[-3:])
    big = F.interpolate(flat.float(), scale_factor=factor, mode="nearest").to(tiles.dtype)
    return big.reshape(*lead, *big.shape[-3:])


def caption_strip(labels: Sequence[str], centers: Sequence[int], width: int, height: int = 16) -> torch.Tensor:
    """Return a white ``[3, height, width]`` strip with each label centered at its x position.

    Drawn with Pillow's own default font (no system font needed).

    Example:
        >>> caption_strip(["epoch 1", "epoch 2"], [40, 120], 160).shape
        torch.Size([3, 16, 160])
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for text, cx in zip(labels, centers):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((cx - (right - left) // 2, (height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return _pil_to_tensor(canvas)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Return a [0, 1] float image as uint8 (``round(255 x)``), same shape.

    Args:
        image: a float tensor with values in [0, 1] (clamped).

    Returns:
        A uint8 tensor.

    Example:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0]))
        tensor([  0, 128, 255], dtype=torch.uint8)
    """
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (NaN/inf become null, as JSON has neither).

    Example:
        >>> write_json({"a": 1.0}, "out/a.json")  # doctest: +SKIP
    """
    path = Path(path)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v

    path.write_text(json.dumps(clean(data), indent=1, allow_nan=False) + "\n")
    return path


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a ``[3, H, W]`` (or ``[1, H, W]``, ``[H, W]``) image in [0, 1] as a PNG file.

    The parent folder is created. The file is written under a temporary name and renamed, so
    a reader (TensorBoard, a browser) never sees half a PNG.

    Args:
        image: float in [0, 1] or uint8.
        path: the file to write.

    Returns:
        The path written.

    Example:
        >>> save_png(torch.rand(3, 8, 8), "/tmp/zflight-example.png")  # doctest: +SKIP
        PosixPath('/tmp/zflight-example.png')
    """
    from PIL import Image

    path = Path(path)
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    if image.dim() == 3 and image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], [1, H, W] or [H, W], got {tuple(image.shape)}")
    pixels = image if image.dtype == torch.uint8 else to_uint8(image)
    array = pixels.permute(1, 2, 0).cpu().numpy() if pixels.dim() == 3 else pixels.cpu().numpy()
    return _write_then_rename(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as a PNG file (parent folder created; written, then renamed).

    Example:
        >>> save_figure(fig, "out/occlusion.png")  # doctest: +SKIP
        PosixPath('out/occlusion.png')
    """
    return _write_then_rename(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def figure_to_tensor(fig: Any) -> torch.Tensor:
    """Render a matplotlib figure as a float ``[3, H, W]`` image in [0, 1] (for ``add_image``).

    Example:
        >>> writer.add_image("occlusion/0", figure_to_tensor(fig), step)  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


# ------------------------------------------------------------------------------------ internals
def _write_then_rename(path: Path, write: Callable[[Path], object]) -> Path:
    """Create ``path``'s folder, ``write`` a temporary file beside it, rename it to ``path``.

    A reader (TensorBoard, a browser) never sees half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _as_unit(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _font() -> Any:
    """Pillow's bundled default font at 11 px (a bitmap font on Pillow builds without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _pil_to_tensor(image: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def _label_column(labels: list[str], centers: list[int], height: int) -> torch.Tensor:
    """A white ``[3, height, W]`` column with each label right-aligned at its y position."""
    from PIL import Image, ImageDraw

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 6 + max((probe.textbbox((0, 0), t, font=font)[2] for t in labels), default=0)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for text, cy in zip(labels, centers):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((width - 4 - (right - left), cy - (bottom - top) // 2 - top), text, fill=(0, 0, 0), font=font)
    return _pil_to_tensor(canvas)


def _with_title(image: torch.Tensor, title: str | None) -> torch.Tensor:
    """``image`` with ``title`` in a strip above it (unchanged when ``title`` is ``None``)."""
    if title is None:
        return image
    strip = caption_strip([title], [image.shape[2] // 2], image.shape[2], height=18)
    return torch.cat([strip, image], dim=1)
