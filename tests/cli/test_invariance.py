import json

import pytest

from tests.any_model import model_options
from zflight.cli.invariance import main as invariance_main


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(val_size=20)


def test_cli_writes_png_and_json(tiny_ckpt, tmp_path):
    out = tmp_path / "inv"
    invariance_main(["--ckpt_path", str(tiny_ckpt), "--out", str(out), "--indices", "0", "3",
                     "--translate_amounts", "0", "8", "--scale_amounts", "1", "1.5",
                     "--rotate_amounts", "0", "90"])
    assert (out / "invariance.png").stat().st_size > 1000
    data = json.loads((out / "invariance.json").read_text())
    assert [c["transform"] for c in data["curves"]] == ["translate", "scale", "rotate"]
    assert data["curves"][0]["layers"]["features.norm1"]["distance"][0][0] == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["inv"]  # no temporary folder left


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--indices", "99"], "--indices"),
        (["--layers", "conv9"], "conv9"),
        (["--scale_amounts", "-1"], "scale factor"),
    ],
)
def test_cli_bad_input_one_message_no_output(tiny_ckpt, tmp_path, capsys, extra, words):
    out = tmp_path / "inv"
    with pytest.raises(SystemExit) as exc:
        invariance_main(["--ckpt_path", str(tiny_ckpt), "--out", str(out), "--transforms", "scale", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_png_and_json_from_image_files(write_pngs, tiny_ckpt, tmp_path):
    files = write_pngs(tmp_path, (200, 30, 30), (30, 30, 200))
    out = tmp_path / "inv"
    invariance_main(["--ckpt_path", str(tiny_ckpt), "--out", str(out), "--images", *files,
                     "--labels", "ring", "3", "--translate_amounts", "0", "8", "--scale_amounts", "1", "1.5",
                     "--rotate_amounts", "0", "90"])
    assert (out / "invariance.png").stat().st_size > 1000
    data = json.loads((out / "invariance.json").read_text())
    assert data["images"] == files and "indices" not in data
    from zflight.data import ShapesDataModule

    classes = ShapesDataModule().classes
    assert data["class_names"] == ["ring", classes[3]]
    assert data["curves"][0]["labels"] == [classes.index("ring"), 3]
    assert data["curves"][0]["layers"]["features.norm1"]["distance"][0][0] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img0.png", "img1.png", "inv"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--images", "{missing}", "--labels", "0"], "--images: no such file: {missing}"),
        (["--images", "{bad}", "--labels", "0"], "--images: cannot read image file {bad}"),
        (["--images", "{good}", "--labels", "0", "1"], "--labels: one per --images file"),
        (["--images", "{good}", "--labels", "squircle"], "--labels: unknown class 'squircle'"),
        (["--images", "{good}", "--labels", "12"], "--labels: class 12"),
        (["--indices", "0", "--labels", "0"], "--labels goes with --images"),
    ],
)
def test_cli_bad_image_files_one_message_no_output(write_pngs, tiny_ckpt, tmp_path, capsys, extra, words):
    (good,) = write_pngs(tmp_path, (10, 200, 10))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    names = {"missing": str(tmp_path / "missing.png"), "bad": str(bad), "good": good}
    extra = [a.format(**names) for a in extra]
    out = tmp_path / "inv"
    with pytest.raises(SystemExit) as exc:
        invariance_main(["--ckpt_path", str(tiny_ckpt), "--out", str(out), "--transforms", "scale",
                         "--scale_amounts", "1", "2", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words.format(**names) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "img0.png"]


def test_cli_images_and_indices_are_mutually_exclusive(write_pngs, tiny_ckpt, tmp_path, capsys):
    (good,) = write_pngs(tmp_path, (10, 200, 10))
    with pytest.raises(SystemExit) as exc:
        invariance_main(["--ckpt_path", str(tiny_ckpt), "--out", str(tmp_path / "inv"),
                         "--indices", "0", "--images", good, "--labels", "0"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["img0.png"]


def test_cli_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        invariance_main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")])
    assert "--ckpt_path" in capsys.readouterr().err


# ----------------------------------------------------------------- any model, any images
def _run_any(resnet18_file, out, *extra, classes=True):
    options = model_options(resnet18_file["state_dict"], resnet18_file["classes"] if classes else None)
    return invariance_main([*options, "--out", str(out), "--transforms", "scale", "--scale_amounts", "1", "1.5",
                            *extra])


def test_any_model_on_a_class_folder_uses_its_labels_and_the_first_and_last_default_layers(
        resnet18_file, photos, tmp_path, capsys):
    out = tmp_path / "inv"
    _run_any(resnet18_file, out, "--images", str(photos["classes"]))
    assert (out / "invariance.png").stat().st_size > 1000
    data = json.loads((out / "invariance.json").read_text())
    # resnet18 at 32 px: relu 16x16, layer1 8x8, layer2 4x4, layer3 2x2 (layer4 is 1x1, not a map).
    assert data["layers"] == ["relu", "layer3"]
    assert data["labels_from"] == "the class folders" and data["class_names"] == ["cat", "cat", "dog", "dog"]
    assert data["curves"][0]["labels"] == [0, 0, 1, 1]
    assert data["images"] == [str(photos["classes"] / n) for n in ("cat/a.png", "cat/b.jpg", "dog/c.png", "dog/d.jpg")]
    assert [d[0] for d in data["curves"][0]["layers"]["relu"]["distance"]] == [0.0] * 4  # scale 1: no change
    printed = capsys.readouterr().out
    assert "layers: relu layer3 (the first and last default layers" in printed


def test_any_model_without_labels_uses_the_predicted_class_and_labels_name_the_model_classes(
        resnet18_file, photos, tmp_path, capsys):
    _run_any(resnet18_file, tmp_path / "a", "--images", str(photos["flat"]), "--layers", "layer1")
    data = json.loads((tmp_path / "a" / "invariance.json").read_text())
    assert data["layers"] == ["layer1"]
    assert data["labels_from"].startswith("the predicted class (the images have no classes")
    assert "labels: the images have no classes" in capsys.readouterr().out
    files = [str(photos["flat"] / "x.png"), str(photos["flat"] / "y.jpg")]
    _run_any(resnet18_file, tmp_path / "b", "--images", *files, "--labels", "cat", "2")
    data = json.loads((tmp_path / "b" / "invariance.json").read_text())
    assert data["labels_from"] == "--labels" and data["class_names"] == ["cat", "fox"]
    assert data["images"] == files


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model", "resnet19"], "--model: 'resnet19' is not a torchvision classification model; did you mean"),
        (["--layers", "layer9"], "--layers: layer='layer9'"),
        ("feature_maps", "--model: invariance needs a classifier"),
    ],
)
def test_any_model_bad_input_one_message_no_output(resnet18_file, photos, tmp_path, capsys, extra, words):
    work = tmp_path / "work"
    work.mkdir()
    if extra == "feature_maps":
        argv = ["--model", "torch.nn:Conv2d", "--model_args", '{"in_channels": 3, "out_channels": 4, "kernel_size": 3}',
                "--image_size", "32"]
    else:
        argv = model_options(resnet18_file["state_dict"])
        if extra[0] == "--model":
            argv[1] = extra[1]
        else:
            argv += extra
    with pytest.raises(SystemExit) as exc:
        invariance_main([*argv, "--images", str(photos["flat"]), "--out", str(work / "inv")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert list(work.iterdir()) == []
