"""The maps that reach a mask, rebuilt from the 3x3 neighbourhoods of the kept top values
(dissection's pass 2, without a second forward pass).

A bilinear pixel reads the four activations around it, so a pixel of ``M_k`` has a source
above ``below(T_k)`` (:func:`below`; else it would be <= ``T_k``,
rounding included), and all four of its sources lie in that source's 3x3 neighbourhood. A map
rebuilt from those neighbourhoods (-inf elsewhere) thus upsamples, through the same kernel, to
the same mask. :class:`KeptMaps` indexes the kept neighbourhoods by image and rebuilds a
batch's maps.

Example:
    >>> import torch
    >>> a = torch.arange(16.0).view(1, 1, 4, 4)
    >>> neighbourhoods(a, torch.tensor([5])).view(3, 3)
    tensor([[ 0.,  1.,  2.],
            [ 4.,  5.,  6.],
            [ 8.,  9., 10.]])
"""

from __future__ import annotations

import functools

import torch


class KeptMaps:
    """The kept values of one layer above ``below(T_k)``, indexed by (shard row, unit).

    Holds each kept neighbourhood's 9 values and centre, sorted by its map ("slot": one per
    (row, unit), keyed ``row * K + unit``).

    Args:
        top: the kept values ``[K, W]`` of :class:`~zflight.analysis._quantile.RunningTop`.
        where: their places in the shard's ``[rows, K, h, w]`` activations, ``[K, W]``.
        around: their neighbourhoods, ``[K, W, 9]``.
        thresholds: ``[K]`` the units' thresholds (NaN: the unit keeps nothing).
        feature_size: ``(h, w)`` of the layer's maps.
    """

    def __init__(
        self, top: torch.Tensor, where: torch.Tensor, around: torch.Tensor, thresholds: torch.Tensor,
        feature_size: tuple[int, int],
    ) -> None:
        self.thresholds, self.feature_size = thresholds, feature_size
        units = top.shape[0]
        h, w = feature_size
        # This rank's kept values that may reach a mask (NaN thresholds: none), by (row, unit).
        # (Flat index_select: 2-d advanced indexing is several times slower on the CPU.)
        flat = (top > below(thresholds)[:, None]).view(-1).nonzero().squeeze(1)
        where = where.view(-1).index_select(0, flat)
        row, pos = where // (units * h * w), where % (h * w)  # the image's place in the shard
        key = row * units + flat // top.shape[1]
        key, order = torch.sort(key)
        self.pos = pos.index_select(0, order)  # each neighbourhood's centre in its map
        self.values = around.view(-1, 9).index_select(0, flat.index_select(0, order))
        self.slot_key, self.slot_of = torch.unique_consecutive(key, return_inverse=True)
        self.slot_rows = self.slot_key // units

    def masks_of(self, first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The maps of shard rows ``first .. stop - 1`` that may reach a mask, rebuilt.

        Returns:
            ``(maps [S, h, w], thresholds [S], images [S], units [S])``: the maps (-inf
            wherever pass 1 kept nothing), and per map its unit's threshold, its image's row
            in the batch and its unit.
        """
        h, w = self.feature_size
        units = self.thresholds.numel()
        bounds = torch.tensor([first, stop], device=self.slot_rows.device)
        s_lo, s_hi = torch.searchsorted(self.slot_rows, bounds).tolist()
        # The neighbourhoods come sorted by slot.
        lo, hi = torch.searchsorted(self.slot_of, bounds.new_tensor([s_lo, s_hi])).tolist()
        maps = self.values.new_full((s_hi - s_lo, h * w + 1), float("-inf"))
        # Each neighbourhood entry's place in its map (the spare h * w past the map's edge).
        places = spots(h, w, maps.device).index_select(0, self.pos[lo:hi])
        places += (self.slot_of[lo:hi] - s_lo)[:, None] * (h * w + 1)
        # Overlapping neighbourhoods write the same activation to a shared entry (and the
        # entries past an edge, whatever they hold, to the spare one).
        maps.view(-1).index_copy_(0, places.view(-1), self.values[lo:hi].view(-1))
        maps = maps[:, : h * w].view(-1, h, w)
        key = self.slot_key[s_lo:s_hi]
        k = key % units
        return maps, self.thresholds[k], key // units - first, k


def neighbourhoods(a: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The 3x3 activations around flat positions ``pos`` of the contiguous maps ``a [B, K, h,
    w]``: ``[n, 9]``, rows above, at and below. Entries past a map's edge are read from
    wherever the flat offset lands (clamped to ``a``): pass 2 writes them to a spare entry
    (:func:`spots`), never into a map."""
    w = a.shape[-1]
    step = torch.arange(-1, 2, device=a.device)
    offsets = (step[:, None] * w + step).reshape(-1)
    flat = (pos[:, None] + offsets).clamp_(0, a.numel() - 1)
    return a.view(-1).index_select(0, flat.view(-1)).view(-1, 9)


@functools.lru_cache(maxsize=16)
def spots(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``[h * w, 9]``: for each position of an ``h x w`` map, where its 3x3 neighbourhood
    (rows above, at and below) lies in the map's ``h * w + 1`` entries, ``h * w`` (the spare)
    for those past the edge."""
    offsets = torch.arange(-1, 2, device=device)
    pos = torch.arange(h * w, device=device)
    i = (pos // w)[:, None, None] + offsets[None, :, None]
    j = (pos % w)[:, None, None] + offsets[None, None, :]
    inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    return torch.where(inside, i * w + j, h * w).reshape(-1, 9)


def gather_rows(around: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``around[k, keep[k, j], :]`` for ``around [K, n, 9]`` and ``keep [K, W]``."""
    return around.gather(1, keep[..., None].expand(*keep.shape, around.shape[2]))


def below(values: torch.Tensor) -> torch.Tensor:
    """``values - 16 eps |values|``: a bilinear pixel whose four sources are all at most
    ``below(T)`` is at most ``T`` even after its float rounding (a convex combination's
    error is a few eps of its largest source), so only sources above it can make a mask.
    Monotone, so ``below`` of a lower bound of ``T`` is a lower bound of ``below(T)``.
    ``-inf`` and NaN stay as they are."""
    return values - 16 * torch.finfo(values.dtype).eps * values.abs()
