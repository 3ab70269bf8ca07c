"""Incremental occlusion (issue 6): exactly the maps of full forward passes, for every position.

Every test compares ``occlusion_maps(..., incremental=True)`` with ``incremental=False`` (one
full forward per occluded image, itself tested against a one-position loop in
``test_occlusion.py``), on small images so that the whole file stays fast.
"""

from __future__ import annotations


import pytest
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from zflight import alexnet_zf, zfnet
from zflight.attribution import _incremental
from zflight.attribution.occlusion import occlusion_maps

RTOL = 1e-5  # the bound on the relative error of every probability


def _model(name: str, image_size: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    if name == "zfnet":
        model = zfnet(num_classes=10, width=0.125, image_size=image_size, init="kaiming")
    elif name == "alexnet_zf":
        model = alexnet_zf(num_classes=10, width=0.125, image_size=image_size, init="kaiming")
    elif name == "alexnet":
        model = torchvision.models.alexnet(num_classes=10)
    elif name == "vgg11":
        model = torchvision.models.vgg11(num_classes=10)
    else:
        model = _odd_chain()
    return model.to(dtype).eval()


class _OddChain(nn.Module):
    """Every supported layer kind with the awkward options: BatchNorm, padded ceil-mode
    average pooling without padding in the count, dilation, padded max pooling, Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=2),
            nn.Identity(),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Dropout(0.3),
            nn.Conv2d(12, 16, 3, stride=1, padding=1, bias=False),
            nn.LocalResponseNorm(3),
            nn.AvgPool2d(2, ceil_mode=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _odd_chain() -> nn.Module:
    model = _OddChain()
    bn = model.features[1]
    with torch.no_grad():  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model


class _CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside it (those ``keep(func, args)`` accepts)."""

    def __init__(self, keep=lambda func, args: True) -> None:
        super().__init__()
        self.keep, self.n = keep, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += bool(self.keep(func, args))
        return func(*args, **(kwargs or {}))


def _assert_same(inc, full, *, rtol: float = RTOL) -> None:
    rel = ((inc.prob - full.prob).abs() / full.prob.abs()).max()
    assert rel < rtol, f"relative error {rel:.2e}"
    assert torch.equal(inc.label, full.label)
    assert torch.equal(inc.base_prob, full.base_prob)
    if full.activation is not None:
        assert torch.equal(inc.channel, full.channel)
        scale = full.activation.abs().max().clamp_min(1e-12)
        assert ((inc.activation - full.activation).abs().max() / scale) < 10 * rtol


# (model, image H, W, size, stride, layer, batch size): sizes that end exactly on the border and
# that do not, strides that are not multiples of the network's, squares at every border,
# non-square images (torchvision's adaptive pooling), probes in the windowed part, in the full
# part and after features, batches that span two images.
CASES = [
    ("zfnet", 64, 64, 16, 8, None, 64),
    ("zfnet", 64, 64, 9, 5, "conv1", 13),
    ("zfnet", 72, 72, 13, 6, "relu5", 50),
    ("zfnet", 64, 64, 24, 7, "classifier.fc6", 64),
    ("zfnet", 64, 64, 64, 1, "norm2", 8),
    ("zfnet", 67, 67, 1, 11, "pool1", 64),
    ("alexnet_zf", 96, 96, 16, 8, "conv3", 64),
    ("alexnet_zf", 99, 99, 30, 13, None, 9),
    ("alexnet", 80, 80, 20, 12, "features.4", 32),
    ("alexnet", 96, 72, 11, 17, None, 16),
    ("vgg11", 64, 64, 16, 12, "features.7", 32),
    ("vgg11", 48, 48, 8, 10, None, 25),
    ("odd", 40, 40, 7, 3, "features.4", 64),
    ("odd", 37, 45, 12, 5, "features.9", 30),
]


@pytest.mark.parametrize(("name", "h", "w", "size", "stride", "layer", "batch"), CASES)
def test_incremental_equals_full_forwards_at_every_position(name, h, w, size, stride, layer,
                                                            batch):
    model = _model(name, h)  # zflight's fc6 is sized for square images of side h
    torch.manual_seed(1)
    images = torch.randn(2, 3, h, w)
    kw = dict(size=size, stride=stride, layer=layer, batch_size=batch)
    inc = occlusion_maps(model, images, [1, 4], incremental=True, **kw)
    full = occlusion_maps(model, images, [1, 4], incremental=False, **kw)
    assert inc.method == "incremental" and full.method == "full"
    _assert_same(inc, full)


@pytest.mark.parametrize("windows", ["fixed", "exact"])
@pytest.mark.parametrize("name", ["zfnet", "odd"])
def test_both_window_layouts_are_exact(monkeypatch, name, windows):
    """'fixed' (the GPU layout: one window size per layer) and 'exact' (per-class windows)."""
    monkeypatch.setattr(_incremental, "_default_windows", lambda device: windows)
    model = _model(name, 64)
    torch.manual_seed(2)
    images = torch.randn(3, 3, 64, 64)
    kw = dict(size=12, stride=5, layer="features.0" if name == "odd" else "relu2", batch_size=40)
    _assert_same(occlusion_maps(model, images, None, incremental=True, **kw),
                 occlusion_maps(model, images, None, incremental=False, **kw))


@pytest.mark.parametrize(("winograd", "windows"), [(True, "exact"), (True, "fixed"),
                                                   (False, "exact")])
def test_winograd_windows_are_exact_and_multiply_less(monkeypatch, winograd, windows):
    """vgg11's 3x3 windows with >= 256 channels run as Winograd convolutions on the CPU."""
    monkeypatch.setattr(_incremental, "_default_winograd", lambda device: winograd)
    monkeypatch.setattr(_incremental, "_default_windows", lambda device: windows)
    calls = []
    real = _incremental.winograd_conv3x3
    monkeypatch.setattr(_incremental, "winograd_conv3x3",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    model = _model("vgg11", 64)
    torch.manual_seed(3)
    images = torch.randn(1, 3, 64, 64)
    kw = dict(size=16, stride=12, batch_size=16)
    _assert_same(occlusion_maps(model, images, [2], incremental=True, **kw),
                 occlusion_maps(model, images, [2], incremental=False, **kw))
    assert bool(calls) == winograd
    with torch.no_grad():
        scorer = _incremental.make_scorer(model, images, size=16, stride=12, probe_module=None,
                                          incremental=True, approximate=None)
    layers, plan = list(scorer._winograd), scorer.plan
    if winograd:
        assert layers and all(scorer.ops[i].module.in_channels >= 256 for i in layers)
        assert plan.macs_run < plan.macs_incremental < plan.macs_full
    else:
        assert layers == [] and plan.macs_run == plan.macs_incremental


def test_float64_is_exact_to_float64_rounding():
    model = _model("zfnet", 64, torch.float64)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    kw = dict(size=16, stride=6, layer="conv4")
    inc = occlusion_maps(model, images, None, incremental=True, **kw)
    full = occlusion_maps(model, images, None, incremental=False, **kw)
    assert inc.prob.dtype == torch.float32  # probabilities are float32 (softmax of .float())
    _assert_same(inc, full)
    # Before the float32 softmax, the float64 paths agree far below float32 rounding.
    chain = _incremental.analyze(model)
    with torch.no_grad():
        chain.verify(images[:1])
        plan = _incremental.make_plan(chain, (64, 64), 16, 6, None)
        scorer = _incremental.IncrementalScorer(chain, plan, size=16, stride=6,
                                                probe_module=None, device=images.device)
        which = torch.tensor([0, 1, 1])
        top_left = torch.tensor([[0, 0], [48, 6], [24, 48]])
        logits, _ = scorer.score(images, which, top_left, torch.zeros(3, 1, 1, dtype=torch.float64),
                                 None)
        occluded = images[which].clone()
        for b, (r, c) in enumerate(top_left.tolist()):
            occluded[b, :, r : r + 16, c : c + 16] = 0
        ref = model(occluded)
    assert logits.dtype == torch.float64
    assert ((logits - ref).abs().max() / ref.abs().max()) < 1e-12


def test_unoccluded_image_runs_through_the_network_twice():
    """Once for the base probabilities, once for the windows' cache (which also checks the split)."""

    model = _model("zfnet", 64)
    images = torch.randn(1, 3, 64, 64)
    full_size_convs = _CountOps(lambda func, args: func.__name__.startswith("convolution")
                                and tuple(args[0].shape[-2:]) == (64, 64))
    with full_size_convs as count:
        maps = occlusion_maps(model, images, None, size=16, stride=8, incremental=True)
    assert maps.method == "incremental"
    assert count.n == 2


def test_scorer_given_other_images_than_it_verified_recomputes_their_cache():
    model = _model("zfnet", 64)
    torch.manual_seed(4)
    verified, other = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    top_left = torch.tensor([[0, 0], [24, 40]])
    fill = torch.zeros(3, 1, 1)
    with torch.no_grad():
        scorer = _incremental.make_scorer(model, verified, size=16, stride=8, probe_module=None,
                                          incremental=True, approximate=None)
        logits, _ = scorer.score(other, torch.zeros(2, dtype=torch.int64), top_left, fill, None)
        occluded = other.repeat(2, 1, 1, 1)
        for b, (r, c) in enumerate(top_left.tolist()):
            occluded[b, :, r : r + 16, c : c + 16] = 0
        ref = model(occluded)
    assert scorer.chain.first_trace is None  # let go of, although not used
    assert ((logits - ref).abs().max() / ref.abs().max()) < 1e-5


def test_vectorized_layout_launches_the_same_ops_for_any_number_of_positions():
    """The GPU layout: one indexed op per layer, whatever the batch of positions holds."""
    model = _model("zfnet", 64)
    images = torch.randn(1, 3, 64, 64)
    counts = []
    with torch.no_grad():
        scorer = _incremental.make_scorer(model, images, size=16, stride=4, probe_module=None,
                                          incremental=True, approximate=None, windows="fixed")
        fill = torch.zeros(3, 1, 1)
        for b in (4, 40, 169):
            grid = torch.stack(torch.meshgrid(torch.arange(13) * 4, torch.arange(13) * 4,
                                              indexing="ij"), -1).reshape(-1, 2)
            which = torch.zeros(b, dtype=torch.int64)
            scorer.score(images, which, grid[:b], fill, None)  # the cache is built here
            with _CountOps() as count:
                scorer.score(images, which, grid[:b], fill, None)
            counts.append(count.n)
    assert counts[0] == counts[1] == counts[2]


# ----------------------------------------------------------------------------- choosing a path
@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_non_eligible_model_falls_back_transparently(resnet):
    images = torch.randn(1, 3, 32, 32)
    kw = dict(size=16, stride=8, layer="layer1.0.conv1")
    auto = occlusion_maps(resnet, images, 3, **kw)
    full = occlusion_maps(resnet, images, 3, incremental=False, **kw)
    assert auto.method == full.method == "full"
    assert torch.equal(auto.prob, full.prob) and torch.equal(auto.activation, full.activation)


def test_incremental_true_on_non_eligible_model_says_why(resnet):
    with pytest.raises(ValueError, match=r"incremental=True: ResNet is not eligible.*features"):
        occlusion_maps(resnet, torch.randn(1, 3, 32, 32), 0, size=16, stride=8,
                       incremental=True)
    with pytest.raises(ValueError, match=r"approximate=0.5: ResNet is not eligible"):
        occlusion_maps(resnet, torch.randn(1, 3, 32, 32), 0, size=16, stride=8, approximate=0.5)


def test_unsupported_layer_and_unknown_rest_are_named():
    class Custom(nn.Module):
        def __init__(self, features: nn.Sequential) -> None:
            super().__init__()
            self.features, self.classifier = features, nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).mean(dim=(2, 3)))  # not classifier(features)

    images = torch.randn(1, 3, 16, 16)
    gelu = Custom(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU()))
    with pytest.raises(ValueError, match=r"features.1 \(GELU\) is not one of"):
        occlusion_maps(gelu, images, 0, size=4, stride=4, incremental=True)
    mean = Custom(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="neither classifier"):
        occlusion_maps(mean, images, 0, size=4, stride=4, incremental=True)
    assert occlusion_maps(mean, images, 0, size=4, stride=4).method == "full"


def test_incremental_false_and_auto(monkeypatch):
    model = _model("zfnet", 96)
    images = torch.randn(1, 3, 96, 96)
    assert occlusion_maps(model, images, 0, size=16, stride=16, incremental=False).method == "full"
    assert occlusion_maps(model, images, 0, size=16, stride=16).method == "incremental"
    # One square covering the image changes every map: no gain, so auto runs full forwards.
    assert occlusion_maps(model, images, 0, size=96, stride=1).method == "full"
    assert occlusion_maps(model, images, 0, size=96, stride=1, incremental=True).method == (
        "incremental")


def test_bad_flags_are_value_errors():
    model = _model("zfnet", 64)
    images = torch.randn(1, 3, 64, 64)
    for kwargs, name in [
        (dict(incremental="yes"), "incremental"),
        (dict(approximate=0.0), "approximate"),
        (dict(approximate=1.5), "approximate"),
        (dict(approximate=True), "approximate"),
        (dict(approximate=0.5, incremental=False), "approximate"),
    ]:
        with pytest.raises(ValueError, match=name):
            occlusion_maps(model, images, 0, size=16, stride=8, **kwargs)


def test_model_is_left_unchanged():
    model = _model("alexnet", 64).train()
    model.features[1].training = False  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    occlusion_maps(model, torch.randn(1, 3, 64, 64), 0, size=16, stride=16, layer="features.4",
                   incremental=True)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_model_with_a_user_hook_is_not_skipped():
    model = _model("zfnet", 64)
    calls = []
    handle = model.features.conv2.register_forward_hook(lambda m, i, out: calls.append(out.shape[0]))
    try:
        maps = occlusion_maps(model, torch.randn(1, 3, 64, 64), 0, size=32, stride=32)
        assert maps.method == "full" and sum(calls) == 1 + 4  # the base pass and 4 positions
        with pytest.raises(ValueError, match="forward hooks"):
            occlusion_maps(model, torch.randn(1, 3, 64, 64), 0, size=32, stride=32,
                           incremental=True)
    finally:
        handle.remove()


# --------------------------------------------------------------------------------- approximate
def test_approximate_mode_error_is_bounded_as_documented():
    """docs/occlusion-incremental.md: tau large enough to hold every window is exact; smaller
    tau errs by at most the occluder's own effect on this random-weight model (max |dp| below
    the largest exact drop), and keeps most labels."""
    model = _model("zfnet", 96)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 96, 96)
    kw = dict(size=24, stride=8)
    exact = occlusion_maps(model, images, None, incremental=True, **kw)
    loose = occlusion_maps(model, images, None, approximate=1.0, **kw)
    assert loose.method == "approximate"
    _assert_same(loose, exact)
    largest_drop = (exact.base_prob[:, None, None] - exact.prob).abs().max()
    for tau in (0.75, 0.5, 0.3):
        approx = occlusion_maps(model, images, None, approximate=tau, **kw)
        err = (approx.prob - exact.prob).abs()
        assert err.max() <= 1.5 * largest_drop
        assert (approx.label == exact.label).float().mean() >= 0.9
        assert torch.isfinite(approx.prob).all()


@pytest.mark.parametrize("windows", ["fixed", "exact"])
def test_classes_on_parallel_threads_are_exact(monkeypatch, windows):
    """With several torch threads on a CPU, classes of positions run on a thread pool."""
    monkeypatch.setattr(_incremental, "_default_windows", lambda device: windows)
    model = _model("odd", 40)
    images = torch.randn(2, 3, 40, 40)
    kw = dict(size=9, stride=4, layer="features.2", batch_size=33)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():  # the workers must follow the caller's grad mode, either way
            inc = occlusion_maps(model, images, None, incremental=True, **kw)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    _assert_same(inc, occlusion_maps(model, images, None, incremental=False, **kw))
