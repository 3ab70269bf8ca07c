"""Linear probes as a picture and a table: accuracy against layer, several models overlaid.

:func:`probe_figure` draws the paper's Table 7 as a curve (one line per model, e.g. trained
weights against random weights, with the splits' standard deviation as error bars and chance as
a dotted line); :func:`probe_table` writes the same numbers as a Markdown table shaped like
Table 7 (layers as columns, one row per model). Both take :class:`~zflight.analysis.probe.ProbeResult`
objects or their :meth:`~zflight.analysis.probe.ProbeResult.to_dict` form (read back from
``probe.json``). Nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zflight.analysis.probe import ProbeResult

__all__ = ["probe_figure", "probe_table"]

_METRIC_TITLES = {
    "mean_class_accuracy": "mean per-class accuracy",
    "test_accuracy": "test accuracy",
    "train_accuracy": "train accuracy",
}


def probe_figure(results: Mapping[str, ProbeResult | Mapping[str, Any]], *,
                 metric: str = "mean_class_accuracy", title: str | None = None) -> Any:
    """Return a matplotlib ``Figure``: ``metric`` (in %) against layer, one line per model.

    Args:
        results: model label (``"trained"``, ``"random weights"``) to its probe result; every
            result must probe the same layers.
        metric: ``"mean_class_accuracy"`` (Caltech's measure, the default), ``"test_accuracy"``
            or ``"train_accuracy"``.
        title: the figure's title (default: the classifier, pooling and protocol).

    Raises:
        ValueError: no results, results over different layers, or an unknown metric.

    Example:
        >>> fig = probe_figure({"trained": result, "random weights": baseline})  # doctest: +SKIP
        >>> save_figure(fig, "out/probe.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    docs = _as_dicts(results)
    if metric not in _METRIC_TITLES:
        raise ValueError(f"metric must be one of {', '.join(_METRIC_TITLES)}; got {metric!r}")
    layers = list(next(iter(docs.values()))["layers"])
    fig = Figure(figsize=(max(4.5, 0.85 * len(layers) + 2.5), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = list(range(len(layers)))
    for i, (label, doc) in enumerate(docs.items()):
        means = [100 * doc["layers"][k][metric]["mean"] for k in layers]
        stds = [100 * doc["layers"][k][metric]["std"] for k in layers]
        ax.errorbar(x, means, yerr=stds if any(stds) else None, fmt="-o", ms=4, lw=1.5, capsize=3,
                    color=f"C{i % 10}", label=label)
    first = next(iter(docs.values()))
    chance = 100.0 / max(1, len(first["classes"]))
    ax.axhline(chance, color="0.5", ls=":", lw=1, label=f"chance ({chance:.0f}%)")
    ax.set_xticks(x, layers, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("layer", fontsize=9)
    ax.set_ylabel(f"{_METRIC_TITLES[metric]} (%)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    ax.set_title(title or _describe(first), fontsize=9)
    return fig


def probe_table(results: Mapping[str, ProbeResult | Mapping[str, Any]], *,
                metric: str = "mean_class_accuracy") -> str:
    """Return a Markdown table shaped like the paper's Table 7: layers as columns, a row per model.

    Each cell is ``mean ± std`` in % over the splits (just the mean for one split).

    Example:
        >>> print(probe_table({"trained": result}))  # doctest: +SKIP
        | model | conv1 | conv2 | ...
    """
    docs = _as_dicts(results)
    if metric not in _METRIC_TITLES:
        raise ValueError(f"metric must be one of {', '.join(_METRIC_TITLES)}; got {metric!r}")
    layers = list(next(iter(docs.values()))["layers"])
    lines = [
        f"| {_METRIC_TITLES[metric]} (%) | " + " | ".join(layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for label, doc in docs.items():
        cells = []
        for k in layers:
            entry = doc["layers"][k][metric]
            cell = f"{100 * entry['mean']:.1f}"
            if doc.get("splits", 1) > 1:
                cell += f" ± {100 * entry['std']:.1f}"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _as_dicts(results: Mapping[str, ProbeResult | Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    if not results:
        raise ValueError("results is empty: give at least one model's probe result")
    docs = {label: r.to_dict() if isinstance(r, ProbeResult) else r for label, r in results.items()}
    layers = [list(d["layers"]) for d in docs.values()]
    if any(lay != layers[0] for lay in layers):
        raise ValueError(f"results probe different layers: {layers}")
    return docs


def _describe(doc: Mapping[str, Any]) -> str:
    pool = f"grid {doc['grid']}x{doc['grid']}" if doc["pooling"] == "grid" else doc["pooling"]
    per = doc.get("train_per_class")
    protocol = f"{per} train images/class" if per else f"{doc['num_train'][0]} train images"
    splits = f", {doc['splits']} splits" if doc.get("splits", 1) > 1 else ""
    return f"linear probe ({doc['classifier']}, {pool} pooling), {len(doc['classes'])} classes, {protocol}{splits}"
