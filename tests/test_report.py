"""zflight.build_report: the unit explorer from a model and a data set, called from Python."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from zflight import build_report, zfnet
from zflight.data import ShapesDataset


class _Unlabelled(torch.utils.data.Dataset):
    """Shapes images with label -1 (a flat folder: no labels)."""

    def __init__(self, n: int) -> None:
        self.base = ShapesDataset(n, image_size=64, seed=2)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i][0], -1


def _net() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64)


def test_a_feature_extractor_gets_unit_pages_and_one_line_instead_of_the_image_section(tmp_path):
    trunk = _net().features  # feature maps out, no class scores
    trunk.train()
    index = build_report(trunk, ShapesDataset(6, image_size=64, seed=1), tmp_path / "site", layers=["conv1", "conv5"],
                         units=2, classifier=False, dissect_images=0, progress=False,
                         facts={"source": "a backbone", "weights": "random"})
    page = index.read_text()
    assert "No occlusion maps: the model is not a classifier: occlusion probabilities and explanation scores " \
           "need class scores." in page
    assert "<th>source</th><td>a backbone</td>" in page and "accuracy" not in page
    assert not (tmp_path / "site" / "images").exists()
    units = json.loads((tmp_path / "site" / "report.json").read_text())["layers"][1]["units"]
    assert [u["unit"] for u in units] == [0, 1] and len(units[0]["values"]) == 6
    assert trunk.training and all(not m._forward_hooks for m in trunk.modules())  # left as found


def test_labels_that_are_not_the_models_classes_track_the_predicted_class(tmp_path):
    model = _net().eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias[7] += 100.0  # one decisive prediction: class 7, whatever the image
    data = _Unlabelled(4)
    build_report(model, data, tmp_path / "site", layers=["conv5"], units=1, occlusion_images=1, dissect_images=0,
                 progress=False)
    doc = json.loads((tmp_path / "site" / "report.json").read_text())
    assert "the tracked class is the predicted one" in doc["occlusion"]
    assert doc["images"][0]["target"] == doc["images"][0]["predicted"] == "class 7"  # not the label -1
    assert ["accuracy", "not computed: the images' labels are not the model's classes"] in doc["facts"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": ["conv9"]}, "layers: "),
        ({"units": 0}, "units must be an int >= 1"),
        ({"occlusion_images": 9}, "occlusion_images: 9 is more than the 4 images"),
        ({"layers": ["conv1", "conv1"]}, "layers: a layer is named twice"),
    ],
)
def test_bad_arguments_name_the_argument_and_write_no_page(kwargs, message, tmp_path):
    args = {"layers": ["conv1"], **kwargs}
    with pytest.raises(ValueError, match=message):
        build_report(_net(), ShapesDataset(4, image_size=64), tmp_path / "site", progress=False, **args)
    assert not (tmp_path / "site" / "index.html").exists()
