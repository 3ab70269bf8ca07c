"""figures: display normalization, Fig. 2 panel layout, Fig. 4 grid, filter grid, PNG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zflight.figures import (
    evolution_grid,
    filter_grid,
    normalize_projection,
    save_png,
    to_uint8,
    top_activation_panel,
)


def test_normalization_centers_zero_and_scales_each_projection_alone():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 0, 0] = -4.0
    x[0, 1, 1, 1] = 2.0
    x[1, 2, 2, 2] = 0.001
    out = normalize_projection(x)
    assert out[0, 0, 0, 0] == 0.0 and out[0, 1, 1, 1] == 0.75
    assert out[0, 2, 3, 3] == 0.5  # zero is mid gray
    assert out[1, 2, 2, 2] == 1.0  # a tiny projection is scaled up on its own
    assert torch.equal(normalize_projection(torch.zeros(3, 5, 5)), torch.full((3, 5, 5), 0.5))
    # a batch normalizes like its members one at a time
    assert torch.equal(out[1], normalize_projection(x[1]))


def test_panel_puts_projections_left_and_patches_right_of_each_map():
    m, k, t = 2, 9, 6
    proj = torch.zeros(m, k, 3, t, t)
    proj[:, :, 0] = 1.0  # normalized: red channel 1, others 0.5
    patches = torch.zeros(m, k, 3, t, t)  # black
    panel = top_activation_panel(proj, patches, maps_per_row=2, min_tile=1)
    # one cell: 3 tiles + 4 gaps wide per block, two blocks and the block gap
    block = 3 * t + 4 * 1
    cell_w = 2 * block + 3
    assert panel.shape == (3, block + 2 * 8, 2 * cell_w + 3 * 8)
    first_tile = panel[:, 8 + 1 : 8 + 1 + t, 8 + 1 : 8 + 1 + t]
    assert torch.allclose(first_tile[0], torch.ones(t, t)) and torch.allclose(first_tile[1], torch.full((t, t), 0.5))
    x_patch = 8 + block + 3 + 1
    assert torch.equal(panel[:, 8 + 1 : 8 + 1 + t, x_patch : x_patch + t], torch.zeros(3, t, t))


def test_normalization_saturates_the_strongest_percent_and_spreads_the_rest():
    # one projection [1, 10, 20] with |x| = 2..200 and an outlier of 1000: its 99th percentile
    # (the 198th of 200 magnitudes) is 199
    x = torch.arange(1.0, 201.0).reshape(1, 10, 20)
    x[0, 0, 0] = -1000.0  # the outlier saturates instead of greying out everything else
    out = normalize_projection(x)
    assert out[0, 0, 0] == 0.0 and out[0, 9, 19] == 1.0
    assert out[0, 7, 9] == pytest.approx(0.5 + 0.5 * 150 / 199)
    # the floor: a sparse projection is scaled by a tenth of its peak, not by its (zero) percentile
    sparse = torch.zeros(1, 20, 20)
    sparse[0, 3, 3], sparse[0, 5, 5] = 10.0, 0.5
    shown = normalize_projection(sparse)
    assert shown[0, 3, 3] == 1.0 and shown[0, 5, 5] == pytest.approx(0.75)
    assert normalize_projection(x, percentile=100.0)[0, 9, 19] == pytest.approx(0.5 + 0.5 * 200 / 1000)
    with pytest.raises(ValueError, match="percentile"):
        normalize_projection(x, percentile=0.0)


def test_small_tiles_are_enlarged_by_nearest_neighbour_to_at_least_96_px():
    proj = torch.randn(2, 4, 3, 40, 40)
    panel = top_activation_panel(proj, torch.rand(2, 4, 3, 40, 40))
    # factor ceil(96 / 40) = 3: every source pixel becomes a 3 x 3 block
    tile = panel[:, 8 + 1 : 8 + 1 + 120, 8 + 1 : 8 + 1 + 120]
    expected = normalize_projection(proj[0, 0]).repeat_interleave(3, dim=1).repeat_interleave(3, dim=2)
    assert torch.equal(tile, expected)
    grid = evolution_grid([torch.randn(2, 3, 100, 100)])
    assert grid.shape[1:] == (2 * (100 + 2) + 2, 100 + 4)  # already large: not enlarged


def test_captions_and_titles_are_drawn_above_cells_and_beside_rows():
    proj, patches = torch.randn(2, 9, 3, 8, 8), torch.rand(2, 9, 3, 8, 8)
    plain = top_activation_panel(proj, patches)
    captioned = top_activation_panel(proj, patches, captions=["conv5 unit 3", "conv5 unit 7"], title="conv5, epoch 2")
    assert captioned.shape[2] == plain.shape[2] and captioned.shape[1] == plain.shape[1] + 16 + 18
    top = captioned[:, : 18 + 16 + 8]  # title and caption strips: white paper, black text
    assert top.min() < 0.2 and (top == 1.0).float().mean() > 0.8
    cols = [torch.randn(3, 3, 8, 8) for _ in range(2)]
    grid = evolution_grid(cols, labels=["epoch 1", "epoch 2"])
    rows = evolution_grid(cols, labels=["epoch 1", "epoch 2"], row_labels=["unit 0", "unit 1", "unit 2"])
    assert rows.shape[1] == grid.shape[1] and rows.shape[2] > grid.shape[2]
    assert rows[:, :, : rows.shape[2] - grid.shape[2]].min() < 0.2  # the labels' ink
    with pytest.raises(ValueError, match="captions"):
        top_activation_panel(proj, patches, captions=["one"])
    with pytest.raises(ValueError, match="row_labels"):
        evolution_grid(cols, row_labels=["unit 0"])


def test_panel_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        top_activation_panel(torch.zeros(2, 9, 3, 4, 4), torch.zeros(2, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="maps_per_row"):
        top_activation_panel(torch.zeros(2, 9, 3, 4, 4), torch.zeros(2, 9, 3, 4, 4), maps_per_row=0)


def test_evolution_grid_has_a_row_per_map_and_a_column_per_epoch():
    t = 8
    cols = [torch.full((3, 3, t, t), float(e + 1)) for e in range(4)]
    for e, c in enumerate(cols):
        c[:, :, 0, 0] = -1.0 * (e + 1)
    grid = evolution_grid(cols, min_tile=1)
    pad = 2
    assert grid.shape == (3, 3 * (t + pad) + pad, 4 * (t + pad) + pad)
    # every tile normalized alone: its max is white, its min black
    tile = grid[:, pad + (t + pad) * 2 : pad + (t + pad) * 2 + t, pad + (t + pad) * 3 : pad + (t + pad) * 3 + t]
    assert tile[:, 0, 0].eq(0.0).all() and tile[:, 1, 1].eq(1.0).all()
    labelled = evolution_grid(cols, labels=["1", "2", "5", "10"], min_tile=1)
    assert labelled.shape[1] > grid.shape[1] and labelled.shape[2] == grid.shape[2]
    # uint8 display tiles pass through unchanged with normalize=False
    ready = [to_uint8(normalize_projection(c)) for c in cols]
    assert torch.allclose(evolution_grid(ready, normalize=False, min_tile=1), grid, atol=1 / 255)
    with pytest.raises(ValueError, match="labels"):
        evolution_grid(cols, labels=["1"])
    with pytest.raises(ValueError, match="columns"):
        evolution_grid([])


def test_filter_grid_enlarges_each_filter_and_keeps_colour():
    w = torch.randn(10, 3, 7, 7)
    grid = filter_grid(w, nrow=5)
    assert grid.shape == (3, 2 * (28 + 2) + 2, 5 * (28 + 2) + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    assert filter_grid(torch.randn(4, 1, 5, 5)).shape[0] == 3
    with pytest.raises(ValueError, match="weight"):
        filter_grid(torch.randn(4, 16, 3, 3))


def test_png_round_trip(tmp_path):
    img = torch.rand(3, 10, 12)
    path = save_png(img, tmp_path / "sub" / "a.png")
    back = np.asarray(Image.open(path))
    assert back.shape == (10, 12, 3)
    assert np.array_equal(back, to_uint8(img).permute(1, 2, 0).numpy())
    assert not list((tmp_path / "sub").glob(".*tmp"))


def test_images_work_with_summary_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        writer.add_image("panel", top_activation_panel(torch.randn(1, 9, 3, 4, 4), torch.rand(1, 9, 3, 4, 4)), 0)
        writer.add_image("grid", evolution_grid([torch.randn(2, 3, 4, 4)], labels=["1"]), 0)
