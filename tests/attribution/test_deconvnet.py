"""Tests for zflight.attribution.deconvnet: the deconvnet rule, its Captum semantics and its limits.

References used here, each independent of zflight's mechanism (a torch function mode):

- ``literal_deconvnet``: the paper's chain written out layer by layer for ``nn.Sequential``
  conv nets: unpool at the recorded switches, rectify, filter with the flipped, transposed
  filters.
- ``relu_swapped_for_reference``: ``F.relu`` monkeypatched to an autograd function whose
  backward is ``relu(grad)`` (reaches ``nn.ReLU`` too, since it calls ``F.relu``).
- Captum's ``Deconvolution`` / ``NeuronDeconvolution`` where Captum is right, and closed forms
  for two-layer nets.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, NeuronDeconvolution, NoiseTunnel
from torch import nn

from zflight import DeconvNet, alexnet_zf, zfnet
from zflight.attribution import LayerNotReachedError

DTYPE = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _quiet_captum() -> Iterator[None]:
    # Captum warns on every Deconvolution call that it sets hooks; not what these tests pin.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        yield


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return float((a - b).abs().max() / scale)


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=DTYPE)


# ---------------------------------------------------------------------------------------------
# The literal deconvnet: unpool -> rectify -> transposed filter, for nn.Sequential conv nets.
# ---------------------------------------------------------------------------------------------


def unpool(signal: torch.Tensor, switches: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """Put each value back at its switch; values of overlapping windows sharing one add up."""
    n, c, h, w = in_shape
    out = signal.new_zeros(n, c, h * w)
    out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
    return out.view(n, c, h, w)


def rectify(signal: torch.Tensor) -> torch.Tensor:
    return signal.clamp_min(0)


def transposed_filter(signal: torch.Tensor, conv: nn.Conv2d, in_shape: torch.Size) -> torch.Tensor:
    """Filter with the layer's filters flipped vertically and horizontally, in/out swapped.

    The signal is spread back to stride spacing (zeros between) and correlated in full with the
    flipped filters. The forward input's size is needed: a strided convolution drops the rows
    and columns its last window does not reach, and those get zero here.
    """
    if conv.groups != 1:
        raise NotImplementedError("the reference handles groups=1 only")
    n, c, h, w = signal.shape
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    kh, kw = conv.kernel_size
    spread = signal.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
    spread[:, :, ::sh, ::sw] = signal
    pad_h, pad_w = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    extra_h = in_shape[2] - ((h - 1) * sh + 1 + dh * (kh - 1) - 2 * ph)
    extra_w = in_shape[3] - ((w - 1) * sw + 1 + dw * (kw - 1) - 2 * pw)
    spread = F.pad(spread, (pad_w, pad_w + extra_w, pad_h, pad_h + extra_h))
    flipped = conv.weight.flip(-1, -2).transpose(0, 1)
    return F.conv2d(spread, flipped, dilation=conv.dilation)


def literal_deconvnet(
    features: nn.Sequential, x: torch.Tensor, upto: str, channels: list[int], mode: str
) -> torch.Tensor:
    """The paper's deconvnet: forward recording switches, then unpool/rectify/filter down."""
    record = []
    h = x
    with torch.no_grad():
        for name, layer in features.named_children():
            if isinstance(layer, nn.MaxPool2d):
                out, switches = F.max_pool2d(
                    h, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    ceil_mode=layer.ceil_mode, return_indices=True,
                )
            else:
                out, switches = layer(h), None
            record.append((layer, h.shape, switches))
            h = out
            if name == upto:
                break
        signal = torch.zeros_like(h)
        for b, c in enumerate(channels):
            fmap = h[b, c]
            if mode == "map":
                signal[b, c] = fmap
            else:
                pos = fmap.flatten().argmax()
                signal[b, c].view(-1)[pos] = fmap.flatten()[pos]
        for layer, in_shape, switches in reversed(record):
            if isinstance(layer, nn.MaxPool2d):
                signal = unpool(signal, switches, in_shape)
            elif isinstance(layer, nn.ReLU):
                signal = rectify(signal)
            elif isinstance(layer, nn.Conv2d):
                signal = transposed_filter(signal, layer, in_shape)
            elif isinstance(layer, nn.LocalResponseNorm):
                pass  # the deconvnet crosses normalization unchanged (normalization="identity")
            else:
                raise NotImplementedError(type(layer).__name__)
    return signal


def small_zfnet() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").to(DTYPE).eval()


def small_alexnet_zf() -> nn.Module:
    torch.manual_seed(0)
    return alexnet_zf(num_classes=10, width=0.125, image_size=64, init="kaiming").to(DTYPE).eval()


@pytest.fixture(scope="module")
def tv_alexnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).to(DTYPE).eval()


@pytest.fixture(scope="module")
def tv_vgg11() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).to(DTYPE).eval()


@pytest.fixture(scope="module")
def tv_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).to(DTYPE).eval()


@pytest.mark.parametrize("mode", ["max", "map"])
@pytest.mark.parametrize(
    ("build", "layer", "channels"),
    [
        (small_zfnet, "conv5", [3, 17]),
        (small_zfnet, "pool5", [0, 31]),
        (small_zfnet, "relu2", [5, 5]),
        (small_alexnet_zf, "conv5", [30, 2]),
        (small_alexnet_zf, "pool2", [1, 8]),
    ],
)
def test_project_equals_literal_unpool_rectify_filter_chain_on_zf_networks(
    build, layer, channels, mode
):
    model = build()
    x = images(2, 64)
    got = DeconvNet(model, normalization="identity").project(
        x, layer=layer, channels=channels, mode=mode
    )
    want = literal_deconvnet(model.features, x, layer, channels, mode)
    assert want.abs().max() > 0
    assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("mode", ["max", "map"])
@pytest.mark.parametrize(
    ("layer", "channels"), [("features.10", [7, 200]), ("features.12", [0, 99])]
)
def test_project_equals_literal_chain_on_torchvision_alexnet_features(
    tv_alexnet, layer, channels, mode
):
    x = images(2, 64, seed=1)
    got = DeconvNet(tv_alexnet).project(x, layer=layer, channels=channels, mode=mode)
    want = literal_deconvnet(tv_alexnet.features, x, layer.split(".")[1], channels, mode)
    assert want.abs().max() > 0
    assert rel_err(got, want) < 1e-10


def test_literal_chain_needs_switch_sums_where_pooling_windows_overlap():
    # Pins why unpool() adds: with 3x3/2 pooling a switch can serve two windows. The max-mode
    # projection of pool1 over a constant-plus-peak image routes two values to one switch.
    pool = nn.MaxPool2d(3, stride=2)
    x = torch.zeros(1, 1, 5, 5, dtype=DTYPE)
    x[0, 0, 2, 2] = 1.0  # the centre is the max of all four overlapping windows
    out, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    summed = unpool(torch.ones_like(out), switches, x.shape)
    assert summed[0, 0, 2, 2] == 4.0
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(pool(x), x, torch.ones_like(out))
    assert torch.equal(grad, summed)


# ---------------------------------------------------------------------------------------------
# Equal to Captum where Captum is right.
# ---------------------------------------------------------------------------------------------

CAPTUM_CASES = [
    ("tv_alexnet", 64, "features.10", (5, 1, 2)),
    ("tv_vgg11", 32, "features.13", (40, 1, 0)),
    ("tv_resnet18", 32, "layer3.1.conv2", (3, 1, 1)),
]


@pytest.mark.parametrize(("fixture", "size", "_layer", "_neuron"), CAPTUM_CASES)
def test_attribute_target_equals_captum_deconvolution(request, fixture, size, _layer, _neuron):
    model = request.getfixturevalue(fixture)
    x = images(2, size)
    got = DeconvNet(model).attribute(x, target=[3, 711])
    want = Deconvolution(model).attribute(x, target=[3, 711])
    assert want.abs().max() > 0
    assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize(("fixture", "size", "layer", "neuron"), CAPTUM_CASES)
def test_attribute_layer_neuron_equals_captum_neuron_deconvolution(
    request, fixture, size, layer, neuron
):
    model = request.getfixturevalue(fixture)
    x = images(2, size, seed=2)
    module = dict(model.named_modules())[layer]
    got = DeconvNet(model).attribute(x, layer=layer, neuron_selector=neuron)
    want = NeuronDeconvolution(model, module).attribute(x, neuron)
    assert want.abs().max() > 0
    assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize(
    "selector",
    [(2, slice(0, 2), 1), (slice(None), 0, 0), lambda out: out[:, 4].amax(dim=(1, 2))],
    ids=["slice", "all-channels", "callable"],
)
def test_attribute_slice_and_callable_selectors_equal_captum(tv_resnet18, selector):
    x = images(2, 32, seed=3)
    got = DeconvNet(tv_resnet18).attribute(x, layer="layer2", neuron_selector=selector)
    want = NeuronDeconvolution(tv_resnet18, tv_resnet18.layer2).attribute(x, selector)
    assert rel_err(got, want) < 1e-10


def test_attribute_with_lrn_by_default_equals_captum_on_zfnet():
    model = small_zfnet()
    x = images(2, 64)
    got = DeconvNet(model).attribute(x, target=[1, 2])
    want = Deconvolution(model).attribute(x, target=[1, 2])
    assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("mode", ["max", "map"])
def test_project_equals_captum_neuron_deconvolution_fed_with_the_activation(tv_resnet18, mode):
    # The projection feeds the map's own values as the backward signal: Captum gets the same
    # from a callable selector that weights the layer output by its detached value.
    x = images(2, 32, seed=4)
    channels = [9, 120]
    got = DeconvNet(tv_resnet18).project(x, layer="layer2.1.conv1", channels=channels, mode=mode)
    for b, c in enumerate(channels):

        def weighted(out: torch.Tensor, c: int = c) -> torch.Tensor:
            fmap = out[:, c].flatten(1)
            weight = fmap.detach().clone()
            if mode == "max":
                keep = torch.zeros_like(weight)
                keep.scatter_(1, weight.argmax(1, keepdim=True), 1.0)
                weight = weight * keep
            return (fmap * weight).sum(1)

        layer = tv_resnet18.layer2[1].conv1
        want = NeuronDeconvolution(tv_resnet18, layer).attribute(x[b : b + 1], weighted)
        assert rel_err(got[b : b + 1], want) < 1e-10


def test_composes_with_captum_noise_tunnel():
    model = small_zfnet()
    x = images(2, 64)
    torch.manual_seed(7)
    got = NoiseTunnel(DeconvNet(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=4
    )
    torch.manual_seed(7)
    want = NoiseTunnel(Deconvolution(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=4
    )
    assert rel_err(got, want) < 1e-10


def test_output_works_with_captum_visualization():
    import matplotlib

    matplotlib.use("Agg")
    from captum.attr import visualization as viz

    model = small_zfnet()
    x = images(1, 64)
    attr = DeconvNet(model).project(x, layer="conv3", channels=2)
    image = attr[0].permute(1, 2, 0).numpy()
    fig, _ = viz.visualize_image_attr(image, method="heat_map", sign="all", use_pyplot=False)
    assert fig is not None


# ---------------------------------------------------------------------------------------------
# Where Captum is wrong and zflight is right.
# ---------------------------------------------------------------------------------------------


class _ReferenceDeconvRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0)


@contextlib.contextmanager
def relu_swapped_for_reference() -> Iterator[None]:
    """F.relu (so nn.ReLU too) replaced by an out-of-place relu with backward relu(grad)."""
    original = F.relu

    def relu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return _ReferenceDeconvRelu.apply(x)

    F.relu = relu
    try:
        yield
    finally:
        F.relu = original


def reference_attribution(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with relu_swapped_for_reference():
        out = model(x)
    return torch.autograd.grad(out[:, target].sum(), x)[0]


def plain_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(x)[:, target].sum(), x)[0]


class TwoLayer(nn.Module):
    """fc2(act(fc1(x))): its deconvnet attribution is fc1.W^T relu(fc2.W[target])."""

    def __init__(self, act) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8, dtype=DTYPE)
        self.fc2 = nn.Linear(8, 3, dtype=DTYPE)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(self.act(h))

    def deconv_closed_form(self, n: int, target: int) -> torch.Tensor:
        row = self.fc2.weight[target].detach().clamp_min(0) @ self.fc1.weight.detach()
        return row.expand(n, -1)


def _inplace(fn):
    # An in-place call on a non-leaf, as models write it (x is never a leaf here).
    return lambda h: fn(h * 1.0)


FUNCTIONAL_RELUS = {
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "Tensor.relu": lambda h: h.relu(),
    "Tensor.relu_": _inplace(lambda h: h.relu_()),
    "torch.relu_": _inplace(torch.relu_),
    "F.relu_inplace": _inplace(lambda h: F.relu(h, inplace=True)),
    "F.relu_": _inplace(F.relu_),
}


@pytest.mark.parametrize("form", list(FUNCTIONAL_RELUS))
def test_functional_relus_get_the_deconv_rule_where_captum_returns_the_plain_gradient(form):
    model = TwoLayer(FUNCTIONAL_RELUS[form])
    x = torch.randn(4, 6, dtype=DTYPE)
    got = DeconvNet(model).attribute(x, target=1)
    assert rel_err(got, model.deconv_closed_form(4, 1)) < 1e-12
    captum = Deconvolution(model).attribute(x, target=1)
    assert torch.allclose(captum, plain_gradient(model, x, 1))
    assert not torch.allclose(captum, got)


@pytest.fixture(scope="module")
def tv_googlenet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    return model.to(DTYPE).eval()


def test_torchvision_googlenet_functional_relus_are_rectified(tv_googlenet):
    x = images(1, 32)
    got = DeconvNet(tv_googlenet).attribute(x, target=5)
    want = reference_attribution(tv_googlenet, x, 5)
    assert rel_err(got, want) < 1e-10
    captum = Deconvolution(tv_googlenet).attribute(x, target=5)
    assert torch.equal(captum, plain_gradient(tv_googlenet, x, 5))
    assert rel_err(captum, want) > 0.1


class SharedRelu(nn.Module):
    """One nn.ReLU called on two branches, whose backward passes interleave."""

    def __init__(self, separate: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5, dtype=DTYPE)
        self.b = nn.Linear(6, 5, dtype=DTYPE)
        self.fc = nn.Linear(5, 3, dtype=DTYPE)
        self.relu = nn.ReLU()
        self.relu_b = nn.ReLU() if separate else self.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hb = self.b(x)
        ha = self.a(x)
        return self.fc(self.relu(ha) + 2 * self.relu_b(hb))


def test_relu_module_called_several_times_gets_one_rule_per_call():
    shared, separate = SharedRelu(), SharedRelu(separate=True)
    x = torch.randn(4, 6, dtype=DTYPE)
    want = Deconvolution(separate).attribute(x, target=0)  # Captum is right with two modules
    assert want.abs().max() > 0
    assert rel_err(want, reference_attribution(shared, x, 0)) < 1e-12
    assert rel_err(DeconvNet(shared).attribute(x, target=0), want) < 1e-12
    # Captum keeps one "grad_output" per module: the second branch's backward reads the first's.
    assert rel_err(Deconvolution(shared).attribute(x, target=0), want) > 0.1


def test_resnet_relu_modules_called_twice_per_block_match_reference(tv_resnet18):
    x = images(1, 32, seed=5)
    got = DeconvNet(tv_resnet18).attribute(x, target=9)
    assert rel_err(got, reference_attribution(tv_resnet18, x, 9)) < 1e-10


class ReluPlusInput(nn.Module):
    """fc(relu(h) + h): h's signal is relu(g) from the ReLU plus g from the skip."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5, dtype=DTYPE)
        self.fc = nn.Linear(5, 3, dtype=DTYPE)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.fc(self.relu(h) + h)


def test_relu_whose_input_is_also_used_elsewhere_keeps_the_other_path():
    model = ReluPlusInput()
    x = torch.randn(4, 6, dtype=DTYPE)
    g = model.fc.weight[0].detach()
    want = ((g.clamp_min(0) + g) @ model.a.weight.detach()).expand(4, -1)
    assert rel_err(DeconvNet(model).attribute(x, target=0), want) < 1e-12
    assert rel_err(Deconvolution(model).attribute(x, target=0), want) > 0.1


class InplaceRelu(nn.Module):
    """Relies on nn.ReLU(inplace=True) modifying h: the relu's return value is not used."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5, dtype=DTYPE)
        self.fc = nn.Linear(5, 3, dtype=DTYPE)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = self.relu(h)
        return self.fc(h + y)  # 2 relu(h) in place; relu(h) + h otherwise


def test_inplace_relu_module_keeps_inplace_forward_and_gets_the_rule():
    model = InplaceRelu()
    x = torch.randn(4, 6, dtype=DTYPE)
    g = model.fc.weight[1].detach()
    want = (2 * g.clamp_min(0) @ model.a.weight.detach()).expand(4, -1)
    assert rel_err(DeconvNet(model).attribute(x, target=1), want) < 1e-12
    # Captum's hook clones the input of in-place ReLUs: the model computes relu(h) + h instead.
    assert rel_err(Deconvolution(model).attribute(x, target=1), want) > 0.1


def test_forward_values_are_bit_identical_under_the_rules(tv_googlenet):
    from zflight.attribution._deconv_rules import deconv_rules

    cases = [
        (InplaceRelu(), torch.randn(4, 6, dtype=DTYPE)),
        (tv_googlenet, images(1, 32)),
        (small_zfnet(), images(2, 64)),  # LRN modules: hooked under normalization="identity"
    ]
    for model, x in cases:
        with torch.no_grad():
            plain = model(x)
        with torch.no_grad(), deconv_rules(model, "rectify", "identity"):
            ruled = model(x)
        assert torch.equal(plain, ruled)


# ---------------------------------------------------------------------------------------------
# Other activations and normalization.
# ---------------------------------------------------------------------------------------------

OTHER_ACTIVATIONS = {
    "ReLU6": nn.ReLU6(),
    "F.relu6": F.relu6,
    "LeakyReLU": nn.LeakyReLU(0.1),
    "SiLU": nn.SiLU(),
    "GELU": nn.GELU(),
    "Hardswish": nn.Hardswish(),
    "ELU": nn.ELU(),
    "Mish": nn.Mish(),
}


@pytest.mark.parametrize("name", list(OTHER_ACTIVATIONS))
def test_rectify_rule_rectifies_the_signal_at_other_activations(name):
    model = TwoLayer(OTHER_ACTIVATIONS[name])
    x = torch.randn(4, 6, dtype=DTYPE)
    got = DeconvNet(model, activation_rule="rectify").attribute(x, target=2)
    assert rel_err(got, model.deconv_closed_form(4, 2)) < 1e-12


@pytest.mark.parametrize("name", list(OTHER_ACTIVATIONS))
def test_relu_rule_differentiates_other_activations_as_usual(name):
    model = TwoLayer(OTHER_ACTIVATIONS[name])
    x = torch.randn(4, 6, dtype=DTYPE)
    got = DeconvNet(model, activation_rule="relu").attribute(x, target=2)
    assert torch.allclose(got, plain_gradient(model, x, 2), rtol=1e-12, atol=0)


def test_hardtanh_with_nonzero_lower_bound_is_not_a_rectifier():
    model = TwoLayer(nn.Hardtanh(-1.0, 1.0))
    x = torch.randn(4, 6, dtype=DTYPE)
    got = DeconvNet(model, activation_rule="rectify").attribute(x, target=0)
    assert torch.allclose(got, plain_gradient(model, x, 0), rtol=1e-12, atol=0)


class _OwnLRN(nn.LocalResponseNorm):
    """An LRN subclass computing its forward without F.local_response_norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = F.avg_pool3d(F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, 1, 1)), (3, 1, 1), 1)
        return x * (self.k + self.alpha * squares.squeeze(1)).pow(-self.beta)


class _FunctionalLRN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, 3, alpha=0.5, beta=0.75, k=1.0)


@pytest.mark.parametrize(
    "lrn",
    [nn.LocalResponseNorm(3, alpha=0.5), _OwnLRN(3, alpha=0.5), _FunctionalLRN()],
    ids=["module", "subclass-own-forward", "functional"],
)
def test_normalization_identity_passes_the_signal_through_lrn(lrn):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 2, 1, dtype=DTYPE)
    with_lrn = nn.Sequential(lrn, conv, nn.Flatten())
    without = nn.Sequential(conv, nn.Flatten())
    x = torch.randn(2, 4, 2, 2, dtype=DTYPE)
    got = DeconvNet(with_lrn, normalization="identity").attribute(x, target=3)
    assert rel_err(got, plain_gradient(without, x, 3)) < 1e-12
    through = DeconvNet(with_lrn, normalization="gradient").attribute(x, target=3)
    assert rel_err(through, plain_gradient(with_lrn, x, 3)) < 1e-12
    assert rel_err(through, got) > 1e-3


def test_normalization_identity_differs_from_gradient_only_through_lrn():
    model = small_zfnet()
    x = images(2, 64)
    kwargs = dict(layer="conv3", channels=[1, 2], mode="map")
    through = DeconvNet(model, normalization="gradient").project(x, **kwargs)
    skipped = DeconvNet(model, normalization="identity").project(x, **kwargs)
    assert rel_err(through, skipped) > 1e-6
    # Without LRN layers in the way, the two options agree.
    no_lrn = small_zfnet()
    no_lrn.features.norm1 = nn.Identity()
    no_lrn.features.norm2 = nn.Identity()
    a = DeconvNet(no_lrn, normalization="gradient").project(x, **kwargs)
    b = DeconvNet(no_lrn, normalization="identity").project(x, **kwargs)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# project: batching, per-sample channels, early stop, forward args.
# ---------------------------------------------------------------------------------------------


def test_project_chunks_equal_one_pass():
    model = small_zfnet()
    x = images(5, 64)
    dn = DeconvNet(model)
    whole = dn.project(x, layer="conv4", channels=[0, 1, 2, 3, 4])
    chunked = dn.project(x, layer="conv4", channels=[0, 1, 2, 3, 4], batch_size=2)
    assert rel_err(chunked, whole) < 1e-12


def test_project_per_sample_channels_equal_one_image_at_a_time():
    model = small_zfnet()
    x = images(3, 64)
    dn = DeconvNet(model)
    together = dn.project(x, layer="conv5", channels=torch.tensor([4, 0, 9]), mode="map")
    for b, c in enumerate([4, 0, 9]):
        alone = dn.project(x[b : b + 1], layer="conv5", channels=c, mode="map")
        assert rel_err(together[b : b + 1], alone) < 1e-12


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: this layer must not run")


def _sequential_with_boom() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 4, 3, dtype=DTYPE),
            relu=nn.ReLU(),
            norm=nn.LocalResponseNorm(3),
            boom=Boom(),
            head=nn.Conv2d(4, 4, 1, dtype=DTYPE),
        )
    )


def test_project_stops_the_forward_at_the_layer():
    model = _sequential_with_boom()
    out = DeconvNet(model).project(images(2, 8), layer="relu", channels=1)
    assert out.shape == (2, 3, 8, 8)


def test_project_chunks_batched_forward_args():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, dtype=DTYPE)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.relu(self.conv(x) * scale.view(-1, 1, 1, 1))

    model = Scaled()
    x = images(4, 8)
    scale = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=DTYPE)
    dn = DeconvNet(model)
    whole = dn.project(x, layer="relu", channels=2, additional_forward_args=scale)
    chunked = dn.project(x, layer="relu", channels=2, batch_size=3, additional_forward_args=scale)
    assert rel_err(chunked, whole) < 1e-12


# ---------------------------------------------------------------------------------------------
# Clean: nothing left on the model; grad mode, devices, dtypes.
# ---------------------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def _assert_clean(model: nn.Module, before: dict) -> None:
    hook_dicts = (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
        "_state_dict_hooks", "_load_state_dict_pre_hooks",
    )
    for name, module in model.named_modules():
        for attr in hook_dicts:
            assert not getattr(module, attr, {}), f"{name}.{attr} left behind"
    from torch.nn.modules import module as module_mod

    assert not module_mod._global_forward_hooks
    assert not module_mod._global_forward_pre_hooks
    assert not module_mod._global_backward_hooks
    assert torch._C._len_torch_function_stack() == 0
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


def _mixed_model() -> nn.Sequential:
    model = _sequential_with_boom()
    model.conv.weight.requires_grad_(False)  # a frozen parameter must stay frozen
    model.relu.train()
    model.conv.eval()
    return model


@pytest.mark.parametrize(
    "call",
    [
        lambda dn, x: dn.project(x, layer="norm", channels=0),
        lambda dn, x: dn.attribute(x, layer="norm", neuron_selector=(0, 1, 1)),
    ],
    ids=["project", "attribute-layer"],
)
@pytest.mark.parametrize("normalization", ["gradient", "identity"])
def test_model_is_left_clean_after_success(call, normalization):
    model = _mixed_model()
    before = _snapshot(model)
    call(DeconvNet(model, normalization=normalization), images(2, 8))
    _assert_clean(model, before)


@pytest.mark.parametrize(
    "call",
    [
        lambda dn, x: dn.project(x, layer="head", channels=0),
        lambda dn, x: dn.attribute(x, layer="head", neuron_selector=(0, 1, 1)),
        lambda dn, x: dn.attribute(x, target=0),
    ],
    ids=["project", "attribute-layer", "attribute-target"],
)
@pytest.mark.parametrize("normalization", ["gradient", "identity"])
def test_model_is_left_clean_when_the_forward_raises_midway(call, normalization):
    model = _mixed_model()
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        call(DeconvNet(model, normalization=normalization), images(2, 8))
    _assert_clean(model, before)


def test_works_inside_no_grad():
    model = small_zfnet()
    x = images(2, 64)
    dn = DeconvNet(model)
    want = dn.project(x, layer="conv5", channels=3)
    with torch.no_grad():
        got = dn.project(x, layer="conv5", channels=3)
        attr = dn.attribute(x, target=1)
        assert not torch.is_grad_enabled()  # the caller's grad mode is restored
    assert torch.equal(got, want)
    assert attr.abs().max() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_float32_agrees_with_float64(device):
    model = small_zfnet().to(device)
    x = images(2, 64).to(device)
    want = DeconvNet(model).project(x, layer="conv5", channels=[1, 2]).cpu()
    got = DeconvNet(model.float()).project(x.float(), layer="conv5", channels=[1, 2])
    assert got.dtype == torch.float32 and got.device.type == device
    assert rel_err(got.double().cpu(), want) < 1e-4


def test_callers_inputs_are_not_modified_or_made_to_require_grad():
    model = small_zfnet()
    x = images(2, 64)
    copy = x.clone()
    DeconvNet(model).project(x, layer="conv2", channels=0)
    DeconvNet(model).attribute(x, target=0)
    assert torch.equal(x, copy) and not x.requires_grad


# ---------------------------------------------------------------------------------------------
# Bad input: clear ValueError / TypeError naming the argument.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dn_small() -> DeconvNet:
    return DeconvNet(small_zfnet())


def test_unknown_layer_name_suggests_close_names(dn_small):
    with pytest.raises(ValueError, match=r"layer='conv6'.*did you mean.*conv"):
        dn_small.project(images(2, 64), layer="conv6", channels=0)


def test_channel_out_of_range_says_the_range(dn_small):
    message = r"channels: 32 is out of range.*32 channels \(valid 0\.\.31\)"
    with pytest.raises(ValueError, match=message):
        dn_small.project(images(2, 64), layer="conv5", channels=[0, 32])


def test_negative_channel_is_out_of_range(dn_small):
    with pytest.raises(ValueError, match=r"channels: -1 is out of range"):
        dn_small.project(images(2, 64), layer="conv5", channels=-1)


def test_per_sample_channels_must_match_the_batch_size(dn_small):
    with pytest.raises(ValueError, match=r"channels has 3 entries but inputs has 2 images"):
        dn_small.project(images(2, 64), layer="conv5", channels=[0, 1, 2])


@pytest.mark.parametrize("channels", [1.5, "3", [0, 1.0], torch.tensor([0.0, 1.0]), True])
def test_channels_of_the_wrong_type_are_a_type_error(dn_small, channels):
    with pytest.raises(TypeError, match="channels"):
        dn_small.project(images(2, 64), layer="conv5", channels=channels)


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 2, 3, 64, 64)])
def test_inputs_must_be_a_4d_batch(dn_small, shape):
    with pytest.raises(ValueError, match=r"inputs must be a 4-D batch"):
        dn_small.project(torch.zeros(shape, dtype=DTYPE), layer="conv5", channels=0)


def test_inputs_must_be_a_floating_point_tensor(dn_small):
    with pytest.raises(TypeError, match="inputs must be floating point"):
        dn_small.project(torch.zeros(2, 3, 64, 64, dtype=torch.int64), layer="conv5", channels=0)
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        dn_small.project([[0.0]], layer="conv5", channels=0)


def test_unknown_mode_is_rejected(dn_small):
    with pytest.raises(ValueError, match=r"mode must be 'max' or 'map', got 'mean'"):
        dn_small.project(images(2, 64), layer="conv5", channels=0, mode="mean")


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_size_is_rejected(dn_small, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        dn_small.project(images(2, 64), layer="conv5", channels=0, batch_size=batch_size)


def test_layer_never_reached_is_reported():
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, dtype=DTYPE)
            self.unused = nn.ReLU()  # registered, never called by forward

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = WithSpare()
    with pytest.raises(LayerNotReachedError, match=r"layer='unused'.*never called"):
        DeconvNet(model).project(images(2, 8), layer="unused", channels=0)
    assert issubclass(LayerNotReachedError, ValueError)


def test_constructor_validates_its_options():
    model = small_zfnet()
    with pytest.raises(ValueError, match=r"activation_rule must be 'relu' or 'rectify'"):
        DeconvNet(model, activation_rule="guided")
    with pytest.raises(ValueError, match=r"normalization must be 'gradient' or 'identity'"):
        DeconvNet(model, normalization="skip")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        DeconvNet(lambda x: x)


def test_neuron_selector_out_of_range_says_the_range(dn_small):
    with pytest.raises(ValueError, match=r"neuron_selector=.*index 99 .*valid 0\.\.31"):
        dn_small.attribute(images(2, 64), layer="conv5", neuron_selector=(99, 0, 0))


def test_neuron_selector_must_pick_one_value_per_sample(dn_small):
    with pytest.raises(ValueError, match=r"neuron_selector=3 selects \(3, 3\) values per sample"):
        dn_small.attribute(images(2, 64), layer="conv5", neuron_selector=3)
    with pytest.raises(ValueError, match=r"neuron_selector must return one value"):
        dn_small.attribute(images(2, 64), layer="conv5", neuron_selector=lambda out: out[:, 0])
    with pytest.raises(TypeError, match=r"neuron_selector must be an int"):
        dn_small.attribute(images(2, 64), layer="conv5", neuron_selector=[0, 1, 1])


def test_layer_and_selector_and_target_must_go_together(dn_small):
    x = images(2, 64)
    with pytest.raises(ValueError, match="neuron_selector needs layer"):
        dn_small.attribute(x, neuron_selector=(0, 0, 0))
    with pytest.raises(ValueError, match="layer=... needs neuron_selector"):
        dn_small.attribute(x, layer="conv5")
    with pytest.raises(ValueError, match="target selects model outputs"):
        dn_small.attribute(x, target=1, layer="conv5", neuron_selector=(0, 0, 0))


def test_missing_target_for_multi_output_model_is_reported(dn_small):
    with pytest.raises(ValueError, match=r"target is None but the model returns 10 values"):
        dn_small.attribute(images(2, 64))
    with pytest.raises(ValueError, match=r"target=12 does not fit the model output"):
        dn_small.attribute(images(2, 64), target=12)


def test_an_input_the_output_does_not_use_gets_zeros():
    class FirstOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU()

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.relu(self.conv(a)).flatten(1).sum(1, keepdim=True)

    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5)
    grad_a, grad_b = DeconvNet(FirstOnly()).attribute((a, b), target=0)
    assert grad_a.shape == a.shape and grad_a.abs().sum() > 0
    assert torch.equal(grad_b, torch.zeros_like(b))
