import json

import pytest
import torch

from zflight.cli.correspondence import main as correspondence_main


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(val_size=40)


def test_cli_writes_png_and_json(tiny_ckpt, tmp_path):
    out = tmp_path / "corr"
    correspondence_main(["--ckpt_path", str(tiny_ckpt), "--out", str(out), "--classes", "arrow",
                         "--parts", "tip", "tail", "--num_images", "4", "--subset_size", "3", "--repeats", "3"])
    assert (out / "correspondence.png").stat().st_size > 1000
    data = json.loads((out / "correspondence.json").read_text())
    rows = data["classes"]["arrow"]["rows"]
    assert list(rows) == ["tip", "tail", "random"]
    assert len(rows["random"]["features.relu5"]["delta"]) == 3


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--classes", "dog"], "--classes"),
        (["--parts", "nose"], "--parts"),
        (["--size", "0"], "--size"),
        (["--num_images", "1"], "--num_images"),
    ],
)
def test_cli_bad_input_one_message_no_output(tiny_ckpt, tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as exc:
        correspondence_main(["--ckpt_path", str(tiny_ckpt), "--out", str(tmp_path / "c"),
                             "--subset_size", "3", "--num_images", "4", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_png_and_json_from_image_files(write_pngs, tiny_ckpt, tmp_path):
    files = write_pngs(tmp_path, (200, 30, 30), (30, 30, 200), (30, 200, 30), blob=True)
    out = tmp_path / "corr"
    correspondence_main(["--ckpt_path", str(tiny_ckpt), "--out", str(out), "--images", *files,
                         "--points", "20,14", "31.5,40", "63,0", "--part_name", "eye", "--size", "9",
                         "--repeats", "3"])
    assert (out / "correspondence.png").stat().st_size > 1000
    data = json.loads((out / "correspondence.json").read_text())
    assert data["images"] == files and "classes" not in data and "split" not in data
    assert data["points"] == [[20.0, 14.0], [31.5, 40.0], [63.0, 0.0]]
    assert data["part_name"] == "eye" and data["size"] == 9
    assert data["subset_size"] == 3 and data["num_images"] == 3  # default: min(5, number of files)
    assert list(data["rows"]) == ["eye", "random"]
    assert len(data["rows"]["random"]["features.relu5"]["delta"]) == 3
    assert "eye" in data["table"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corr", "img0.png", "img1.png", "img2.png"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--images", "{missing}", "{good}", "--points", "1,1", "2,2"], "--images: no such file: {missing}"),
        (["--images", "{good}", "{bad}", "--points", "1,1", "2,2"], "--images: cannot read image file {bad}"),
        (["--images", "{good}", "{good}", "--points", "1,1"], "--points: one X,Y per --images file (2), got 1"),
        (["--images", "{good}", "{good}"], "--points: give the part's center"),
        (["--images", "{good}", "{good}", "--points", "1,1", "64,3"], "--points: 64,3 is outside the 64x64"),
        (["--images", "{good}", "{good}", "--points", "1,1", "3,-1"], "--points: 3,-1 is outside"),
        (["--images", "{good}", "{good}", "--points", "1,1", "a,b"], "--points: 'a,b' is not X,Y"),
        (["--points", "1,1", "2,2"], "--points goes with --images"),
        (["--part_name", "eye"], "--part_name goes with --images"),
        (["--images", "{good}", "--points", "1,1"], "--images: give at least 2 image files"),
        (["--images", "{good}", "{good}", "--points", "1,1", "2,2", "--subset_size", "3"], "--subset_size"),
        (["--images", "{good}", "{good}", "--points", "1,1", "2,2", "--parts", "tip"], "--parts goes with"),
        (["--images", "{good}", "{good}", "--points", "1,1", "2,2", "--size", "65"], "--size"),
    ],
)
def test_cli_bad_image_files_one_message_no_output(write_pngs, tiny_ckpt, tmp_path, capsys, extra, words):
    (good,) = write_pngs(tmp_path, (10, 200, 10), blob=True)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    names = {"missing": str(tmp_path / "missing.png"), "bad": str(bad), "good": good}
    with pytest.raises(SystemExit) as exc:
        correspondence_main(["--ckpt_path", str(tiny_ckpt), "--out", str(tmp_path / "c"), "--repeats", "2",
                             *[a.format(**names) for a in extra]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words.format(**names) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "img0.png"]


def test_cli_images_and_data_set_flags_do_not_mix(write_pngs, tiny_ckpt, tmp_path, capsys):
    files = write_pngs(tmp_path, (10, 200, 10), (200, 10, 10), blob=True)
    with pytest.raises(SystemExit) as exc:
        correspondence_main(["--ckpt_path", str(tiny_ckpt), "--out", str(tmp_path / "c"), "--images", *files,
                             "--points", "1,1", "2,2", "--classes", "arrow"])
    assert exc.value.code == 2
    assert "--classes goes with data set images" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img0.png", "img1.png"]


# ----------------------------------------------------------------- any model, any images
def _resnet(resnet18_file):
    """resnet18 (10 classes) from the state_dict of tests/conftest.py, read at 48 px."""
    return ["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", str(resnet18_file),
            "--resize", "50", "--image_size", "48"]


def test_any_model_with_images_and_points_uses_its_last_two_default_layers(resnet18_file, photo_folders, tmp_path,
                                                                           capsys):
    out = tmp_path / "corr"
    correspondence_main([*_resnet(resnet18_file), "--images", str(photo_folders[1]),
                         "--points", "10,10", "12,9", "20,20", "47,0", "--size", "8", "--repeats", "2",
                         "--out", str(out)])
    assert (out / "correspondence.png").stat().st_size > 1000
    data = json.loads((out / "correspondence.json").read_text())
    assert data["layers"] == ["layer3", "layer4"] and list(data["rows"]) == ["part", "random"]
    assert len(data["rows"]["part"]["layer4"]["delta"]) == 2 and data["num_images"] == 4
    assert data["ckpt_path"] is None and data["model"]["model"] == "torchvision resnet18"
    assert "layers: layer3 layer4 (the last two default layers" in capsys.readouterr().out


def _folder_ckpt(folder):
    """A checkpoint whose data module read an image folder (no part landmarks)."""
    from zflight.module import ImageClassifier

    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64)
    path = folder / "folder.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"_class_path": "zflight.data.ImageFolderDataModule",
                                                "root": "/data/imagenet", "image_size": 64}}, path)
    return path


@pytest.mark.parametrize(
    "which, words",
    [
        ("model", ("--model: correspondence needs part landmarks, which only the embedded shapes data set has "
                   "(a --ckpt_path trained on it); for resnet18, give image files with --images and --points X,Y")),
        ("folder_ckpt", ("--ckpt_path: the checkpoint was trained on /data/imagenet, whose images have no part "
                         "landmarks; give image files with --images and --points X,Y")),
        ("images", "--points: give the part's center X,Y in each of the 4 --images"),
        ("wrong_name", "--model: 'resnet19' is not a torchvision classification model; did you mean"),
    ],
)
def test_without_landmarks_one_line_naming_the_option(resnet18_file, photo_folders, tmp_path, capsys, which,
                                                      words):
    work = tmp_path / "work"
    work.mkdir()
    options = _resnet(resnet18_file)
    argv = {
        "model": options,
        "folder_ckpt": ["--ckpt_path", str(_folder_ckpt(tmp_path))],
        "images": [*options, "--images", str(photo_folders[1])],
        "wrong_name": ["--model", "resnet19", "--images", str(photo_folders[1]), "--points", "1,1", "2,2"],
    }[which]
    with pytest.raises(SystemExit) as exc:
        correspondence_main([*argv, "--out", str(work / "c")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert list(work.iterdir()) == []
