"""zflight.figures.report: the unit explorer's pictures and HTML, from made-up results (no model)."""

from __future__ import annotations

import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from zflight.figures import save_png
from zflight.figures.grids import normalize_projection
from zflight.figures.report import (
    ASSETS,
    ImageEntry,
    LayerEntry,
    ReportContent,
    UnitEntry,
    binned_histogram_svg,
    histogram_svg,
    layer_page,
    layer_script,
    layer_stem,
    render_html,
    unit_evolution,
    unit_panel,
    unit_sprite,
    write_site,
)


def _content(labels: bool = True, images: bool = True) -> ReportContent:
    layers = []
    for name, n in (("conv1", 3), ("conv5", 2)):
        units = [
            UnitEntry(
                layer=name, unit=u, panel=f"units/{name}/{u}.png", values=[3.0, 2.0], images=[4, 7],
                histogram=[2, 0, 1, 1], histogram_range=(0.5, 3.0),
                label=(f"object/{'circle' if u % 2 else 'ring'}" if labels else None),
                iou=0.1 * (u + 1) if labels else None, detector=(u > 0) if labels else None,
                evolution=f"units/{name}/{u}_evolution.png" if u == 0 else None,
                evolution_note="" if u == 0 else "the run tracked units 0 of it, not this one",
            )
            for u in range(n)
        ]
        layers.append(LayerEntry(
            name=name, module=f"features.{name}", kind="Conv2d 3×3, stride 1", output=(n, 5, 5),
            parameters=100, receptive_field=7, units=units, sprite=f"units/{name}/top1.png",
            dissection_note="" if labels else "--dissect_images was 0.",
        ))
    shown = [ImageEntry(index=0, figure="images/val0.png", target="star", predicted="star", base_prob=0.9,
                        lowest_prob=0.2, square=[0, 0, 16, 16],
                        scores={"deconvnet": {"pointing_game": 1.0, "deletion_auc": 0.25}})] if images else []
    return ReportContent(
        title="zflight report: <tiny> & co", checkpoint="a/b.ckpt", model=[("network", "zfnet")],
        parameters=1234, facts=[("epochs trained", "3")], layers=layers, mined="the 4 images",
        dissection="computed here", images=shown, occlusion="a 16 px square.",
        metrics=["pointing_game", "deletion_auc"], higher_is_better={"pointing_game": True, "deletion_auc": False},
        summary_note="Run evaluate.", notes=["a note for the reader"],
    )


class _Tags(HTMLParser):
    """Every tag's attributes, and whether the document's tags nest properly."""

    VOID = {"meta", "link", "img", "input", "br", "hr", "path", "line", "rect"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _layer_data(script: str) -> dict:
    assert script.startswith("zflightLayer(") and script.endswith(");\n")
    return json.loads(script[len("zflightLayer("):-3])


def test_index_holds_the_layers_and_a_search_index_and_each_layer_file_its_units():
    content = _content()
    page = render_html(content)
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert "<article class=\"unit\"" not in page and 'class="card"' not in page  # units are in the layer files
    sections = [(a["data-layer"], a["data-script"]) for t, a in parser.tags if t == "section" and "layer" in a.get("class", "")]
    assert sections == [("conv1", "units/conv1.js"), ("conv5", "units/conv5.js")]
    index = json.loads(re.search(r'<script type="application/json" id="unit-index">(.*?)</script>', page).group(1))
    assert [(layer["name"], layer["units"]) for layer in index["layers"]] == [("conv1", [0, 1, 2]), ("conv5", [0, 1])]
    assert [index["labels"][i] for i in index["layers"][0]["labels"]] == ["object/ring", "object/circle", "object/ring"]
    assert "images/val0.png" in page and "a note for the reader" in page
    assert "&lt;tiny&gt; &amp; co" in page and "<tiny>" not in page  # escaped

    data = _layer_data(layer_script(content.layers[0], content))
    assert data["layer"] == "conv1" and list(data["units"]) == ["conv1/0", "conv1/1", "conv1/2"]
    cards = _Tags()
    cards.feed(data["cards"])
    assert [(a["href"], a["data-label"]) for t, a in cards.tags if t == "a"] == [
        ("#conv1/0", "object/ring"), ("#conv1/1", "object/circle"), ("#conv1/2", "object/ring")]
    unit = data["units"]["conv1/1"]
    assert 'src="units/conv1/1.png"' in unit and "Dissection label: <b>object/circle</b>, IoU 0.200 (a detector)" in unit
    assert "the run tracked units 0 of it, not this one" in unit and "each of the 4 images mined" in unit
    assert 'src="units/conv1/0_evolution.png"' in data["units"]["conv1/0"]


def test_the_layer_page_shows_every_unit_without_javascript_with_links_from_its_folder():
    content = _content()
    page = layer_page(content.layers[1], content)
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert [a["id"] for t, a in parser.tags if t == "article"] == ["conv5/0", "conv5/1"]
    assert "<script" not in page
    srcs = {a["src"] for t, a in parser.tags if t == "img"}
    assert srcs == {"../units/conv5/0.png", "../units/conv5/1.png", "../units/conv5/0_evolution.png"}
    assert 'href="../report.css"' in page and 'href="../index.html"' in page


def test_the_index_stays_small_with_thousands_of_units():
    units = [UnitEntry(layer="layer4", unit=u, panel=f"units/layer4/{u}.png", values=[1.0] * 9, images=list(range(9)),
                       histogram=[1] * 24, histogram_range=(0.0, 1.0), label="texture/striped", iou=0.1,
                       detector=True)
             for u in range(4000)]
    layer = LayerEntry(name="layer4", module="layer4", kind="Sequential", output=(4000, 4, 4), parameters=1,
                       receptive_field=None, units=units, sprite="units/layer4/top1.png")
    content = dataclasses.replace(_content(), layers=[layer])
    assert len(render_html(content).encode()) < 40_000  # 4,000 units: about 5 bytes each
    assert len(layer_script(layer, content)) > 1_000_000  # what it leaves to the layer file


def test_layer_stem_keeps_dots_and_replaces_the_rest():
    assert layer_stem("features.conv5") == "features.conv5"
    assert layer_stem("a/b c") == "a_b_c"


def test_missing_labels_scores_and_images_say_not_computed():
    page = render_html(_content(labels=False, images=False))
    content = _content(labels=False, images=False)
    units = "".join(layer_script(layer, content) for layer in content.layers)
    assert units.count("Dissection label: not computed. --dissect_images was 0.") == 5
    assert "No occlusion maps: no image was asked for." in page
    page = render_html(_content())
    assert "Data-set-wide explanation scores: not computed. Run evaluate." in page
    assert "<th>deletion auc ↓</th>" in page and "<td>0.250</td>" in page


def test_the_page_names_no_host_and_links_only_relative_files():
    page = render_html(_content())
    assert not re.search(r"(https?:|ftp:)?//", page.replace("<!doctype html>", ""))
    for asset in ASSETS:
        text = (Path(__file__).resolve().parents[2] / "zflight" / "figures" / "report" / asset).read_text()
        assert not re.search(r"https?:|url\(\s*['\"]?(https?:)?//", text), asset


def test_write_site_writes_the_page_and_assets_and_refuses_missing_pictures(tmp_path):
    content = _content()
    with pytest.raises(FileNotFoundError, match="pictures named by the report are not in"):
        write_site(content, tmp_path)
    assert not (tmp_path / "index.html").exists()
    for layer in content.layers:
        save_png(torch.rand(3, 4, 4 * len(layer.units)), tmp_path / layer.sprite)
        for u in layer.units:
            save_png(torch.rand(3, 4, 4), tmp_path / u.panel)
            if u.evolution:
                save_png(torch.rand(3, 4, 4), tmp_path / u.evolution)
    save_png(torch.rand(3, 4, 4), tmp_path / "images/val0.png")
    index = write_site(content, tmp_path)
    assert index == tmp_path / "index.html" and index.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["index.html", "report.css", "report.js"]
    assert sorted(p.name for p in (tmp_path / "units").iterdir() if p.is_file()) == [
        "conv1.html", "conv1.js", "conv5.html", "conv5.js"]


def test_to_json_leaves_out_the_histogram_data():
    data = _content().to_json()
    unit = data["layers"][0]["units"][0]
    assert "histogram" not in unit and unit["label"] == "object/ring" and unit["values"] == [3.0, 2.0]


def test_unit_panel_applies_the_display_rule_and_checks_shapes():
    proj = torch.zeros(9, 3, 8, 8)
    proj[0, :, 0, 0] = 5.0
    panel = unit_panel(proj, torch.ones(9, 3, 8, 8))
    assert panel.shape == (3, 3 * 8 + 4, 2 * (3 * 8 + 4) + 3)  # 3x3 tiles, 1 px apart, 3 px between blocks
    # Zero projections are mid gray (0.5); the patches white.
    assert torch.isclose(panel, torch.tensor(0.5)).any() and (panel == 1.0).any()
    with pytest.raises(ValueError, match="projections and patches"):
        unit_panel(proj, torch.ones(8, 3, 8, 8))


def test_unit_sprite_puts_each_units_normalized_top1_side_by_side():
    proj = torch.randn(4, 3, 6, 6)
    sprite = unit_sprite(proj)
    assert sprite.shape == (3, 6, 24)
    assert torch.equal(sprite[:, :, 12:18], normalize_projection(proj[2]))
    with pytest.raises(ValueError, match="units >= 1"):
        unit_sprite(torch.randn(0, 3, 6, 6))


def test_unit_evolution_one_tile_per_epoch():
    strip = unit_evolution([torch.randn(3, 16, 16) for _ in range(3)], [1, 2, 5])
    wider = unit_evolution([torch.randn(3, 16, 16) for _ in range(4)], [1, 2, 5, 10])
    assert strip.shape[0] == 3 and wider.shape[2] > strip.shape[2]
    with pytest.raises(ValueError, match="one per epoch"):
        unit_evolution([torch.randn(3, 16, 16)], [1, 2])


def test_histogram_marks_the_bars_of_the_top_values():
    svg = histogram_svg([0.0, 0.1, 0.2, 5.0, 10.0], marked=5.0, bins=10, caption="conv5/3")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "xmlns" not in svg
    bars = re.search(r'class="bar" d="([^"]*)"', svg).group(1)
    hot = re.search(r'class="hot" d="([^"]*)"', svg).group(1)
    assert bars.count("M") == 1 and hot.count("M") == 2  # [0, 1) holds 3 values; 5 and 10 are marked
    assert "<title>conv5/3</title>" in svg
    assert "max 3 images/bin" in histogram_svg([1.0, 1.0, 1.0])  # a constant unit still draws
    with pytest.raises(ValueError, match="values is empty"):
        histogram_svg([])
    with pytest.raises(ValueError, match="bins"):
        histogram_svg([1.0], bins=0)


def test_binned_histogram_draws_given_counts_and_marks_bins_above_the_threshold():
    svg = binned_histogram_svg([4, 0, 1, 2], 0.0, 4.0, marked=2.5, caption="layer4/7")
    bars = re.search(r'class="bar" d="([^"]*)"', svg).group(1)
    hot = re.search(r'class="hot" d="([^"]*)"', svg).group(1)
    assert bars.count("M") == 1 and hot.count("M") == 2  # the empty bin draws nothing
    assert "max 4 images/bin" in svg and ">0</text>" in svg and ">4</text>" in svg
    with pytest.raises(ValueError, match="counts is empty"):
        binned_histogram_svg([], 0.0, 1.0)
