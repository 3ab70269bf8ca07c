"""Each unit's exact ``torch.quantile`` threshold from a running top-``m`` (dissection's pass 1).

``torch.quantile(values, 1 - q)`` of a unit's ``n`` activations reads only its ``m`` largest
(:func:`quantile_ranks`), so :class:`RunningTop` keeps those per unit, batch after batch,
plus any value within rounding of the ``m``-th (:func:`~zflight.analysis._neighbourhoods.below`), each with its place and 3x3
neighbourhood (:func:`~zflight.analysis._neighbourhoods.neighbourhoods`), from which
:class:`~zflight.analysis._neighbourhoods.KeptMaps` later rebuilds the maps that reach a mask.
The memory is ``quantile * N * h * w`` kept values per unit, whatever the data set's order.

Example:
    >>> import torch
    >>> top = RunningTop("conv")
    >>> a = torch.arange(32.0).view(2, 1, 4, 4)  # 2 images, 1 unit
    >>> top.update(a, 0, 2, quantile=0.1)
    >>> top.thresholds(0.1, world=1) == torch.quantile(a.flatten(), 0.9)
    tensor([True])
"""

from __future__ import annotations

import functools
import math

import torch

from zflight.analysis._distributed import comm_device
from zflight.analysis._neighbourhoods import below, gather_rows, neighbourhoods
from zflight.analysis._unit_masks import true_positions


class RunningTop:
    """One layer's running top activations per unit, with their places and neighbourhoods.

    Keeps, per unit, the ``m`` largest activations the quantile reads, plus any value within
    rounding of the ``m``-th (:func:`~zflight.analysis._neighbourhoods.below`), each with where it is (its index in the shard's
    ``[rows, K, h, w]`` activations) and its 3x3 neighbourhood.

    Args:
        key: the layer's key, for messages.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.feature_size: tuple[int, int] | None = None
        self.n_total = 0
        self.m = 0  # top values the quantile reads, per unit
        # [K, W] kept values (W >= m once full; -inf pads), their places [K, W] int64 and
        # 3x3 neighbourhoods [K, W, 9], in no order.
        self.top = torch.empty(0)
        self.where = torch.empty(0, dtype=torch.int64)
        self.around = torch.empty(0)
        self.bound = torch.empty(0)  # [K] the m-th largest value so far, once top is full
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # not merged yet
        self.pending_width = 0
        self.has_nan = torch.empty(0, dtype=torch.bool)

    def start(self, a: torch.Tensor, n_images: int, quantile: float) -> None:
        """Size the (empty) top values after maps ``a [B, K, h, w]`` of a data set of
        ``n_images``, without adding them (a rank whose shard is empty starts from a probe)."""
        units, h, w = a.shape[1:]
        self.feature_size = (h, w)
        self.n_total = n_images * h * w  # values per unit over the whole data set
        self.m = quantile_ranks(self.n_total, quantile, a.dtype)[3]
        self.top = a.new_empty((units, 0))
        self.where = torch.empty((units, 0), dtype=torch.int64, device=a.device)
        self.around = a.new_empty((units, 0, 9))
        self.has_nan = torch.zeros(units, dtype=torch.bool, device=a.device)

    def update(self, a: torch.Tensor, first_row: int, n_images: int, quantile: float) -> None:
        """Add one batch's contiguous maps ``a [B, K, h, w]``, of the shard's images
        ``first_row ..``, to the top values.

        Each value's place is kept as its index in the shard's ``[rows, K, h, w]`` activations.
        """
        units, h, w = a.shape[1:]
        if self.feature_size is None:
            self.start(a, n_images, quantile)
        offset = first_row * units * h * w
        # amax propagates NaN: torch.quantile returns NaN for a unit with any NaN, so do we.
        self.has_nan |= torch.isnan(a.amax(dim=(2, 3)).amax(dim=0))
        if self.top.shape[1] < self.m:
            values = a.transpose(0, 1).reshape(units, -1)  # [K, B*h*w]
            values = torch.where(torch.isnan(values), float("-inf"), values)
            old = self.top.shape[1]
            values, keep = self._select(torch.cat([self.top, values], dim=1))
            # Entries from this batch and their neighbourhoods (read for every kept entry:
            # cheap, as this happens for the data set's first m values only).
            j = (keep - old).clamp_min(0)
            k = torch.arange(units, device=a.device)[:, None]
            pos = (j // (h * w) * units + k) * (h * w) + j % (h * w)  # in [B, K, h, w]
            new = keep >= old
            where = pos + offset
            around = neighbourhoods(a, pos.reshape(-1)).view(*pos.shape, 9)
            if old:
                kept_old = keep.clamp_max(old - 1)
                where = torch.where(new, where, self.where.gather(1, kept_old))
                around = torch.where(new[..., None], around, gather_rows(self.around, kept_old))
            self.top, self.where, self.around = values, where, around
            return
        # Full: only values above below(bound) can still matter (see _select). Once the data
        # set's first m values per unit are in, few are: pick them out sparsely (one
        # comparison of the whole batch, then the True positions through int64 words).
        pos = true_positions(a > below(self.bound)[:, None, None])  # NaN is not >
        if pos.numel() == 0:
            return
        # pos indexes [B, K, h, w]; sorted, so the candidates come grouped by image, not unit.
        k = pos // (h * w) % units
        values, where, around = a.view(-1).index_select(0, pos), pos + offset, neighbourhoods(a, pos)
        per_unit = torch.bincount(k, minlength=units)
        order = torch.argsort(k, stable=True)
        k = k[order]
        slot = torch.arange(k.numel(), device=k.device) - (torch.cumsum(per_unit, 0) - per_unit)[k]
        width = int(per_unit.max())
        new_values = a.new_full((units, width), float("-inf"))
        new_values[k, slot] = values[order]
        new_where = torch.zeros((units, width), dtype=torch.int64, device=a.device)
        new_where[k, slot] = where[order]
        new_around = a.new_zeros((units, width, 9))
        new_around[k, slot] = around[order]
        # Candidates wait until they add up to m: one merge then instead of one per batch.
        # The bound stays the m-th largest merged so far, a lower bound of the final one, so
        # no value that belongs in the top m is missed meanwhile.
        self.pending.append((new_values, new_where, new_around))
        self.pending_width += width
        if self.pending_width >= self.m:
            self.merge_pending()

    def _select(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries to keep of ``values [K, n]``: the top ``m`` and any other above
        ``below`` of the ``m``-th largest (ties and near-ties: they may reach a mask through
        rounding). Returns their values and indices, unsorted; sets ``bound`` once full."""
        if values.shape[1] < self.m:
            return values, torch.arange(values.shape[1], device=values.device).expand_as(values)
        # An unsorted top-m (a selection, not a sort: 2x faster than merging sorted rows).
        top, keep = values.topk(self.m, dim=1, sorted=False)
        self.bound = top.amin(dim=1)
        # Those above below(bound) are each unit's largest, so a wider top-k takes them all.
        width = int((values > below(self.bound)[:, None]).sum(dim=1).max())
        if width > self.m:
            top, keep = values.topk(width, dim=1, sorted=False)
        return top, keep

    def merge_pending(self) -> None:
        """Fold the candidates waiting in ``pending`` into the kept values."""
        if not self.pending:
            return
        values, keep = self._select(torch.cat([self.top, *(p[0] for p in self.pending)], dim=1))
        where = torch.cat([self.where, *(p[1] for p in self.pending)], dim=1)
        around = torch.cat([self.around, *(p[2] for p in self.pending)], dim=1)
        self.top, self.where, self.around = values, where.gather(1, keep), gather_rows(around, keep)
        self.pending, self.pending_width = [], 0

    def thresholds(self, quantile: float, world: int) -> torch.Tensor:
        """``T_k`` per unit, as ``torch.quantile`` of all the values (of every rank) gives."""
        self.merge_pending()
        lo, hi, weight, _m = quantile_ranks(self.n_total, quantile, self.top.dtype)
        # Both read positions are among the top m: the m-th largest (ascending position
        # lo = n_total - m) and, if hi > lo, the (m - 1)-th.
        top, has_nan = self.top, self.has_nan
        if world > 1:
            # This rank may hold fewer than m values (a large quantile, a short shard):
            # merge_top pads it, and the union of all ranks holds m.
            top, has_nan = merge_top(top.topk(min(self.m, top.shape[1]), dim=1).values, has_nan, self.m)
        lowest = top.topk(self.m, dim=1, sorted=False).values.topk(min(2, self.m), dim=1, largest=False).values
        v_below = lowest[:, 0]
        v_above = lowest[:, hi - lo]
        units = top.shape[0]
        thresholds = torch.lerp(v_below, v_above, weight.to(top.device).expand(units))
        return torch.where(has_nan, float("nan"), thresholds)

    def release(self) -> None:
        """Drop the kept values (once :class:`~zflight.analysis._neighbourhoods.KeptMaps` has
        indexed them)."""
        self.top = self.where = self.around = torch.empty(0)


def quantile_ranks(n: int, quantile: float, dtype: torch.dtype) -> tuple[int, int, torch.Tensor, int]:
    """Where ``torch.quantile(values, 1 - quantile)`` of ``n`` values reads its sorted input.

    Mirrors its arithmetic: ``q`` becomes a tensor of the values' dtype, the rank is
    ``q * (n - 1)`` (in double or in that dtype, depending on the PyTorch version: see
    :func:`ranks_in_input_dtype`), and the result interpolates linearly between the ascending
    positions ``floor(rank)`` and ``ceil(rank)`` with weight ``rank - floor(rank)``.

    Returns:
        ``(below, above, weight, m)``: the two ascending positions, the 0-d weight (in
        ``dtype``), and ``m = n - below``, how many of the largest values hold both positions.
    """
    q = torch.tensor(1.0 - quantile, dtype=dtype)
    if ranks_in_input_dtype():
        rank = q * (n - 1)
        floor = rank.floor()
        lo, hi, weight = int(floor), int(rank.ceil()), rank - floor
    else:
        rank_f = float(q) * (n - 1)
        lo, hi = math.floor(rank_f), math.ceil(rank_f)
        weight = torch.tensor(rank_f - lo, dtype=dtype)
    return lo, hi, weight, n - lo


@functools.cache
def ranks_in_input_dtype() -> bool:
    """Whether this PyTorch's ``quantile`` computes ranks in the input's dtype (else double).

    The two give different thresholds for large ``n`` (float32 ranks step by ~0.001 at 10^4),
    and PyTorch's C++ has done it both ways, so this asks the installed version. Probed once on
    12,800 values sorted as 12,672 zeros then ones, where ``torch.quantile(v, 0.99)`` returns
    the rank's fraction itself: 0.0098 (float32 rank 12671.0098) or 0.0101 (double rank
    12671.0101).
    """
    n, q = 12800, 0.99
    values = torch.zeros(n)
    values[12672:] = 1.0
    got = float(torch.quantile(values, q))
    in_dtype = float(torch.tensor(q) * (n - 1)) % 1.0
    in_double = (float(torch.tensor(q)) * (n - 1)) % 1.0
    return abs(got - in_dtype) < abs(got - in_double)


def merge_top(top: torch.Tensor, has_nan: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge every rank's top values per unit: the top ``m`` of their union."""
    import torch.distributed as dist

    comm = comm_device()
    # A rank with fewer than m values pads with -inf: those never displace a real value that
    # matters (the union holds at least m real ones), and a real -inf is the same number.
    padded = torch.full((top.shape[0], m), float("-inf"), dtype=top.dtype, device=comm)
    padded[:, : top.shape[1]] = top.to(comm)
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    merged = torch.cat(parts, dim=1).topk(m, dim=1).values
    nan = has_nan.to(comm, torch.int32)
    dist.all_reduce(nan, op=dist.ReduceOp.MAX)
    return merged.to(top.device), nan.to(has_nan.device).bool()
