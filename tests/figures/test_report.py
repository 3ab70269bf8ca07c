"""zflight.figures.report: the unit explorer's pictures and HTML, from made-up results (no model)."""

from __future__ import annotations

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
    histogram_svg,
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
                maxima=[3.0, 2.0, 1.0, 0.5],
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


def test_every_unit_and_card_is_in_the_html_with_its_label_and_pictures():
    content = _content()
    page = render_html(content)
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    articles = [a["id"] for t, a in parser.tags if t == "article" and "unit" in a.get("class", "")]
    assert articles == ["conv1/0", "conv1/1", "conv1/2", "conv5/0", "conv5/1"]
    cards = [(a["href"], a["data-label"]) for t, a in parser.tags if t == "a" and a.get("class") == "card"]
    assert cards == [("#conv1/0", "object/ring"), ("#conv1/1", "object/circle"), ("#conv1/2", "object/ring"),
                     ("#conv5/0", "object/ring"), ("#conv5/1", "object/circle")]
    srcs = {a["src"] for t, a in parser.tags if t == "img"}
    assert "units/conv1/0.png" in srcs and "units/conv1/0_evolution.png" in srcs and "images/val0.png" in srcs
    assert "Dissection label: <b>object/circle</b>, IoU 0.200 (a detector)" in page
    assert "the run tracked units 0 of it, not this one" in page
    assert "&lt;tiny&gt; &amp; co" in page and "<tiny>" not in page  # escaped
    assert "a note for the reader" in page


def test_missing_labels_scores_and_images_say_not_computed():
    page = render_html(_content(labels=False, images=False))
    assert page.count("Dissection label: not computed. --dissect_images was 0.") == 5
    assert "No validation images" in page
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


def test_to_json_leaves_out_the_histogram_data():
    data = _content().to_json()
    unit = data["layers"][0]["units"][0]
    assert "maxima" not in unit and unit["label"] == "object/ring" and unit["values"] == [3.0, 2.0]


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
