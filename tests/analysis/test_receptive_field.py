"""Receptive fields read off the model: ZFNet's analytic fields, ResNet-18's, exact boxes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from zflight import zfnet
from zflight.analysis import ReceptiveField, receptive_field


@pytest.fixture(scope="module")
def zf224() -> nn.Module:
    return zfnet(num_classes=10, width=0.125, image_size=224)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


# Analytic: conv1 7 (stride 2) -> pool1 7 + 2*2 = 11 (jump 4) -> conv2 11 + 4*4 = 27 (jump 8)
# -> pool2 27 + 2*8 = 43 (jump 16) -> conv3/4/5 +2*16 each -> pool5 139 + 2*16 = 171 (jump 32).
@pytest.mark.parametrize(
    "layer, size, stride, feature",
    [
        ("conv1", 7, 2, 110),
        ("relu1", 7, 2, 110),
        ("pool1", 11, 4, 55),
        ("norm1", 11, 4, 55),
        ("conv2", 27, 8, 26),
        ("pool2", 43, 16, 13),
        ("conv3", 75, 16, 13),
        ("conv4", 107, 16, 13),
        ("conv5", 139, 16, 13),
        ("pool5", 171, 32, 6),
    ],
)
def test_zfnet_fields_match_the_analytic_ones(zf224, layer, size, stride, feature):
    rf = receptive_field(zf224, layer, 224)
    assert rf.size == (size, size)
    assert rf.stride == (stride, stride)
    assert rf.feature_size == (feature, feature)
    assert not rf.covers_input


def test_zfnet_offsets_follow_the_padding(zf224):
    # conv1 pads by 1: position 0 starts one pixel above/left of the image; conv3 pads by 1 at
    # jump 16, moving the start by 16 more.
    assert receptive_field(zf224, "conv1", 224).offset == (-1, -1)
    assert receptive_field(zf224, "conv3", 224).offset == (-17, -17)


@pytest.mark.parametrize(
    "layer, size, stride",
    [("conv1", 7, 2), ("maxpool", 11, 4), ("layer1", 43, 4), ("layer2", 99, 8),
     ("layer3", 211, 16), ("layer4", 435, 32), ("layer2.0.downsample", 43, 8)],
)
def test_resnet18_fields_include_the_skip_connections(resnet, layer, size, stride):
    rf = receptive_field(resnet, layer, 224)
    assert (rf.size, rf.stride) == ((size, size), (stride, stride))


def test_global_pooling_and_linear_layers_see_the_whole_image(resnet):
    for layer in ("avgpool", "fc"):
        rf = receptive_field(resnet, layer, (96, 128))
        assert rf.covers_input
        assert rf.box(0, 0) == (0, 0, 96, 128)


def test_box_is_clipped_to_the_image(zf224):
    rf = receptive_field(zf224, "conv5", 224)
    assert rf.box(0, 0) == (0, 0, 139 - 49, 139 - 49)
    assert rf.box(6, 6) == (-49 + 96, -49 + 96, -49 + 96 + 139, -49 + 96 + 139)
    assert rf.box(12, 12) == (-49 + 192, -49 + 192, 224, 224)


class _Functional(nn.Module):
    """Functional calls only: 'same' padding, dilation, F.pad, two branches concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(2, 1, 3, 3))
        self.b = nn.Parameter(torch.ones(2, 2, 5, 5))
        self.c = nn.Parameter(torch.ones(2, 2, 1, 1))
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.a, padding="same", dilation=2)
        x = F.avg_pool2d(x, 2, stride=2)
        x = F.pad(x, (1, 2, 3, 0))
        wide = F.conv2d(x, self.b, stride=1, padding=2)
        narrow = F.conv2d(x, self.c)
        return self.out(torch.cat([wide, narrow], dim=1))


def _gradient_support(model: nn.Module, size: tuple[int, int], row: int, col: int, channels=None):
    x = torch.ones(1, 1, *size, requires_grad=True)
    out = model(x)
    sel = out[0, :, row, col] if channels is None else out[0, channels, row, col]
    (g,) = torch.autograd.grad(sel.sum(), x)
    nz = g[0].abs().sum(0).nonzero()
    return (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)


def test_box_equals_the_exact_support_of_a_linear_positive_network():
    # With positive weights and no max/ReLU, the gradient reaches exactly the receptive field.
    model = _Functional()
    size = (40, 36)
    rf = receptive_field(model, "out", size, in_channels=1)
    # Interior positions: at the border, padding added after a pooling makes the standard
    # grid extrapolation (and so the box) reach pixels that only padded positions would see.
    for row, col in [(5, 7), (8, 6), (10, 10)]:
        assert rf.box(row, col) == _gradient_support(model, size, row, col)
    # Dilated 3x3 -> 5 px; 2x2 pool -> 6 px, jump 2; the 5x5 branch -> 6 + 4*2 = 14 px. The 1x1
    # branch alone would see 6 px: the union over the concatenation is the wider one.
    assert rf.size == (14, 14)


def test_gradient_support_of_zfnet_and_resnet_lies_inside_the_box(resnet):
    zf = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").eval()
    for model, layer, pos in [(zf, "conv5", (1, 2)), (resnet.eval(), "layer2", (2, 3))]:
        rf = receptive_field(model, layer, 64)
        module = dict(model.named_modules())[rf.layer]
        captured = {}
        h = module.register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
        x = torch.randn(1, 3, 64, 64, requires_grad=True)
        try:
            model(x)
        finally:
            h.remove()
        (g,) = torch.autograd.grad(captured["o"][0, :, pos[0], pos[1]].sum(), x)
        nz = g[0].abs().sum(0).nonzero()
        y0, x0, y1, x1 = rf.box(*pos)
        assert nz.numel() > 0
        assert int(nz[:, 0].min()) >= y0 and int(nz[:, 0].max()) < y1
        assert int(nz[:, 1].min()) >= x0 and int(nz[:, 1].max()) < x1


def test_training_flags_are_restored_and_no_running_stats_change(resnet):
    model = resnet.train()
    before = model.bn1.running_mean.clone()
    receptive_field(model, "layer1", 64)
    assert all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, before)


def test_errors_name_the_argument(zf224):
    with pytest.raises(ValueError, match="input_size"):
        receptive_field(zf224, "conv1", (0, 3))
    with pytest.raises(ValueError, match="conv9"):
        receptive_field(zf224, "conv9", 224)
    rf = receptive_field(zf224, "pool5", 224)
    with pytest.raises(ValueError, match="row=6"):
        rf.box(6, 0)
    assert isinstance(rf, ReceptiveField)
