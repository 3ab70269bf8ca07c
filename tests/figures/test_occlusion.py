"""occlusion_maps: equals a one-position-at-a-time loop, its grid, layer semantics, Captum, errors;
the occlusion figure, CLI, callback and object-box check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zflight import zfnet


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").eval()


# ------------------------------------------------------------------------------------ figure
def test_figure_has_five_panels_per_image_and_renders(model):
    from zflight.analysis.occlusion import occlusion_analysis, occlusion_record
    from zflight.figures import figure_to_tensor, occlusion_figure
    from zflight.data import ShapesDataset

    ds = ShapesDataset(4, image_size=64, seed=0)
    x = torch.stack([ds[i][0] for i in range(2)])
    maps, proj = occlusion_analysis(model, x, [ds[0][1], ds[1][1]], size=16, stride=16)
    assert maps.layer == "features.relu5" and proj.shape == x.shape
    fig = occlusion_figure(ds.denormalize(x), maps, proj, class_names=ds.classes)
    assert len(fig.axes) >= 10  # 2 rows × 5 panels (+ colorbars)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("relu5 map ") and t.endswith(": total") for t in titles)  # layer_label's name
    image = figure_to_tensor(fig)
    assert image.shape[0] == 3 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    record = occlusion_record(maps, 1, class_names=ds.classes, index=1)
    assert record["target_name"] == ds.classes[ds[1][1]] and record["index"] == 1
    assert len(record["prob"]) == 4 and len(record["activation"][0]) == 4
    assert record["lowest_prob"] == min(min(row) for row in record["prob"])
