import pytest
import torch

from zflight.analysis.probe import LayerProbe, ProbeResult
from zflight.figures.probe import probe_figure, probe_table


def _result(accs, splits=2):
    layers = {
        name: LayerProbe(layer=name, name=f"features.{name}", dims=8, C=[0.1] * splits,
                         train_accuracy=[1.0] * splits, test_accuracy=list(acc), mean_class_accuracy=list(acc),
                         confusion=torch.zeros(4, 4, dtype=torch.int64), converged=True)
        for name, acc in accs.items()
    }
    return ProbeResult(layers=layers, classes=list("abcd"), classifier="svm", pooling="grid", grid=2,
                       splits=splits, train_per_class=5, num_train=[20] * splits, num_test=[40] * splits)


def test_table_is_shaped_like_table_7_with_mean_and_std():
    table = probe_table({"trained": _result({"conv1": [0.4, 0.5], "fc7": [0.8, 0.9]}),
                         "random weights": _result({"conv1": [0.3, 0.3], "fc7": [0.2, 0.2]}).to_dict()})
    assert table.splitlines() == [
        "| mean per-class accuracy (%) | conv1 | fc7 |",
        "|---|---|---|",
        "| trained | 45.0 ± 7.1 | 85.0 ± 7.1 |",
        "| random weights | 30.0 ± 0.0 | 20.0 ± 0.0 |",
    ]


def test_figure_draws_one_curve_per_model_and_chance():
    fig = probe_figure({"trained": _result({"conv1": [0.4, 0.5], "fc7": [0.8, 0.9]}),
                        "random weights": _result({"conv1": [0.3, 0.3], "fc7": [0.2, 0.2]})})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["chance (25%)", "trained", "random weights"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "fc7"]


def test_results_over_different_layers_are_refused():
    with pytest.raises(ValueError, match="different layers"):
        probe_figure({"a": _result({"conv1": [0.4, 0.5]}), "b": _result({"fc7": [0.4, 0.5]})})
