"""python -m zflight evaluate: files written, numbers equal to the metrics, the sanity curves,
one error line per bad input and nothing in --out."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zflight.analysis.evaluation import pointing_game, relevance, relevance_mass
from zflight.attribution.methods import attribute
from zflight.cli import main as zflight_main
from zflight.cli._common import embedded_dataset, load_network


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(val_size=12)


def _run(ckpt, out, *extra):
    return zflight_main(["evaluate", "--ckpt_path", str(ckpt), "--out", str(out), *extra])


def test_writes_table_json_png_with_the_metrics_numbers(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "ev"
    doc = _run(tiny_ckpt, out, "--methods", "saliency", "random", "--num_images", "5",
               "--steps", "4", "--batch_size", "5", "--show", "2")
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.png", "scores.json", "scores.md"]
    assert (out / "evaluation.png").stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["ev"]  # no temporary folder left
    data = json.loads((out / "scores.json").read_text())
    assert data == json.loads(json.dumps(doc))
    assert data["methods"] == ["saliency", "random"]
    assert data["metrics"] == ["pointing_game", "relevance_mass", "relevance_rank", "deletion_auc", "insertion_auc"]

    # The saliency numbers are the metrics of the saliency maps of the first 5 val images.
    model, hp, data_hp = load_network(tiny_ckpt)
    ds = embedded_dataset(hp, data_hp, "val")
    x = torch.stack([ds[i][0] for i in range(5)])
    y = torch.tensor([ds[i][1] for i in range(5)])
    masks = torch.stack([ds.mask(i) for i in range(5)])
    r = relevance(attribute("saliency", model, x, y).double())
    for metric, fn in (("pointing_game", pointing_game), ("relevance_mass", relevance_mass)):
        per_image = fn(r, masks)
        cell = data["scores"]["saliency"][metric]
        assert data["per_image"]["saliency"][metric] == pytest.approx(per_image.tolist(), abs=1e-12)
        assert cell["n"] == 5
        assert cell["mean"] == pytest.approx(float(per_image.mean()), abs=1e-12)
        assert cell["sem"] == pytest.approx(float(per_image.std()) / math.sqrt(5), abs=1e-12)
    assert data["labels"] == y.tolist()

    # The Markdown table is written and printed: one row per method, mean ± sem per metric.
    md = (out / "scores.md").read_text()
    printed = capsys.readouterr().out
    assert md.strip() in printed
    row = next(line for line in md.splitlines() if line.startswith("| saliency |"))
    mass = data["scores"]["saliency"]["relevance_mass"]
    assert f"{mass['mean']:.3f} ± {mass['sem']:.3f}" in row and row.endswith("| 5 |")


def test_sanity_writes_the_randomization_curves(tiny_ckpt, tmp_path):
    out = tmp_path / "ev"
    _run(tiny_ckpt, out, "--methods", "saliency", "random", "--metrics", "pointing_game",
         "--num_images", "3", "--show", "1", "--sanity", "--sanity_images", "2")
    assert (out / "sanity.png").stat().st_size > 10_000
    sanity = json.loads((out / "scores.json").read_text())["sanity"]
    assert sanity["mode"] == "cascading" and sanity["images"] == 2
    assert sanity["layers"][0] == "classifier.fc8" and sanity["layers"][-1] == "features.conv1"
    # The random baseline does not look at the model: identical maps at every layer.
    random = sanity["methods"]["random"]
    assert random["spearman"] == [[1.0, 1.0]] * len(sanity["layers"])
    # Saliency does: randomizing the whole network changes its maps.
    assert max(sanity["methods"]["saliency"]["spearman"][-1]) < 0.99


def _foreign_ckpt(tmp_path):
    """A checkpoint whose data module read an image folder that is not on this machine."""
    from zflight.module import ImageClassifier

    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64)
    path = tmp_path / "folder.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"_class_path": "zflight.data.ImageFolderDataModule",
                                                "root": "/data/imagenet", "image_size": 64}}, path)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "deconvnet", "gradcamm"],
         "--methods: method 'gradcamm' does not exist (did you mean 'gradcam'?); valid methods: "
         "deconvnet, deconvnet_project, saliency, guided_backprop, occlusion, gradcam, integrated_gradients, random"),
        (["--metrics", "pointing"], "--metrics: metric 'pointing' does not exist (did you mean 'pointing_game'?)"),
        (["--num_images", "13"], "--num_images: 13 is larger than the val split (12 images)"),
        (["--num_images", "0"], "--num_images must be >= 1, got 0"),
        (["--num_images", "five"], "argument --num_images: invalid int value: 'five'"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--batch_size", "-2"], "--batch_size must be >= 1, got -2"),
        (["--num_images", "3", "--show", "4"], "--show: 4 images to draw but only --num_images 3 scored"),
        (["--num_images", "3", "--sanity", "--sanity_images", "4"], "--sanity_images: 4 is more than"),
        (["--device", "gpu0"], "--device: "),
        ("foreign", "--images: the checkpoint's data (/data/imagenet) cannot be read on this machine"),
    ],
)
def test_bad_input_one_error_line_nothing_written(tiny_ckpt, tmp_path, capsys, extra, message):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    ckpt = _foreign_ckpt(ckpt_dir) if extra == "foreign" else tiny_ckpt
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SystemExit) as exc:
        _run(ckpt, work / "ev", *([] if extra == "foreign" else extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m zflight evaluate: error: ")
    assert message in err[0]
    assert list(work.iterdir()) == []


# ----------------------------------------------------------------- any model, any images
# resnet18 (10 classes) from the state_dict of tests/conftest.py, read at 48 px: the 60x50 photos are
# only centre-cropped (rows 1-48, columns 6-53), so a mask's pixel (r, c) is the model's (r - 1, c - 6).
FOLDER_CLASSES = ["apple", "bicycle", "cloud"]


def _resnet(resnet18_file, tmp_path=None):
    options = ["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", str(resnet18_file),
               "--resize", "50", "--image_size", "48"]
    if tmp_path is not None:  # class names: the folders' three, then seven others
        (tmp_path / "classes.txt").write_text("\n".join(FOLDER_CLASSES + [f"other{k}" for k in range(7)]))
        options += ["--classes", str(tmp_path / "classes.txt")]
    return options


def _masks(classes_folder, root):
    """A binary PNG per photo at the same relative path: the box rows 10-27, columns 12-31 (1 = object)."""
    import numpy as np
    from PIL import Image

    for photo in sorted(classes_folder.rglob("*.*")):
        mask = np.zeros((50, 60), dtype=np.uint8)
        mask[10:28, 12:32] = 1
        path = root / photo.relative_to(classes_folder).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path)
    return root


def _run_any(options, out, *extra):
    return zflight_main(["evaluate", *options, "--out", str(out), "--methods", "saliency", "random",
                         "--steps", "2", *extra])


def test_any_model_with_masks_scores_localization_for_the_folder_labels(resnet18_file, photo_folders, tmp_path,
                                                                        capsys):
    from zflight.sources import image_folder, load_model

    classes, _ = photo_folders
    masks = _masks(classes, tmp_path / "masks")
    out = tmp_path / "ev"
    doc = _run_any(_resnet(resnet18_file, tmp_path), out, "--images", str(classes), "--masks", str(masks),
                   "--num_images", "3")
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.png", "scores.json", "scores.md"]
    data = json.loads((out / "scores.json").read_text())
    assert data == json.loads(json.dumps(doc))
    # 3 of the 9 photos, spread over the folder's order: one per class.
    assert data["files"] == ["apple/apple0.jpg", "bicycle/bicycle0.jpg", "cloud/cloud0.jpg"]
    assert data["metrics"] == ["pointing_game", "relevance_mass", "relevance_rank", "deletion_auc", "insertion_auc"]
    assert data["target"] == "the true label" and data["targets"] == [0, 1, 2]
    assert data["localization_skipped"] is False and data["model"]["model"] == "torchvision resnet18"
    # The mask is cropped as the image is: the model sees the box at rows 9-26, columns 6-25.
    source = load_model("resnet18", model_args={"num_classes": 10}, checkpoint=resnet18_file,
                        preprocess={"resize": 50, "crop": 48})
    ds = image_folder(classes, source.preprocess)
    x = torch.stack([ds[i][0] for i in (0, 3, 6)])
    mask = torch.zeros(3, 48, 48, dtype=torch.bool)
    mask[:, 9:27, 6:26] = True
    r = relevance(attribute("saliency", source.model, x, torch.tensor(data["targets"])).double())
    assert data["per_image"]["saliency"]["relevance_mass"] == pytest.approx(relevance_mass(r, mask).tolist(), abs=1e-9)
    printed = capsys.readouterr().out
    assert "model: torchvision resnet18" in printed and "images: 9 images from" in printed


def test_any_model_without_masks_skips_localization_and_uses_the_predicted_class(resnet18_file, photo_folders,
                                                                                  tmp_path, capsys):
    out = tmp_path / "ev"
    _run_any(_resnet(resnet18_file), out, "--images", str(photo_folders[1]), "--num_images", "2")
    data = json.loads((out / "scores.json").read_text())
    assert data["metrics"] == ["deletion_auc", "insertion_auc"] and data["localization_skipped"] is True
    assert data["accuracy"] is None and data["target"] == "the predicted class"
    assert data["target_why"] == "the images have no classes (a flat folder): the predicted class is used"
    assert list(data["scores"]["saliency"]) == ["deletion_auc", "insertion_auc"]
    printed = capsys.readouterr().out
    assert ("localization scores skipped (pointing_game, relevance_mass, relevance_rank): the images have no "
            "object masks (give --masks DIR: one binary PNG per image)") in printed
    assert "target: the images have no classes (a flat folder): the predicted class is used" in printed
    assert "Localization scores skipped" in (out / "scores.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "resnet19"], "--model: 'resnet19' is not a torchvision classification model; did you mean "),
        (["--masks", "{masks_short}"], "--masks: no mask for cloud/cloud2.jpg: expected {masks_short}/cloud/cloud2.png"),
        (["--metrics", "pointing_game"], "--metrics: pointing_game need object masks: give --masks DIR"),
        (["--masks", "{masks}", "--images", "{flat}"], "--masks: no mask for photo0.jpeg"),
        ("feature_maps", "--model: evaluate needs a classifier; torch.nn:Conv2d outputs 4-channel feature maps"),
    ],
)
def test_any_model_bad_input_one_error_line_nothing_written(resnet18_file, photo_folders, tmp_path, capsys, extra,
                                                            message):
    classes, flat = photo_folders
    masks = _masks(classes, tmp_path / "masks")
    short = _masks(classes, tmp_path / "masks_short")
    (short / "cloud" / "cloud2.png").unlink()
    names = {"masks": str(masks), "masks_short": str(short), "flat": str(flat)}
    work = tmp_path / "work"
    work.mkdir()
    if extra == "feature_maps":
        argv = ["evaluate", "--model", "torch.nn:Conv2d", "--model_args",
                '{"in_channels": 3, "out_channels": 4, "kernel_size": 3}', "--image_size", "32",
                "--images", str(flat), "--out", str(work / "ev")]
    else:
        options = _resnet(resnet18_file)
        if "--model" in extra:
            options[1] = extra[1]
        argv = ["evaluate", *options, "--images", str(classes), "--out", str(work / "ev"),
                *([] if "--model" in extra else [a.format(**names) for a in extra])]
    with pytest.raises(SystemExit) as exc:
        zflight_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m zflight evaluate: error: "), err
    assert message.format(**names) in err[0]
    assert list(work.iterdir()) == []
