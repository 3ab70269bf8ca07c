"""FeatureEvolution's stored columns (the callback's runs are in test_common.py)."""

from __future__ import annotations

import torch

from zflight.callbacks.evolution import _storable
from zflight.figures import normalize_projection


def test_stored_columns_keep_projections_too_small_for_float16():
    # Deep layers of a network at the paper's N(0, 1e-2) start project to ~1e-9 at 224 px:
    # float16 rounds that to zero, which would draw the first epochs' tiles uniformly gray.
    raw = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1e-9
    assert not raw.to(torch.float16).any()
    stored = _storable(raw)
    assert stored.dtype == torch.float16
    torch.testing.assert_close(normalize_projection(stored.float()), normalize_projection(raw), atol=2e-3, rtol=0)
