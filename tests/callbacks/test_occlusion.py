"""occlusion_maps: equals a one-position-at-a-time loop, its grid, layer semantics, Captum, errors;
the occlusion figure, CLI, callback and object-box check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zflight import zfnet


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").eval()


# ---------------------------------------------------------------------------------- callback
def test_callback_logs_tag_and_png_and_restores_train_mode(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from zflight.callbacks.occlusion import OcclusionFigures
    from zflight.data import ShapesDataModule
    from zflight.module import ImageClassifier

    logged: list[tuple[str, int]] = []

    class Spy(OcclusionFigures):
        def on_validation_end(self, trainer, pl_module):
            pl_module.model.features.train()  # a mixed state, which must come back as it was
            before = [m.training for m in pl_module.modules()]
            super().on_validation_end(trainer, pl_module)
            assert [m.training for m in pl_module.modules()] == before

    torch.manual_seed(0)
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    dm = ShapesDataModule(image_size=64, train_size=8, val_size=4, test_size=4, batch_size=4)
    logger = TensorBoardLogger(tmp_path, name="run")
    original = logger.experiment.add_image
    logger.experiment.add_image = lambda tag, img, step, **kw: (logged.append((tag, step)), original(tag, img, step, **kw))
    trainer = Trainer(
        max_epochs=2, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1,
        logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
        callbacks=[Spy(every_n_epochs=2, indices=[1, 2], size=32, stride=32, layer="conv5")],
    )
    trainer.fit(module, datamodule=dm)
    assert logged == [("occlusion/1", 2), ("occlusion/2", 2)]  # epoch 2 only, not the sanity check
    figures = sorted(p.name for p in (tmp_path / "run" / "version_0" / "figures").iterdir())
    assert figures == ["occlusion_1_epoch002.png", "occlusion_2_epoch002.png"]


def test_callback_without_indices_draws_the_first_image_of_each_quarter(tmp_path):
    from lightning.pytorch import Trainer

    from zflight.callbacks.occlusion import OcclusionFigures
    from zflight.data import ShapesDataModule
    from zflight.module import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    dm = ShapesDataModule(image_size=64, train_size=8, val_size=12, test_size=4, batch_size=4)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[OcclusionFigures(indices=None, size=32, stride=32, layer="conv5")],
    )
    trainer.fit(module, datamodule=dm)
    figures = sorted(p.name for p in tmp_path.rglob("occlusion_*.png"))
    assert figures == [f"occlusion_{i}_epoch001.png" for i in (0, 3, 6, 9)]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"every_n_epochs": 0}, "every_n_epochs"), ({"indices": []}, "indices"),
     ({"size": 0}, "size"), ({"stride": -1}, "stride"), ({"indices": [-1]}, "indices")],
)
def test_callback_rejects_bad_arguments(kwargs, name):
    from zflight.callbacks.occlusion import OcclusionFigures

    with pytest.raises(ValueError, match=name):
        OcclusionFigures(**kwargs)


def test_callback_indices_outside_the_validation_set_fail_at_setup(tmp_path):
    from lightning.pytorch import Trainer

    from zflight.callbacks import CallbackConfigError, OcclusionFigures
    from zflight.data import ShapesDataModule
    from zflight.module import ImageClassifier

    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    dm = ShapesDataModule(image_size=64, train_size=8, val_size=4, test_size=4, batch_size=4)
    trainer = Trainer(
        max_epochs=10, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[OcclusionFigures(every_n_epochs=10, indices=[0, 4, 7])],
    )
    with pytest.raises(CallbackConfigError, match=r"^OcclusionFigures: indices \[4, 7\] are outside the "
                                                  r"validation set \(it has 4 images\)$"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0  # at start-up, not at epoch 10
