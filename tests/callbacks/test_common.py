"""Visualization callbacks: what they write, that training is unaffected, resume, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zflight.callbacks import (
    CallbackConfigError,
    FeatureEvolution,
    FilterGrid,
    InvarianceFigures,
    OcclusionFigures,
    TopActivationPanels,
)
from zflight.data import ShapesDataModule
from zflight.module import ImageClassifier

ROOT = Path(__file__).resolve().parents[2]


def _module(dropout: float = 0.5) -> ImageClassifier:
    return ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming", dropout=dropout)


def _data(**kw) -> ShapesDataModule:
    return ShapesDataModule(train_size=48, val_size=16, test_size=16, batch_size=16, **kw)


class _InOrder(ShapesDataModule):
    """No shuffling (and, below, no augmentation or dropout): Lightning does not restore the
    global RNG on resume, so only a run that draws nothing from it continues exactly."""

    def train_dataloader(self):
        return self._loader(self.train_dataset, "train_dataset", shuffle=False)


def _trainer(tmp_path: Path, max_epochs: int, callbacks: list, **kw) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path), name="run"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kw,
    )


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    return acc


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _evolution(**kw) -> FeatureEvolution:
    return FeatureEvolution(**{"layers": ["conv1", "conv3"], "maps": 3, "probe_size": 16, "tile": 16, **kw})


def test_callbacks_write_pngs_and_tensorboard_images(tmp_path):
    seed_everything(0)
    callbacks = [
        _evolution(epochs=[1, 2]),
        TopActivationPanels(layers=["conv2"], maps=2, k=4, epochs=[1], max_images=16, tile=16),
        FilterGrid("conv1"),
    ]
    trainer = _trainer(tmp_path, 2, callbacks)
    trainer.fit(_module(), datamodule=_data())
    run = Path(trainer.log_dir)
    figures = run / "figures"
    names = sorted(p.name for p in figures.glob("*.png"))
    assert names == [
        "evolution_conv1.png", "evolution_conv3.png", "filters_conv1.png",
        "top4_conv2_epoch001.png", "top4_conv2_epoch002.png",  # epoch 1 scheduled, 2 = end of training
    ]
    images = _events(run).Tags()["images"]
    assert {"evolution/conv1", "evolution/conv3", "top4/conv2", "filters/conv1"} <= set(images)
    acc = _events(run)
    assert [e.step for e in acc.Images("evolution/conv1")] == [3, 6]  # after epochs 1 and 2
    assert [e.step for e in acc.Images("filters/conv1")] == [0, 3, 6]
    # the evolution figure has 3 rows (maps) and 2 columns (epochs) of 16 px tiles, shown 6x
    # (96 px), under a title and the epochs, with the units named left of the rows
    grid = _png(figures / "evolution_conv1.png")
    assert grid.shape[0] == 18 + 16 + 3 * (96 + 2) + 2
    assert 2 * (96 + 2) + 2 < grid.shape[1] < 2 * (96 + 2) + 2 + 80


def _losses(tmp_path: Path, callbacks: list) -> list[float]:
    class Record(Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    record = Record()
    seed_everything(0)
    trainer = _trainer(tmp_path, 3, [record, *callbacks])
    trainer.fit(_module(), datamodule=_data())  # shuffled, flipped, dropout: all use the RNG
    return record.losses


def test_training_is_unaffected_by_the_callbacks(tmp_path):
    plain = _losses(tmp_path / "plain", [])
    watched = _losses(
        tmp_path / "watched",
        [
            _evolution(epochs=[1, 2]),
            TopActivationPanels(layers=["conv5"], maps=2, k=2, epochs=[1, 2], max_images=8, tile=8),
            FilterGrid("conv1"),
        ],
    )
    assert len(plain) == 9
    assert plain == watched


def test_resumed_run_gives_the_figure_of_a_straight_run(tmp_path):
    epochs = [1, 2, 4]
    seed_everything(0)
    straight = _evolution(epochs=epochs)
    t = _trainer(tmp_path / "straight", 4, [straight])
    t.fit(_module(dropout=0.0), datamodule=_InOrder(train_size=48, val_size=16, test_size=16, batch_size=16, augment=False))
    straight_png = _png(Path(t.log_dir) / "figures" / "evolution_conv3.png")

    # Stopped after epoch 3 (not scheduled: its final column must not leak into the resumed run).
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _evolution(epochs=epochs)
    t1 = _trainer(tmp_path / "first", 3, [first, ckpt])
    t1.fit(_module(dropout=0.0), datamodule=_InOrder(train_size=48, val_size=16, test_size=16, batch_size=16, augment=False))
    assert [e for e, _ in first._columns] == [1, 2, 3]  # 3 is the end-of-training column

    seed_everything(0)
    resumed = _evolution(epochs=epochs)
    t2 = _trainer(tmp_path / "resumed", 4, [resumed])
    t2.fit(
        _module(dropout=0.0),
        datamodule=_InOrder(train_size=48, val_size=16, test_size=16, batch_size=16, augment=False),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    resumed_png = _png(Path(t2.log_dir) / "figures" / "evolution_conv3.png")
    assert resumed_png.shape == straight_png.shape  # same number of columns: none missing or doubled
    assert np.array_equal(resumed_png, straight_png)
    assert np.array_equal(_png(Path(t2.log_dir) / "figures" / "evolution_conv1.png"),
                          _png(Path(t.log_dir) / "figures" / "evolution_conv1.png"))


def test_arguments_are_checked_at_construction():
    with pytest.raises(ValueError, match="layers"):
        FeatureEvolution(layers=[])
    with pytest.raises(ValueError, match="maps"):
        FeatureEvolution(maps=0)
    with pytest.raises(ValueError, match="epochs"):
        FeatureEvolution(epochs=[0, 1])
    with pytest.raises(ValueError, match="probe_size"):
        FeatureEvolution(probe_size=0)
    with pytest.raises(ValueError, match=r"maps has no feature maps listed for layers \['conv2'\]"):
        FeatureEvolution(layers=["conv1", "conv2"], maps={"conv1": [0]})
    with pytest.raises(ValueError, match="split"):
        TopActivationPanels(split="test")
    with pytest.raises(ValueError, match="k must"):
        TopActivationPanels(k=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        FilterGrid(every_n_epochs=0)


def test_bad_layer_fails_at_setup_naming_it(tmp_path):
    trainer = _trainer(tmp_path, 1, [FilterGrid("conv2")])
    with pytest.raises(ValueError, match="conv2.*1 or 3 input channels"):
        trainer.fit(_module(), datamodule=_data())
    trainer = _trainer(tmp_path, 1, [_evolution(layers=["conv7"])])
    with pytest.raises(ValueError, match="conv7"):
        trainer.fit(_module(), datamodule=_data())


def test_two_ddp_processes_log_once_from_rank_zero(tmp_path):
    config = tmp_path / "callbacks.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: zflight.callbacks.FeatureEvolution\n"
        "      init_args: {layers: [conv1, conv3], maps: 2, epochs: [1], probe_size: 16, tile: 16}\n"
        "    - class_path: zflight.callbacks.TopActivationPanels\n"
        "      init_args: {layers: [conv2], maps: 2, k: 4, max_images: 16, tile: 16}\n"
        "    - class_path: zflight.callbacks.FilterGrid\n"
        # Draws on rank 0 between collectives: the figure folder must be asked on every rank.
        "    - class_path: zflight.callbacks.OcclusionFigures\n"
        "      init_args: {every_n_epochs: 1, indices: [0], size: 32, stride: 32}\n"
    )
    cmd = [
        sys.executable, "-m", "zflight", "fit",
        "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(config),
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--model.width=0.125",
        "--data.init_args.train_size=48", "--data.init_args.val_size=16",
        "--data.init_args.test_size=16", "--data.init_args.batch_size=16",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sorted((tmp_path / "runs" / "quickstart").glob("version_*"))
    figures = sorted(p.name for p in (run / "figures").glob("*"))
    assert figures == ["evolution_conv1.png", "evolution_conv3.png", "filters_conv1.png",
                       "occlusion_0_epoch001.png", "top4_conv2_epoch001.png"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # rank 0 only
    acc = _events(run)
    tags = set(acc.Tags()["images"])
    assert {"evolution/conv1", "evolution/conv3", "top4/conv2", "filters/conv1", "occlusion/0"} <= tags
    assert len(acc.Images("evolution/conv1")) == 1


class _Steps(Callback):
    """Counts training steps, to show that a failing setup comes before the first one."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args) -> None:
        self.steps += 1


@pytest.mark.parametrize(
    "callback",
    [
        _evolution(layers=["conv1", "conv9"]),
        TopActivationPanels(layers=["conv9"]),
        FilterGrid("conv9"),
        InvarianceFigures(layers=["norm1", "conv9"]),
        OcclusionFigures(layer="conv9"),
    ],
    ids=lambda cb: type(cb).__name__,
)
def test_a_layer_the_network_lacks_fails_at_setup_in_one_line_naming_callback_and_layer(callback, tmp_path):
    steps = _Steps()
    trainer = _trainer(tmp_path, 1, [steps, callback])
    with pytest.raises(CallbackConfigError) as info:
        trainer.fit(_module(), datamodule=_data())
    message = str(info.value)
    assert message.startswith(f"{type(callback).__name__}: layer='conv9' is not a module of ZFNet")
    assert "\n" not in message
    assert steps.steps == 0
