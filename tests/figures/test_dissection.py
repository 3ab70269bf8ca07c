"""Dissection figures: unit captions with label and IoU, and Bau et al.'s Fig. 2 panel."""

from __future__ import annotations

import pytest
import torch

from zflight.analysis.dissection import Dissection, LayerDissection, UnitExamples
from zflight.figures.dissection import _EDGE, dissection_panel, unit_caption, unit_label


def _result() -> Dissection:
    iou = torch.tensor([[0.21, 0.01], [0.02, 0.03]], dtype=torch.float64)
    layer = LayerDissection(
        name="features.conv5", feature_size=(4, 4), iou=iou, thresholds=torch.tensor([1.0, 2.0]),
        labels=["object/ring", "color/red"], best_iou=iou.amax(dim=1), detectors=iou.amax(dim=1) > 0.04,
    )
    return Dissection(layers={"conv5": layer}, concepts=["object/ring", "color/red"], quantile=0.005,
                      iou_threshold=0.04, num_images=3, image_size=(8, 8))


def test_captions_carry_label_and_iou_and_mark_non_detectors():
    r = _result()
    assert unit_caption("conv5", 0, r) == "conv5 unit 0 · object/ring 0.21"
    assert unit_caption("conv5", 1, r) == "conv5 unit 1 · (color/red 0.03)"
    assert unit_caption("conv5", 0, r, prefix="unit 0") == "unit 0 · object/ring 0.21"
    # By dotted name, by its end, and nothing for what the dissection does not hold.
    assert unit_label(r, "features.conv5", 0) == "object/ring 0.21"
    assert unit_caption("conv4", 0, r) == "conv4 unit 0"
    assert unit_caption("conv5", 7, r) == "conv5 unit 7"
    assert unit_caption("conv5", 0, None) == "conv5 unit 0"


def _examples(u: int = 3, k: int = 2, size: int = 16) -> UnitExamples:
    images = torch.full((u, k, 3, size, size), 0.2)
    masks = torch.zeros(u, k, size, size, dtype=torch.bool)
    masks[:, :, 4:12, 4:12] = True
    return UnitExamples(
        layer="conv5", units=torch.arange(u), labels=["object/ring"] * u,
        iou=torch.full((u,), 0.21, dtype=torch.float64), detectors=torch.ones(u, dtype=torch.bool),
        indices=torch.zeros(u, k, dtype=torch.long), images=images, masks=masks,
    )


def test_panel_keeps_the_mask_dims_the_rest_and_outlines_the_edge():
    ex = _examples()
    plain = dissection_panel(ex, units_per_row=3, min_tile=16)
    titled = dissection_panel(ex, units_per_row=3, min_tile=16, title="conv5")
    assert plain.shape[0] == 3 and titled.shape[1] > plain.shape[1]
    assert float(plain.min()) >= 0 and float(plain.max()) <= 1
    pixels = plain[:, 8 + 16 :].permute(1, 2, 0).reshape(-1, 3)  # below the gap and the caption
    edge = torch.tensor(_EDGE)
    # Per tile: an 8x8 mask, its 28 edge pixels yellow, its 36 inner ones unchanged (0.2), and the
    # 192 outside dimmed towards white (0.6); 3 units x 2 images.
    assert int((pixels - edge).abs().amax(dim=1).lt(1e-6).sum()) == 6 * 28
    assert int((pixels - 0.2).abs().amax(dim=1).lt(1e-6).sum()) == 6 * 36
    assert int((pixels - 0.6).abs().amax(dim=1).lt(1e-6).sum()) == 6 * 192
    # The caption strip is drawn: black text above the tiles.
    assert float(plain[:, :20].min()) < 0.2


def test_panel_enlarges_small_tiles_and_checks_its_input():
    ex = _examples(u=1, k=3, size=8)
    assert dissection_panel(ex, min_tile=32).shape[2] > 3 * 32
    bad = UnitExamples(**{**ex.__dict__, "masks": ex.masks[:, :2]})
    with pytest.raises(ValueError, match="examples.images"):
        dissection_panel(bad)
    with pytest.raises(ValueError, match="units_per_row"):
        dissection_panel(ex, units_per_row=0)


def test_a_mask_scored_at_half_the_image_size_is_drawn_as_blocks_of_its_pixels():
    full = _examples()
    half = UnitExamples(**{**full.__dict__, "masks": full.masks[:, :, ::2, ::2].clone()})  # 8x8, 2x2 blocks
    assert half.masks.shape[-2:] == (8, 8)
    assert torch.equal(dissection_panel(half, min_tile=16), dissection_panel(full, min_tile=16))
