import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.architecture import (
    architecture_report,
    dead_filters,
    filter_rms,
    inactive_channels,
    layer_projections,
    shift_aliasing,
    spectral_bands,
    stride_aliasing,
)
from zflight.models import zfnet


def _cosine_filter(k: int, size: int = 7) -> torch.Tensor:
    """A 7x7 filter varying along x at exactly DFT bin k: frequency k/7 cycles per pixel."""
    x = torch.arange(size, dtype=torch.float64)
    row = torch.cos(2 * math.pi * k * x / size)
    return row.expand(size, size).float()[None, None]


def test_dead_filter_is_found_by_rms():
    torch.manual_seed(0)
    w = torch.randn(12, 3, 7, 7)
    w[4] *= 1e-3
    assert dead_filters(w).nonzero().flatten().tolist() == [4]
    assert filter_rms(torch.full((1, 3, 2, 2), 0.5)).tolist() == [0.5]
    with pytest.raises(ValueError, match="weight"):
        dead_filters(torch.ones(3, 7, 7))


def test_spectral_bands_of_known_frequencies():
    # Normalized radius of bin k of 7 along x: (k/7)/0.5 = 2k/7 -> 0 (DC), .29 low, .57 mid, .86 high
    bank = torch.cat([torch.ones(1, 1, 7, 7), _cosine_filter(1), _cosine_filter(2), _cosine_filter(3)])
    bands = spectral_bands(bank)
    expected = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert torch.allclose(bands, expected, atol=1e-5)
    # A mixture: equal power in the mid and high cosines.
    mix = _cosine_filter(2) + _cosine_filter(3)
    assert torch.allclose(spectral_bands(mix), torch.tensor([[0.0, 0.5, 0.5]]), atol=1e-5)
    # Zero padded, a flat filter is a box whose sinc spectrum is mostly, not only, low.
    padded = spectral_bands(torch.ones(1, 3, 7, 7), n_fft=32)[0]
    assert padded[0] > 0.8 and padded.sum() == pytest.approx(1.0)


def test_stride_aliasing_of_known_frequencies():
    alternating = torch.tensor([1.0, -1.0, 1.0, -1.0]).expand(4, 4)[None, None]  # 0.5 cycles/px
    assert stride_aliasing(alternating, 2).item() == pytest.approx(1.0)
    assert stride_aliasing(alternating, 1).item() == pytest.approx(0.0)
    slow = _cosine_filter(1)  # 1/7 = 0.143 cycles/px: aliases at stride 4 (Nyquist 0.125), not 2
    assert stride_aliasing(slow, 4).item() == pytest.approx(1.0, abs=1e-5)
    assert stride_aliasing(slow, 2).item() == pytest.approx(0.0, abs=1e-5)


class _Sampler(nn.Module):
    """A 1x1 identity conv with the given stride: it just samples the image."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1, stride=stride, bias=False)))
        with torch.no_grad():
            self.features.conv.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_shift_aliasing_of_a_checkerboard_is_known():
    i = torch.arange(8)
    board = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float()[None, None]  # +-1 checkerboard
    # Sampling every 2nd pixel sees all +1 or all -1: every one-pixel step flips the mean, a
    # change of 2 relative to its norm 1.
    assert shift_aliasing(_Sampler(2), board, "conv", max_shift=3)["score"] == pytest.approx(2.0)
    # Sampling every pixel: the mean of a circularly shifted image never changes.
    assert shift_aliasing(_Sampler(1), board, "conv", max_shift=3)["score"] == pytest.approx(0.0, abs=1e-6)


def test_inactive_channel_is_found():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 3, 1), relu=nn.ReLU()))
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.weight[1] = 0.0
        model.conv.bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
    assert inactive_channels(model, torch.rand(4, 1, 5, 5) + 0.1, "relu").tolist() == [False, True, False]


def test_report_on_zfnet_restores_modes_and_removes_hooks():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").train()
    x = torch.randn(4, 3, 64, 64)
    report = architecture_report(model, x, max_shift=2)
    d = report.to_dict()
    json.dumps(d)
    assert d["stride"] == 2 and d["filter_layer"] == "features.conv1"
    assert sum(d["spectral_bands"].values()) == pytest.approx(1.0, abs=1e-5)
    assert len(d["shift_aliasing"]["per_shift"]["rows"]) == 2
    proj, channels, picks = layer_projections(model, x, "relu2", maps=3)
    assert proj.shape == (3, 3, 64, 64) and len(channels) == 3 and all(0 <= p < 4 for p in picks)
    assert model.training and all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="Conv2d"):
        architecture_report(model, x, filter_layer="relu1")
