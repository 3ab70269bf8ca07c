"""Counting network dissection's masks ``M_k = F.interpolate(a_k, (H, W), bilinear,
align_corners=False) > T_k`` against the concepts, one batch at a time.

A mask covers about ``quantile`` (0.5 %) of its image, and an image holds a handful of concept
combinations (background; object, colour and part; distractor...). So each batch's concept
masks become *pixel classes* (:class:`PixelClasses`: pixels of one image in the same set of
concepts), the few pixels inside each mask are found sparsely (:func:`true_positions`), and a
single ``bincount`` of (unit, class) pairs counts them all; a matmul with the classes' concept
incidence then gives ``|M_k & L_c|`` for every concept. All counts are exact integers.

This module knows nothing of models or data sets: :mod:`zflight.analysis.dissection` feeds it
activation maps and each batch's :class:`PixelClasses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Maps upsampled by PyTorch's kernel go in a channels-last tensor padded to a multiple of this
# many channels. The CPU kernel vectorizes over channels and handles a remainder that does not
# fill a vector with scalar code whose rounding differs by an ulp; padding keeps every map in
# the vectorized path, so its values do not depend on how many other maps share the call.
CHANNEL_PAD = 64
_PAD_BITS = CHANNEL_PAD.bit_length() - 1
# Elements held at once by one step (32 MiB in float32).
_MAX_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class PixelClasses:
    """A batch's concept masks as pixel classes: the pixels of one image that lie in the same
    set of concepts form a class (an image has a handful: background, object and colour, a
    part, distractors...).

    Attributes:
        classes: ``[B, H*W]`` int64, each pixel's class in ``0 .. n-1``.
        incidence: ``[n, C + 2 + G]`` float64: 1 in the columns of the class's concepts, 0 in
            column ``C`` (padding, kept for the counts' layout), 1 in column ``C + 1`` (so
            that it counts every pixel) and, per category ``g`` of ``G`` (none without
            categories), 1 in column ``C + 2 + g`` where the class's image annotates ``g``.
        pixels: ``[C + 2 + G]`` float64, the pixels of each concept in the batch (exact integers).
        size: ``(H, W)``.
    """

    classes: torch.Tensor
    incidence: torch.Tensor
    pixels: torch.Tensor
    size: tuple[int, int]

    @classmethod
    def of(
        cls, masks: torch.Tensor, columns: torch.Tensor, n_concepts: int, annotates: torch.Tensor | None = None
    ) -> PixelClasses:
        """From ``masks [B, Cp, H, W]`` bool, image ``b``'s present concepts, and ``columns
        [B, Cp]``, their concept indices (``n_concepts`` for padding, whose masks are empty).

        With ``annotates [B, G]`` bool (the categories each image annotates), the incidence
        gains ``G`` columns after ``C + 1``: 1 in column ``C + 2 + g`` for every class of an
        image that annotates category ``g``, so those columns count a mask's pixels over the
        images of ``g`` only (Network Dissection's per-category union)."""
        b, cp, h, w = masks.shape
        flat = masks.reshape(b, cp, h * w)
        device = masks.device
        if cp <= 20 and b << cp <= 1 << 22:
            # Each pixel's set of present slots as a bit code; (image, code) pairs are
            # numbered through a bincount over all possible ones (a sort is 15x slower).
            code = torch.zeros((b, h * w), dtype=torch.int32, device=device)
            for slot in range(cp):
                code.add_(flat[:, slot], alpha=1 << slot)  # 4x faster than int64 shifts
            key = code + (torch.arange(b, device=device) << cp)[:, None]
            seen = torch.bincount(key.reshape(-1), minlength=b << cp)
            values = seen.nonzero().squeeze(1)
            number = torch.zeros(b << cp, dtype=torch.int64, device=device)
            number[values] = torch.arange(values.numel(), device=device)
            classes = number[key]
            image_of, bits = values >> cp, (values[:, None] >> torch.arange(cp, device=device)) & 1
            class_pixels = seen[values]
        else:  # many concepts in one image: number the distinct (image, slot set) rows
            rows = torch.cat(
                [torch.arange(b, device=device).repeat_interleave(h * w)[:, None],
                 flat.transpose(1, 2).reshape(b * h * w, cp).to(torch.int64)], dim=1,
            )
            unique, inverse, class_pixels = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
            classes, image_of, bits = inverse.view(b, h * w), unique[:, 0], unique[:, 1:]
        n_cat = 0 if annotates is None else annotates.shape[1]
        incidence = torch.zeros((image_of.numel(), n_concepts + 2 + n_cat), dtype=torch.float64, device=device)
        incidence.scatter_add_(1, columns.to(device)[image_of], bits.to(torch.float64))
        incidence[:, n_concepts] = 0  # padding slots are empty, but never count them
        incidence[:, n_concepts + 1] = 1
        if annotates is not None and n_cat:
            incidence[:, n_concepts + 2 :] = annotates.to(device)[image_of].to(torch.float64)
        pixels = class_pixels.to(torch.float64) @ incidence
        return cls(classes, incidence, pixels, (h, w))


class Workspace:
    """Scratch tensors reused from one batch to the next.

    The upsampled maps of a batch take tens of MB; allocating them afresh for every batch
    costs page faults that add up to ~20 % of the counting. A workspace keeps the largest
    buffer asked for under each name and hands out views of it.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 1-d tensor of ``numel`` elements (uninitialized), valid until the next ``get`` of
        ``name``."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel]


def count_masks(
    maps: torch.Tensor, thresholds: torch.Tensor, images: torch.Tensor, units: torch.Tensor,
    n_units: int, present: PixelClasses, *, workspace: Workspace | None = None,
) -> torch.Tensor:
    """Pixels of each mask ``M`` in each pixel class: ``[n_units, n_classes]`` float64.

    Args:
        maps: ``[S, h, w]`` activation maps, all of one size.
        thresholds: ``[S]`` their units' thresholds.
        images: ``[S]`` each map's image in the batch.
        units: ``[S]`` each map's row in the result (a unit has one map per image).
        n_units: rows of the result.
        present: the batch's pixel classes.
        workspace: scratch buffers to reuse across calls.

    Returns:
        Exact integer counts; ``result @ present.incidence`` gives, per unit, the pixels of
        ``M & L_c`` for every concept ``c`` and, in the last column, of ``M``.
    """
    ws = workspace or Workspace()
    staged = _stage(maps, ws)
    n_classes = present.incidence.shape[0]
    height, width = present.size
    pixels = height * width
    device = maps.device
    total = torch.zeros(n_units * n_classes, dtype=torch.int64, device=device)
    lanes = staged.shape[0] * CHANNEL_PAD
    # Padding lanes: an infinite threshold, never exceeded.
    t = _pad_lanes(thresholds, lanes, math.inf)
    # Per lane: where its row starts in the counts, and where its image's pixel classes start
    # in the flat ones, less its group's start in the flat [group, pixel] order.
    unit_base = _pad_lanes(units * n_classes, lanes, 0)
    image_base = _pad_lanes(images * pixels, lanes, 0)
    image_base -= torch.arange(lanes, device=device) // CHANNEL_PAD * pixels
    pixel_class = present.classes.reshape(-1)
    step = max(1, _MAX_ELEMENTS // (pixels * CHANNEL_PAD))
    for g0 in range(0, staged.shape[0], step):
        g1 = min(g0 + step, staged.shape[0])
        mask = _upsample_threshold_staged(staged[g0:g1], t[g0 * CHANNEL_PAD : g1 * CHANNEL_PAD], (height, width), ws)
        pos = true_positions(mask)  # indexes [groups, H*W, CHANNEL_PAD]
        # CHANNEL_PAD is a power of two: shifts and masks, not divisions.
        group_pixel = pos >> _PAD_BITS  # group * H*W + pixel
        lane = (group_pixel // pixels + g0) << _PAD_BITS | (pos & (CHANNEL_PAD - 1))
        key = unit_base.index_select(0, lane) + pixel_class.index_select(
            0, image_base.index_select(0, lane) + group_pixel + g0 * pixels
        )
        total += torch.bincount(key, minlength=total.numel())
    return total.view(n_units, n_classes).to(torch.float64)


def upsample_threshold(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(map, size, bilinear, align_corners=False) > T`` by PyTorch's kernel,
    as :func:`count_masks` computes it.

    Returns:
        ``[G, H*W, CHANNEL_PAD]`` bool, contiguous: map ``g * CHANNEL_PAD + j`` is
        ``[g, :, j]`` (maps past ``S`` pad the last group and are all False).
    """
    ws = Workspace()
    staged = _stage(maps, ws)
    t = _pad_lanes(thresholds, staged.shape[0] * CHANNEL_PAD, math.inf)
    return _upsample_threshold_staged(staged, t, size, ws).clone()


def _stage(maps: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """``maps [S, h, w]`` as a ``[G, CHANNEL_PAD, h, w]`` channels-last tensor in ``ws``
    (memory order ``[G, h, w, CHANNEL_PAD]``): map ``s`` is ``[s // CHANNEL_PAD, s %
    CHANNEL_PAD]``, and the lanes past ``S`` hold zeros."""
    s, h, w = maps.shape
    groups, rest = divmod(s, CHANNEL_PAD)
    staged = ws.get("staged", -(-s // CHANNEL_PAD) * h * w * CHANNEL_PAD, maps.dtype, maps.device)
    staged = staged.view(-1, h, w, CHANNEL_PAD).permute(0, 3, 1, 2)
    staged[:groups].copy_(maps[: groups * CHANNEL_PAD].view(groups, CHANNEL_PAD, h, w))
    if rest:
        staged[groups, :rest].copy_(maps[groups * CHANNEL_PAD :])
        staged[groups, rest:].zero_()
    return staged


def _pad_lanes(values: torch.Tensor, lanes: int, fill: float) -> torch.Tensor:
    """``values [S]`` followed by ``fill`` up to ``lanes`` entries."""
    out = values.new_full((lanes,), fill)
    out[: values.numel()] = values
    return out


def _upsample_threshold_staged(
    staged: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int], ws: Workspace
) -> torch.Tensor:
    """The staged maps upsampled and compared with ``thresholds [G * CHANNEL_PAD]``:
    ``[G, H*W, CHANNEL_PAD]`` bool in ``ws`` (valid until its next use)."""
    groups, (height, width) = staged.shape[0], size
    numel = groups * height * width * CHANNEL_PAD
    # Channels-last, CHANNEL_PAD maps a batch entry: the CPU kernel's fast path (10-20x one
    # map per entry). The output goes to a reused buffer (aten's out= form of the op
    # F.interpolate calls: the same kernel, bit for bit).
    up = ws.get("up", numel, staged.dtype, staged.device).view(groups, height, width, CHANNEL_PAD)
    torch.ops.aten.upsample_bilinear2d.out(staged, [height, width], False, None, None, out=up.permute(0, 3, 1, 2))
    mask = ws.get("mask", numel, torch.bool, staged.device).view(groups, height * width, CHANNEL_PAD)
    # [G, H, W, CHANNEL_PAD] is the memory order: compare along it, thresholds innermost.
    torch.gt(up.view(groups, height * width, CHANNEL_PAD), thresholds.view(groups, 1, CHANNEL_PAD), out=mask)
    return mask


def true_positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the True elements of a contiguous bool tensor, for a sparse mask.

    Scans it as int64 words (8 bools each) and looks inside the nonzero words only: 3-5x
    faster than ``nonzero`` on the bools when under a few percent are True.
    """
    flat = mask.reshape(-1)
    if flat.numel() % 8:
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64)
    hit = words.nonzero().squeeze(1)
    # The words' bytes, in memory order, are the bools (a bool is one byte, 0 or 1).
    byte = words.index_select(0, hit).view(torch.uint8).nonzero().squeeze(1)
    return hit.index_select(0, byte >> 3) << 3 | (byte & 7)
