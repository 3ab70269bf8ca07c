"""zflight GuidedBackprop: equal to Captum where Captum is right, right where Captum is not."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

from zflight.attribution._deconv_rules import DeconvRules
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.guided_backprop import GuidedBackprop

DTYPE = torch.float64


def captum_gb(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        return CaptumGuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=target)


def guided(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The guided rule at one ReLU: the signal where it and the forward value are positive."""
    return g * (g > 0) * (h > 0)


def no_inplace(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


@pytest.mark.parametrize("arch", ["alexnet", "vgg11"])
def test_equals_captum_on_torchvision_models_with_relu_modules_used_once(arch):
    torch.manual_seed(0)
    model = no_inplace(getattr(torchvision.models, arch)(weights=None, num_classes=10).eval())
    x = torch.randn(2, 3, 64, 64)
    got = GuidedBackprop(model).attribute(x, target=[3, 8])
    want = captum_gb(model, x, [3, 8])
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max().item())


def test_in_place_relus_give_the_same_as_out_of_place():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None, num_classes=10).eval()  # inplace=True
    x = torch.randn(2, 3, 64, 64)
    got = GuidedBackprop(model).attribute(x, target=[3, 8])
    want = GuidedBackprop(no_inplace(model)).attribute(x, target=[3, 8])
    assert torch.equal(got, want)


class FunctionalRelu(nn.Module):
    """fc2(relu(fc1(x))) with the ReLU written as ``act`` (functional, not a module)."""

    def __init__(self, act) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8, dtype=DTYPE)
        self.fc2 = nn.Linear(8, 3, dtype=DTYPE)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize(
    "act",
    [F.relu, torch.relu, lambda t: t.relu(), lambda t: F.relu(t, inplace=True), torch.relu_],
    ids=["F.relu", "torch.relu", "Tensor.relu", "F.relu-inplace", "torch.relu_"],
)
def test_functional_relus_get_the_guided_rule_where_captum_takes_the_gradient(act):
    model = FunctionalRelu(act)
    x = torch.randn(5, 6, dtype=DTYPE)
    h = model.fc1(x).detach()
    g = model.fc2.weight[0].detach().expand(5, -1)
    want = guided(g, h) @ model.fc1.weight.detach()  # explicit chain
    got = GuidedBackprop(model).attribute(x, target=0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # Captum misses the functional ReLU: its result is the plain gradient.
    assert (captum_gb(model, x, 0) - want).abs().max() > 1e-3


class ReusedRelu(nn.Module):
    """fc3(relu(fc2(relu(fc1(x))))) with ONE nn.ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1 = nn.Linear(6, 8, dtype=DTYPE)
        self.fc2 = nn.Linear(8, 8, dtype=DTYPE)
        self.fc3 = nn.Linear(8, 3, dtype=DTYPE)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


def test_relu_module_called_twice_gets_the_rule_at_each_call():
    model = ReusedRelu()
    x = torch.randn(5, 6, dtype=DTYPE)
    h1 = model.fc1(x).detach()
    h2 = model.fc2(h1.relu()).detach()
    s2 = guided(model.fc3.weight[2].detach().expand(5, -1), h2)
    s1 = guided(s2 @ model.fc2.weight.detach(), h1)
    want = s1 @ model.fc1.weight.detach()
    assert want.abs().max() > 0
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, target=2), want)


class ReluPlusInput(nn.Module):
    """fc(relu(h) + h): h's signal is the guided one from the ReLU plus g from the skip."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Linear(6, 5, dtype=DTYPE)
        self.fc = nn.Linear(5, 3, dtype=DTYPE)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.fc(self.relu(h) + h)


def test_relu_whose_input_is_used_elsewhere_keeps_the_other_path_where_captum_does_not():
    model = ReluPlusInput()
    x = torch.randn(4, 6, dtype=DTYPE)
    h = model.a(x).detach()
    g = model.fc.weight[0].detach().expand(4, -1)
    want = (guided(g, h) + g) @ model.a.weight.detach()
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, target=0), want)
    # Captum's hook sits on h, so it rectifies h's total signal, skip path included.
    assert (captum_gb(model, x, 0) - want).abs().max() > 1e-3


def test_resnet_with_reused_in_place_relus_equals_captum_on_separate_modules():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    got = GuidedBackprop(model).attribute(x, target=4)
    # Captum is right on ResNet's reused ReLUs here: each call's input feeds only the ReLU.
    want = captum_gb(no_inplace(model), x, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max().item())


def test_differs_from_the_deconvnet_and_from_the_gradient():
    model = ReusedRelu()
    x = torch.randn(5, 6, dtype=DTYPE)
    gb = GuidedBackprop(model).attribute(x, target=2)
    dn = DeconvNet(model).attribute(x, target=2)
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(model(xg)[:, 2].sum(), xg)[0]
    assert (gb - dn).abs().max() > 1e-3 and (gb - grad).abs().max() > 1e-3


def test_leaves_no_hook_and_the_same_values():
    model = ReusedRelu()
    x = torch.randn(3, 6, dtype=DTYPE)
    before = model(x)
    GuidedBackprop(model).attribute(x, target=0)
    assert torch.equal(model(x), before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_layer_neuron_attribution_uses_the_guided_rule():
    model = ReusedRelu()
    x = torch.randn(5, 6, dtype=DTYPE)
    h1 = model.fc1(x).detach()
    # Neuron 3 of fc2's output: the signal is fc2's row 3, through the first ReLU call only.
    want = guided(model.fc2.weight[3].detach().expand(5, -1), h1) @ model.fc1.weight.detach()
    got = GuidedBackprop(model).attribute(x, layer="fc2", neuron_selector=3)
    torch.testing.assert_close(got, want)


def test_guided_rule_refuses_other_rectifiers():
    with pytest.raises(ValueError, match="relu_backward='guided' needs activation_rule='relu'"):
        DeconvRules("rectify", "gradient", relu_backward="guided")
    with pytest.raises(ValueError, match="relu_backward must be 'deconvnet' or 'guided'"):
        DeconvRules("relu", "gradient", relu_backward="backprop")
    with pytest.raises(ValueError, match="normalization must be 'gradient' or 'identity'"):
        GuidedBackprop(ReusedRelu(), normalization="none")
