"""The registry of attribution methods under test (zflight.attribution.methods)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from torch import nn

from zflight import zfnet
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.guided_backprop import GuidedBackprop
from zflight.attribution.methods import METHODS, attribute, get_method, last_conv, method_names
from zflight.attribution.occlusion import occlusion_maps


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming")


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


TARGET = torch.tensor([3, 7])


def hook_counts(model: nn.Module) -> list[int]:
    return [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    ]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_returns_input_sized_maps_and_leaves_the_model_as_found(model, x, name):
    model.train()
    model.features.eval()  # mixed modes must come back as they were
    modes = [m.training for m in model.modules()]
    user = model.classifier.register_forward_hook(lambda *a: None)
    try:
        hooks = hook_counts(model)
        maps = attribute(name, model, x, TARGET)
        assert maps.shape[0] == 2 and maps.shape[1] in (1, 3) and maps.shape[-2:] == (64, 64)
        assert torch.isfinite(maps).all() and maps.abs().sum() > 0
        assert [m.training for m in model.modules()] == modes
        assert hook_counts(model) == hooks
    finally:
        user.remove()


def test_unknown_method_is_an_error_listing_the_valid_ones(model, x):
    with pytest.raises(ValueError, match="method 'lrp' does not exist; valid methods: deconvnet, "):
        get_method("lrp")
    with pytest.raises(ValueError, match="integrated_gradients, random"):
        attribute("lrp", model, x, TARGET)


def test_a_new_method_is_one_registry_entry(model, x, monkeypatch):
    monkeypatch.setitem(METHODS, "ones", lambda m, inp, t: torch.ones_like(inp[:, :1]))
    assert "ones" in method_names()
    assert torch.equal(get_method("ones")(model, x, TARGET), torch.ones(2, 1, 64, 64))


def test_a_method_that_raises_leaves_no_hook_and_the_modes(model, x, monkeypatch):
    def broken(m: nn.Module, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m.features.conv1.register_forward_hook(lambda *a: None)
        m.train()
        raise RuntimeError("midway")

    monkeypatch.setitem(METHODS, "broken", broken)
    model.eval()
    with pytest.raises(RuntimeError, match="midway"):
        attribute("broken", model, x, TARGET)
    assert not model.training and not any(m.training for m in model.modules())
    assert sum(hook_counts(model)) == 0


def test_methods_run_in_eval_mode(model, x, monkeypatch):
    seen = []
    monkeypatch.setitem(
        METHODS, "probe", lambda m, inp, t: seen.append(m.training) or torch.ones_like(inp)
    )
    model.train()
    attribute("probe", model, x, TARGET)
    assert seen == [False] and model.training


def test_deconvnet_guided_and_saliency_entries_are_those_attributions(model, x):
    model.eval()
    dn = DeconvNet(model).attribute(x, target=TARGET)
    gb = GuidedBackprop(model).attribute(x, target=TARGET)
    sal = Saliency(model).attribute(x.clone().requires_grad_(True), target=TARGET)
    assert torch.equal(attribute("deconvnet", model, x, TARGET), dn)
    assert torch.equal(attribute("guided_backprop", model, x, TARGET), gb)
    assert torch.equal(attribute("saliency", model, x, TARGET), sal)


def test_deconvnet_project_projects_the_strongest_unit_of_the_last_conv(model, x):
    model.eval()
    name, conv = last_conv(model)
    assert name == "features.conv5"
    acts = []
    handle = conv.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    strongest = acts[0].flatten(2).amax(dim=2).argmax(dim=1)
    want = DeconvNet(model).project(x, layer=name, channels=strongest, mode="max")
    assert torch.equal(attribute("deconvnet_project", model, x, TARGET), want)


def test_occlusion_entry_is_the_occlusion_log_probability_pixel_attribution(model, x):
    model.eval()
    maps = occlusion_maps(model, x, TARGET, size=8, stride=4, progress=False)  # 64 px // 8
    want = maps.pixel_attribution(log=True).unsqueeze(1)
    torch.testing.assert_close(attribute("occlusion", model, x, TARGET), want)


def test_gradcam_entry_is_grad_weighted_last_conv_maps_relud_and_upsampled(model, x):
    model.eval()
    _, conv = last_conv(model)
    acts = []
    handle = conv.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    a = acts[0]
    grads = torch.autograd.grad(logits[torch.arange(2), TARGET].sum(), a)[0]
    cam = (grads.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True).clamp_min(0)
    want = F.interpolate(cam.detach(), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(attribute("gradcam", model, x, TARGET), want)


def test_integrated_gradients_entry_satisfies_completeness_roughly(model, x):
    model.eval()
    ig = attribute("integrated_gradients", model, x, TARGET)
    with torch.no_grad():
        gap = model(x)[torch.arange(2), TARGET] - model(torch.zeros_like(x))[torch.arange(2), TARGET]
    total = ig.flatten(1).sum(dim=1)
    torch.testing.assert_close(total, gap, rtol=0.2, atol=0.05 * gap.abs().max().item())


def test_random_maps_belong_to_the_image_not_to_its_batch(model, x):
    both = attribute("random", model, x, TARGET)
    one_at_a_time = torch.cat([attribute("random", model, x[i : i + 1], TARGET[i : i + 1]) for i in range(len(x))])
    assert torch.equal(both, one_at_a_time)
    assert not torch.equal(both[0], both[1])  # two images, two maps


def test_random_entry_is_seeded_and_leaves_the_global_rng(model, x):
    state = torch.random.get_rng_state()
    a = attribute("random", model, x, TARGET)
    b = attribute("random", model, x, TARGET)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == (2, 1, 64, 64)
    assert ((a >= 0) & (a < 1)).all() and a.std() > 0.2


def test_a_model_without_conv_layers_is_an_error_for_conv_methods(x):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10))
    with pytest.raises(ValueError, match="has no nn.Conv2d layer"):
        attribute("gradcam", mlp, x, TARGET)


@pytest.mark.parametrize(
    "target, error, message",
    [([1], ValueError, "target has 1 entries but inputs has 2 images"), (1.5, TypeError, "target must be an int")],
)
def test_bad_targets_are_errors_naming_target(model, x, target, error, message):
    with pytest.raises(error, match=message):
        attribute("saliency", model, x, target)
