"""Tensors to pictures: the paper's projection display, Fig. 2 panels, Fig. 4 grids, filter grids.

Also the two writers every figure goes through: :func:`save_png` (a tensor image) and
:func:`save_figure` (a matplotlib figure), and :func:`figure_to_tensor` for ``add_image``.

Nothing here runs a model. Every builder takes tensors and returns one float ``[3, H, W]``
image in [0, 1], which is what ``SummaryWriter.add_image(tag, image, step)`` takes (CHW) and
what :func:`save_png` writes.

Display normalization (:func:`normalize_projection`): a deconvnet projection is signed and its
scale means nothing across projections, so each one is shown on its own scale, centered on
zero: ``0.5 + 0.5 * x / max|x|``. Zero is mid gray, the largest magnitude is black or white in
some channel, and the sign is kept (a negative weight shows as the complementary colour). This
is our reading of the paper's "contrast normalized" projections; it does not shift the mean,
so a flat projection stays gray instead of being stretched into noise.
"""

from __future__ import annotations

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
    "normalize_projection",
    "top_activation_panel",
    "evolution_grid",
    "filter_grid",
    "to_uint8",
    "save_png",
    "save_figure",
    "figure_to_tensor",
]

# Gaps, in pixels: between tiles of one 3×3 block, between the projection block and the patch
# block of a map, and between maps. White separates, as in the paper's figures.
_TILE_GAP = 1
_BLOCK_GAP = 3
_MAP_GAP = 8
_WHITE = 1.0


def normalize_projection(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return projections scaled for display: each centered on zero and scaled by its own max.

    ``0.5 + 0.5 * x / max|x|`` per projection (over its last three dimensions, ``[C, H, W]``),
    so zero shows as mid gray. An all-zero projection stays uniformly gray.

    Args:
        x: one projection ``[C, H, W]`` or a batch ``[..., C, H, W]``.
        eps: floor of the scale, so an all-zero projection does not divide by zero.

    Returns:
        A float tensor of the same shape with values in [0, 1].

    Example:
        >>> normalize_projection(torch.tensor([[[-2.0, 0.0, 1.0]]]))
        tensor([[[0.0000, 0.5000, 0.7500]]])
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        raise ValueError(
            f"x must be a tensor [C, H, W] or [..., C, H, W], got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    x = x.float()
    scale = x.abs().amax(dim=(-3, -2, -1), keepdim=True).clamp_min(eps)
    return (0.5 + 0.5 * x / scale).clamp(0.0, 1.0)


def top_activation_panel(
    projections: torch.Tensor,
    patches: torch.Tensor,
    *,
    maps_per_row: int = 4,
    normalize: bool = True,
) -> torch.Tensor:
    """Return the paper's Fig. 2 panel: per feature map, its projections beside their patches.

    Each feature map gets a cell: a square grid (3×3 for ``k=9``) of its top activations'
    projections on the left and the same grid of the image patches they come from on the right.
    Cells are laid out ``maps_per_row`` to a row, separated by white.

    Args:
        projections: ``[M, k, 3, h, w]``: ``M`` feature maps, ``k`` activations each, raw
            deconvnet projections (or display-ready ones with ``normalize=False``).
        patches: ``[M, k, 3, h, w]`` image patches in [0, 1], in the same order.
        maps_per_row: feature-map cells per row of the panel.
        normalize: apply :func:`normalize_projection` to each projection.

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: the shapes do not match or are not 5-D; ``maps_per_row`` is not positive.

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
    side = math.ceil(math.sqrt(k))
    proj = normalize_projection(projections) if normalize else projections.float().clamp(0, 1)
    cells = []
    for i in range(m):
        left = make_grid(proj[i], nrow=side, padding=_TILE_GAP, pad_value=_WHITE)
        right = make_grid(patches[i].float().clamp(0, 1), nrow=side, padding=_TILE_GAP, pad_value=_WHITE)
        gap = torch.full((left.shape[0], left.shape[1], _BLOCK_GAP), _WHITE)
        cells.append(torch.cat([left, gap, right], dim=2))
    return make_grid(torch.stack(cells), nrow=maps_per_row, padding=_MAP_GAP, pad_value=_WHITE)


def evolution_grid(
    columns: Sequence[torch.Tensor],
    *,
    labels: Sequence[str] | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Return the paper's Fig. 4 grid: one row per feature map, one column per epoch.

    Args:
        columns: one ``[M, 3, h, w]`` tensor per column (epoch), the ``M`` feature maps in the
            same order in every column: raw projections, or display-ready ones in [0, 1] (or
            uint8) with ``normalize=False``.
        labels: a caption per column (e.g. the epoch), drawn above it.
        normalize: apply :func:`normalize_projection` to each tile.

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
    tiles = torch.stack([_as_unit(c) for c in columns], dim=1)  # [M, E, 3, h, w]
    if normalize:
        tiles = normalize_projection(tiles)
    m, e = tiles.shape[:2]
    grid = make_grid(tiles.flatten(0, 1), nrow=e, padding=_TILE_GAP + 1, pad_value=_WHITE)
    if labels is None:
        return grid
    tile_w = tiles.shape[-1]
    pad = _TILE_GAP + 1
    centers = [pad + j * (tile_w + pad) + tile_w // 2 for j in range(e)]
    strip = _text_strip([str(s) for s in labels], centers, grid.shape[2])
    return torch.cat([strip, grid], dim=1)


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


def _text_strip(labels: list[str], centers: list[int], width: int, height: int = 14) -> torch.Tensor:
    """A white ``[3, height, width]`` strip with each label centered at its x position."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for text, cx in zip(labels, centers):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((cx - (right - left) // 2, (height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0
