import json

import pytest

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
# resnet18 (10 classes) from the state_dict of tests/conftest.py, read at 48 px.
def _resnet(resnet18_file, tmp_path=None):
    options = ["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", str(resnet18_file),
               "--resize", "50", "--image_size", "48"]
    if tmp_path is not None:  # class names: the photo folders' three, then seven others
        (tmp_path / "classes.txt").write_text("\n".join(["apple", "bicycle", "cloud"] + [f"other{k}" for k in range(7)]))
        options += ["--classes", str(tmp_path / "classes.txt")]
    return options


def _run_any(options, out, *extra):
    return invariance_main([*options, "--out", str(out), "--transforms", "scale", "--scale_amounts", "1", "1.5",
                            *extra])


def test_any_model_on_a_class_folder_uses_its_labels_and_the_first_and_last_default_layers(
        resnet18_file, photo_folders, tmp_path, capsys):
    out = tmp_path / "inv"
    _run_any(_resnet(resnet18_file, tmp_path), out, "--images", str(photo_folders[0]))
    assert (out / "invariance.png").stat().st_size > 1000
    data = json.loads((out / "invariance.json").read_text())
    assert data["layers"] == ["relu", "layer4"]  # resnet18's default layers: relu, layer1 .. layer4
    assert data["labels_from"] == "the class folders"
    assert data["class_names"] == ["apple"] * 3 + ["bicycle"] * 3 + ["cloud"] * 3
    assert data["curves"][0]["labels"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [d[0] for d in data["curves"][0]["layers"]["relu"]["distance"]] == [0.0] * 9  # scale 1: no change
    printed = capsys.readouterr().out
    assert "layers: relu layer4 (the first and last default layers" in printed


def test_any_model_without_labels_uses_the_predicted_class_and_labels_name_the_model_classes(
        resnet18_file, photo_folders, tmp_path, capsys):
    flat = photo_folders[1]
    _run_any(_resnet(resnet18_file), tmp_path / "a", "--images", str(flat), "--layers", "layer1")
    data = json.loads((tmp_path / "a" / "invariance.json").read_text())
    assert data["layers"] == ["layer1"]
    assert data["labels_from"].startswith("the predicted class (the images have no classes")
    assert data["images"] == [str(flat / f"photo{k}.{'png' if k % 2 else 'jpeg'}") for k in range(4)]
    assert "labels: the images have no classes" in capsys.readouterr().out
    files = [str(flat / "photo0.jpeg"), str(flat / "photo1.png")]
    _run_any(_resnet(resnet18_file, tmp_path), tmp_path / "b", "--images", *files, "--labels", "cloud", "7")
    data = json.loads((tmp_path / "b" / "invariance.json").read_text())
    assert data["labels_from"] == "--labels" and data["class_names"] == ["cloud", "other4"]
    assert data["images"] == files


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model", "resnet19"], "--model: 'resnet19' is not a torchvision classification model; did you mean"),
        (["--layers", "layer9"], "--layers: layer='layer9'"),
        ("feature_maps", "--model: invariance needs a classifier"),
    ],
)
def test_any_model_bad_input_one_message_no_output(resnet18_file, photo_folders, tmp_path, capsys, extra, words):
    work = tmp_path / "work"
    work.mkdir()
    if extra == "feature_maps":
        argv = ["--model", "torch.nn:Conv2d", "--model_args", '{"in_channels": 3, "out_channels": 4, "kernel_size": 3}',
                "--image_size", "32"]
    else:
        argv = _resnet(resnet18_file)
        if extra[0] == "--model":
            argv[1] = extra[1]
        else:
            argv += extra
    with pytest.raises(SystemExit) as exc:
        invariance_main([*argv, "--images", str(photo_folders[1]), "--out", str(work / "inv")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert list(work.iterdir()) == []
