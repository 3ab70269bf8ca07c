"""evaluation_figure and sanity_figure: what each panel shows, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zflight.analysis.sanity import RandomizationResult
from zflight.figures.evaluation import evaluation_figure, sanity_figure


def _inputs(k: int = 2, size: int = 16):
    display = torch.rand(k, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(k, size, size, dtype=torch.bool)
    masks[:, 4:9, 5:11] = True
    ramp = torch.arange(size * size, dtype=torch.float64).reshape(size, size)
    maps = {"ramp": ramp.expand(k, size, size).clone(), "signed": -ramp.expand(k, 2, size, size).clone()}
    fractions = torch.linspace(0, 1, 5)
    curves = {"ramp": torch.tensor([[1.0, 0.5, 0.2, 0.1, 0.0]] * k), "signed": torch.zeros(k, 5)}
    return display, masks, maps, fractions, curves


def test_panels_show_image_mask_scaled_relevance_and_curves():
    display, masks, maps, fractions, curves = _inputs()
    fig = evaluation_figure(display, masks, maps, fractions, curves, titles=["a", "b"])
    axes = np.asarray(fig.axes).reshape(2, 5)  # image, mask, two maps, curves
    assert [ax.get_title() for ax in axes[0]] == ["a", "object mask", "ramp", "signed", "deletion curves"]
    assert np.array_equal(axes[1, 1].images[0].get_array(), masks[1].numpy().astype(float))
    # A map is shown as r / (its 99th percentile), clipped: the ramp 0..255 has p99 = 253.
    shown = np.asarray(axes[0, 2].images[0].get_array())
    assert shown[0, 0] == 0.0 and shown[0, 1] == pytest.approx(1 / 253) and shown[-1, -1] == 1.0
    # Channels are summed in absolute value: -ramp on 2 channels shows like the ramp.
    assert np.allclose(axes[0, 3].images[0].get_array(), shown)
    # The object's outline is drawn over the image and every map, not over the mask itself.
    assert [len(ax.collections) > 0 for ax in axes[0, :4]] == [True, False, True, True]
    lines = axes[1, 4].get_lines()
    assert [line.get_label() for line in lines] == ["ramp", "signed"]
    assert np.allclose(lines[0].get_ydata(), [1.0, 0.5, 0.2, 0.1, 0.0])
    assert np.allclose(lines[0].get_xdata(), fractions.numpy())


def test_without_curves_there_is_no_curve_column():
    display, masks, maps, _, _ = _inputs(k=1)
    fig = evaluation_figure(display, masks, maps)
    assert len(fig.axes) == 4


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, m, mp, f, c: (d, m, {"ramp": mp["ramp"][:1]}, f, c), r"maps\['ramp'\] must be \[K=2"),
        (lambda d, m, mp, f, c: (d, m.float(), mp, f, c), r"masks must be a bool tensor"),
        (lambda d, m, mp, f, c: (d, m, mp, None, c), r"curves need their fractions"),
        (lambda d, m, mp, f, c: (d, m, mp, f, {"ramp": c["ramp"][:, :3]}), r"curves\['ramp'\] must be \[K=2, S=5\]"),
        (lambda d, m, mp, f, c: (d, m, {}, f, c), r"maps must hold at least one"),
    ],
)
def test_bad_input_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        evaluation_figure(*change(*_inputs()))


def _result(spearman: list[list[float]], layers=("fc8", "fc7", "conv1")) -> RandomizationResult:
    values = torch.tensor(spearman, dtype=torch.float64)
    return RandomizationResult(layers=tuple(layers), spearman=values, ssim=values / 2,
                               mode="cascading", seed=0)


def test_sanity_curves_start_at_one_and_average_finite_values():
    nan = float("nan")
    fig = sanity_figure({
        "a": _result([[0.5, 0.7], [0.2, nan], [0.0, 0.2]]),
        "b": _result([[1.0, 1.0]] * 3),
    })
    left, right = fig.axes[:2]
    a, b = left.get_lines()[:2]
    assert a.get_label() == "a" and b.get_label() == "b"
    # The trained model against itself (1), then the mean over images, NaN left out.
    assert np.allclose(a.get_ydata(), [1.0, 0.6, 0.2, 0.1])
    assert np.allclose(right.get_lines()[0].get_ydata(), [1.0, 0.3, 0.1, 0.05])
    assert np.allclose(b.get_ydata(), [1.0, 1.0, 1.0, 1.0])
    assert [t.get_text() for t in left.get_xticklabels()] == ["none", "fc8", "+fc7", "+conv1"]


def test_sanity_results_must_share_layers():
    with pytest.raises(ValueError, match="same layers"):
        sanity_figure({"a": _result([[1.0]] * 3), "b": _result([[1.0]] * 2, layers=("fc8", "fc7"))})
    with pytest.raises(ValueError, match="at least one"):
        sanity_figure({})


def test_without_masks_there_is_no_mask_column_and_no_outline():
    display, _, maps, fractions, curves = _inputs(k=1)
    fig = evaluation_figure(display, None, maps, fractions, curves, titles=["a"])
    assert [ax.get_title() for ax in fig.axes] == ["a", "ramp", "signed", "deletion curves"]
    assert [len(ax.collections) for ax in fig.axes[:3]] == [0, 0, 0]
