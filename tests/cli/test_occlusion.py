"""occlusion_maps: equals a one-position-at-a-time loop, its grid, layer semantics, Captum, errors;
the occlusion figure, CLI, callback and object-box check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch



# --------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from zflight.module import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {
            "hyper_parameters": {**dict(module.hparams), "_instantiator": "x"},
            "state_dict": module.state_dict(),
            "datamodule_hyper_parameters": {
                "_class_path": "zflight.data.ShapesDataModule", "image_size": 64,
                "train_size": 10, "val_size": 10, "test_size": 10,
            },
        },
        path,
    )
    return path


def test_cli_writes_pngs_and_json(checkpoint, tmp_path, capsys):
    import json

    from zflight.cli import main

    out = tmp_path / "occ"
    main(["occlusion", "--ckpt_path", str(checkpoint), "--out", str(out), "--indices", "0", "3",
          "--size", "16", "--stride", "16", "--layer", "conv5"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["occlusion.json", "occlusion.png", "occlusion_val0.png", "occlusion_val3.png"]
    doc = json.loads((out / "occlusion.json").read_text())
    assert doc["layer"] == "features.conv5" and doc["size"] == 16 and doc["stride"] == 16
    assert [r["index"] for r in doc["images"]] == [0, 3]
    assert len(doc["images"][0]["prob"]) == 4 and "channel" in doc["images"][0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    assert "wrote" in capsys.readouterr().out


def test_cli_on_image_files_with_targets(checkpoint, tmp_path):
    import json

    from PIL import Image

    from zflight.cli.occlusion import main

    Image.new("RGB", (80, 70), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "occ"
    main(["--ckpt_path", str(checkpoint), "--out", str(out), "--images", str(tmp_path / "red.png"),
          "--targets", "ring", "--size", "32", "--stride", "32"])
    doc = json.loads((out / "occlusion.json").read_text())
    assert doc["images"][0]["target_name"] == "ring" and doc["image_size"] == [64, 64]
    assert (out / "occlusion_0_red.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "missing.png"], "--images: no such file"),
        (["--images", "{bad}"], "--images: cannot read image file"),
        (["--indices", "0", "--layer", "conv9"], "--layer"),
        (["--indices", "0", "--size", "65"], "--size"),
        (["--indices", "0", "--stride", "0"], "--stride"),
        (["--indices", "99"], "--indices"),
    ],
)
def test_cli_bad_input_is_one_error_line_and_leaves_no_output(checkpoint, tmp_path, capsys, extra, message):
    from zflight.cli.occlusion import main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    extra = [str(bad) if a == "{bad}" else (str(tmp_path / a) if a == "missing.png" else a) for a in extra]
    out = tmp_path / "occ"
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt_path", str(checkpoint), "--out", str(out), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]


def test_cli_missing_checkpoint_and_existing_out(checkpoint, tmp_path, capsys):
    from zflight.cli.occlusion import main

    with pytest.raises(SystemExit):
        main(["--ckpt_path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")])
    assert "--ckpt_path: no such file" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    with pytest.raises(SystemExit):
        main(["--ckpt_path", str(checkpoint), "--out", str(tmp_path / "o")])
    assert "--out" in capsys.readouterr().err


def test_cli_on_a_torchvision_model_and_a_class_folder_uses_the_predicted_class(resnet18_file, photo_folders,
                                                                                 tmp_path, capsys):
    from zflight.cli.occlusion import main

    out = tmp_path / "occ_tv"
    doc = main(["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", str(resnet18_file),
                "--images", str(photo_folders[0]), "--image_size", "32", "--resize", "36",
                "--indices", "0", "4", "--size", "16", "--stride", "8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "do not index the model's classes" in printed and "predicted class is used" in doc["targets"]
    assert [Path(r["file"]).name for r in doc["images"]] == ["apple0.jpg", "bicycle1.png"]
    assert doc["model"]["weights"] == f"file {resnet18_file}"
    assert sorted(p.name for p in out.iterdir()) == ["occlusion.json", "occlusion.png", "occlusion_0_apple0.png",
                                                    "occlusion_1_bicycle1.png"]


def test_cli_needs_a_classifier(photo_folders, tmp_path, capsys):
    from zflight.cli.occlusion import main

    model = tmp_path / "feat.py"
    model.write_text("import torchvision\n\ndef backbone():\n"
                     "    m = torchvision.models.resnet18()\n    return torch_nn_seq(m)\n\n"
                     "def torch_nn_seq(m):\n    import torch.nn as nn\n"
                     "    return nn.Sequential(m.conv1, m.bn1, m.relu, m.layer1)\n")
    import os
    import sys

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(SystemExit):
            main(["--model", "feat:backbone", "--images", str(photo_folders[1]), "--image_size", "32",
                  "--out", str(tmp_path / "o")])
    finally:
        os.chdir(cwd)
        sys.modules.pop("feat", None)
    err = capsys.readouterr().err
    assert "needs a classifier" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
