"""The unit explorer's pages: a static site from result tensors and numbers.

:func:`zflight.build_report` (:mod:`zflight.report`) runs the model (top activations, deconvnet
projections, dissection, occlusion, explanation scores) and hands the results here as a
:class:`ReportContent`; this module draws the per-unit pictures and writes the HTML. It runs no
model.

- :func:`unit_panel`, :func:`unit_sprite`, :func:`unit_evolution`: a unit's Fig. 2 panel (its
  top-k projections beside their patches), its layer's card pictures (each unit's strongest
  activation's projection) and its Fig. 4 strip (one tile per logged epoch), all through the one
  display rule of :func:`zflight.figures.grids.normalize_projection`.
- :func:`histogram_svg` and :func:`binned_histogram_svg`: a unit's activation histogram as
  inline SVG (no image file, no font), from values or from counts.
- :func:`render_html`, :func:`layer_script`, :func:`layer_page` and :func:`write_site`: the
  site. ``index.html`` holds the overview, one section per layer, the images and a small search
  index (each unit's number and label); the units themselves (cards and pages) are in one file
  per layer, ``units/<layer>.js``, which the page loads with a ``<script>`` tag when the layer
  is opened (a browser blocks ``fetch()`` of ``file://`` pages, not scripts), so a network of
  thousands of units opens as fast as one of a few. ``units/<layer>.html`` holds the same units
  as plain HTML, for reading without JavaScript. Every link is relative; nothing names a host,
  so the folder opens from ``file://`` with no server and no network.

The JavaScript (``report/report.js``, plain, no framework) adds the search box (a label, or
``layer:channel``, across every layer), the keys ← / → (previous / next unit), ↑ / ↓
(previous / next layer) and the URL fragment ``#<layer>/<unit>`` that opens a unit.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import torch

from zflight.figures.grids import (
    evolution_grid,
    normalize_projection,
    top_activation_panel,
)

__all__ = [
    "ASSETS",
    "ImageEntry",
    "LayerEntry",
    "ReportContent",
    "UnitEntry",
    "binned_histogram_svg",
    "histogram_svg",
    "layer_page",
    "layer_script",
    "layer_stem",
    "render_html",
    "unit_evolution",
    "unit_panel",
    "unit_sprite",
    "write_site",
]

#: The package data files copied beside ``index.html`` (``zflight/figures/report/``).
ASSETS: tuple[str, ...] = ("report.css", "report.js")
_TEMPLATE = "index.html"
# Side of a card's picture in CSS pixels (the sprite's tiles are scaled to it, unsmoothed).
_THUMB = 48


@dataclass(frozen=True)
class UnitEntry:
    """One unit (feature map) of the report.

    Attributes:
        layer: the layer's name as requested (``"conv5"``).
        unit: the channel index.
        panel: the site-relative path of its top-k panel PNG.
        values: its top-k activations, in descending order.
        images: the data set indices of the images of those activations.
        histogram: how many mined images had their strongest activation of this unit in each
            of equal bins (:meth:`zflight.analysis.ActivationHistograms.coarse`).
        histogram_range: ``(low, high)``: the range of those bins (the smallest and largest
            strongest activation).
        label: its dissection label, ``None`` when not computed.
        iou: the IoU of that label.
        detector: whether that IoU exceeds the dissection's threshold.
        evolution: the site-relative path of its feature-evolution strip, or ``None``.
        evolution_note: why there is no strip (shown instead of it).
    """

    layer: str
    unit: int
    panel: str
    values: list[float]
    images: list[int]
    histogram: list[int]
    histogram_range: tuple[float, float]
    label: str | None = None
    iou: float | None = None
    detector: bool | None = None
    evolution: str | None = None
    evolution_note: str = ""

    @property
    def key(self) -> str:
        """The unit's name in the URL fragment and the page's ids: ``"<layer>/<unit>"``."""
        return f"{self.layer}/{self.unit}"


@dataclass(frozen=True)
class LayerEntry:
    """One layer of the report: its shape, parameters and the units shown.

    Attributes:
        name: the layer's name as requested (``"conv5"``).
        module: its dotted name in the network (``"features.conv5"``).
        kind: the module's class and settings (``"Conv2d 5×5, stride 2"``).
        output: ``(channels, height, width)`` of its output on one image.
        parameters: its parameter count.
        receptive_field: the side of a unit's receptive field in input pixels.
        units: the units shown (all of the layer's, or the first ``units``).
        sprite: the site-relative path of the units' card pictures, side by side in unit order
            (:func:`unit_sprite`): one file per layer, so the page opens with a handful of
            image requests instead of hundreds.
        dissection_note: why there are no labels (empty when there are).
        evolution_figure: the site-relative path of the run's own evolution figure, if copied.
    """

    name: str
    module: str
    kind: str
    output: tuple[int, int, int]
    parameters: int
    receptive_field: int | None
    units: list[UnitEntry]
    sprite: str
    dissection_note: str = ""
    evolution_figure: str | None = None


@dataclass(frozen=True)
class ImageEntry:
    """One image: its occlusion figure (Fig. 7) and explanation scores.

    Attributes:
        index: its index in the data set.
        figure: the site-relative path of its occlusion figure.
        target: the class whose probability is tracked: the true one, or the predicted one
            when the image has no label the model knows.
        predicted: the unoccluded image's predicted class name.
        base_prob: the target's probability on the unoccluded image.
        lowest_prob: the lowest target probability over all square positions.
        square: ``[x0, y0, x1, y1]`` of that square (exclusive ends).
        scores: ``{method: {metric: value}}`` for this image; empty when not computed.
    """

    index: int
    figure: str
    target: str
    predicted: str
    base_prob: float
    lowest_prob: float
    square: list[int]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportContent:
    """Everything the site shows; :func:`render_html` turns it into ``index.html``.

    Attributes:
        title: the page title.
        checkpoint: the checkpoint's path as given (empty: no checkpoint row).
        model: ``(name, value)`` rows describing the network (source, weights, preprocessing,
            classes, input).
        parameters: the network's parameter count.
        facts: ``(name, value)`` rows about the run (epoch, stored and computed accuracy).
        layers: the layers, in the order requested.
        mined: what the top activations were mined from (``"the 1000 images of the val split"``).
        dissection: a line on how the labels were made, or why there are none.
        images: the images with occlusion maps.
        images_note: why there are none (shown instead of them).
        occlusion: a line on the occlusion settings.
        metrics: the explanation metrics, in column order.
        higher_is_better: per metric, whether higher is better.
        scores_note: why there are no per-image scores (empty when there are).
        summary_scores: ``{method: {metric: {"mean", "sem", "n"}}}`` from a ``scores.json`` of
            ``python -m zflight evaluate``, or ``None``.
        summary_note: where ``summary_scores`` come from, or why there are none.
        notes: lines shown at the top of the page (e.g. a log dir without evolution images).
    """

    title: str
    checkpoint: str
    model: list[tuple[str, str]]
    parameters: int
    facts: list[tuple[str, str]]
    layers: list[LayerEntry]
    mined: str
    dissection: str
    images: list[ImageEntry] = field(default_factory=list)
    images_note: str = "no image was asked for."
    occlusion: str = ""
    metrics: list[str] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    scores_note: str = ""
    summary_scores: dict[str, dict[str, dict[str, Any]]] | None = None
    summary_note: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The content as JSON-ready data (what the site writes as ``report.json``).

        Example:
            >>> json.dumps(content.to_json())  # doctest: +SKIP
        """
        data = asdict(self)
        for layer in data["layers"]:
            for unit in layer["units"]:
                unit.pop("histogram")  # drawn in the page; per unit, 24 numbers nobody reads
                unit.pop("histogram_range")
        return data


# ------------------------------------------------------------------------------------ pictures
def unit_panel(projections: torch.Tensor, patches: torch.Tensor, *, min_tile: int = 0) -> torch.Tensor:
    """Return one unit's Fig. 2 cell: its top-k projections (left) beside their patches (right).

    It is :func:`~zflight.figures.top_activation_panel` for a single map, uncaptioned (the page
    says which unit it is), so the projections get the one display rule.

    Args:
        projections: ``[k, 3, h, w]`` raw deconvnet projections, strongest first.
        patches: ``[k, 3, h, w]`` the image patches in [0, 1].
        min_tile: tiles narrower than this are enlarged (0: as they are; the page scales the
            picture up without smoothing, which keeps the files small).

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: the shapes differ or are not ``[k, 3, h, w]``.

    Example:
        >>> unit_panel(torch.randn(9, 3, 32, 32), torch.rand(9, 3, 32, 32)).shape[0]
        3
    """
    if projections.dim() != 4 or projections.shape != patches.shape:
        raise ValueError(
            "projections and patches must both be [k, 3, h, w] of one shape, got "
            f"{tuple(projections.shape)} and {tuple(patches.shape)}"
        )
    return top_activation_panel(projections[None], patches[None], maps_per_row=1, min_tile=min_tile)


def unit_sprite(projections: torch.Tensor) -> torch.Tensor:
    """Return the card pictures of a layer's units side by side: each unit's strongest activation.

    Tile ``i`` (``w`` pixels wide, no gap) is the projection of unit ``i``'s top-1 with the one
    display rule applied, so the page shows it with one CSS background offset.

    Args:
        projections: ``[units, 3, h, w]`` raw deconvnet projections.

    Returns:
        A float ``[3, h, units * w]`` image in [0, 1].

    Raises:
        ValueError: ``projections`` is not ``[units, 3, h, w]`` with at least one unit.

    Example:
        >>> unit_sprite(torch.randn(5, 3, 32, 32)).shape
        torch.Size([3, 32, 160])
    """
    if projections.dim() != 4 or projections.shape[0] == 0:
        raise ValueError(f"projections must be [units >= 1, 3, h, w], got {tuple(projections.shape)}")
    return torch.cat(list(normalize_projection(projections)), dim=2)


def unit_evolution(tiles: Sequence[torch.Tensor], epochs: Sequence[int], *, raw: bool = True) -> torch.Tensor:
    """Return one unit's Fig. 4 row: its strongest activation's projection at each logged epoch.

    Args:
        tiles: one ``[3, h, w]`` tile per epoch: raw projections (``raw=True``, what
            :class:`~zflight.callbacks.FeatureEvolution` keeps) or display tiles in [0, 1].
        epochs: the epoch of each tile, written above it.
        raw: apply the display rule (:func:`normalize_projection`) to each tile.

    Returns:
        A float ``[3, H, W]`` image in [0, 1].

    Raises:
        ValueError: no tile, or not one epoch per tile.

    Example:
        >>> unit_evolution([torch.randn(3, 48, 48) for _ in range(2)], [1, 2]).shape[0]
        3
    """
    if len(tiles) == 0 or len(tiles) != len(epochs):
        raise ValueError(f"tiles ({len(tiles)}) and epochs ({len(epochs)}) must be one per epoch, at least one")
    return evolution_grid([t[None] for t in tiles], labels=[f"epoch {e}" for e in epochs], normalize=raw)


def histogram_svg(values: Sequence[float], marked: float | None = None, *, bins: int = 24,
                  width: int = 320, height: int = 120, caption: str = "") -> str:
    """Return an inline SVG histogram of ``values``; bars at or above ``marked`` drawn darker.

    It counts ``values`` in ``bins`` equal bins between the smallest and largest and draws them
    with :func:`binned_histogram_svg`.

    Args:
        values: the numbers (e.g. a unit's strongest activation on each image).
        marked: the threshold whose bars are highlighted (e.g. the k-th largest value).
        bins: number of equal-width bins between the smallest and largest value.
        width: the SVG's width in pixels.
        height: the SVG's height in pixels (the axis labels included).
        caption: the SVG's accessible title.

    Returns:
        The ``<svg>`` element as a string.

    Raises:
        ValueError: no values, or ``bins`` < 1.

    Example:
        >>> histogram_svg([0.0, 1.0, 1.0, 2.0], marked=2.0, bins=4).startswith("<svg")
        True
    """
    if len(values) == 0:
        raise ValueError("values is empty: nothing to draw")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    v = torch.as_tensor(list(values), dtype=torch.float64)
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo if hi > lo else 1.0
    counts = torch.histc(v, bins=bins, min=lo, max=lo + span).to(torch.int64).tolist()
    return binned_histogram_svg(counts, lo, lo + span, marked, width=width, height=height, caption=caption,
                                label_high=hi)


def binned_histogram_svg(counts: Sequence[int], low: float, high: float, marked: float | None = None, *,
                         width: int = 320, height: int = 120, caption: str = "",
                         label_high: float | None = None) -> str:
    """Return an inline SVG histogram of ``counts`` in equal bins from ``low`` to ``high``.

    The SVG has no ``xmlns`` (HTML does not need it, and the site names no URL anywhere) and no
    font of its own (the page's). A bin whose right edge is above ``marked`` is drawn darker.

    Args:
        counts: the count of each bin, left to right.
        low: the left edge of the first bin.
        high: the right edge of the last bin.
        marked: the threshold whose bars are highlighted (e.g. the k-th largest value).
        width: the SVG's width in pixels.
        height: the SVG's height in pixels (the axis labels included).
        caption: the SVG's accessible title.
        label_high: the number written at the right end (default ``high``).

    Returns:
        The ``<svg>`` element as a string.

    Raises:
        ValueError: no bins.

    Example:
        >>> binned_histogram_svg([3, 0, 1], 0.0, 3.0, marked=2.5).count("<path")
        2
    """
    if len(counts) == 0:
        raise ValueError("counts is empty: a histogram needs at least one bin")
    bins = len(counts)
    span = high - low if high > low else 1.0
    top = max(counts) or 1
    plot_h = height - 16  # the bottom 16 px hold the axis labels
    bar_w = width / bins
    # Two paths (ordinary and highlighted bars), not one element per bar: a report holds
    # thousands of histograms, and the page must stay quick to parse.
    paths: dict[str, list[str]] = {"bar": [], "hot": []}
    for b, count in enumerate(counts):
        if count == 0:
            continue
        h = max(2.0, plot_h * count / top)  # a bar of one image stays visible
        right_edge = low + span * (b + 1) / bins
        kind = "hot" if marked is not None and right_edge > marked else "bar"
        paths[kind].append(f"M{b * bar_w + 0.5:.1f} {plot_h:.1f}v{-h:.1f}h{bar_w - 1:.1f}v{h:.1f}z")
    right = high if label_high is None else label_high
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
             f"<title>{html.escape(caption)}</title>"]
    parts += [f'<path class="{kind}" d="{"".join(d)}"/>' for kind, d in paths.items() if d]
    parts.append(f'<line x1="0" y1="{plot_h + 0.5}" x2="{width}" y2="{plot_h + 0.5}" class="axis"/>')
    parts.append(f'<text x="0" y="{height - 3}">{low:.3g}</text>')
    parts.append(f'<text x="{width}" y="{height - 3}" text-anchor="end">{right:.3g}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 3}" text-anchor="middle">max {top} images/bin</text>')
    parts.append("</svg>")
    return "".join(parts)


def layer_stem(name: str) -> str:
    """Return the file-name stem of layer ``name`` in the site (``units/<stem>.js``, ``units/<stem>/``).

    Letters, digits, ``.``, ``-`` and ``_`` are kept, anything else becomes ``_``.

    Example:
        >>> layer_stem("layer4.1/conv2")
        'layer4.1_conv2'
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "layer"


# ----------------------------------------------------------------------------------------- HTML
def render_html(content: ReportContent) -> str:
    """Return ``index.html``: overview, one section per layer, the images and the search index.

    The units' cards and pages are not in it: they are in :func:`layer_script` (loaded when a
    layer is opened) and :func:`layer_page` (the same without JavaScript), so the page's size
    grows with the number of layers, not of units. Every link is relative.

    Args:
        content: what to show.

    Returns:
        The page's text.

    Example:
        >>> page = render_html(content)  # doctest: +SKIP
        >>> 'data-script="units/conv5.js"' in page  # doctest: +SKIP
        True
    """
    e = html.escape
    n_units = sum(len(layer.units) for layer in content.layers)
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in content.notes)
    body = [
        '<header><h1>' + e(content.title) + '</h1>',
        '<div class="tools" hidden><input id="search" type="search" autocomplete="off" '
        'placeholder="search: a label (circle) or layer:channel (conv5:12)" aria-label="search units">'
        '<span id="count"></span><span class="keys">← → unit · ↑ ↓ layer</span></div></header>',
        "<main>",
        '<div id="browse">',
        notes,
        _overview(content),
        '<section id="units"><h2>Units</h2>',
        f"<p>{n_units} units. Each card shows the projection of the unit's strongest activation "
        "(its top-1); open a card for its top-k, label, evolution and activation histogram. A layer's "
        "cards load when it is opened.</p>",
        *[_layer_section(layer) for layer in content.layers],
        "</section>",
        _images(content),
        "</div>",
        '<section id="viewer"><p id="hint" class="hint" hidden>Pick a unit: click a card, search, or press → .</p>'
        '<div id="unit"></div></section>',
        "</main>",
        # The search index: every unit's number and label, so that search and the arrow keys
        # reach layers whose cards are not loaded yet. Labels are listed once and referred to
        # by position: 3,840 units take a few tens of kB.
        f'<script type="application/json" id="unit-index">{_json_in_html(_search_index(content))}</script>',
    ]
    template = Template((resources.files("zflight.figures") / "report" / _TEMPLATE).read_text("utf-8"))
    return template.substitute(title=e(content.title), body="\n".join(body))


def layer_script(layer: LayerEntry, content: ReportContent) -> str:
    """Return ``units/<layer>.js``: the layer's cards and unit pages, for the page to insert.

    It calls ``zflightLayer({...})`` (defined by ``report.js``) with ``cards`` (the strip's
    HTML) and ``units`` (each unit's page, by ``"<layer>/<unit>"``).

    Example:
        >>> layer_script(content.layers[0], content)[:13]  # doctest: +SKIP
        'zflightLayer('
    """
    data = {
        "layer": layer.name,
        "cards": _cards(layer),
        "units": {u.key: _unit(u, layer, content, prefix="") for u in layer.units},
    }
    # ensure_ascii: the file is read in the page's encoding, whatever the browser guesses.
    return "zflightLayer(" + json.dumps(data, ensure_ascii=True, separators=(",", ":")) + ");\n"


def layer_page(layer: LayerEntry, content: ReportContent) -> str:
    """Return ``units/<layer>.html``: every unit of the layer as plain HTML, for reading without JavaScript.

    Example:
        >>> "every unit of conv5" in layer_page(content.layers[1], content)  # doctest: +SKIP
        True
    """
    e = html.escape
    up = "../"  # the page sits in units/: the site's paths are one folder up
    units = "".join(_unit(u, layer, content, prefix=up) for u in layer.units)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(layer.name)}: every unit · {e(content.title)}</title>\n"
        f'<link rel="stylesheet" href="{up}report.css">\n</head>\n<body class="static">\n'
        f'<header><h1>{e(content.title)}</h1></header>\n<main><p><a href="{up}index.html">back to the report</a></p>'
        f"<h2>{e(layer.name)}: every unit ({len(layer.units)})</h2>"
        f'<section class="layer" style="{_sprite_style(layer, up)}">{_cards(layer)}</section>'
        f"{units}</main>\n</body>\n</html>\n"
    )


def write_site(content: ReportContent, folder: str | os.PathLike) -> Path:
    """Write the site into ``folder`` (its pictures are already there): the page, its assets, the layer files.

    Written: ``report.css``, ``report.js``, ``units/<layer>.js`` and ``units/<layer>.html`` per
    layer, then ``index.html`` last, under a temporary name then renamed, so a reader never sees
    half of it and a failed build has no ``index.html``; the command line builds the whole
    folder beside its destination and renames it (``zflight.cli._common.output_dir``).

    Args:
        content: what to show.
        folder: the site's folder (created if missing).

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError: a picture the content names is not in ``folder`` (a broken page is
            never written).

    Example:
        >>> write_site(content, "out/report")  # doctest: +SKIP
        PosixPath('out/report/index.html')
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [p for p in _pictures(content) if not (folder / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} pictures named by the report are not in {folder}, e.g. {missing[0]}")
    for name in ASSETS:
        with resources.as_file(resources.files("zflight.figures") / "report" / name) as src:
            shutil.copyfile(src, folder / name)
    (folder / "units").mkdir(exist_ok=True)
    for layer in content.layers:
        stem = layer_stem(layer.name)
        (folder / "units" / f"{stem}.js").write_text(layer_script(layer, content), encoding="utf-8")
        (folder / "units" / f"{stem}.html").write_text(layer_page(layer, content), encoding="utf-8")
    page = render_html(content)
    tmp = folder / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, folder / "index.html")
    return folder / "index.html"


# ------------------------------------------------------------------------------------ internals
def _pictures(content: ReportContent) -> list[str]:
    paths = []
    for layer in content.layers:
        paths += [layer.evolution_figure] if layer.evolution_figure else []
        for u in layer.units:
            paths += [u.panel] + ([u.evolution] if u.evolution else [])
        paths.append(layer.sprite)
    return paths + [im.figure for im in content.images]


def _json_in_html(data: Any) -> str:
    # "</" would end the <script> element; "<\/" is the same string to JSON.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")


def _search_index(content: ReportContent) -> dict[str, Any]:
    labels: list[str] = [""]
    slot = {"": 0}
    layers = []
    for layer in content.layers:
        refs = []
        for u in layer.units:
            label = u.label or ""
            if label not in slot:
                slot[label] = len(labels)
                labels.append(label)
            refs.append(slot[label])
        layers.append({"name": layer.name, "script": f"units/{layer_stem(layer.name)}.js",
                       "units": [u.unit for u in layer.units], "labels": refs})
    return {"labels": labels, "layers": layers}


def _rows(rows: Sequence[tuple[str, str]]) -> str:
    e = html.escape
    return "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)


def _overview(content: ReportContent) -> str:
    e = html.escape
    layer_rows = "".join(
        f'<tr><th><a href="#layer-{e(layer.name)}">{e(layer.name)}</a></th><td>{e(layer.module)}</td>'
        f"<td>{e(layer.kind)}</td><td>{layer.output[0]} × {layer.output[1]} × {layer.output[2]}</td>"
        f"<td>{layer.parameters:,}</td><td>{'' if layer.receptive_field is None else layer.receptive_field}</td>"
        f"<td>{len(layer.units)}</td>"
        f"<td>{_detector_count(layer)}</td></tr>"
        for layer in content.layers
    )
    checkpoint = (f'<tr><th>checkpoint</th><td><code>{e(content.checkpoint)}</code></td></tr>'
                  if content.checkpoint else "")
    return (
        '<section id="overview"><h2>Overview</h2>'
        f'<table class="facts">{checkpoint}'
        + _rows(content.model)
        + f"<tr><th>parameters</th><td>{content.parameters:,}</td></tr>"
        + _rows(content.facts)
        + f"<tr><th>top activations</th><td>{e(content.mined)}</td></tr>"
        + f"<tr><th>dissection</th><td>{e(content.dissection)}</td></tr></table>"
        '<table class="layers"><thead><tr><th>layer</th><th>module</th><th>kind</th>'
        "<th>output (C × H × W)</th><th>parameters</th><th>receptive field (px)</th><th>units shown</th>"
        "<th>detectors</th></tr></thead><tbody>" + layer_rows + "</tbody></table></section>"
    )


def _detector_count(layer: LayerEntry) -> str:
    if any(u.label is None for u in layer.units):
        return "not computed"
    return str(sum(1 for u in layer.units if u.detector))


def _sprite_style(layer: LayerEntry, prefix: str) -> str:
    return (f"--sprite:url(&quot;{html.escape(prefix + layer.sprite)}&quot;);"
            f"--sprite-width:{_THUMB * len(layer.units)}px")


def _cards(layer: LayerEntry) -> str:
    """The layer's cards: each links to ``#<layer>/<unit>`` (the unit's id on either page)."""
    e = html.escape
    # One picture per layer (the sprite), each card showing its tile as a background.
    cards = "".join(
        f'<a class="card" href="#{e(u.key)}" data-layer="{e(u.layer)}" data-unit="{u.unit}" '
        f'data-label="{e(u.label or "")}"><span class="thumb" style="background-position-x:{-_THUMB * i}px"></span>'
        f'<span class="num">{u.unit}</span><span class="lab">{e(_short(u.label))}</span></a>'
        for i, u in enumerate(layer.units)
    )
    return f'<div class="strip">{cards}</div>'


def _layer_section(layer: LayerEntry) -> str:
    e = html.escape
    note = f'<p class="note">{e(layer.dissection_note)}</p>' if layer.dissection_note else ""
    figure = ""
    if layer.evolution_figure:
        figure = (f'<details><summary>the run\'s own evolution figure of {e(layer.name)}</summary>'
                  f'<img src="{e(layer.evolution_figure)}" alt="feature evolution of {e(layer.name)}" loading="lazy">'
                  "</details>")
    page = f"units/{layer_stem(layer.name)}.html"
    return (
        f'<section class="layer" id="layer-{e(layer.name)}" data-layer="{e(layer.name)}" '
        f'data-script="units/{e(layer_stem(layer.name))}.js" style="{_sprite_style(layer, "")}">'
        f"<h3>{e(layer.name)} <small>{len(layer.units)} units · {layer.output[1]} × {layer.output[2]} maps</small></h3>"
        f'{note}<div class="slot"><button type="button" class="open">show the {len(layer.units)} units</button>'
        f'<a class="static" href="{e(page)}">every unit of {e(layer.name)} on one page</a></div>{figure}</section>'
    )


def _short(label: str | None) -> str:
    return "" if not label else label.split("/", 1)[-1]


def _unit(u: UnitEntry, layer: LayerEntry, content: ReportContent, *, prefix: str) -> str:
    e = html.escape
    if u.label is None:
        dissection = f'<p class="missing">Dissection label: not computed. {e(layer.dissection_note)}</p>'
    else:
        verdict = "a detector" if u.detector else "below the detector threshold"
        dissection = (f'<p class="label">Dissection label: <b>{e(u.label)}</b>, IoU {u.iou:.3f} '
                      f"({verdict})</p>")
    k = len(u.values)
    tops = ", ".join(f"#{i} ({v:.3g})" for i, v in zip(u.images, u.values))
    if u.evolution:
        evolution = (f'<figure><img class="evo" src="{e(prefix + u.evolution)}" alt="evolution of {e(u.key)}" '
                     'loading="lazy"><figcaption>Feature evolution: the projection of the unit\'s strongest '
                     "activation on the run's probe images at each logged epoch (Fig. 4).</figcaption></figure>")
    else:
        evolution = f'<p class="missing">Feature evolution: {e(u.evolution_note)}</p>'
    marked = u.values[-1] if u.values else None
    low, high = u.histogram_range
    hist = binned_histogram_svg(u.histogram, low, high, marked, caption=f"{u.key}: strongest activation per image")
    return (
        f'<article class="unit" id="{e(u.key)}" data-layer="{e(u.layer)}" data-unit="{u.unit}">'
        f'<h3>{e(layer.name)} · unit {u.unit}</h3>{dissection}'
        f'<figure><img class="panel" src="{e(prefix + u.panel)}" alt="top-{k} of {e(u.key)}" loading="lazy">'
        f"<figcaption>Top-{k}: deconvnet projections (left) beside the image patches they see (right), "
        f"strongest first. Images (activation): {e(tops)}.</figcaption></figure>"
        f"{evolution}"
        f"<figure>{hist}<figcaption>Activation histogram: the unit's strongest activation on each of the "
        f"{sum(u.histogram)} images mined; the top-{k} fall in the dark bars.</figcaption></figure>"
        "</article>"
    )


def _images(content: ReportContent) -> str:
    e = html.escape
    if not content.images:
        return ('<section id="images"><h2>Images</h2>'
                f'<p class="missing">No occlusion maps: {e(content.images_note)}</p></section>')
    summary = _summary_table(content)
    rows = []
    for im in content.images:
        if im.scores:
            # Metric names with spaces, so the header wraps instead of widening the table.
            head = "".join(f"<th>{e(m.replace('_', ' '))} {'↑' if content.higher_is_better.get(m, True) else '↓'}</th>"
                           for m in content.metrics)
            body = "".join(
                f"<tr><th>{e(method)}</th>" + "".join(f"<td>{_num(s.get(m))}</td>" for m in content.metrics) + "</tr>"
                for method, s in im.scores.items()
            )
            scores = f'<table class="scores"><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>'
        else:
            scores = f'<p class="missing">Explanation scores: not computed. {e(content.scores_note)}</p>'
        x0, y0, x1, y1 = im.square
        rows.append(
            f'<article class="image" id="val-{im.index}"><h3>image #{im.index}: {e(im.target)}</h3>'
            f"<p>predicted <b>{e(im.predicted)}</b>; p({e(im.target)}) = {im.base_prob:.3f} unoccluded, "
            f"{im.lowest_prob:.3f} at the worst square (x {x0}–{x1}, y {y0}–{y1}).</p>"
            f'<img src="{e(im.figure)}" alt="occlusion maps of image {im.index}" loading="lazy">'
            f"{scores}</article>"
        )
    return (
        '<section id="images"><h2>Images</h2>'
        f"<p>Occlusion sensitivity (Fig. 7): {e(content.occlusion)} Below each figure, the explanation "
        "scores of every attribution method on that image (↑ higher is better, ↓ lower).</p>"
        + summary + "".join(rows) + "</section>"
    )


def _summary_table(content: ReportContent) -> str:
    e = html.escape
    if not content.summary_scores:
        return f'<p class="missing">Data-set-wide explanation scores: not computed. {e(content.summary_note)}</p>'
    metrics = list(next(iter(content.summary_scores.values())))
    head = "".join(f"<th>{e(m.replace('_', ' '))}</th>" for m in metrics)
    body = "".join(
        f"<tr><th>{e(method)}</th>"
        + "".join(f"<td>{_num(s[m].get('mean'))} ± {_num(s[m].get('sem'))}</td>" for m in metrics)
        + "</tr>"
        for method, s in content.summary_scores.items()
    )
    return (f'<h3>Explanation scores over the data set</h3><p>{e(content.summary_note)}</p>'
            f'<table class="scores"><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>')


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.3f}"
