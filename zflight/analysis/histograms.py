"""Each unit's strongest activation per image, as a histogram accumulated while streaming.

The unit explorer draws, for every unit, the histogram of its strongest activation on each
image mined. Keeping those maxima (one number per image and unit) grows with the data set:
5,000 images × 3,840 units of a ResNet-50 are 19 million numbers, and as the ``k`` of
:func:`~zflight.analysis.top_activations` (with its indices and positions) several hundred MB.
:class:`HistogramRecorder` keeps instead a fixed number of fine bins per unit (``bins``, 256 by
default), so its memory is ``units × bins`` counts whatever the number of images.

The bins' range follows the data: it starts at the first batch's range and, when a later value
falls outside, widens (at least doubling the bin width) and moves the old counts into the new
bins by their centres. So every count is kept, and an image is counted within one fine bin of
its exact place; :meth:`ActivationHistograms.coarse` then re-bins the fine bins into the few
bins a page draws, between each unit's exact smallest and largest maximum.

The recorder is a forward hook on the layers: it rides along any forward pass (the one of
:func:`~zflight.analysis.top_activations`, typically), so the histograms cost no second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zflight.attribution._layers import resolve_layer

__all__ = ["ActivationHistograms", "HistogramRecorder"]


@dataclass(frozen=True)
class ActivationHistograms:
    """Per unit of one layer: how many images had their strongest activation in each fine bin.

    Attributes:
        layer: the layer's name as given to the recorder.
        channels: ``[C]`` the units (channel indices).
        counts: ``[C, bins]`` images per fine bin (each row sums to ``images``).
        low: ``[C]`` the left edge of each unit's first fine bin.
        width: ``[C]`` each unit's fine-bin width.
        minimum: ``[C]`` the smallest per-image maximum seen (exact).
        maximum: ``[C]`` the largest per-image maximum seen (exact: the unit's top-1 activation).
        images: the number of images counted.
    """

    layer: str
    channels: torch.Tensor
    counts: torch.Tensor
    low: torch.Tensor
    width: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    images: int

    def coarse(self, bins: int = 24) -> torch.Tensor:
        """Return ``[C, bins]`` counts over ``bins`` equal bins from each unit's minimum to its maximum.

        A fine bin goes to the coarse bin holding its centre (clamped to the ends).

        Example:
            >>> hist.coarse(24).sum(1)  # doctest: +SKIP
            tensor([500, 500, ...])
        """
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        centres = self.low[:, None] + (torch.arange(self.counts.shape[1], dtype=torch.float64) + 0.5) * self.width[:, None]
        span = (self.maximum - self.minimum).clamp_min(1e-12)
        slot = ((centres - self.minimum[:, None]) / span[:, None] * bins).floor().clamp(0, bins - 1).long()
        out = torch.zeros(self.counts.shape[0], bins, dtype=torch.int64)
        return out.scatter_add_(1, slot, self.counts)


class HistogramRecorder:
    """A context manager that counts each image's strongest activation per unit during forward passes.

    Every forward pass of ``model`` inside the ``with`` block that reaches a recorded layer
    adds its images to that layer's histograms (each image once per pass: run the data set
    through once). The hooks are removed on exit, even after an error.

    Args:
        model: the network.
        layers: ``{name: channels}``: a layer's dotted name (a unique suffix works) and the
            channel indices to record (``None``: all of them).
        bins: fine bins per unit (memory: ``units × bins`` int64 counts).

    Example:
        >>> with HistogramRecorder(model, {"conv5": None}) as rec:  # doctest: +SKIP
        ...     top = top_activations(model, dataset, "conv5", progress=False)
        >>> rec.result()["conv5"].coarse(24).shape  # doctest: +SKIP
        torch.Size([32, 24])
    """

    def __init__(self, model: nn.Module, layers: dict[str, Sequence[int] | None], *, bins: int = 256) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        self.bins = bins
        self._modules = {name: resolve_layer(model, name)[1] for name in layers}
        self._channels = {name: None if c is None else torch.as_tensor(list(c), dtype=torch.int64)
                          for name, c in layers.items()}
        self._state: dict[str, dict[str, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> HistogramRecorder:
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                self.add(name, out)
        return hook

    def add(self, name: str, out: torch.Tensor) -> None:
        """Count a batch of the layer's output (``[N, C, H, W]`` or ``[N, C]``) in ``name``'s histograms."""
        fmap = out.detach()
        if fmap.dim() == 2:
            fmap = fmap[:, :, None, None]
        chans = self._channels[name]
        if chans is not None:
            fmap = fmap.index_select(1, chans.to(fmap.device))
        values = fmap.flatten(2).amax(dim=2).to("cpu", torch.float64).t()  # [C, N]
        state = self._state.get(name)
        if state is None:
            c = values.shape[0]
            lo, hi = values.amin(1), values.amax(1)
            state = self._state[name] = {
                "counts": torch.zeros(c, self.bins, dtype=torch.int64),
                "low": lo.clone(), "width": ((hi - lo) / self.bins).clamp_min(1e-6 * (1 + hi.abs())),
                "min": lo.clone(), "max": hi.clone(), "images": 0,
                "channels": chans if chans is not None else torch.arange(c),
            }
        self._widen(state, values.amin(1), values.amax(1))
        slot = ((values - state["low"][:, None]) / state["width"][:, None]).floor().clamp(0, self.bins - 1).long()
        state["counts"].scatter_add_(1, slot, torch.ones_like(slot))
        state["min"] = torch.minimum(state["min"], values.amin(1))
        state["max"] = torch.maximum(state["max"], values.amax(1))
        state["images"] += values.shape[1]

    def _merge_ranks(self, state: dict[str, Any]) -> None:
        """Sum the ranks' counts in one common range (every rank calls it, in the same layer order)."""
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        lo = state["min"].to(device)
        hi = state["max"].to(device)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        self._widen(state, lo.cpu(), hi.cpu())
        # Same low for all: widen from the common minimum, then the widest rank's bin width.
        width = state["width"].to(device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        low = lo.cpu()
        centres = state["low"][:, None] + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * state["width"][:, None]
        slot = ((centres - low[:, None]) / width.cpu()[:, None]).floor().clamp(0, self.bins - 1).long()
        counts = torch.zeros_like(state["counts"]).scatter_add_(1, slot, state["counts"]).to(device)
        images = torch.tensor([state["images"]], device=device)
        dist.all_reduce(counts)
        dist.all_reduce(images)
        state.update(counts=counts.cpu(), low=low, width=width.cpu(), min=lo.cpu(), max=hi.cpu(),
                     images=int(images.item()))

    def _widen(self, state: dict[str, Any], lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Widen the units whose range misses ``[lo, hi]``; their counts move by bin centre."""
        low, width = state["low"], state["width"]
        new_low = torch.minimum(low, lo)
        span = torch.maximum(low + width * self.bins, hi) - new_low
        grow = span > width * self.bins
        if not bool(grow.any()):
            return
        # At least double: a range that creeps up a little each batch is re-binned a few times,
        # not once per batch, and each fine bin lands whole in one new bin.
        new_width = torch.where(grow, torch.maximum(2 * width, span * (1 + 1e-9) / self.bins), width)
        new_low = torch.where(grow, new_low, low)
        centres = low[:, None] + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width[:, None]
        slot = ((centres - new_low[:, None]) / new_width[:, None]).floor().clamp(0, self.bins - 1).long()
        moved = torch.zeros_like(state["counts"]).scatter_add_(1, slot, state["counts"])
        state["counts"] = torch.where(grow[:, None], moved, state["counts"])
        state["low"], state["width"] = new_low, new_width

    def result(self) -> dict[str, ActivationHistograms]:
        """Return ``{name: ActivationHistograms}`` of the layers that saw at least one batch.

        Under ``torch.distributed`` (each rank streamed its shard of the images), every rank
        must call it: the ranks' bins are widened to one common range and their counts summed,
        so every rank returns the histograms of all the images.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for name in sorted(self._state):
                self._merge_ranks(self._state[name])
        return {
            name: ActivationHistograms(
                layer=name, channels=s["channels"].cpu(), counts=s["counts"].clone(), low=s["low"].clone(),
                width=s["width"].clone(), minimum=s["min"].clone(), maximum=s["max"].clone(), images=s["images"],
            )
            for name, s in self._state.items()
        }
