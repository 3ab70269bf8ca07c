"""score_methods: equal to the metrics on each method's maps, independent of batching, all-zero
maps scored as chance and counted; the summary and table; bad names."""

from __future__ import annotations

import math

import pytest
import torch

from zflight import zfnet
from zflight.analysis.evaluation import deletion_auc, insertion_auc, relevance, relevance_rank
from zflight.analysis.explanations import ScoreTable, check_names, score_methods
from zflight.attribution import methods as registry


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").eval()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 5, 7, 9])
    masks = torch.zeros(5, 64, 64, dtype=torch.bool)
    for i in range(5):
        masks[i, 10 + 4 * i : 30 + 4 * i, 12 : 40 - i] = True
    return model, x, y, masks


def test_scores_equal_the_metrics_and_do_not_depend_on_batching(batch):
    model, x, y, masks = batch
    one = score_methods(model, x, y, masks, ["saliency"], steps=4, batch_size=5, keep_maps=2)
    two = score_methods(model, x, y, masks, ["saliency"], steps=4, batch_size=2)
    r = relevance(registry.attribute("saliency", model, x, y).double())
    assert torch.allclose(one.scores["saliency"]["relevance_rank"], relevance_rank(r, masks))
    assert torch.allclose(one.scores["saliency"]["deletion_auc"], deletion_auc(model, x, r, y, steps=4).double(), atol=1e-6)
    assert torch.allclose(one.scores["saliency"]["insertion_auc"],
                          insertion_auc(model, x, r, y, steps=4, baseline="blur").double(), atol=1e-6)
    for metric in one.metrics:
        assert torch.allclose(one.scores["saliency"][metric], two.scores["saliency"][metric], atol=1e-6), metric
    assert one.curves["saliency"]["deletion_auc"].shape == (5, 5)
    assert torch.allclose(one.maps["saliency"], r[:2].float())
    assert one.baselines == {"deletion_auc": "zeros", "insertion_auc": "blur"}


def test_an_all_zero_map_scores_chance_and_is_counted(batch, monkeypatch):
    model, x, y, masks = batch

    def half_empty(model, inputs, target):
        maps = torch.rand(inputs.shape[0], 1, 64, 64, generator=torch.Generator().manual_seed(0))
        maps[1] = 0.0  # points nowhere
        return maps

    monkeypatch.setitem(registry.METHODS, "half_empty", half_empty)
    table = score_methods(model, x, y, masks, ["half_empty"], ["pointing_game", "relevance_mass", "relevance_rank"])
    assert table.empty == {"half_empty": 1}
    chance = float(masks[1].double().mean())  # every pixel tied: |mask| / (H W)
    for metric in table.metrics:
        assert float(table.scores["half_empty"][metric][1]) == pytest.approx(chance), metric


def test_summary_and_markdown():
    table = ScoreTable(("a", "b"), ("pointing_game", "deletion_auc"),
                       {"a": {"pointing_game": torch.tensor([1.0, 0.0, 1.0, 1.0]),
                              "deletion_auc": torch.tensor([0.1, 0.2, 0.3, 0.4])},
                        "b": {"pointing_game": torch.tensor([0.0, 0.0, 0.0, 0.0]),
                              "deletion_auc": torch.tensor([0.5, 0.5, 0.5, 0.5])}},
                       {"a": 0, "b": 0}, torch.empty(0))
    s = table.summary()
    assert s["a"]["pointing_game"] == {"mean": 0.75, "sem": pytest.approx(0.5 / math.sqrt(4)), "n": 4}
    assert s["b"]["deletion_auc"]["sem"] == 0.0
    lines = table.markdown().splitlines()
    assert lines[0] == "| method | pointing_game ↑ | deletion_auc ↓ | N |"
    assert lines[2] == "| a | 0.750 ± 0.250 | 0.250 ± 0.065 | 4 |"


@pytest.mark.parametrize(
    "values, message",
    [
        (["saliency", "gradcamm"], r"methods: method 'gradcamm' does not exist \(did you mean 'gradcam'\?\)"),
        (["saliency", "saliency"], r"methods: saliency given more than once"),
        ([], r"methods must be a non-empty list"),
        ("saliency", r"methods must be a non-empty list"),
    ],
)
def test_bad_names(values, message):
    with pytest.raises(ValueError, match=message):
        check_names(values, list(registry.METHODS), "methods", "method")


def test_bad_shapes_are_named(batch):
    model, x, y, masks = batch
    with pytest.raises(ValueError, match=r"masks must be a bool tensor \[N=5, H=64, W=64\]"):
        score_methods(model, x, y, masks[:4], ["random"])
    with pytest.raises(ValueError, match=r"targets must be a tensor \[N=5\]"):
        score_methods(model, x, y[:3], masks, ["random"])
    with pytest.raises(ValueError, match=r"steps must be an int >= 1"):
        score_methods(model, x, y, masks, ["random"], steps=0)


def test_without_masks_the_faithfulness_metrics_run_and_localization_is_refused(batch):
    model, x, y, masks = batch
    faith = ["deletion_auc", "insertion_auc"]
    without = score_methods(model, x, y, None, ["saliency"], faith, steps=4)
    with_masks = score_methods(model, x, y, masks, ["saliency"], faith, steps=4)
    for metric in faith:
        assert torch.equal(without.scores["saliency"][metric], with_masks.scores["saliency"][metric])
    with pytest.raises(ValueError, match=r"masks: pointing_game score maps against object masks; none were given"):
        score_methods(model, x, y, None, ["saliency"], ["pointing_game", "deletion_auc"])
