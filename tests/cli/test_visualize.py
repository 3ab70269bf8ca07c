"""``python -m zflight visualize``: Fig. 2 panels from a checkpoint, written atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from zflight.cli import main as zflight_main
from zflight.data import ShapesDataModule
from zflight.module import ImageClassifier
from zflight.cli.visualize import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A config and a one-epoch checkpoint of a tiny ZFNet on 32 shapes."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "config.yaml"
    config.write_text(
        "data:\n"
        "  class_path: zflight.data.ShapesDataModule\n"
        "  init_args: {image_size: 64, train_size: 32, val_size: 24, test_size: 8, batch_size: 16}\n"
    )
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    dm = ShapesDataModule(image_size=64, train_size=32, val_size=24, test_size=8, batch_size=16)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)
    trainer.fit(module, datamodule=dm)
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return config, ckpt


def _args(trained, out: Path, *extra: str) -> list[str]:
    config, ckpt = trained
    return ["--config", str(config), "--ckpt_path", str(ckpt), "--out", str(out),
            "--maps", "3", "--k", "4", "--tile", "16", *extra]


def test_writes_a_panel_per_layer_and_the_filters(trained, tmp_path):
    out = tmp_path / "panels"
    main(_args(trained, out))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["filters_conv1.png", "top4_conv1.png", "top4_conv2.png", "top4_conv3.png",
                     "top4_conv4.png", "top4_conv5.png", "top_activations.json"]
    report = json.loads((out / "top_activations.json").read_text())
    assert report["images"] == 24
    conv5 = report["layers"]["conv5"]
    assert len(conv5["channels"]) == 3 and all(len(row) == 4 for row in conv5["indices"])
    panel = np.asarray(Image.open(out / "top4_conv5.png"))
    assert panel.ndim == 3 and panel.shape[2] == 3
    assert not list(tmp_path.glob(".panels*")), "the temporary folder must be gone"


def test_is_reachable_from_python_m_zflight_and_is_deterministic(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["zflight"])
    main(_args(trained, tmp_path / "a", "--layers", "conv2"))
    zflight_main(["visualize", *_args(trained, tmp_path / "b", "--layers", "conv2")])
    a = np.asarray(Image.open(tmp_path / "a" / "top4_conv2.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "top4_conv2.png"))
    assert np.array_equal(a, b)


def test_existing_out_needs_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "panels"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(SystemExit) as info:
        main(_args(trained, out, "--layers", "conv1"))
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    main(_args(trained, out, "--layers", "conv1", "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == ["filters_conv1.png", "top4_conv1.png", "top_activations.json"]


def test_a_failure_leaves_no_folder_that_looks_complete(trained, tmp_path, monkeypatch):
    import zflight.figures

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zflight.figures, "top_activation_panel", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(_args(trained, tmp_path / "panels", "--layers", "conv1"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (("--layers", "conv9"), "conv9"),
        (("--k", "0"), "--k"),
    ],
)
def test_bad_input_ends_with_one_error_line(trained, tmp_path, capsys, change, message):
    with pytest.raises(SystemExit) as info:
        main(_args(trained, tmp_path / "out", *change))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_checkpoint_written_by_the_cli_loads(trained, tmp_path):
    # LightningCLI stores extra hyper_parameters entries that are not constructor arguments.
    config, ckpt = trained
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    cli_ckpt = tmp_path / "cli.ckpt"
    torch.save(checkpoint, cli_ckpt)
    main(["--config", str(config), "--ckpt_path", str(cli_ckpt), "--out", str(tmp_path / "o"),
          "--layers", "conv1", "--maps", "2", "--k", "2", "--tile", "8"])
    assert (tmp_path / "o" / "top2_conv1.png").is_file()


def test_missing_checkpoint_is_named(trained, tmp_path, capsys):
    config, _ = trained
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--ckpt_path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")])
    assert "nope.ckpt" in capsys.readouterr().err


# ------------------------------------------------------------------- any model, any images
OWN_NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return {"logits": self.fc(self.features(x).mean((2, 3)))}
"""


@pytest.fixture
def own_package(user_code):
    user_code("ownnets.small", OWN_NET)


@pytest.mark.parametrize(
    ("model", "layer"),
    [
        (["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", "RESNET"], "layer3"),
        (["--model", "mobilenet_v3_small", "--checkpoint", "MOBILENET"], "features.3"),
        (["--model", "ownnets.small:Net", "--model_args", '{"width": 6}'], None),
        (["--model", "timm:resnet18"], "layer2"),
        (["--model", "timm:convnext_atto"], "stages.1"),
    ],
)
@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_every_model_source_on_a_photo_folder(model, layer, layout, own_package, resnet18_file, photo_folders,
                                              tmp_path, capsys):
    if model[1].startswith("timm:"):
        pytest.importorskip("timm")
    if "MOBILENET" in model:
        import torchvision

        torch.save({"state_dict": torchvision.models.mobilenet_v3_small().state_dict()}, tmp_path / "mb.pt")
    model = [{"RESNET": str(resnet18_file), "MOBILENET": str(tmp_path / "mb.pt")}.get(a, a) for a in model]
    folder = photo_folders[0] if layout == "classes" else photo_folders[1]
    out = tmp_path / "panels"
    layers = ["--layers", layer] if layer else []
    main([*model, "--images", str(folder), "--image_size", "32", "--resize", "32", *layers, "--maps", "2",
          "--k", "2", "--tile", "8", "--out", str(out)])
    doc = json.loads((out / "top_activations.json").read_text())
    expected = [layer] if layer else ["features.1", "features.4"]  # own net: the stage rule
    assert list(doc["layers"]) == expected and doc["images"] == (9 if layout == "classes" else 4)
    assert (out / f"top2_{expected[-1]}.png").is_file()
    printed = capsys.readouterr().out
    assert "preprocessing: shorter side 32, centre crop 32" in printed


def test_own_model_output_dict_is_said(own_package, photo_folders, tmp_path, capsys):
    main(["--model", "ownnets.small:Net", "--images", str(photo_folders[1]), "--image_size", "32", "--maps", "1",
          "--k", "1", "--tile", "8", "--out", str(tmp_path / "o")])
    assert "read through its 'logits'" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["empty", "corrupt", "both"])
def test_bad_image_folders_are_one_line_and_write_nothing(problem, resnet18_file, photo_folders, tmp_path, capsys):
    import shutil

    folder = tmp_path / "imgs"
    if problem == "empty":
        folder.mkdir()
    elif problem == "corrupt":
        shutil.copytree(photo_folders[1], folder)
        (folder / "photo9.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    else:
        shutil.copytree(photo_folders[0], folder)
        shutil.copy(photo_folders[1] / "photo0.jpeg", folder)
    with pytest.raises(SystemExit) as info:
        main(["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", str(resnet18_file),
              "--images", str(folder), "--image_size", "32", "--layers", "layer1", "--out", str(tmp_path / "o")])
    # The error is one line (a progress bar may precede it on stderr).
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    err = errors[-1].split("\r")[-1].strip() if errors else ""
    assert info.value.code == 2 and len(errors) == 1 and "error: --images" in err, errors
    assert {"empty": "holds no image files", "corrupt": "photo9.jpg", "both": "use one layout"}[problem] in err
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_a_backbone_that_is_not_a_classifier_gets_its_panels(photo_folders, tmp_path, monkeypatch, capsys):
    # A detection-style backbone: torchvision's IntermediateLayerGetter returns a dict of maps.
    (tmp_path / "backbones.py").write_text(
        "import torchvision\nfrom torchvision.models._utils import IntermediateLayerGetter\n\n"
        "def resnet_body():\n"
        "    return IntermediateLayerGetter(torchvision.models.resnet18(), {'layer2': 'c3', 'layer3': 'c4'})\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(sys.path))
    try:
        main(["--model", "backbones:resnet_body", "--images", str(photo_folders[1]), "--image_size", "32",
              "--maps", "2", "--k", "2", "--tile", "8", "--out", str(tmp_path / "o")])
    finally:
        sys.modules.pop("backbones", None)
    printed = capsys.readouterr().out
    assert "not a classifier (output of 128 channels); its forward returns a dict: read through its first tensor 'c3'" in printed
    doc = json.loads((tmp_path / "o" / "top_activations.json").read_text())
    assert list(doc["layers"]) == ["relu", "layer1", "layer2", "layer3"]
