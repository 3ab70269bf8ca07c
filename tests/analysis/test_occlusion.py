"""occlusion_maps: equals a one-position-at-a-time loop, its grid, layer semantics, Captum, errors;
the occlusion figure, CLI, callback and object-box check."""

from __future__ import annotations

import torch

from zflight.attribution.occlusion import OcclusionMaps


# ------------------------------------------------------------------------------ object boxes
def _box_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "occlusion_box.py"
    spec = importlib.util.spec_from_file_location("occlusion_box", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_object_box_criteria():
    object_hits = _box_benchmark().object_hits
    # 1 image 20×20, square 4, stride 4: grid 5×5. Lowest probability at (r, c) = (1, 2):
    # the square covers x 8..11, y 4..7, center (10, 6).
    prob = torch.ones(1, 5, 5)
    prob[0, 1, 2] = 0.1
    maps = OcclusionMaps(
        prob=prob, label=torch.zeros(1, 5, 5, dtype=torch.int64), activation=None, channel=None,
        targets=torch.zeros(1, dtype=torch.int64), base_prob=torch.ones(1),
        base_label=torch.zeros(1, dtype=torch.int64), base_activation=None, size=4, stride=4,
        image_size=(20, 20), layer=None,
    )
    for box, overlap, center in [
        ((11, 7, 15, 15), True, False),   # shares pixel (11, 7) only
        ((12, 4, 16, 8), False, False),   # touches the square's right edge: no shared pixel
        ((10, 6, 11, 7), True, True),     # a 1-pixel box at the center
        ((0, 0, 10, 6), True, False),     # ends just before the center (exclusive)
    ]:
        hits = object_hits(maps, torch.tensor([box]))
        assert bool(hits["overlap"][0]) is overlap and bool(hits["center"][0]) is center, box
        assert abs(float(hits["drop"][0]) - 0.9) < 1e-6
    hits = object_hits(maps, torch.tensor([(0, 0, 20, 20)]))
    assert float(hits["chance_overlap"][0]) == 1.0 == float(hits["chance_center"][0])
