"""zflight.analysis.histograms: per-unit histograms of each image's strongest activation, streamed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zflight.analysis import HistogramRecorder, top_activations


class _Maps(nn.Module):
    """Outputs the input itself as feature maps: each image's per-channel maximum is known."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _maxima(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).amax(2).t().double()  # [C, N]


def test_counts_every_image_once_and_each_within_one_fine_bin_of_its_value():
    torch.manual_seed(0)
    # Later batches reach far outside the first batch's range: the bins widen several times.
    x = torch.cat([torch.rand(10, 3, 4, 4), 50 * torch.rand(30, 3, 4, 4) - 20, 400 * torch.rand(10, 3, 4, 4)])
    model = _Maps()
    with HistogramRecorder(model, {"layer": None}, bins=64) as rec:
        for batch in x.split(10):
            model(batch)
    hist = rec.result()["layer"]
    true = _maxima(x)
    assert hist.images == 50 and hist.counts.sum(1).tolist() == [50, 50, 50]
    assert torch.equal(hist.minimum, true.amin(1)) and torch.equal(hist.maximum, true.amax(1))
    # Each value's fine bin: its true place, give or take one bin width.
    edges = hist.low[:, None] + torch.arange(65, dtype=torch.float64) * hist.width[:, None]
    for c in range(3):
        cum = hist.counts[c].cumsum(0)
        for j in range(64):
            right, w = edges[c, j + 1], hist.width[c]
            # The images counted left of this edge: all those a bin further left, none a bin further right.
            assert int((true[c] < right - w).sum()) <= cum[j] <= int((true[c] < right + w).sum())


def test_memory_is_units_times_bins_whatever_the_number_of_images():
    model = _Maps()
    with HistogramRecorder(model, {"layer": [0, 2]}, bins=32) as rec:
        for _ in range(20):
            model(torch.randn(50, 3, 2, 2))
    hist = rec.result()["layer"]
    assert hist.counts.shape == (2, 32) and hist.images == 1000 and hist.channels.tolist() == [0, 2]


def test_coarse_bins_span_the_exact_range_and_keep_every_count():
    torch.manual_seed(1)
    x = torch.rand(200, 2, 3, 3)
    model = _Maps()
    with HistogramRecorder(model, {"layer": None}, bins=256) as rec:
        model(x)
    coarse = rec.result()["layer"].coarse(4)
    reference = torch.stack([torch.histc(m, bins=4, min=float(m.min()), max=float(m.max())) for m in _maxima(x)])
    assert coarse.sum(1).tolist() == [200, 200]
    assert (coarse - reference.long()).abs().max() <= 2  # within one fine bin at the coarse edges


def test_rides_on_top_activations_pass_and_removes_its_hooks():
    model = _Maps()
    data = [(torch.rand(3, 4, 4), 0) for _ in range(12)]
    with HistogramRecorder(model, {"layer": None}) as rec:
        top = top_activations(model, data, "layer", k=3, batch_size=5, progress=False)
    hist = rec.result()["layer"]
    assert hist.images == 12 and torch.allclose(hist.maximum.float(), top.values[:, 0])
    assert not model.layer._forward_hooks


def test_hooks_are_removed_when_the_forward_raises():
    model = _Maps()
    with pytest.raises(RuntimeError, match="boom"), HistogramRecorder(model, {"layer": None}):
        raise RuntimeError("boom")
    assert not model.layer._forward_hooks


def test_bad_bins_and_unknown_layer_name_the_argument():
    with pytest.raises(ValueError, match="bins must be an int >= 2"):
        HistogramRecorder(_Maps(), {"layer": None}, bins=1)
    with pytest.raises(ValueError):
        HistogramRecorder(_Maps(), {"nowhere": None})
