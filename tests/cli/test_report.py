"""python -m zflight report: a unit explorer built from a tiny checkpoint, read in headless Chromium.

The browser tests drive the system's Chromium (Debian package ``chromium``) with playwright's
``executable_path``; no browser build is ever downloaded. They skip, saying why, only where no
Chromium or no playwright is installed (``.ci/run`` installs both when it can).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from zflight.cli.report import main

LAYERS = {"conv1": 12, "conv5": 32}  # the tiny ZFNet's units per layer


def _browser_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def site(tiny_ckpt_factory, tmp_path_factory) -> Path:
    """A report of two whole layers of an untrained tiny ZFNet on 24 validation images."""
    out = tmp_path_factory.mktemp("report") / "site"
    index = main(["--ckpt_path", str(tiny_ckpt_factory(24)), "--out", str(out), "--layers", *LAYERS,
                  "--occlusion_images", "2", "--batch_size", "24"])
    assert index == out / "index.html"
    return out


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium, or a skip naming what is missing."""
    executable = _browser_path()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium); the report's browser tests need one")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    """A fresh page that records console errors and every request."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors, page.requests = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requests.append(r.url))
    yield page
    context.close()


def _open(page, site: Path, fragment: str = "", cards: int = sum(LAYERS.values())) -> None:
    """Open the page and wait until the layers in view have loaded their ``cards``."""
    page.goto((site / "index.html").as_uri() + fragment)
    page.wait_for_load_state("load")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {cards}")


def _shown_cards(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cs => cs.filter(c => c.offsetParent !== null)"
                                     ".map(c => c.dataset.layer + '/' + c.dataset.unit)")


def _current(page) -> list[str]:
    return page.eval_on_selector_all("article.unit", "as => as.filter(a => a.offsetParent !== null).map(a => a.id)")


def _shows(page, key: str) -> list[str]:
    """Wait until unit ``key`` is the one shown (its layer file may still be loading); the shown ids."""
    page.wait_for_function(f"(document.querySelector('#unit article.current') || {{}}).id === {json.dumps(key)}")
    return _current(page)


def _labels(site: Path) -> dict[str, str]:
    data = json.loads((site / "report.json").read_text())
    return {f"{u['layer']}/{u['unit']}": u["label"] for layer in data["layers"] for u in layer["units"]}


# ---------------------------------------------------------------------------------- the folder
def test_the_folder_is_whole_relative_and_names_no_host(site):
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert {"index.html", "report.css", "report.js", "report.json", "images/val0.png", "images/val1.png",
            "units/conv1/0.png", "units/conv1/top1.png", "units/conv5/31.png", "units/conv1.js", "units/conv5.js",
            "units/conv1.html", "units/conv5.html"} <= names
    assert not [n for n in names if n.startswith(".") or "/." in n]  # no temporary files left
    for path in site.rglob("*"):
        if path.is_file():
            assert not re.search(rb"https?:|//[a-z0-9-]+\.[a-z]", path.read_bytes()), path
    for html_file, base in ((site / "index.html", site), (site / "units/conv5.html", site / "units")):
        page = html_file.read_text()
        links = re.findall(r'(?:src|href)="([^"#][^"]*)"', page) + re.findall(r"url\(&quot;([^&]*)&quot;\)", page)
        assert links and all((base / link).is_file() for link in links), [l for l in links if not (base / l).is_file()]
    page = (site / "index.html").read_text()
    # The index holds the layers and a search index; each layer's file holds its units, labelled.
    assert 'data-script="units/conv5.js"' in page and "<article class=\"unit\"" not in page
    static = (site / "units/conv5.html").read_text()
    assert len(re.findall(r'<article class="unit" id="conv5/\d+"', static)) == 32
    assert all(label for label in _labels(site).values())
    assert "Data-set-wide explanation scores: not computed" in page
    assert "Feature evolution: not recorded: the checkpoint holds no FeatureEvolution state" in static


# ---------------------------------------------------------------------------- what a person sees
def test_one_card_per_unit_and_layer_no_error_and_no_request_leaves_file(page, site):
    _open(page, site)
    for layer, n in LAYERS.items():
        assert page.locator(f"section.layer[data-layer={layer}] .card").count() == n
    assert len(_shown_cards(page)) == sum(LAYERS.values())
    assert page.inner_text("#count") == "44 units"
    assert _current(page) == []  # no unit chosen yet
    page.keyboard.press("ArrowRight")
    assert _shows(page, "conv1/0") == ["conv1/0"] and page.evaluate("location.hash") == "#conv1/0"
    page.wait_for_load_state("load")
    assert page.errors == []
    assert page.requests and all(url.startswith("file://") for url in page.requests), page.requests
    assert any(url.endswith("units/conv1/0.png") for url in page.requests)  # the panel was loaded
    assert any(url.endswith("units/conv1.js") for url in page.requests)  # and the layer's file


def test_searching_a_label_shows_exactly_its_units(page, site):
    labels = _labels(site)
    counts = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    # The most common label that not every unit has.
    label = max((lab for lab in counts if counts[lab] < len(labels)), key=lambda lab: counts[lab])
    _open(page, site)
    page.fill("#search", label)
    expected = sorted(k for k, lab in labels.items() if label.lower() in lab.lower())
    assert sorted(_shown_cards(page)) == expected and len(expected) >= counts[label]
    assert page.inner_text("#count") == f"{len(expected)} of 44 units match"
    page.fill("#search", "conv5:7")
    assert _shown_cards(page) == ["conv5/7"]
    page.press("#search", "Enter")  # opens the first match
    assert _shows(page, "conv5/7") == ["conv5/7"] and page.evaluate("location.hash") == "#conv5/7"
    page.fill("#search", "no such concept")
    assert _shown_cards(page) == []
    page.fill("#search", "")
    assert len(_shown_cards(page)) == 44
    assert page.errors == []


def test_a_fragment_and_the_arrow_keys_open_the_right_unit(page, site):
    _open(page, site, "#conv5/3")
    assert _shows(page, "conv5/3") == ["conv5/3"]
    assert page.inner_text("article.unit.current h3") == "conv5 · unit 3"
    assert page.locator(".card.current").get_attribute("href") == "#conv5/3"
    steps = [("ArrowRight", "conv5/4"), ("ArrowRight", "conv5/5"), ("ArrowLeft", "conv5/4"),
             ("ArrowUp", "conv1/4"), ("ArrowLeft", "conv1/3"), ("ArrowDown", "conv5/3"),
             ("ArrowDown", "conv5/3")]  # no layer after conv5: stays
    for key, expected in steps:
        page.keyboard.press(key)
        assert (key, _shows(page, expected), page.evaluate("location.hash")) == (key, [expected], f"#{expected}")
    page.go_back()  # the fragment is history: Back returns to the previous unit
    assert _shows(page, "conv1/3") == ["conv1/3"]
    _open(page, site, "#conv1/11")
    _shows(page, "conv1/11")
    page.keyboard.press("ArrowRight")  # the last conv1 unit's next is conv5's first
    assert _shows(page, "conv5/0") == ["conv5/0"]
    assert page.errors == []


def test_the_screenshot_is_not_blank(page, site):
    from PIL import Image, ImageStat

    _open(page, site, "#conv1/2")
    _shows(page, "conv1/2")
    page.wait_for_function("document.querySelector('article.unit.current img.panel').complete")
    shot = site.parent / "shot.png"
    page.screenshot(path=str(shot))
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    assert max(ImageStat.Stat(image).stddev) > 20  # text, cards and pictures, not one flat colour
    assert len(image.getcolors(1 << 20) or []) > 500  # the projections' colours are in it
    assert page.evaluate("document.querySelector('article.unit.current img.panel').naturalWidth") > 0


def test_without_javascript_each_layer_page_shows_every_unit(browser, site):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto((site / "index.html").as_uri())
    assert page.locator(".tools").is_hidden()  # the search box needs the script: not shown
    assert page.locator("section.layer[data-layer=conv5] button.open").is_hidden()
    page.click("text=every unit of conv5 on one page")
    assert page.url.endswith("units/conv5.html")
    shown = page.eval_on_selector_all("article.unit", "as => as.filter(a => a.offsetParent !== null).length")
    assert shown == LAYERS["conv5"]
    assert page.evaluate("document.querySelector('article.unit img.panel').getAttribute('src')") == "../units/conv5/0.png"
    context.close()


# ------------------------------------------------------------------------------ other inputs
def test_evolution_stored_score_dissection_file_scores_file_and_an_empty_log_dir(tiny_ckpt_factory, tmp_path):
    from zflight.analysis.dissection import dissect
    from zflight.data import ShapesDataset
    from zflight.module import ImageClassifier

    ckpt = torch.load(tiny_ckpt_factory(8), weights_only=True)
    tracked = torch.randn(2, 3, 48, 48).half()
    ckpt["callbacks"] = {
        "FeatureEvolution{'layers': ('conv1',), 'seed': 0}": {
            "done_epochs": [1, 2], "channels": {"conv1": [0, 2]}, "column_epochs": [1, 2],
            "columns": {"conv1": [tracked, tracked * 2]}, "tile": 48},
        "ModelCheckpoint{'monitor': 'val/acc1'}": {"monitor": "val/acc1", "best_model_score": torch.tensor(0.75)},
    }
    ckpt_path = tmp_path / "with_state.ckpt"
    torch.save(ckpt, ckpt_path)
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64)
    module.load_state_dict(ckpt["state_dict"])
    labels = dissect(module.model, ShapesDataset(8, image_size=64, seed=1), ["conv1"], progress=False)
    (tmp_path / "dissection.json").write_text(json.dumps(labels.to_json()))
    scores = {"scores": {"deconvnet": {"pointing_game": {"mean": 0.625, "sem": 0.1, "n": 8}}},
              "num_images": 8, "split": "val", "checkpoint": "x.ckpt"}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    (tmp_path / "run").mkdir()

    out = tmp_path / "site"
    main(["--ckpt_path", str(ckpt_path), "--out", str(out), "--layers", "conv1", "conv2", "--units", "3",
          "--occlusion_images", "1", "--log_dir", str(tmp_path / "run"), "--dissection", str(tmp_path / "dissection.json"),
          "--scores", str(tmp_path / "scores.json")])
    page = "".join((out / name).read_text() for name in ("index.html", "units/conv1.html", "units/conv2.html"))
    assert re.findall(r'class="card" href="#(conv\d/\d+)"', page) == [f"conv{i}/{u}" for i in (1, 2) for u in range(3)]
    assert (out / "units/conv1/0_evolution.png").is_file() and (out / "units/conv1/2_evolution.png").is_file()
    assert not (out / "units/conv1/1_evolution.png").exists()
    assert "the run tracked units 0, 2 of conv1, not this one" in page
    assert "the run did not track conv2" in page
    assert f"--log_dir {tmp_path / 'run'} has no evolution images" in page
    assert "val/acc1 (best model score, stored)</th><td>0.7500" in page
    assert f"Dissection label: <b>{labels.layers['conv1'].labels[1]}</b>" in page
    assert page.count("Dissection label: not computed. the dissection has no layer conv2.") == 3
    assert "<td>0.625 ± 0.100</td>" in page


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ckpt_path", "{tmp}/missing.ckpt"], "--ckpt_path: no such file"),
        (["--layers", "conv9"], "--layers: "),
        (["--out", "{tmp}/a_file"], "--out: {tmp}/a_file exists and is not a folder"),
        (["--units", "0"], "--units must be >= 1, got 0"),
        (["--occlusion_images", "-1"], "--occlusion_images must be >= 0"),
        (["--occlusion_images", "9"], "--occlusion_images: 9 is more than the 8 images"),
        (["--images", "2"], "--images: no such file: 2"),  # a folder now; the count is --occlusion_images
        (["--model", "resnet18"], "--ckpt_path: not allowed with argument --model"),
        (["--log_dir", "{tmp}/nowhere"], "--log_dir: no such folder"),
        (["--dissection", "{tmp}/a_file"], "--dissection: {tmp}/a_file is not JSON"),
        (["--scores", "{tmp}/nothing.json"], "--scores: no such file"),
    ],
)
def test_bad_input_is_one_error_line_naming_the_option_and_writes_nothing(
    argv, message, tiny_ckpt_factory, tmp_path, capsys
):
    (tmp_path / "a_file").write_text("not a folder")
    ckpt = str(tiny_ckpt_factory(8))
    args = {"--ckpt_path": ckpt, "--out": str(tmp_path / "site")}
    given = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for option, value in args.items():
        if option not in given:
            given += [option, value]
    with pytest.raises(SystemExit) as exit_:
        main(given + ["--dissect_images", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m zflight report: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in err[0]
    assert not (tmp_path / "site").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_layer_names_close_layers(tiny_ckpt_factory, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--ckpt_path", str(tiny_ckpt_factory(8)), "--out", str(tmp_path / "s"), "--layers", "conv6"])
    assert "conv" in capsys.readouterr().err.split("--layers: ", 1)[1]


def test_a_failed_build_leaves_no_folder_and_no_half_written_page(tiny_ckpt_factory, tmp_path, monkeypatch):
    from zflight.figures import report

    def broken(content, folder):
        (Path(folder) / "index.html").write_text("<!doctype html><p>half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write_site", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["--ckpt_path", str(tiny_ckpt_factory(8)), "--out", str(tmp_path / "site"), "--layers", "conv1",
              "--units", "2", "--occlusion_images", "0", "--dissect_images", "0"])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- a torchvision model, real layers
@pytest.fixture(scope="module")
def resnet_site(tmp_path_factory) -> Path:
    """resnet18 (random weights, from a state_dict file) on 6 PNGs in 2 class folders, 2 units per stage."""
    import torchvision
    from PIL import Image

    root = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "sd.pt")
    for i in range(6):
        folder = root / "photos" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(40, 48, 3) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = root / "site"
    main(["--model", "resnet18", "--checkpoint", str(root / "sd.pt"), "--images", str(root / "photos"),
          "--resize", "36", "--image_size", "32", "--layers", "layer1", "layer2", "layer3", "layer4", "--units", "2", "--occlusion_images", "1", "--k", "3",
          "--out", str(out), "--device", "cpu"])
    return out


def test_the_resnet_explorer_lists_its_source_and_opens_a_layer_a_unit_and_search(browser, resnet_site):
    page_text = (resnet_site / "index.html").read_text()
    assert "<th>model</th><td>torchvision resnet18</td>" in page_text
    assert f"<th>weights</th><td>file {resnet_site.parent / 'sd.pt'}</td>" in page_text
    assert "<th>preprocessing</th><td>shorter side 36, centre crop 32," in page_text
    assert "<th>class names</th><td>none</td>" in page_text
    assert "The images&#x27; labels are not the model&#x27;s classes: the tracked class is the predicted one." in page_text
    context = browser.new_context(viewport={"width": 1280, "height": 300})  # the layers start below the fold
    page = context.new_page()
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((resnet_site / "index.html").as_uri())
    page.wait_for_load_state("load")
    assert page.eval_on_selector_all("section.layer", "s => s.map(x => x.dataset.layer)") == [
        "layer1", "layer2", "layer3", "layer4"]
    assert not any(url.endswith("units/layer4.js") for url in requests)  # not opened: not loaded
    page.dispatch_event("section.layer[data-layer=layer4] button.open", "click")  # open a layer, not scrolled to
    page.wait_for_function("document.querySelectorAll('section.layer[data-layer=layer4] .card').length === 2")
    assert any(url.endswith("units/layer4.js") for url in requests)
    page.click("section.layer[data-layer=layer4] .card[data-unit='1']")  # open a unit
    assert _shows(page, "layer4/1") == ["layer4/1"]
    assert page.inner_text("article.unit.current h3") == "layer4 · unit 1"
    page.fill("#search", "layer2:0")  # search, across layers
    page.wait_for_function("document.querySelectorAll('section.layer[data-layer=layer2] .card').length === 2")
    assert _shown_cards(page) == ["layer2/0"] and page.inner_text("#count") == "1 of 8 units match"
    page.press("#search", "Enter")
    assert _shows(page, "layer2/0") == ["layer2/0"]
    page.fill("#search", "")
    page.evaluate("document.getElementById('search').blur()")
    page.keyboard.press("ArrowDown")  # the next layer's unit at the same place, its layer loaded on the way
    assert _shows(page, "layer3/0") == ["layer3/0"]
    assert errors == []
    context.close()


def test_concepts_dissects_a_broden_folder_here_for_the_labels(tmp_path):
    from tests.analysis.test_dissection import small_cnn
    from tests.broden_folder import write_broden
    from zflight.analysis.dissection import dissect
    from zflight.data import IMAGENET_MEAN, IMAGENET_STD
    from zflight.data.broden import BrodenDataset

    write_broden(tmp_path / "broden", 6, size=64, seed=2)
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        shutil.copy(next((tmp_path / "broden" / "images").rglob("*.jpg")), tmp_path / "imgs" / f"{k}.jpg")
    main(["--model", "tests.analysis.test_dissection:small_cnn", "--images", str(tmp_path / "imgs"),
          "--image_size", "64", "--resize", "64", "--layers", "conv3", "--units", "3", "--occlusion_images", "0",
          "--concepts", str(tmp_path / "broden"), "--out", str(tmp_path / "site")])
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    direct = dissect(small_cnn(), BrodenDataset(tmp_path / "broden", mean=IMAGENET_MEAN, std=IMAGENET_STD),
                     ["conv3"], progress=False).layers["conv3"]
    assert report["dissection"].startswith(f"from Broden {tmp_path / 'broden'}")
    units = report["layers"][0]["units"]
    assert [(u["label"], round(u["iou"], 6)) for u in units] == [
        (direct.labels[k], round(float(direct.best_iou[k]), 6)) for k in range(3)]
