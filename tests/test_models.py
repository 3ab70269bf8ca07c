import pytest
import torch
from torch import nn

from zflight import alexnet_zf, build_model, renormalize_filters, zfnet

PAPER_SIZES = {  # Fig. 3 of the paper, at 224x224
    "conv1": (96, 110),
    "pool1": (96, 55),
    "conv2": (256, 26),
    "pool2": (256, 13),
    "conv3": (384, 13),
    "conv4": (384, 13),
    "conv5": (256, 13),
    "pool5": (256, 6),
}


def _feature_shapes(model: nn.Module, size: int) -> dict[str, tuple[int, int]]:
    shapes = {}
    x = torch.zeros(1, 3, size, size, device="meta")
    for name, layer in model.features.named_children():
        x = layer(x)
        shapes[name] = (x.shape[1], x.shape[2])
        assert x.shape[2] == x.shape[3]
    return shapes


def test_zfnet_feature_map_sizes_match_paper_fig3():
    shapes = _feature_shapes(zfnet(), 224)
    assert {k: shapes[k] for k in PAPER_SIZES} == PAPER_SIZES


def test_zfnet_parameter_count_at_1000_classes():
    assert sum(p.numel() for p in zfnet().parameters()) == 62_357_608


def test_zfnet_layers_have_config_names_and_fc_widths():
    model = zfnet()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    expected = {f"conv{i}" for i in range(1, 6)} | {f"relu{i}" for i in range(1, 8)}
    expected |= {"pool1", "pool2", "pool5", "norm1", "norm2", "fc6", "fc7", "fc8"}
    assert expected <= names
    assert model.classifier.fc6.in_features == 6 * 6 * 256
    assert model.classifier.fc7.out_features == 4096
    assert model.classifier.drop6.p == 0.5 and model.classifier.drop7.p == 0.5


def test_relus_are_not_in_place():
    for builder in (zfnet, alexnet_zf):
        relus = [m for m in builder().modules() if isinstance(m, nn.ReLU)]
        assert len(relus) == 7 and not any(r.inplace for r in relus)


def test_alexnet_zf_has_krizhevsky_first_layers_and_same_head():
    model = alexnet_zf()
    c1, c2 = model.features.conv1, model.features.conv2
    assert (c1.kernel_size, c1.stride, c2.kernel_size, c2.stride) == ((11, 11), (4, 4), (5, 5), (1, 1))
    shapes = _feature_shapes(model, 224)
    assert shapes["conv1"] == (96, 55) and shapes["pool2"] == (256, 13) and shapes["pool5"] == (256, 6)


def test_zfnet_variant_b_widens_layers_3_to_5():
    model = build_model("zfnet_b")
    assert [getattr(model.features, n).out_channels for n in ("conv3", "conv4", "conv5")] == [512, 1024, 512]


def test_width_and_image_size_scale_channels_and_fc6():
    model = zfnet(num_classes=10, width=0.25, image_size=64)
    assert model.features.conv1.out_channels == 24
    assert model.features.conv5.out_channels == 64
    assert model.classifier.fc6.out_features == 1024
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_paper_init_draws_weights_with_std_1e2_and_zero_biases():
    torch.manual_seed(0)
    model = zfnet()
    w = model.classifier.fc6.weight
    assert abs(w.std().item() - 1e-2) < 1e-4
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_renormalize_filters_clips_rms_to_radius_and_leaves_small_filters():
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0].fill_(1.0)  # rms 1.0 -> rescaled
        conv.weight[1].fill_(0.05)  # rms 0.05 -> kept
        conv.weight[2].fill_(-0.3)  # rms 0.3 -> rescaled, sign kept
    before = conv.weight.detach().clone()
    assert renormalize_filters(conv, radius=0.1) == 2
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms[:3], torch.tensor([0.1, 0.05, 0.1]))
    torch.testing.assert_close(conv.weight[1], before[1])
    assert float(conv.weight[2].detach().max()) < 0


def test_build_model_builds_torchvision_models_by_name():
    model = build_model("resnet18", num_classes=7)
    assert model.fc.out_features == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(arch="resnet81"), "^arch: 'resnet81' is not zfnet.*did you mean.*resnet18"),
        (dict(arch="zfnet", width=0), "width must be a positive number"),
        (dict(arch="zfnet", image_size=16), "image_size=16 is too small"),
        (dict(arch="zfnet", weights="IMAGENET1K_V1"), "has no pretrained weights"),
        (dict(arch="zfnet", init="xavier"), "init must be 'paper' or 'kaiming'"),
    ],
)
def test_build_model_rejects_bad_arguments_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_fast_local_response_norm_equals_pytorchs(size):
    from zflight.models import LocalResponseNorm

    x = torch.randn(3, 11, 4, 5, dtype=torch.float64, requires_grad=True)
    ours = LocalResponseNorm(size, alpha=0.05, beta=0.75, k=2.0)(x)
    ref = nn.functional.local_response_norm(x, size, alpha=0.05, beta=0.75, k=2.0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_zfnet_normalization_layers_are_local_response_norms():
    model = zfnet()
    assert isinstance(model.features.norm1, nn.LocalResponseNorm)
    assert (model.features.norm1.size, model.features.norm1.alpha) == (5, 5e-4)
