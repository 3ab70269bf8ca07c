"""Winograd F(2x2, 3x3) convolution: the direct convolution's values to float rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zflight.attribution import _winograd
from zflight.attribution._winograd import winograd_conv3x3, winograd_weight


def _direct(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize(("h", "w"), [(3, 3), (8, 8), (9, 12), (17, 4)])
def test_equals_direct_convolution_for_even_and_odd_sizes(h, w):
    torch.manual_seed(0)
    x, wt, b = torch.randn(3, 130, h, w), torch.randn(20, 130, 3, 3) / 30, torch.randn(20)
    out = winograd_conv3x3(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(wt), b)
    ref = _direct(x, wt, b).permute(0, 2, 3, 1)
    assert out.shape == (3, h - 2, w - 2, 20) and out.is_contiguous()
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 2e-6


def test_float64_agrees_to_float64_rounding_without_bias():
    torch.manual_seed(1)
    x, wt = torch.randn(2, 5, 10, 11, dtype=torch.float64), torch.randn(4, 5, 3, 3,
                                                                      dtype=torch.float64)
    out = winograd_conv3x3(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(wt))
    ref = _direct(x, wt, None).permute(0, 2, 3, 1)
    assert out.dtype == torch.float64
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-13


def test_samples_beyond_the_cache_budget_run_in_chunks_with_the_same_values(monkeypatch):
    torch.manual_seed(2)
    x, wt, b = torch.randn(7, 16, 9, 9), torch.randn(8, 16, 3, 3) / 10, torch.randn(8)
    u, xl = winograd_weight(wt), x.permute(0, 2, 3, 1).contiguous()
    whole = winograd_conv3x3(xl, u, b)
    monkeypatch.setattr(_winograd, "_CHUNK_BYTES", 1)  # one sample per chunk
    calls = []
    real = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or real(*a))
    chunked = winograd_conv3x3(xl, u, b)
    assert len(calls) == 7
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-6)


def test_weight_that_is_not_3x3_is_refused():
    with pytest.raises(ValueError, match=r"weight must be \[C_out, C_in, 3, 3\], got \(4, 5, 5, 5\)"):
        winograd_weight(torch.randn(4, 5, 5, 5))
