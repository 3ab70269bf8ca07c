"""Sanity checks (Adebayo et al., 2018): model randomization and class sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from zflight.analysis.sanity import class_sensitivity, model_randomization, spearman, ssim


class LinearNet(nn.Module):
    """Two linear layers and a ReLU on 1x16x16 images: logits for 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(256, 16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x.flatten(1)))))


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    out = model(x)
    return torch.autograd.grad(out[torch.arange(len(x)), target].sum(), x)[0].abs()


def snapshot(model: nn.Module) -> dict:
    return {
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "objects": [id(t) for t in (*model.parameters(), *model.buffers())],
        "modes": [m.training for m in model.modules()],
        "hooks": [
            (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for m in model.modules()
        ],
    }


def assert_as_found(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["values"].keys() == before["values"].keys()
    for k, v in before["values"].items():
        assert torch.equal(after["values"][k], v), k  # bit-identical
    assert after["objects"] == before["objects"]
    assert after["modes"] == before["modes"]
    assert after["hooks"] == before["hooks"]


@pytest.fixture()
def big_x() -> torch.Tensor:
    return torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.1


def test_spearman_of_a_monotone_transform_is_one_and_of_a_reversal_minus_one():
    a = torch.rand(2, 5, 5) + 0.1
    torch.testing.assert_close(spearman(a, a.pow(3) * 7), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(spearman(a, 1 / a), -torch.ones(2, dtype=torch.float64))


def test_spearman_gives_ties_their_average_rank():
    a = torch.tensor([[[1.0, 1.0, 2.0]]])
    b = torch.tensor([[[1.0, 2.0, 3.0]]])
    # ranks (0.5, 0.5, 2) and (0, 1, 2): correlation 1.5 / sqrt(1.5 * 2)
    assert spearman(a, b).item() == pytest.approx(1.5 / math.sqrt(3.0))


def test_spearman_is_nan_for_a_constant_map():
    assert math.isnan(spearman(torch.ones(1, 4, 4), torch.rand(1, 4, 4)).item())


def test_spearman_equals_scipy_on_maps_with_ties():
    stats = pytest.importorskip("scipy.stats")
    a = torch.randint(0, 4, (3, 2, 9, 9)).double()
    b = torch.randint(0, 6, (3, 9, 9)).double()
    want = [stats.spearmanr(a[i].abs().sum(0).flatten(), b[i].flatten()).statistic for i in range(3)]
    np.testing.assert_allclose(spearman(a, b).numpy(), want, rtol=1e-12)


def test_ssim_of_a_map_with_itself_or_a_rescaled_copy_is_one():
    a = torch.rand(2, 16, 16)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, -5 * a), torch.ones(2, dtype=torch.float64))


def test_ssim_equals_skimage_with_the_gaussian_window():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = torch.rand(3, 20, 24).double(), torch.rand(3, 20, 24).double()
    b[1] = a[1] + 0.1 * b[1]
    want = [
        metrics.structural_similarity(
            (a[i] / a[i].max()).numpy(),
            (b[i] / b[i].max()).numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(ssim(a, b).numpy(), want, rtol=1e-10)


def test_ssim_needs_maps_as_large_as_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


def test_cascading_randomizes_from_the_top_and_restores_the_model(big_x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 12), nn.ReLU(), nn.Linear(12, 4)).train()
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    res = model_randomization(model, saliency, big_x, [0, 1, 2], mode="cascading")
    assert res.layers == ("3", "1") and res.mode == "cascading"
    assert res.spearman.shape == (2, 3) and res.ssim.shape == (2, 3)
    assert (res.spearman < 0.99).all()  # saliency of a linear stack depends on its weights
    assert_as_found(model, before)
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_row_i_is_the_model_with_the_top_i_plus_one_layers_reinitialized(big_x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 12), nn.ReLU(), nn.Linear(12, 4))
    target = torch.tensor([0, 1, 2])
    res = model_randomization(model, saliency, big_x, target, seed=5)
    original = saliency(model, big_x, target)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(256, 12), nn.ReLU(), nn.Linear(12, 4))
    ref.load_state_dict(model.state_dict())
    for i, layer in enumerate([ref[3], ref[1]]):
        torch.manual_seed(5 + i)
        layer.reset_parameters()
        maps = saliency(ref, big_x, target)
        torch.testing.assert_close(res.spearman[i], spearman(original, maps))
        torch.testing.assert_close(res.ssim[i], ssim(original, maps))


def test_independent_mode_randomizes_one_layer_at_a_time(big_x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 12), nn.ReLU(), nn.Linear(12, 4))
    target = torch.tensor([0, 1, 2])
    casc = model_randomization(model, saliency, big_x, target, mode="cascading", seed=3)
    ind = model_randomization(model, saliency, big_x, target, mode="independent", seed=3)
    # The top layer alone is row 0 of both; the bottom layer alone differs from both at once.
    torch.testing.assert_close(ind.spearman[0], casc.spearman[0])
    ref = nn.Sequential(nn.Flatten(), nn.Linear(256, 12), nn.ReLU(), nn.Linear(12, 4))
    ref.load_state_dict(model.state_dict())
    torch.manual_seed(3 + 1)
    ref[1].reset_parameters()
    want = spearman(saliency(model, big_x, target), saliency(ref, big_x, target))
    torch.testing.assert_close(ind.spearman[1], want)


def test_a_map_that_ignores_the_model_survives_randomization(big_x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 12), nn.ReLU(), nn.Linear(12, 4))
    res = model_randomization(model, "random", big_x, 0)
    torch.testing.assert_close(res.spearman, torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(res.ssim, torch.ones(2, 3, dtype=torch.float64))


def test_a_method_that_raises_midway_leaves_weights_modes_and_hooks(big_x):
    model = LinearNet().train()
    model.fc2.eval()
    user = model.fc1.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    calls = []

    def flaky(m: nn.Module, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        m.fc1.register_forward_hook(lambda *a: None)
        m.fc2.register_full_backward_hook(lambda *a: None)
        m.train()
        if len(calls) == 2:  # after the first layer was re-initialized
            raise RuntimeError("midway")
        return saliency(m, inp, t)

    with pytest.raises(RuntimeError, match="midway"):
        model_randomization(model, flaky, big_x, [0, 1, 2])
    assert_as_found(model, before)
    user.remove()
    assert not model.fc1._forward_hooks  # the user's own handle still works


def test_batch_norm_running_statistics_are_restored(big_x):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 3))
    model.train()
    model(torch.rand(8, 1, 16, 16))  # non-trivial running statistics
    before = snapshot(model)
    res = model_randomization(model, saliency, big_x, 1, mode="independent")
    assert res.layers == ("4", "1", "0")
    assert_as_found(model, before)


def test_chosen_layers_are_randomized_in_the_given_order(big_x):
    model = LinearNet()
    res = model_randomization(model, saliency, big_x, 0, layers=["fc1", "fc2"])
    assert res.layers == ("fc1", "fc2")


def test_class_sensitivity_compares_top_and_least_likely_class(big_x):
    model = LinearNet()
    res = class_sensitivity(model, saliency, big_x)
    with torch.no_grad():
        logits = model.eval()(big_x)
    assert torch.equal(res.top_class, logits.argmax(dim=1))
    assert torch.equal(res.bottom_class, logits.argmin(dim=1))
    a, b = saliency(model, big_x, res.top_class), saliency(model, big_x, res.bottom_class)
    torch.testing.assert_close(res.spearman, spearman(a, b))
    torch.testing.assert_close(res.ssim, ssim(a, b))


def test_class_sensitivity_of_a_class_blind_map_is_one(big_x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4)).train()
    before = snapshot(model)
    res = class_sensitivity(model, "random", big_x)
    torch.testing.assert_close(res.spearman, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(res.ssim, torch.ones(3, dtype=torch.float64))
    assert_as_found(model, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "lrp"}, "method 'lrp' does not exist; valid methods: deconvnet"),
        ({"mode": "top"}, "mode must be 'cascading' or 'independent'"),
        ({"layers": ["drop"]}, "layers: 'drop' has no parameters of its own"),
        ({"layers": ["fc9"]}, "layer='fc9' is not a module"),
        ({"target": [0]}, "target has 1 entries but inputs has 3 images"),
        ({"method": lambda m, i, t: torch.ones(3, 1, 4, 4)}, r"maps of shape \(3, 1, 4, 4\)"),
        ({"inputs": torch.rand(3, 1, 8, 8)}, "inputs must be at least 11x11"),
    ],
)
def test_bad_arguments_are_errors_naming_them(big_x, kwargs, message):
    args = {"model": LinearNet(), "method": saliency, "inputs": big_x, "target": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        model_randomization(**args)
