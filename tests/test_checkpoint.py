"""``zflight.checkpoint``: one loader for every checkpoint consumer."""

from __future__ import annotations

import pytest
import torch

from zflight.checkpoint import load_classifier, read_checkpoint, rebuild_datamodule
from zflight.data import ShapesDataModule
from zflight.module import ImageClassifier


@pytest.fixture
def ckpt(tmp_path):
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    hp = dict(module.hparams)
    hp["_instantiator"] = "lightning.pytorch.cli.instantiate_module"  # LightningCLI's extra entry
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": {"image_size": 64, "val_size": 12}}, path)
    return module, path


def test_loads_weights_and_drops_foreign_hyperparameters(ckpt):
    module, path = ckpt
    loaded = load_classifier(path)
    assert isinstance(loaded, ImageClassifier) and not loaded.training
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    _, data_hp = read_checkpoint(path)
    dm = rebuild_datamodule(data_hp)
    assert isinstance(dm, ShapesDataModule) and dm.val_size == 12


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_classifier(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_classifier(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.ckpt.*not a zflight checkpoint"):
        load_classifier(other)
