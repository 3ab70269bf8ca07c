"""``python -m zflight dissect``: what it writes, that the numbers are dissect()'s, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zflight.analysis.dissection import ConceptSubset, Dissection, dissect
from zflight.cli import main as zflight_main
from zflight.cli._common import embedded_dataset, load_network
from zflight.cli.dissect import main

LAYERS = ["conv1", "conv5"]


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt_factory) -> Path:
    return tiny_ckpt_factory(24)


def _args(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["--ckpt_path", str(ckpt), "--out", str(out), "--layers", *LAYERS, "--num_images", "16",
            "--units", "3", "--examples", "2", *extra]


def test_writes_json_markdown_and_a_panel_per_layer_with_dissects_numbers(ckpt, tmp_path, capsys):
    out = tmp_path / "dis"
    doc = zflight_main(["dissect", *_args(ckpt, out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "counts.csv", "dissect_conv1.png", "dissect_conv5.png", "dissection.json", "dissection.md", "tally.csv"]
    saved = json.loads((out / "dissection.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    # The same numbers as dissect() on the first 16 validation images.
    model, hp, data_hp = load_network(ckpt)
    images = ConceptSubset(embedded_dataset(hp, data_hp, "val"), range(16))
    direct = dissect(model, images, LAYERS, progress=False)
    result = Dissection.from_json(saved)
    for name in LAYERS:
        assert torch.equal(result.layers[name].iou, direct.layers[name].iou)
        assert result.layers[name].labels == direct.layers[name].labels
    assert saved["summary"] == direct.summary()
    assert saved["source"]["num_images"] == 16 and saved["num_images"] == 16
    top = saved["top_units"]["conv1"]
    assert len(top) == 3 and top == direct.top_units("conv1", 3)
    md = (out / "dissection.md").read_text()
    assert f"| {top[0]['unit']} | {top[0]['label']} | {top[0]['iou']:.3f} |" in md
    assert "| conv5 | " in md and "wrote dissection.json" in capsys.readouterr().out
    panel = np.asarray(Image.open(out / "dissect_conv1.png"))
    assert panel.ndim == 3 and panel.shape[2] == 3 and panel.shape[1] > 2 * 96


def _concept_folder(root: Path, n: int = 4, mask_size: tuple[int, int] = (64, 64)) -> Path:
    (root / "images").mkdir(parents=True)
    for concept in ("sky", "part/wheel"):
        (root / "masks" / concept).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
        sky = np.zeros(mask_size[::-1], dtype=np.uint8)
        sky[: mask_size[1] // 2] = 255
        Image.fromarray(sky).save(root / "masks" / "sky" / f"im{i}.png")
        wheel = np.zeros((64, 64), dtype=np.uint8)
        wheel[40:56, 8 + i : 24 + i] = 1
        Image.fromarray(wheel).save(root / "masks" / "part" / "wheel" / f"im{i}.png")
    return root


def test_a_concept_folder_is_dissected_with_its_own_concepts(ckpt, tmp_path):
    folder = _concept_folder(tmp_path / "concepts")
    doc = main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "o"), "--concepts", str(folder),
                "--layers", "conv2", "--units", "2", "--examples", "2"])
    assert doc["concepts"] == ["part/wheel", "sky"]
    assert doc["num_images"] == 4 and "ConceptFolder" in doc["source"]["images"]
    assert set(doc["summary"]["conv2"]["families"]) == {
        "object", "color", "part", "distractor", "background", "sky"}


def _no_masks_ckpt(ckpt: Path, tmp_path: Path) -> Path:
    data = torch.load(ckpt, weights_only=True)
    data["datamodule_hyper_parameters"] = {"root": str(tmp_path / "gone"), "image_size": 64,
                                           "_class_path": "zflight.data.ImageFolderDataModule"}
    path = tmp_path / "folder.ckpt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("layer", "--layers: layer='conv6' is not a module of ZFNet; did you mean 'conv5'"),
    ("quantile", "--quantile must be in (0, 1)"),
    ("quantile0", "--quantile must be in (0, 1)"),
    ("iou", "--iou_threshold must be in [0, 1]"),
    ("too_many", "--num_images: 99 is larger than the data set (24 images"),
    ("no_masks", "--ckpt_path: the checkpoint's data"),
    ("mask_size", "--concepts: mask "),
    ("empty", "--concepts: images folder"),
    ("not_a_folder", "--concepts: concept folder"),
])
def test_bad_input_is_one_error_line_naming_the_option_and_nothing_in_out(
    ckpt, tmp_path, capsys, case, message
):
    out = tmp_path / "out"
    args = _args(ckpt, out)
    change = {
        "layer": ["--layers", "conv1", "conv6"],
        "quantile": ["--quantile", "1.5"],
        "quantile0": ["--quantile", "0"],
        "iou": ["--iou_threshold", "-0.1"],
        "too_many": ["--num_images", "99"],
    }
    if case == "no_masks":
        args = _args(_no_masks_ckpt(ckpt, tmp_path), out)
    elif case == "mask_size":
        folder = _concept_folder(tmp_path / "c", mask_size=(32, 32))
        args = _args(ckpt, out, "--concepts", str(folder), "--num_images", "2")
    elif case == "empty":
        (tmp_path / "c" / "images").mkdir(parents=True)
        args = _args(ckpt, out, "--concepts", str(tmp_path / "c"), "--num_images", "1")
    elif case == "not_a_folder":
        args = _args(ckpt, out, "--concepts", str(tmp_path / "nowhere"))
    else:
        args += change[case]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # no progress bar started, no traceback
    assert err.startswith("python -m zflight dissect: error: ")
    assert message in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_visualize_captions_units_with_the_dissections_labels(ckpt, tmp_path, monkeypatch, capsys):
    import zflight.figures as figures
    from zflight.cli.visualize import main as visualize

    dis = tmp_path / "dis"
    main(_args(ckpt, dis, "--layers", "conv2"))
    labels = Dissection.from_json(json.loads((dis / "dissection.json").read_text())).layers["conv2"]
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  class_path: zflight.data.ShapesDataModule\n"
                      "  init_args: {image_size: 64, train_size: 16, val_size: 24, test_size: 8}\n")
    seen: list[str] = []
    real = figures.top_activation_panel
    monkeypatch.setattr(figures, "top_activation_panel",
                        lambda *a, captions=None, **kw: (seen.extend(captions), real(*a, captions=captions, **kw))[1])
    common = ["--config", str(config), "--ckpt_path", str(ckpt), "--layers", "conv2", "--maps", "2",
              "--k", "1", "--tile", "16"]
    visualize([*common, "--out", str(tmp_path / "v"), "--dissection", str(dis / "dissection.json")])
    assert len(seen) == 2
    for caption in seen:
        unit = int(caption.split()[2])
        text = f"{labels.labels[unit]} {float(labels.best_iou[unit]):.2f}"
        assert caption == f"conv2 unit {unit} · " + (text if labels.detectors[unit] else f"({text})")
    # Without --dissection the captions stay as they were.
    seen.clear()
    visualize([*common, "--out", str(tmp_path / "w")])
    assert all(" · " not in c for c in seen) and len(seen) == 2
    # A file that is no dissection is named.
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        visualize([*common, "--out", str(tmp_path / "x"), "--dissection", str(tmp_path / "bad.json")])
    assert "--dissection: " in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def broden(tmp_path_factory) -> Path:
    from tests.broden_folder import write_broden

    root = tmp_path_factory.mktemp("broden")
    write_broden(root, 10, size=64, seed=1)
    return root


def test_a_broden_folder_is_dissected_per_category_with_its_tally_and_count_table(ckpt, broden, tmp_path):
    import csv

    from zflight.data.broden import BrodenDataset
    from zflight.sources import load_model

    out = tmp_path / "b"
    doc = main(["--ckpt_path", str(ckpt), "--out", str(out), "--concepts", str(broden), "--layers", "conv1", "conv2",
                "--categories", "object", "part", "texture", "--units", "2", "--examples", "2", "--workers", "0"])
    assert {"tally.csv", "counts.csv", "dissect_conv1.png", "dissect_conv2.png"} <= {p.name for p in out.iterdir()}
    source = load_model(ckpt_path=str(ckpt))
    ds = BrodenDataset(broden, ["object", "part", "texture"], mean=source.preprocess.mean, std=source.preprocess.std)
    direct = dissect(source.model, ds, ["conv1", "conv2"], progress=False)
    result = Dissection.from_json(json.loads((out / "dissection.json").read_text()))
    assert result.mask_size == (32, 32) and result.categories == ["object", "part", "texture"]
    for name in ["conv1", "conv2"]:
        assert torch.equal(result.layers[name].iou, direct.layers[name].iou)
    with open(out / "tally.csv") as f:
        tally = list(csv.DictReader(f))
    assert list(tally[0]) == ["layer", "unit", "category", "label", "score", "object-label", "object-iou",
                              "part-label", "part-iou", "texture-label", "texture-iou"]
    conv2 = [r for r in tally if r["layer"] == "conv2"]
    assert len(conv2) == direct.layers["conv2"].num_units
    best = conv2[0]
    assert f"{best['category']}/{best['label']}" == direct.top_units("conv2", 1)[0]["label"]
    with open(out / "counts.csv") as f:
        counts = list(csv.DictReader(f))
    assert [(r["layer"], r["category"]) for r in counts[:4]] == [
        ("conv1", "all"), ("conv1", "object"), ("conv1", "part"), ("conv1", "texture")]
    assert int(counts[0]["detectors"]) == doc["summary"]["conv1"]["detectors"]


@pytest.mark.parametrize("case, message", [
    ("category", "--categories: 'objects' is not a category of"),
    ("not_broden", "--categories: only a Broden folder"),
    ("label_csv", "label.csv does not exist"),
    ("png", "img_00000_part_2.png (part, index.csv line 2) does not exist"),
])
def test_bad_broden_input_is_one_error_line_naming_the_file(ckpt, broden, tmp_path, capsys, case, message):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(broden, folder)
    extra = ["--categories", "objects"] if case == "category" else []
    if case == "not_broden":
        folder = _concept_folder(tmp_path / "c")
        extra = ["--categories", "object"]
    elif case == "label_csv":
        (folder / "label.csv").unlink()
    elif case == "png":
        (folder / "images" / "gen" / "img_00000_part_2.png").unlink()
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["--ckpt_path", str(ckpt), "--out", str(out), "--concepts", str(folder), "--layers", "conv1", *extra])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_any_model_named_with_model_dissects_a_broden_folder_with_workers(broden, tmp_path):
    from tests.analysis.test_dissection import small_cnn
    from zflight.data import IMAGENET_MEAN, IMAGENET_STD
    from zflight.data.broden import BrodenDataset

    doc = main(["--model", "tests.analysis.test_dissection:small_cnn", "--concepts", str(broden),
                "--layers", "conv1", "conv3", "--units", "2", "--examples", "2", "--workers", "2",
                "--out", str(tmp_path / "m")])
    assert doc["source"]["model"] == "import tests.analysis.test_dissection:small_cnn"
    direct = dissect(small_cnn(), BrodenDataset(broden, mean=IMAGENET_MEAN, std=IMAGENET_STD), ["conv1", "conv3"],
                     progress=False)
    got = Dissection.from_json(doc)
    for name in ["conv1", "conv3"]:
        assert torch.equal(got.layers[name].iou, direct.layers[name].iou)
    assert doc["mask_size"] == [32, 32]
