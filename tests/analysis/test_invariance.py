import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.invariance import default_amounts, invariance_curves, transform_images
from zflight.models import zfnet


class _PixelsModel(nn.Module):
    """The 'feature' layer is the image itself; the head gives fixed logits (its bias)."""

    def __init__(self, h: int = 8, w: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Sequential(OrderedDict(flat=nn.Flatten(1), fc=nn.Linear(h * w, classes)))
        with torch.no_grad():
            self.head.fc.weight.zero_()
            self.head.fc.bias.copy_(torch.arange(classes, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


def _one_pixel(r: int, c: int, size: int = 8) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[0, 0, r, c] = 1.0
    return x


def test_translation_distance_of_a_single_pixel_is_known():
    # Moving one bright pixel within the image: two pixels differ by 1 -> sqrt(2); out of the
    # image: only the original differs -> 1. Relative = distance / ||x|| = distance.
    curves = invariance_curves(_PixelsModel(), _one_pixel(3, 3), [2], transform="translate",
                               amounts=[0, 1, -2, 5], layers=["feat"])
    d = curves.distance["feat"][0]
    assert torch.allclose(d, torch.tensor([0.0, math.sqrt(2), math.sqrt(2), 1.0]), atol=1e-5)
    assert torch.allclose(curves.relative["feat"][0], d, atol=1e-6)
    # The head ignores its input: p(label 2) = softmax([0, 1, 2])[2] at every amount.
    assert torch.allclose(curves.prob[0], torch.full((4,), torch.tensor([0.0, 1, 2]).softmax(0)[2].item()))
    assert curves.predicted[0].tolist() == [2, 2, 2, 2]


def test_translate_moves_down_and_fills():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = transform_images(x, "translate", 1, fill=-1.0)
    assert y[0, 0, 0].tolist() == [-1.0] * 4
    assert torch.allclose(y[0, 0, 1:], x[0, 0, :3])


def test_rotation_by_180_and_scale_of_a_constant_image_are_known():
    curves = invariance_curves(_PixelsModel(), _one_pixel(1, 2), [0], transform="rotate",
                               amounts=[0, 180], layers=["feat"])
    assert torch.allclose(curves.distance["feat"][0], torch.tensor([0.0, math.sqrt(2)]), atol=1e-4)
    ones = torch.ones(1, 1, 8, 8)
    curves = invariance_curves(_PixelsModel(), ones, [0], transform="scale", amounts=[1.0, 2.0, 0.5],
                               layers=["feat"])
    # Enlarging a constant image changes nothing; halving it leaves a 4x4 block of ones and 48
    # fill (0) pixels.
    assert torch.allclose(curves.distance["feat"][0], torch.tensor([0.0, 0.0, math.sqrt(48)]), atol=1e-4)
    assert torch.allclose(curves.relative["feat"][0], curves.distance["feat"][0] / 8.0, atol=1e-5)


def test_zfnet_paper_layers_modes_restored_and_hooks_removed():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").train()
    x = torch.randn(2, 3, 64, 64)
    curves = invariance_curves(model, x, [1, 2], transform="rotate", amounts=[0, 90])
    assert curves.layers == ["features.norm1", "classifier.relu7"]
    assert curves.distance["features.norm1"].shape == (2, 2)
    assert (curves.distance["features.norm1"][:, 0] == 0).all()
    assert (curves.distance["features.norm1"][:, 1] > 0).all()
    assert model.training and model.classifier.drop6.training
    assert all(not m._forward_hooks for m in model.modules())
    json.dumps(curves.to_dict())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(transform="shear"), "transform"),
        (dict(transform="scale", amounts=[1.0, 0.0]), "amounts"),
        (dict(amounts=[]), "amounts"),
        (dict(layers=["conv9"]), "conv9"),
        (dict(labels=[0, 12]), "labels"),
        (dict(labels=[0]), "labels"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, words):
    model = zfnet(num_classes=10, width=0.125, image_size=64)
    labels = kwargs.pop("labels", [0, 1])
    with pytest.raises(ValueError, match=words):
        invariance_curves(model, torch.zeros(2, 3, 64, 64), labels, **kwargs)


def test_default_amounts_include_the_identity():
    for t, identity in (("translate", 0.0), ("scale", 1.0), ("rotate", 0.0)):
        assert identity in default_amounts(t, 64)
