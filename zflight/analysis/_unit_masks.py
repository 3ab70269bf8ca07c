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
import torch.nn.functional as F

# Maps upsampled by PyTorch's kernel go in a channels-last tensor padded to a multiple of this
# many channels. The CPU kernel vectorizes over channels and handles a remainder that does not
# fill a vector with scalar code whose rounding differs by an ulp; padding keeps every map in
# the vectorized path, so its values do not depend on how many other maps share the call.
CHANNEL_PAD = 64
# Elements held at once by one step (32 MiB in float32).
_MAX_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class PixelClasses:
    """A batch's concept masks as pixel classes: the pixels of one image that lie in the same
    set of concepts form a class (an image has a handful: background, object and colour, a
    part, distractors...).

    Attributes:
        classes: ``[B, H*W]`` int64, each pixel's class in ``0 .. n-1``.
        incidence: ``[n, C + 2]`` float64: 1 in the columns of the class's concepts, 0 in
            column ``C`` (padding, kept for the counts' layout) and 1 in column ``C + 1`` (so
            that the last column counts every pixel).
        pixels: ``[C + 2]`` float64, the pixels of each concept in the batch (exact integers).
        size: ``(H, W)``.
    """

    classes: torch.Tensor
    incidence: torch.Tensor
    pixels: torch.Tensor
    size: tuple[int, int]

    @classmethod
    def of(cls, masks: torch.Tensor, columns: torch.Tensor, n_concepts: int) -> PixelClasses:
        """From ``masks [B, Cp, H, W]`` bool, image ``b``'s present concepts, and ``columns
        [B, Cp]``, their concept indices (``n_concepts`` for padding, whose masks are empty)."""
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
        incidence = torch.zeros((image_of.numel(), n_concepts + 2), dtype=torch.float64, device=device)
        incidence.scatter_add_(1, columns.to(device)[image_of], bits.to(torch.float64))
        incidence[:, n_concepts] = 0  # padding slots are empty, but never count them
        incidence[:, n_concepts + 1] = 1
        pixels = class_pixels.to(torch.float64) @ incidence
        return cls(classes, incidence, pixels, (h, w))


def count_masks(
    maps: torch.Tensor, thresholds: torch.Tensor, images: torch.Tensor, units: torch.Tensor,
    n_units: int, present: PixelClasses,
) -> torch.Tensor:
    """Pixels of each mask ``M`` in each pixel class: ``[n_units, n_classes]`` float64.

    Args:
        maps: ``[S, h, w]`` activation maps, all of one size.
        thresholds: ``[S]`` their units' thresholds.
        images: ``[S]`` each map's image in the batch.
        units: ``[S]`` each map's row in the result (a unit has one map per image).
        n_units: rows of the result.
        present: the batch's pixel classes.

    Returns:
        Exact integer counts; ``result @ present.incidence`` gives, per unit, the pixels of
        ``M & L_c`` for every concept ``c`` and, in the last column, of ``M``.
    """
    n_classes = present.incidence.shape[0]
    height, width = present.size
    s = maps.shape[0]
    total = torch.zeros(n_units * n_classes, dtype=torch.int64, device=maps.device)
    # Per map: where its row starts in the counts, and its image in the flat pixel classes.
    unit_base, image_base = units * n_classes, images * (height * width)
    pixel_class = present.classes.reshape(-1)
    step = max(CHANNEL_PAD, _MAX_ELEMENTS // (height * width) // CHANNEL_PAD * CHANNEL_PAD)
    for start in range(0, s, step):
        pos = true_positions(upsample_threshold(maps[start : start + step], thresholds[start : start + step], present.size))
        # pos indexes [groups, H*W, CHANNEL_PAD]: the map, then the pixel, of each True.
        group_pixel, lane = pos // CHANNEL_PAD, pos % CHANNEL_PAD
        group = group_pixel // (height * width)
        j = start + group * CHANNEL_PAD + lane
        key = unit_base[j] + pixel_class[image_base[j] + group_pixel - group * (height * width)]
        total += torch.bincount(key, minlength=total.numel())
    return total.view(n_units, n_classes).to(torch.float64)


def upsample_threshold(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(map, size, bilinear, align_corners=False) > T`` by PyTorch's kernel.

    Returns:
        ``[G, H*W, CHANNEL_PAD]`` bool, contiguous: map ``g * CHANNEL_PAD + j`` is
        ``[g, :, j]`` (maps past ``S`` pad the last group and are all False).
    """
    s, (height, width) = maps.shape[0], size
    pad = -s % CHANNEL_PAD
    if pad:
        maps = torch.cat([maps, maps.new_zeros((pad, *maps.shape[1:]))])
        thresholds = torch.cat([thresholds, thresholds.new_full((pad,), math.inf)])
    groups = (s + pad) // CHANNEL_PAD
    # Channels-last, CHANNEL_PAD maps a batch entry: the CPU kernel's fast path (10-20x one
    # map per entry); the comparison keeps that layout, so it needs no transposition.
    stacked = maps.reshape(groups, CHANNEL_PAD, *maps.shape[1:]).contiguous(memory_format=torch.channels_last)
    up = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    # [G, H, W, CHANNEL_PAD] is the memory order: compare along it, thresholds innermost.
    up = up.permute(0, 2, 3, 1).reshape(groups, height * width, CHANNEL_PAD)
    return up > thresholds.reshape(groups, 1, CHANNEL_PAD)


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
    word, byte = words[hit].view(torch.uint8).view(-1, 8).nonzero(as_tuple=True)
    return hit[word] * 8 + byte
