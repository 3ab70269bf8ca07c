"""Localization and faithfulness metrics of zflight.analysis.evaluation, on maps with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from zflight.analysis.evaluation import (
    deletion_auc,
    insertion_auc,
    perturbation_curves,
    pointing_game,
    relevance,
    relevance_mass,
    relevance_rank,
)

LOCALIZATION = [pointing_game, relevance_mass, relevance_rank]


def mask_of(*pixels: tuple[int, int], size: int = 4) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def test_relevance_is_the_sum_over_channels_of_absolute_values():
    maps = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])
    assert torch.equal(relevance(maps), torch.tensor([[[4.0, 2.5]]]))
    assert torch.equal(relevance(torch.tensor([[[-1.0, 2.0]]])), torch.tensor([[[1.0, 2.0]]]))


def test_pointing_game_is_one_where_the_maximum_is_in_the_mask_and_zero_elsewhere():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 5.0
    maps[1, 3, 3] = 5.0
    maps[:, 0, 0] = 1.0
    masks = torch.stack([mask_of((1, 2), (1, 3)), mask_of((1, 2), (1, 3))])
    assert torch.equal(pointing_game(maps, masks), torch.tensor([1.0, 0.0]))


def test_pointing_game_uses_absolute_values_summed_over_channels():
    # Channel sum of signed values would peak at (0, 0); of absolute values at (2, 2).
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 0, 0] = 3.0
    maps[0, 0, 2, 2] = -2.0
    maps[0, 1, 2, 2] = -2.0
    assert pointing_game(maps, mask_of((2, 2))[None]).item() == 1.0
    assert pointing_game(maps, mask_of((0, 0))[None]).item() == 0.0


def test_pointing_game_scores_tied_maxima_by_their_share_in_the_mask():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, :] = 2.0  # four tied maxima on the first row, one of them in the mask
    assert pointing_game(maps, mask_of((0, 1), (3, 3))[None]).item() == pytest.approx(0.25)
    # A constant map scores the chance level |mask| / (H W), not a hit.
    constant = torch.ones(1, 4, 4)
    assert pointing_game(constant, mask_of((1, 1), (2, 2))[None]).item() == pytest.approx(2 / 16)


def test_relevance_mass_is_the_share_of_relevance_inside_the_mask():
    maps = torch.tensor([[[1.0, -3.0], [0.0, 4.0]]])
    mask = torch.tensor([[[False, True], [False, True]]])
    assert relevance_mass(maps, mask).item() == pytest.approx(7 / 8)


def test_relevance_rank_is_the_share_of_the_top_k_pixels_inside_the_mask():
    maps = torch.arange(16, 0, -1, dtype=torch.float32).reshape(1, 4, 4)  # row-major ranking
    # K = 3: the top three are (0,0), (0,1), (0,2); two of them are in the mask.
    mask = mask_of((0, 0), (0, 2), (3, 3))
    assert relevance_rank(maps, mask[None]).item() == pytest.approx(2 / 3)


def test_relevance_rank_shares_the_last_places_among_tied_pixels():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 5.0
    maps[0, 1, :] = 1.0  # four pixels tied for places 2..5
    # K = 3: (0,0) is in the top; 2 places for 4 tied pixels, of which 1 is in the mask.
    mask = mask_of((0, 0), (1, 0), (3, 3))
    assert relevance_rank(maps, mask[None]).item() == pytest.approx((1 + 2 * 1 / 4) / 3)


def test_batched_scores_equal_scores_item_by_item():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(50, 3, 16, 16, generator=gen)
    masks = torch.rand(50, 16, 16, generator=gen) > 0.6
    for metric in LOCALIZATION:
        batched = metric(maps, masks)
        single = torch.cat([metric(maps[i : i + 1], masks[i : i + 1]) for i in range(50)])
        assert batched.shape == (50,)
        torch.testing.assert_close(batched, single)


@pytest.mark.parametrize("metric", LOCALIZATION, ids=lambda f: f.__name__)
def test_all_zero_map_is_an_error_naming_the_item(metric):
    maps, masks = torch.rand(3, 4, 4) + 0.1, torch.ones(3, 4, 4, dtype=torch.bool)
    maps[1] = 0.0
    with pytest.raises(ValueError, match=r"maps\[1\] is all zero"):
        metric(maps, masks)


@pytest.mark.parametrize("metric", LOCALIZATION, ids=lambda f: f.__name__)
def test_empty_mask_is_an_error_naming_the_item(metric):
    masks = torch.ones(3, 4, 4, dtype=torch.bool)
    masks[2] = False
    with pytest.raises(ValueError, match=r"masks\[2\] is empty"):
        metric(torch.rand(3, 4, 4) + 0.1, masks)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("metric", LOCALIZATION, ids=lambda f: f.__name__)
def test_nan_or_inf_in_a_map_is_an_error_naming_the_item(metric, bad):
    maps = torch.rand(3, 2, 4, 4)
    maps[2, 1, 3, 0] = bad
    with pytest.raises(ValueError, match=r"maps\[2\] holds NaN or inf"):
        metric(maps, torch.ones(3, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("metric", LOCALIZATION, ids=lambda f: f.__name__)
def test_shape_mismatch_is_an_error_naming_masks(metric):
    with pytest.raises(ValueError, match=r"masks has shape \(3, 4, 5\)"):
        metric(torch.rand(3, 4, 4), torch.ones(3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks has shape \(2, 4, 4\)"):
        metric(torch.rand(3, 1, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("metric", LOCALIZATION, ids=lambda f: f.__name__)
def test_non_bool_masks_are_an_error(metric):
    with pytest.raises(ValueError, match="masks must be bool, got torch.float32"):
        metric(torch.rand(2, 4, 4), torch.ones(2, 4, 4))


@pytest.mark.parametrize("metric", LOCALIZATION, ids=lambda f: f.__name__)
def test_maps_of_wrong_rank_or_dtype_are_errors(metric):
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"maps must be \[N, H, W\] or \[N, C, H, W\]"):
        metric(torch.rand(4, 4), masks)
    with pytest.raises(ValueError, match="maps must be floating point"):
        metric(torch.ones(2, 4, 4, dtype=torch.int64), masks)


def quantus_scores(quantus, metric_cls, r: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    n = r.shape[0]
    metric = metric_cls(abs=True, normalise=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=None,
            x_batch=np.zeros((n, 1, *r.shape[1:]), dtype=np.float32),
            y_batch=np.zeros(n, dtype=np.int64),
            a_batch=r.numpy()[:, None],
            s_batch=masks.numpy()[:, None].astype(np.float32),
            batch_size=n,
        )
    return np.asarray(scores, dtype=np.float64)


def test_scores_equal_quantus_where_the_definitions_agree():
    quantus = pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(1)
    # Continuous random maps (no ties) and masks of varied size, with channels.
    maps = torch.randn(40, 3, 24, 24, generator=gen, dtype=torch.float64)
    masks = torch.rand(40, 24, 24, generator=gen) < torch.linspace(0.05, 0.9, 40)[:, None, None]
    r = relevance(maps)
    pairs = [
        (pointing_game, quantus.PointingGame),
        (relevance_mass, quantus.RelevanceMassAccuracy),
        (relevance_rank, quantus.RelevanceRankAccuracy),
    ]
    for ours, theirs in pairs:
        want = quantus_scores(quantus, theirs, r, masks)
        np.testing.assert_allclose(ours(maps, masks).numpy(), want, rtol=0, atol=1e-12)


def test_quantus_counts_any_tied_maximum_as_a_hit_where_zflight_scores_the_share():
    quantus = pytest.importorskip("quantus")
    maps = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    maps[0, 1, 1] = maps[0, 3, 2] = 2.0  # two tied maxima, one of them on the object
    mask = mask_of((1, 1))[None]
    assert quantus_scores(quantus, quantus.PointingGame, maps, mask)[0] == 1.0
    assert pointing_game(maps, mask).item() == pytest.approx(1 / 2)


# --- deletion / insertion ----------------------------------------------------------------


class KeyPixels(nn.Module):
    """Two classes: logit 0 is ``gain`` times the sum of the key pixels, logit 1 is zero."""

    def __init__(self, key: torch.Tensor, gain: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("key", key.float())
        self.gain = gain
        self.seen: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.append(x.detach().clone())
        s = self.gain * (x.sum(dim=1) * self.key).flatten(1).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_deletion_of_the_key_pixels_first_drops_the_probability_at_the_first_step():
    key = mask_of((0, 0), (2, 3))  # 2 of 16 pixels
    model = KeyPixels(key)
    x = torch.ones(1, 1, 4, 4)
    good = key.float()[None] + 0.01 * torch.arange(16.0).reshape(1, 4, 4)  # key pixels first
    curves = perturbation_curves(model, x, good, 0, steps=8)  # 2 pixels per step
    p0 = torch.sigmoid(torch.tensor(3.0 * 2)).item()
    want = torch.tensor([p0] + [0.5] * 8)
    torch.testing.assert_close(curves.probs[0], want)
    torch.testing.assert_close(curves.fractions, torch.linspace(0, 1, 9))
    # Trapezoid over [0, 1]: the first interval is (p0 + 0.5) / 2 wide 1/8, then 0.5.
    assert curves.auc.item() == pytest.approx((p0 + 0.5) / 16 + 0.5 * 7 / 8, abs=1e-6)
    bad = 1.0 - good  # key pixels last
    assert deletion_auc(model, x, bad, 0, steps=8).item() > curves.auc.item() + 0.3


def test_insertion_reveals_the_most_relevant_pixels_first_on_the_baseline():
    key = mask_of((1, 1))
    model = KeyPixels(key)
    x = torch.ones(1, 1, 4, 4)
    maps = key.float()[None] + 0.01  # the key pixel first, then row-major
    curves = perturbation_curves(model, x, maps, 0, mode="insertion", steps=16)
    p1 = torch.sigmoid(torch.tensor(3.0)).item()
    torch.testing.assert_close(curves.probs[0], torch.tensor([0.5] + [p1] * 16))
    assert insertion_auc(model, x, maps, 0, steps=16).item() == pytest.approx(
        curves.auc.item()
    )


def test_ties_are_removed_in_row_major_order():
    model = KeyPixels(torch.zeros(4, 4, dtype=torch.bool))
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    perturbation_curves(model, x, torch.ones(1, 4, 4), 0, steps=4, batch_size=5)
    seen = torch.cat(model.seen)  # one chunk of all 5 steps
    for k in range(5):
        removed = (seen[k, 0] == 0).flatten()
        assert torch.equal(removed, torch.arange(16) < 4 * k)


def test_batched_curves_equal_one_perturbed_image_at_a_time():
    from zflight import zfnet

    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").eval()
    x = torch.randn(3, 3, 64, 64)
    maps = torch.randn(3, 3, 64, 64)
    curves = perturbation_curves(model, x, maps, [1, 4, 7], steps=5, batch_size=4)
    r = maps.abs().sum(dim=1).flatten(1)
    order = r.argsort(dim=1, descending=True, stable=True)
    for i, t in enumerate([1, 4, 7]):
        for k in range(6):
            gone = torch.zeros(64 * 64, dtype=torch.bool)
            gone[order[i, : k * 64 * 64 // 5]] = True
            img = x[i] * ~gone.reshape(1, 64, 64)
            with torch.no_grad():
                p = model(img[None]).softmax(dim=1)[0, t]
            assert curves.probs[i, k].item() == pytest.approx(p.item(), abs=1e-6)


def test_one_call_runs_one_forward_per_batch_of_perturbed_images():
    model = KeyPixels(mask_of((0, 0)))
    x = torch.rand(4, 1, 4, 4)
    deletion_auc(model, x, torch.rand(4, 4, 4), 0, steps=8, batch_size=12)
    assert model.calls == 3  # 4 images x 9 points = 36 = 3 batches of 12
    model.calls = 0
    deletion_auc(model, x, torch.rand(4, 4, 4), None, steps=8, batch_size=36)
    assert model.calls == 2  # plus one to find the predicted classes


def test_targets_none_uses_each_images_predicted_class():
    model = KeyPixels(mask_of((0, 0)))
    x = torch.ones(2, 1, 4, 4)
    x[1] = -1.0  # logit 0 negative: class 1 predicted
    curves = perturbation_curves(model, x, torch.rand(2, 4, 4), None, steps=2)
    assert curves.targets.tolist() == [0, 1]


@pytest.mark.parametrize(
    "baseline, want",
    [("zeros", 0.0), (0.25, 0.25), (torch.tensor([0.5]).view(1, 1, 1, 1), 0.5), ("blur", 2.0)],
)
def test_removed_pixels_take_the_baseline_value(baseline, want):
    model = KeyPixels(mask_of((0, 0), size=12), gain=0.0)
    x = torch.full((1, 1, 12, 12), 2.0)  # blurring a constant image leaves it unchanged
    perturbation_curves(model, x, torch.rand(1, 12, 12), 0, steps=1, baseline=baseline)
    fully_deleted = model.seen[0][1]
    torch.testing.assert_close(fully_deleted, torch.full_like(fully_deleted, want))


def test_blur_baseline_is_a_normalized_gaussian_of_the_image():
    model = KeyPixels(mask_of((0, 0), size=31), gain=0.0)
    x = torch.zeros(1, 1, 31, 31)
    x[0, 0, 15, 15] = 1.0
    perturbation_curves(model, x, torch.rand(1, 31, 31), 0, steps=1, baseline="blur")
    blurred = model.seen[0][1, 0]
    t = torch.arange(11.0) - 5
    g = torch.exp(-0.5 * (t / 5.0) ** 2)
    g = g / g.sum()
    torch.testing.assert_close(blurred[10:21, 10:21], torch.outer(g, g))
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_model_modes_are_restored_and_it_runs_in_eval():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(16, 3)).train()
    x = torch.rand(2, 1, 4, 4)
    a = deletion_auc(model, x, torch.rand(2, 4, 4), 0, steps=4)
    b = deletion_auc(model, x, torch.rand(2, 4, 4), 0, steps=4)  # dropout off: repeatable
    assert model.training and all(m.training for m in model)
    assert a.shape == (2,) and torch.isfinite(a).all() and b.shape == (2,)


def test_progress_bar_is_shown_when_asked(capsys):
    model = KeyPixels(mask_of((0, 0)))
    deletion_auc(model, torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), 0, steps=2, progress=True)
    assert "deletion" in capsys.readouterr().err
    deletion_auc(model, torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), 0, steps=2, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"maps": torch.rand(2, 4, 5)}, r"maps has shape \(2, 4, 5\)"),
        ({"maps": torch.rand(3, 4, 4)}, r"maps has shape \(3, 4, 4\)"),
        ({"steps": 0}, "steps must be a positive int, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"baseline": "gray"}, "baseline must be 'zeros', 'blur'"),
        ({"baseline": torch.zeros(3, 3)}, r"baseline of shape \(3, 3\) does not broadcast"),
        ({"mode": "both"}, "mode must be 'deletion' or 'insertion'"),
        ({"targets": [0, 5]}, r"targets\[1\] = 5 is outside the model's 2 classes"),
        ({"targets": [0]}, "targets has 1 entries but inputs has 2 images"),
        ({"inputs": torch.rand(2, 4, 4)}, r"inputs must be a floating \[N, C, H, W\] batch"),
    ],
)
def test_bad_perturbation_arguments_are_errors_naming_them(kwargs, message):
    args = {
        "model": KeyPixels(mask_of((0, 0))),
        "inputs": torch.rand(2, 1, 4, 4),
        "maps": torch.rand(2, 4, 4),
        "targets": 0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        perturbation_curves(**args)
