"""Exact incremental inference for occlusion maps: recompute only what the square changes.

An occluder changes a small square of the image. Through a convolution or pooling layer, a
changed input interval ``[a, b)`` (per axis) changes only the outputs whose window touches it:
``o`` in ``[floor((a + P - K) / S) + 1, ceil((b + P) / S))`` for kernel extent ``K`` (dilation
included), stride ``S`` and padding ``P``. Pointwise layers (ReLU, eval BatchNorm, local response
normalization across channels, eval Dropout) keep the interval. Following this projective field
layer by layer gives, per occluder position, the *window* of every feature map that can differ
from the unoccluded pass; everything outside it is the cached unoccluded activation.

Per layer, for a batch of occluder positions, :class:`IncrementalScorer`

1. gathers each position's input *patch* (the window's receptive field in the layer's input:
   the window plus a halo of ``K - S`` rows and columns) from the cached unoccluded input,
   padded once with the layer's own padding value (0 for convolutions, ``-inf`` for max
   pooling, also beyond the last row where ``ceil_mode`` adds a partial window),
2. splices the previous layer's recomputed window into it (one ``torch.where``),
3. runs the layer with zero padding on the patches, which gives exactly the window.

Every step is one indexed operation for the whole batch (``index_select`` over a channels-last
cache), so the number of kernel launches does not grow with the number of positions: the same
code serves the CPU and the GPU. All positions share one window size per layer (the largest);
a window that would leave the map is shifted inside it, which only recomputes a few unchanged
values.

Once a window covers (nearly) the whole map, windows no longer save anything: from a layer
``switch`` chosen by a cost model (multiply-adds plus memory traffic, see :meth:`Plan.cost`)
the window is spliced into a copy of the cached full map and the remaining layers, and the rest
of the network (``avgpool``/``classifier``), run on full maps, batched.

Eligible models: a ``features`` ``nn.Sequential`` of Conv2d (zero padding) / ReLU /
MaxPool2d / AvgPool2d / BatchNorm2d (eval, running statistics) / LocalResponseNorm /
Dropout / Identity, whose output the rest of the model turns into logits as
``classifier(features(x))`` (zflight's ZFNet) or ``classifier(flatten(avgpool(features(x))))``
(torchvision AlexNet and VGG). The split is verified on the first image (the model's own output
must equal the chain's), and models with forward hooks are refused (they would be skipped).

``approximate=tau`` (off by default) caps every window at ``ceil(tau * map size)`` rows and
columns around the changed region, treating the change outside as negligible (Nakandala et al.,
SIGMOD 2019, "projective field thresholding"); it is not exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zflight.attribution._winograd import winograd_conv3x3, winograd_weight

__all__ = ["Chain", "IncrementalScorer", "NotEligibleError", "Plan", "analyze", "make_plan", "make_scorer"]

# Cost model weights, in multiply-add equivalents per tensor element (see Plan.cost): moving an
# element through a gather + splice, through a pointwise layer, or into a full-map copy costs
# far more than one multiply-add of a convolution, which runs at the arithmetic peak.
_GATHER_COST = 8.0
_POINTWISE_COST = 2.0
_COPY_COST = 4.0
# incremental=None uses the incremental path only when the cost model expects at least this gain.
_AUTO_MIN_GAIN = 1.3
# Winograd windows need at least this many input channels to pay off (see _winograd_ok).
_WINOGRAD_MIN_CHANNELS = 256
# ... and windows of at least this many outputs a side: a 3x3 window pads to 4x4 outputs, which
# leaves Winograd only 1.27x fewer products, not enough to pay for the transforms.
_WINOGRAD_MIN_WINDOW = 4


class NotEligibleError(ValueError):
    """The model (or the tracked layer) does not fit incremental inference; the message says why."""


# ------------------------------------------------------------------------------ chain analysis
@dataclass(frozen=True)
class _Op:
    """One layer of the ``features`` chain, with its geometry per axis (rows, columns)."""

    name: str
    module: nn.Module
    kind: str  # "conv", "max", "avg" or "point"
    extent: tuple[int, int] = (1, 1)  # kernel extent, dilation included
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)

    @property
    def pad_value(self) -> float:
        return -math.inf if self.kind == "max" else 0.0


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _lrn_types() -> tuple[type, ...]:
    from zflight.models import LocalResponseNorm

    return (nn.LocalResponseNorm, LocalResponseNorm)


def _op_for(name: str, m: nn.Module) -> _Op:
    """Translate one ``features`` child; raise :class:`NotEligibleError` for anything else."""
    t = type(m)
    where = f"features.{name} ({t.__name__})"
    if t is nn.Conv2d:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise NotEligibleError(f"{where} pads with {m.padding!r}/{m.padding_mode!r}; "
                                   "only explicit zero padding is supported")
        k, d = _pair(m.kernel_size), _pair(m.dilation)
        extent = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        return _Op(name, m, "conv", extent, _pair(m.stride), _pair(m.padding))
    if t is nn.MaxPool2d:
        if m.return_indices:
            raise NotEligibleError(f"{where} returns indices")
        k, d = _pair(m.kernel_size), _pair(m.dilation)
        extent = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        return _Op(name, m, "max", extent, stride, _pair(m.padding))
    if t is nn.AvgPool2d:
        k = _pair(m.kernel_size)
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        return _Op(name, m, "avg", k, stride, _pair(m.padding))
    if t in (nn.ReLU, nn.Dropout, nn.Dropout2d, nn.Identity) or t in _lrn_types():
        # LocalResponseNorm mixes channels at one pixel only: spatially pointwise.
        return _Op(name, m, "point")
    if t is nn.BatchNorm2d:
        if m.running_mean is None or m.running_var is None:
            raise NotEligibleError(f"{where} has no running statistics, so it normalizes with "
                                   "batch statistics that an occluder changes everywhere")
        return _Op(name, m, "point")
    raise NotEligibleError(
        f"{where} is not one of Conv2d, ReLU, MaxPool2d, AvgPool2d, BatchNorm2d, "
        "LocalResponseNorm, Dropout, Identity"
    )


@dataclass
class Chain:
    """A model split into a ``features`` chain of supported layers and the rest.

    Attributes:
        model: the model.
        ops: the chain, in order.
        rest_modules: modules that the rest of the model consists of.
        rests: candidate functions features -> logits, tried in order by :meth:`verify`.
        rest: the candidate that reproduced the model's output (set by :meth:`verify`).
        rest_macs: multiply-adds of the rest for one image (set by :meth:`verify`).
        shapes: ``(C, H, W)`` of every op's input, then of the chain's output (set by
            :meth:`verify`).
        first_trace: the verified image's activations (see :meth:`trace`), until the scorer
            takes them for its cache.
    """

    model: nn.Module
    ops: list[_Op]
    rest_modules: list[nn.Module]
    rests: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]
    rest: Callable[[torch.Tensor], torch.Tensor] | None = None
    rest_macs: int = 0
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    first_trace: list[torch.Tensor] | None = None

    def trace(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """The input of every op before ``stop`` (default: all), then the input of op ``stop``."""
        stop = len(self.ops) if stop is None else stop
        out = [x]
        for op in self.ops[:stop]:
            out.append(_apply(op, out[-1]))
        return out

    def verify(self, x1: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        """Check on one image that the model is ``rest(chain(x))``; record shapes and MACs.

        The chain's activations of ``x1`` are kept in :attr:`first_trace`, so that the scorer's
        cache does not run the same image through the chain again.

        Args:
            x1: ``[1, C, H, W]`` one image.
            reference: the model's own logits for ``x1``, if already computed (saves a pass).

        Raises:
            NotEligibleError: neither split reproduces the model's output.
        """
        ref = self.model(x1) if reference is None else reference
        if not isinstance(ref, torch.Tensor) or ref.dim() != 2:
            raise NotEligibleError("the model does not return logits [B, classes]")
        trace = self.trace(x1)
        self.shapes = [tuple(t.shape[1:]) for t in trace]
        x = trace[-1]
        for _, rest in self.rests:
            macs: list[int] = []
            handles = [m.register_forward_hook(_count_macs(macs)) for r in self.rest_modules
                       for m in r.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            try:
                out = rest(x)
            except (RuntimeError, TypeError, ValueError):
                continue
            finally:
                for h in handles:
                    h.remove()
            if isinstance(out, torch.Tensor) and out.shape == ref.shape and _close(out, ref):
                self.rest, self.rest_macs = rest, sum(macs)
                self.first_trace = trace
                return
        # Only now, to say which part differs: the chain itself, or what follows it.
        if not _close(x, self.model.features(x1)):
            raise NotEligibleError("applying the features layers one by one does not give "
                                   "model.features(x)")
        raise NotEligibleError(
            f"the output of {type(self.model).__name__} is neither classifier(features(x)) nor "
            "classifier(flatten(avgpool(features(x)))), so the part after features is unknown"
        )


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale + 1e-12))


def _count_macs(out: list[int]) -> Callable[..., None]:
    def hook(m: nn.Module, inp: Any, res: Any) -> None:
        per_out = m.in_features if isinstance(m, nn.Linear) else (
            m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        out.append(res[0].numel() * per_out)

    return hook


def _has_hooks(model: nn.Module) -> bool:
    from torch.nn.modules import module as mm

    if any(getattr(mm, n, None) for n in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def analyze(model: nn.Module) -> Chain:
    """Split ``model`` into its ``features`` chain and the rest, or say why it cannot be.

    Only the structure is checked here; :meth:`Chain.verify` checks the values on an image.

    Args:
        model: the classifier.

    Returns:
        The :class:`Chain` (not yet verified).

    Raises:
        NotEligibleError: the reason, e.g. no ``features`` ``nn.Sequential`` or an unsupported
            layer in it.
    """
    name = type(model).__name__
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or len(features) == 0:
        raise NotEligibleError(
            f"{name} has no `features` nn.Sequential: incremental inference needs the layers up "
            "to the last feature map to be a chain of Conv2d/ReLU/MaxPool2d/AvgPool2d/"
            "BatchNorm2d/LocalResponseNorm/Dropout (like zfnet, alexnet_zf, AlexNet, VGG)"
        )
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise NotEligibleError(f"{name} has `features` but no `classifier` module")
    if _has_hooks(model):
        raise NotEligibleError(f"{name} has forward hooks, which incremental inference would skip")
    ops = [_op_for(n, m) for n, m in features.named_children()]
    rests: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    rest_modules: list[nn.Module] = [classifier]
    avgpool = getattr(model, "avgpool", None)
    if isinstance(avgpool, nn.Module):
        rest_modules.append(avgpool)
        rests.append(("avgpool", lambda f: classifier(torch.flatten(avgpool(f), 1))))
    rests.append(("classifier", lambda f: classifier(f)))
    return Chain(model, ops, rest_modules, rests)


def _apply(op: _Op, x: torch.Tensor) -> torch.Tensor:
    """The layer on a full map, never in place (cached maps must survive)."""
    if isinstance(op.module, nn.ReLU):
        return torch.relu(x)
    return op.module(x)


# ------------------------------------------------------------------------------------- planning
@dataclass
class _Axis:
    """Window geometry of one layer along one axis, for every occluder position index ``k``."""

    length: int  # window length in the layer's output
    start: torch.Tensor  # [K] window start in output coordinates
    base_idx: torch.Tensor | None = None  # [K, Lin] patch rows in the padded input
    prev_idx: torch.Tensor | None = None  # [K, Lin] the same rows in the previous window
    in_prev: torch.Tensor | None = None  # [K, Lin] whether that row lies in the previous window
    padded_len: int = 0  # length of the padded input map
    pad_lo: int = 0
    pad_hi: int = 0


def _plan_axis(
    ops: Sequence[_Op], lens: Sequence[int], axis: int, starts: Sequence[int], size: int,
    tau: float | None,
) -> list[_Axis]:
    """Follow the changed interval of every position through the chain along one axis."""
    a = list(starts)
    b = [s + size for s in starts]
    w, lp = list(starts), size  # the previous window: starts and common length
    plans = []
    for i, op in enumerate(ops):
        n_in, n_out = lens[i], lens[i + 1]
        if op.kind == "point":
            plans.append(_Axis(lp, torch.tensor(w)))
            continue
        k, s, p = op.extent[axis], op.stride[axis], op.pad[axis]
        oa = [max(0, (ai + p - k) // s + 1) for ai in a]
        ob = [min(n_out, (bi + p - 1) // s + 1) for bi in b]
        length = max(max(y - x for x, y in zip(oa, ob)), 1)
        if tau is not None:
            # Approximate: keep at most ceil(tau * n_out) around the middle of the change.
            length = min(length, max(1, math.ceil(tau * n_out)))
            mid = [(x + y - length) // 2 for x, y in zip(oa, ob)]
            start = [min(max(0, m), n_out - length) for m in mid]
            oa = [max(x, st) for x, st in zip(oa, start)]
            ob = [min(y, st + length) for y, st in zip(ob, start)]
        else:
            # Shift windows that would leave the map back inside; they still cover [oa, ob).
            start = [min(x, n_out - length) for x in oa]
        lin = (length - 1) * s + k
        rel = torch.arange(lin)
        st = torch.tensor(start)
        base_idx = st[:, None] * s + rel[None]  # padded coordinates
        u = base_idx - p  # unpadded input coordinates
        wt = torch.tensor(w)[:, None]
        in_prev = (u >= wt) & (u < wt + lp)
        prev_idx = (u - wt).clamp(0, lp - 1)
        pad_hi = max(0, (n_out - 1) * s + k - p - n_in)
        plans.append(_Axis(length, st, base_idx, prev_idx, in_prev, p + n_in + pad_hi, p, pad_hi))
        a, b, w, lp = oa, ob, start, length
    return plans


@dataclass
class _AxisClass:
    """Positions along one axis whose windows have one length per layer, and that geometry."""

    positions: list[int]  # position indices k (top-left pixel k * stride)
    layers: list[_Axis]  # per op, for these positions in this order


@dataclass
class _AxisPlan:
    """All positions along one axis, in classes of equal window lengths."""

    classes: list[_AxisClass]
    class_of: torch.Tensor  # [K] the class of each position
    local: torch.Tensor  # [K] each position's row in its class's tables

    def expected(self, i: int) -> tuple[float, float]:
        """Mean window length and mean patch length of op ``i`` over all positions."""
        k = sum(len(c.positions) for c in self.classes)
        length = sum(len(c.positions) * c.layers[i].length for c in self.classes) / k
        lin = sum(
            len(c.positions) * (c.layers[i].base_idx.shape[1] if c.layers[i].base_idx is not None
                                else c.layers[i].length)
            for c in self.classes
        ) / k
        return length, lin

    def lengths(self, i: int) -> list[tuple[float, int]]:
        """``(fraction of positions, window length)`` of op ``i``, per class."""
        k = sum(len(c.positions) for c in self.classes)
        return [(len(c.positions) / k, c.layers[i].length) for c in self.classes]


def _plan_axis_classes(
    ops: Sequence[_Op], lens: Sequence[int], axis: int, starts: Sequence[int], size: int,
    tau: float | None, exact: bool,
) -> _AxisPlan:
    """Plan one axis: one class for all positions, or (``exact``) one per window-length profile.

    With one class every window has the largest length, so a batch runs as one set of tensor
    operations (what a GPU wants). With exact classes, positions near the borders, whose
    changed region the border clips, get their own shorter windows: fewer multiply-adds, one
    set of operations per class (cheap on a CPU).
    """
    starts = list(starts)
    if exact:
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, s in enumerate(starts):
            profile = tuple(a.length for a in _plan_axis(ops, lens, axis, [s], size, tau))
            groups.setdefault(profile, []).append(k)
        members = list(groups.values())
    else:
        members = [list(range(len(starts)))]
    class_of = torch.empty(len(starts), dtype=torch.int64)
    local = torch.empty(len(starts), dtype=torch.int64)
    classes = []
    for ci, ks in enumerate(members):
        class_of[ks] = ci
        local[ks] = torch.arange(len(ks))
        classes.append(_AxisClass(ks, _plan_axis(ops, lens, axis, [starts[k] for k in ks],
                                                 size, tau)))
    return _AxisPlan(classes, class_of, local)


@dataclass
class Plan:
    """Windows of every layer for every position, the switch to full maps, and their costs.

    Attributes:
        rows, cols: the window geometry along each axis.
        switch: index of the first op run on full maps (``len(ops)``: only the rest).
        exact_windows: positions are grouped into classes of equal window lengths (else every
            window has the largest length).
        macs_full: multiply-adds (convolutions and linear layers) of one full forward.
        macs_incremental: mean multiply-adds of one occluded image with this plan, every
            convolution counted as a direct one (the arithmetic the windows save).
        winograd: 3x3 windows with many channels run as Winograd convolutions (see
            :func:`_winograd_ok`).
        macs_run: what the path actually multiplies: ``macs_incremental`` with those layers
            counted by their Winograd products (16 per 2x2 outputs instead of 36).
        cost_full, cost_incremental: the cost model's estimates per occluded image.
    """

    rows: _AxisPlan
    cols: _AxisPlan
    switch: int
    exact_windows: bool
    macs_full: int
    macs_incremental: int
    winograd: bool
    macs_run: int
    cost_full: float
    cost_incremental: float

    @property
    def expected_gain(self) -> float:
        """Estimated speed-up of the incremental path over full forwards (the cost model)."""
        return self.cost_full / max(self.cost_incremental, 1.0)


def _winograd_window(rows: int, cols: int) -> bool:
    """Whether a window of ``rows x cols`` outputs of a Winograd-eligible op runs as Winograd."""
    return min(rows, cols) >= _WINOGRAD_MIN_WINDOW


def _has_small_windows(plan: Plan, i: int) -> bool:
    """Whether some positions' windows of op ``i`` are below the Winograd minimum (run direct)."""
    return not all(_winograd_window(lr, lc)
                   for _, lr in plan.rows.lengths(i) for _, lc in plan.cols.lengths(i))


def _winograd_ok(op: _Op) -> bool:
    """Whether a windowed op runs as a Winograd F(2x2, 3x3) convolution (when enabled).

    3x3, stride 1, no dilation or groups, and enough input channels: with fewer, the
    transforms cost more than the products save (measured on the CPU, per window: 0.4-2.3x at
    128 channels, 1.0-2.2x from 256 up). Windows smaller than ``_WINOGRAD_MIN_WINDOW`` a side
    run directly (see :meth:`IncrementalScorer._window`).
    """
    m = op.module
    # float32/float64 only: in half precision its error was 1.7x the direct convolution's.
    return (op.kind == "conv" and m.weight.dtype in (torch.float32, torch.float64)
            and _pair(m.kernel_size) == (3, 3) and op.stride == (1, 1)
            and _pair(m.dilation) == (1, 1) and m.groups == 1
            and m.in_channels >= _WINOGRAD_MIN_CHANNELS)


def _layer_costs(
    chain: Chain, rows: _AxisPlan, cols: _AxisPlan, winograd: bool
) -> list[tuple[float, float, float, int, float]]:
    """Per op, mean per occluded image: (windowed cost, full cost, windowed MACs counted as a
    direct convolution, full MACs, windowed MACs as run)."""
    out = []
    for i, op in enumerate(chain.ops):
        c_in = chain.shapes[i][0]
        c_out, h_out, w_out = chain.shapes[i + 1]
        (lh, lin_h), (lw, lin_w) = rows.expected(i), cols.expected(i)
        if op.kind == "point":
            out.append((_POINTWISE_COST * c_out * lh * lw, _POINTWISE_COST * c_out * h_out * w_out,
                        0.0, 0, 0.0))
            continue
        if op.kind == "conv":
            kh, kw = _pair(op.module.kernel_size)
            per = c_in // op.module.groups * kh * kw
        else:
            # A comparison or addition per kernel element, cheaper than a multiply-add.
            per = op.extent[0] * op.extent[1] / 4
        gather = _GATHER_COST * c_in * lin_h * lin_w
        win, full = c_out * lh * lw * per, c_out * h_out * w_out * per
        run, cost = win, win + gather
        if winograd and _winograd_ok(op):
            run = tiles = 0.0
            for pr, lr in rows.lengths(i):
                for pc, lc in cols.lengths(i):
                    if _winograd_window(lr, lc):
                        t = -(-lr // 2) * -(-lc // 2)
                        run, tiles = run + pr * pc * 16 * c_in * c_out * t, tiles + pr * pc * t
                    else:
                        run += pr * pc * c_out * lr * lc * per
            cost = run + gather + _POINTWISE_COST * 16 * (c_in + c_out) * tiles  # transforms
        conv = op.kind == "conv"
        out.append((cost, full, win if conv else 0.0, int(full) if conv else 0,
                    run if conv else 0.0))
    return out


def make_plan(
    chain: Chain, image_size: tuple[int, int], size: int, stride: int, tau: float | None,
    exact_windows: bool = True, winograd: bool = False,
) -> Plan:
    """Plan the windows for squares of side ``size`` at ``0, stride, ...`` (see module doc).

    Args:
        chain: the verified chain.
        image_size: ``(H, W)``.
        size: side of the square.
        stride: step between positions.
        tau: the approximate mode's cap (fraction of the map), or ``None`` (exact).
        exact_windows: classes of equal window lengths (else one window length per layer).
        winograd: run the windows of eligible 3x3 convolutions as Winograd convolutions.

    Returns:
        The plan, with the switch to full maps that the cost model finds cheapest.
    """
    h, w = image_size
    hs = [s[1] for s in chain.shapes]
    ws = [s[2] for s in chain.shapes]
    rows = _plan_axis_classes(chain.ops, hs, 0, range(0, h - size + 1, stride), size, tau,
                              exact_windows)
    cols = _plan_axis_classes(chain.ops, ws, 1, range(0, w - size + 1, stride), size, tau,
                              exact_windows)
    costs = _layer_costs(chain, rows, cols, winograd)
    n = len(chain.ops)
    rest = float(chain.rest_macs)
    full = sum(c[1] for c in costs) + rest
    best, best_j = math.inf, 0
    for j in range(n + 1):
        # Windows before j, a copy of the full map at j, full maps from j on.
        c, hh, ww = chain.shapes[j]
        total = sum(x[0] for x in costs[:j]) + _COPY_COST * c * hh * ww
        total += sum(x[1] for x in costs[j:]) + rest
        if total < best:
            best, best_j = total, j
    macs_full = sum(c[3] for c in costs) + chain.rest_macs
    after = sum(c[3] for c in costs[best_j:]) + chain.rest_macs
    macs_inc = sum(c[2] for c in costs[:best_j]) + after
    macs_run = sum(c[4] for c in costs[:best_j]) + after
    return Plan(rows, cols, best_j, exact_windows, macs_full, int(round(macs_inc)), winograd,
                int(round(macs_run)), full, best)


# -------------------------------------------------------------------------------------- scoring
@dataclass
class _Cache:
    """Unoccluded activations of some images, channels-last, for the windowed layers."""

    images: list[int]
    local: torch.Tensor  # [N] global image index -> row in this cache (-1: absent)
    padded: dict[int, torch.Tensor]  # op index -> [m * Hp * Wp, C] padded input
    switch_in: torch.Tensor  # [m, H, W, C] input of the first full op (or features output)
    probe_out: torch.Tensor | None = None  # [m, H, W, C] output of the probed windowed op
    probe_sum: torch.Tensor | None = None  # [m, C] its spatial sums


class IncrementalScorer:
    """Scores batches of occluded images like full forward passes, recomputing only windows.

    Args:
        chain: the verified chain (see :func:`analyze`, :meth:`Chain.verify`).
        plan: the windows (see :func:`make_plan`).
        stride: step between square positions (positions are ``top_left // stride``).
        size: side of the square.
        probe_module: the module whose map is summed, or ``None``.
        device: where the images are.
    """

    def __init__(
        self, chain: Chain, plan: Plan, *, size: int, stride: int,
        probe_module: nn.Module | None, device: torch.device,
    ) -> None:
        self.chain, self.plan, self.size, self.stride = chain, plan, size, stride
        self.ops = chain.ops
        self.switch = plan.switch
        for axis in (plan.rows, plan.cols):
            axis.class_of, axis.local = axis.class_of.to(device), axis.local.to(device)
            for cls in axis.classes:
                for ax in cls.layers:
                    for name in ("start", "base_idx", "prev_idx", "in_prev"):
                        t = getattr(ax, name)
                        if t is not None:
                            setattr(ax, name, t.to(device))
        self._n_col_classes = len(plan.cols.classes)
        self.probe_module = probe_module
        # Where the probed map comes from: an op of the chain (its first call), or the rest.
        self.probe_op: int | None = None
        if probe_module is not None:
            if probe_module is chain.model.features:
                self.probe_op = len(self.ops) - 1
            else:
                for i, op in enumerate(self.ops):
                    if op.module is probe_module:
                        self.probe_op = i
                        break
            if self.probe_op is None and not any(
                probe_module is m for r in chain.rest_modules for m in r.modules()
            ):
                raise NotEligibleError(
                    f"the tracked layer ({type(probe_module).__name__}) is neither in "
                    "model.features nor after it"
                )
        self._cache: _Cache | None = None
        self._avg_div: dict[int, torch.Tensor] = {}
        # 3x3 windows with many channels: Winograd, 2.25x fewer multiply-adds (see _winograd).
        self._winograd = {
            i: winograd_weight(op.module.weight)
            for i, op in enumerate(self.ops[: self.switch]) if plan.winograd and _winograd_ok(op)
        }
        # The direct windows' patches are channels-last; a convolution would otherwise convert
        # its weight to that layout on every call (measured: 4-8% of the time on the CPU).
        self._weights = {
            i: op.module.weight.detach().contiguous(memory_format=torch.channels_last)
            for i, op in enumerate(self.ops[: self.switch])
            if op.kind == "conv" and (i not in self._winograd or _has_small_windows(plan, i))
        }

    # -- the unoccluded activations -------------------------------------------------------------
    def _take_first_trace(
        self, images: torch.Tensor, needed: list[int]
    ) -> list[torch.Tensor | None] | None:
        """The verified image's activations if ``images[0]`` is that image and is needed.

        Taken at most once: the chain lets go of them on every path, so they never outlive the
        first cache.
        """
        first, self.chain.first_trace = self.chain.first_trace, None
        if first is None or 0 not in needed or not torch.equal(first[0], images[:1]):
            return None
        return list(first[: self.switch + 1])

    def _build_cache(self, images: torch.Tensor, needed: list[int]) -> _Cache:
        """Run ``images[needed]`` (sorted) through the windowed ops, keeping what windows need.

        Only one activation per image is alive at a time besides the padded copies, as in a
        forward pass; image 0's activations come from the verification pass when it is needed.
        """
        first = self._take_first_trace(images, needed)
        others = [k for k in needed if k != 0] if first is not None else needed
        x = images[others] if others else None

        def current(i: int) -> torch.Tensor:
            """The input of op ``i`` for ``images[needed]``, in order (image 0 first)."""
            parts = [t for t in ((first[i] if first is not None else None), x) if t is not None]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        probe_out = probe_sum = None
        padded: dict[int, torch.Tensor] = {}
        for i, op in enumerate(self.ops[: self.switch]):
            if op.kind != "point":
                xi = current(i)
                r, c = self.plan.rows.classes[0].layers[i], self.plan.cols.classes[0].layers[i]
                xp = F.pad(xi, (c.pad_lo, c.pad_hi, r.pad_lo, r.pad_hi), value=op.pad_value)
                xp = xp[:, :, : r.padded_len, : c.padded_len]
                padded[i] = xp.permute(0, 2, 3, 1).contiguous().reshape(-1, xi.shape[1])
            if x is not None:
                x = _apply(op, x)
            if first is not None:
                first[i] = None  # free as we go
            if i == self.probe_op:
                y = current(i + 1)
                probe_out, probe_sum = y.permute(0, 2, 3, 1).contiguous(), y.sum(dim=(2, 3))
        local = torch.full((images.shape[0],), -1, dtype=torch.int64, device=images.device)
        local[torch.tensor(needed, device=images.device)] = torch.arange(
            len(needed), device=images.device)
        return _Cache(needed, local, padded, current(self.switch).permute(0, 2, 3, 1).contiguous(),
                      probe_out, probe_sum)

    def _avg_divisor(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """``[H_out, W_out]`` the count an AvgPool2d divides each output's sum by."""
        if i not in self._avg_div:
            op = self.ops[i]
            m = op.module
            _, h, w = self.chain.shapes[i]
            ones = torch.ones(1, 1, h, w, dtype=torch.float64, device=like.device)
            if m.divisor_override:
                div = torch.full_like(m(ones), float(m.divisor_override))
            else:
                r, c = self.plan.rows.classes[0].layers[i], self.plan.cols.classes[0].layers[i]
                sums = F.avg_pool2d(F.pad(ones, (c.pad_lo, c.pad_hi, r.pad_lo, r.pad_hi)),
                                    m.kernel_size, op.stride, 0, divisor_override=1)
                sums = sums[..., : m(ones).shape[-2], : m(ones).shape[-1]]
                div = (sums / m(ones)).round()
            self._avg_div[i] = div[0, 0].to(like.dtype)
        return self._avg_div[i]

    # -- one batch ------------------------------------------------------------------------------
    def score(
        self,
        images: torch.Tensor,
        which: torch.Tensor,
        top_left: torch.Tensor,
        fill: torch.Tensor,
        channels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits [B, K], activation [B] or None)`` for a batch of occluded images.

        Args:
            images: ``[N, C, H, W]`` all unoccluded images.
            which: ``[B]`` image index per sample (on the images' device).
            top_left: ``[B, 2]`` pixel row and column of each square (multiples of ``stride``).
            fill: ``[C, 1, 1]`` the square's value per channel.
            channels: ``[B]`` the probed feature map per sample (with a probe).

        Returns:
            The logits and, with a probe, the summed activation of ``channels[b]``.
        """
        dev = images.device
        needed = sorted(set(which.tolist()))
        if self._cache is None or not set(needed) <= set(self._cache.images):
            self._cache = None  # free the old one first
            self._cache = self._build_cache(images, needed)
        cache = self._cache
        img = cache.local[which]
        bsz = which.shape[0]
        tl = top_left.to(dev)
        rk, ck = tl[:, 0] // self.stride, tl[:, 1] // self.stride
        act = None
        if self.probe_op is not None and self.probe_op < self.switch:
            act = torch.empty(bsz, dtype=images.dtype, device=dev)
        full = cache.switch_in.index_select(0, img)  # [B, H, W, C]
        if self.switch == 0:
            # Nothing windowed: the occluded image itself.
            rows = tl[:, :1] + torch.arange(self.size, device=dev)
            cols = tl[:, 1:] + torch.arange(self.size, device=dev)
            b = torch.arange(bsz, device=dev)
            full[b[:, None, None], rows[:, :, None], cols[:, None, :]] = fill.view(-1).to(full)
        else:
            rc, cc = self.plan.rows.class_of[rk], self.plan.cols.class_of[ck]
            if len(self.plan.rows.classes) == 1 and self._n_col_classes == 1:
                groups = [(0, 0, torch.arange(bsz, device=dev))]  # no sync, fixed launches
            else:
                key = rc * self._n_col_classes + cc
                groups = [
                    (g // self._n_col_classes, g % self._n_col_classes,
                     torch.nonzero(key == g).squeeze(1))
                    for g in torch.unique(key).tolist()
                ]
            def run(group: tuple[int, int, torch.Tensor]) -> None:
                r_cls, c_cls, sel = group
                self._windows(cache, img[sel], rk[sel], ck[sel], r_cls, c_cls, sel, fill, full,
                              channels[sel] if act is not None else None, act)

            threads = torch.get_num_threads()
            if dev.type != "cpu" or threads == 1:
                for group in groups:
                    run(group)
            else:
                self._run_parallel(run, groups, threads, images)
        x = full.permute(0, 3, 1, 2)
        b = torch.arange(bsz, device=dev)
        for i in range(self.switch, len(self.ops)):
            x = _apply(self.ops[i], x)
            if i == self.probe_op:
                act = x[b, channels].sum(dim=(1, 2))
        if self.probe_module is not None and self.probe_op is None:
            logits, act = self._rest_with_probe(x, channels)
        else:
            logits = self.chain.rest(x)
        return logits, act

    def _run_parallel(
        self, run: Callable[[tuple[int, int, torch.Tensor]], None],
        groups: list[tuple[int, int, torch.Tensor]], threads: int, like: torch.Tensor,
    ) -> None:
        """Run the classes of positions on ``threads`` Python threads, each op single-threaded.

        The windowed ops are many and small. Split over OpenMP threads, every one of them ends
        at a barrier that waits for the slowest thread, which on a busy machine is often a
        preempted one: on two shared cores that made the windows 5-10x slower than on one
        thread. Independent classes on their own threads never wait for each other; they write
        disjoint rows of ``full`` and ``act``.
        """
        from concurrent.futures import ThreadPoolExecutor

        if len(groups) < threads:  # one class (fixed windows): split it into chunks
            groups = [(r, c, part) for r, c, sel in groups
                      for part in sel.tensor_split(min(threads, sel.numel())) if part.numel()]
        for i, op in enumerate(self.ops[: self.switch]):
            if op.kind == "avg":
                self._avg_divisor(i, like)  # fill the lazy cache before the threads read it
        grad = torch.is_grad_enabled()

        def work(group: tuple[int, int, torch.Tensor]) -> None:
            with torch.set_grad_enabled(grad):  # grad mode is per thread
                run(group)

        # New threads take the process-wide thread count at their first op: 1 here.
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for future in [pool.submit(work, g) for g in groups]:
                    future.result()
        finally:
            torch.set_num_threads(threads)

    def _windows(
        self, cache: _Cache, img: torch.Tensor, rk: torch.Tensor, ck: torch.Tensor,
        r_cls: int, c_cls: int, sel: torch.Tensor, fill: torch.Tensor, full: torch.Tensor,
        channels: torch.Tensor | None, act: torch.Tensor | None,
    ) -> None:
        """Run the windowed ops for one class of positions; splice into ``full[sel]``."""
        dev = img.device
        rows_cls, cols_cls = self.plan.rows.classes[r_cls], self.plan.cols.classes[c_cls]
        lr, lc = self.plan.rows.local[rk], self.plan.cols.local[ck]
        bsz = img.shape[0]
        b = torch.arange(bsz, device=dev)
        c_img = fill.shape[0]
        # The square itself is the first window: fill, at the square's place.
        prev = fill.view(1, 1, 1, c_img).expand(bsz, self.size, self.size, c_img).contiguous()
        ra = ca = None
        for i, op in enumerate(self.ops[: self.switch]):
            ra, ca = rows_cls.layers[i], cols_cls.layers[i]
            if op.kind == "point":
                out = _apply(op, prev.permute(0, 3, 1, 2))
            else:
                out = self._window(i, op, ra, ca, cache, img, prev, lr, lc, b)
            prev = out.permute(0, 2, 3, 1).contiguous()
            if i == self.probe_op:
                rows = ra.start[lr][:, None] + torch.arange(ra.length, device=dev)
                cols = ca.start[lc][:, None] + torch.arange(ca.length, device=dev)
                base = cache.probe_out[img[:, None, None], rows[:, :, None], cols[:, None, :],
                                       channels[:, None, None]]
                new = prev[b, :, :, channels]
                act[sel] = cache.probe_sum[img, channels] + (new - base).sum(dim=(1, 2))
        # Splice the last window into the cached full map.
        rows = ra.start[lr][:, None] + torch.arange(ra.length, device=dev)
        cols = ca.start[lc][:, None] + torch.arange(ca.length, device=dev)
        full[sel[:, None, None], rows[:, :, None], cols[:, None, :]] = prev

    def _window(
        self, i: int, op: _Op, ra: _Axis, ca: _Axis, cache: _Cache, img: torch.Tensor,
        prev: torch.Tensor, lr: torch.Tensor, lc: torch.Tensor, b: torch.Tensor,
    ) -> torch.Tensor:
        """Recompute op ``i``'s output window for every sample: gather, splice, run."""
        base_r, base_c = ra.base_idx[lr], ca.base_idx[lc]  # [B, Lin]
        lin_h, lin_w = base_r.shape[1], base_c.shape[1]
        bsz, lp_h, lp_w, c = prev.shape
        flat = (img[:, None, None] * ra.padded_len + base_r[:, :, None]) * ca.padded_len
        flat = flat + base_c[:, None, :]
        patch = cache.padded[i].index_select(0, flat.reshape(-1)).view(bsz, lin_h, lin_w, c)
        pflat = (b[:, None, None] * lp_h + ra.prev_idx[lr][:, :, None]) * lp_w
        pflat = pflat + ca.prev_idx[lc][:, None, :]
        spliced = prev.reshape(-1, c).index_select(0, pflat.reshape(-1)).view(bsz, lin_h, lin_w, c)
        inside = (ra.in_prev[lr][:, :, None] & ca.in_prev[lc][:, None, :]).unsqueeze(-1)
        patch = torch.where(inside, spliced, patch)
        m = op.module
        if i in self._winograd and _winograd_window(ra.length, ca.length):
            return winograd_conv3x3(patch, self._winograd[i], m.bias).permute(0, 3, 1, 2)
        patch = patch.permute(0, 3, 1, 2)
        if op.kind == "conv":
            return F.conv2d(patch, self._weights[i], m.bias, m.stride, 0, m.dilation, m.groups)
        if op.kind == "max":
            return F.max_pool2d(patch, m.kernel_size, op.stride, 0, m.dilation)
        sums = F.avg_pool2d(patch, m.kernel_size, op.stride, 0, divisor_override=1)
        div = self._avg_divisor(i, sums)
        rows = ra.start[lr][:, None] + torch.arange(ra.length, device=patch.device)
        cols = ca.start[lc][:, None] + torch.arange(ca.length, device=patch.device)
        return sums / div[rows[:, :, None], cols[:, None, :]].unsqueeze(1)

    def _rest_with_probe(
        self, x: torch.Tensor, channels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if captured:
                return
            flat = out.detach().reshape(out.shape[0], out.shape[1], -1)
            rows = torch.arange(out.shape[0], device=out.device)
            captured.append(flat[rows, channels].sum(dim=1))

        handle = self.probe_module.register_forward_hook(hook)
        try:
            logits = self.chain.rest(x)
        finally:
            handle.remove()
        if not captured:
            raise NotEligibleError("the tracked layer was not called after features")
        return logits, captured[0]


# ------------------------------------------------------------------------------------ choosing
def _default_windows(device: torch.device) -> str:
    """``"fixed"`` on a GPU (kernel launches must not grow with positions), else ``"exact"``."""
    return "exact" if device.type == "cpu" else "fixed"


def _default_winograd(device: torch.device) -> bool:
    """Winograd windows on the CPU only; on a GPU the convolution library picks its algorithm."""
    return device.type == "cpu"


def make_scorer(
    model: nn.Module,
    images: torch.Tensor,
    *,
    size: int,
    stride: int,
    probe_module: nn.Module | None,
    incremental: bool | None,
    approximate: float | None,
    windows: str | None = None,
    winograd: bool | None = None,
    reference: torch.Tensor | None = None,
) -> IncrementalScorer | None:
    """Return an :class:`IncrementalScorer`, or ``None`` for plain full forwards.

    Call in eval mode under ``no_grad``.

    Args:
        model: the classifier.
        images: ``[N, C, H, W]`` the unoccluded images (the first one verifies the split).
        size: side of the square.
        stride: step between positions.
        probe_module: the tracked layer's module, or ``None``.
        incremental: ``None`` (automatic: when eligible and the cost model expects a gain),
            ``True`` (always; raise when not eligible) or ``False`` (never).
        approximate: ``tau`` in ``(0, 1]`` caps windows (not exact); needs eligibility.
        windows: ``"exact"`` (classes of equal window lengths: fewest multiply-adds, a few sets
            of operations per batch), ``"fixed"`` (one window length per layer: one set of
            operations per batch, whatever the number of positions) or ``None``: ``"fixed"`` on
            a GPU, ``"exact"`` elsewhere.
        winograd: run the windows of 3x3 convolutions with >= 256 input channels (and windows
            of >= 4 outputs a side) as Winograd F(2x2, 3x3) convolutions (2.25x fewer
            multiply-adds, same values to float rounding); ``None``: on the CPU only.
        reference: the model's logits ``[1, classes]`` for ``images[:1]``, if the caller has
            them (the check of the split then runs the model once less).

    Returns:
        The scorer, or ``None``.

    Raises:
        ValueError: ``incremental=True`` or ``approximate`` on a model that is not eligible
            (the message says why), or ``approximate`` with ``incremental=False``.
    """
    if incremental is False:
        if approximate is not None:
            raise ValueError("approximate needs the incremental path; it cannot be combined "
                             "with incremental=False")
        return None
    if windows not in (None, "exact", "fixed"):
        raise ValueError(f"windows must be 'exact', 'fixed' or None, got {windows!r}")
    forced = incremental is True or approximate is not None
    try:
        chain = analyze(model)
        chain.verify(images[:1], reference)
        if windows is None:
            windows = _default_windows(images.device)
        if winograd is None:
            winograd = _default_winograd(images.device)
        plan = make_plan(chain, tuple(images.shape[-2:]), size, stride, approximate,
                         exact_windows=windows == "exact", winograd=winograd)
        scorer = IncrementalScorer(chain, plan, size=size, stride=stride,
                                   probe_module=probe_module, device=images.device)
    except NotEligibleError as err:
        if forced:
            why = "incremental=True" if incremental else f"approximate={approximate}"
            fix = ("leave approximate out" if approximate is not None
                   else "pass incremental=None (automatic) or False")
            raise ValueError(
                f"{why}: {type(model).__name__} is not eligible for incremental occlusion: "
                f"{err}. For full forward passes, {fix}."
            ) from None
        return None
    if not forced and plan.expected_gain < _AUTO_MIN_GAIN:
        return None
    return scorer
