"""UnitLabels: dissection while training (scalars, labelled panel, PNGs), the labels the other
figures then show, state, and its checked arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import zflight.callbacks.evolution as evolution
import zflight.callbacks.panels as panels
from zflight.analysis.dissection import Dissection
from zflight.callbacks import FeatureEvolution, TopActivationPanels, UnitLabels
from zflight.callbacks.dissection import latest_dissection
from zflight.data import ShapesDataModule
from zflight.module import ImageClassifier


def _module() -> ImageClassifier:
    return ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")


def _trainer(tmp_path: Path, callbacks: list, max_epochs: int = 1) -> Trainer:
    return Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks,
                   logger=TensorBoardLogger(str(tmp_path), name="run"), enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1)


def _data() -> ShapesDataModule:
    return ShapesDataModule(train_size=32, val_size=16, test_size=8, batch_size=16)


def test_logs_scalars_panel_and_pngs_and_labels_the_other_figures(tmp_path, monkeypatch):
    seed_everything(0)
    captions: list[str] = []
    rows: list[str] = []
    real_panel, real_grid = panels.top_activation_panel, evolution.evolution_grid
    def panel_spy(*a, captions=None, **kw):
        seen_captions.extend(captions)
        return real_panel(*a, captions=captions, **kw)

    def grid_spy(*a, row_labels=None, **kw):
        rows.extend(row_labels)
        return real_grid(*a, row_labels=row_labels, **kw)

    seen_captions = captions
    monkeypatch.setattr(panels, "top_activation_panel", panel_spy)
    monkeypatch.setattr(evolution, "evolution_grid", grid_spy)

    labels = UnitLabels(layers=["conv1", "conv5"], num_images=12, epochs=[1], units=2, k=2, batch_size=8)
    callbacks = [
        labels,  # first: the figures of the same epoch show its labels
        TopActivationPanels(layers=["conv5"], maps=2, k=1, epochs=[1], max_images=8, tile=16),
        FeatureEvolution(layers=["conv1"], maps=2, epochs=[1], probe_size=8, tile=16, final=False),
    ]
    module = _module()
    trainer = _trainer(tmp_path, callbacks)
    trainer.fit(module, datamodule=_data())

    # The model is left in training mode, as Lightning had it.
    assert module.training and all(m.training for m in module.modules())
    result = labels.result
    assert isinstance(result, Dissection) and labels.result_epoch == 1 and result.num_images == 12
    assert latest_dissection(trainer) is result and latest_dissection(trainer, "conv4") is None

    run = Path(trainer.log_dir)
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    summary = result.summary()
    for layer in ("conv1", "conv5"):
        assert acc.Scalars(f"dissect/{layer}/detectors")[-1].value == summary[layer]["detectors"]
        assert acc.Scalars(f"dissect/{layer}/unique")[-1].value == summary[layer]["unique_concepts"]
        assert f"dissect/{layer}" in acc.Tags()["images"]
        assert (run / "figures" / f"dissect_{layer}_epoch001.png").is_file()

    # Captions of the top-9 panel and rows of the evolution figure carry label and IoU.
    conv5, conv1 = result.layers["conv5"], result.layers["conv1"]
    assert len(captions) == 2 and len(rows) >= 2
    for caption in captions:
        unit = int(caption.split()[2])
        assert caption.startswith(f"conv5 unit {unit} · ") and conv5.labels[unit] in caption
        assert f"{float(conv5.best_iou[unit]):.2f}" in caption
    for row in rows:
        unit = int(row.split()[1])
        assert row.startswith(f"unit {unit} · ") and conv1.labels[unit] in row

    # Saved and restored with the checkpoint: a resumed run has labels before its next dissection.
    again = UnitLabels(layers=["conv1", "conv5"], num_images=12)
    again.load_state_dict(labels.state_dict())
    assert again.result_epoch == 1 and again._done_epochs == [1]
    assert torch.equal(again.result.layers["conv5"].iou, conv5.iou)


def test_without_unit_labels_the_captions_stay_plain(tmp_path, monkeypatch):
    seen: list[str] = []
    real = panels.top_activation_panel

    def spy(*a, captions=None, **kw):
        seen.extend(captions)
        return real(*a, captions=captions, **kw)

    monkeypatch.setattr(panels, "top_activation_panel", spy)
    trainer = _trainer(tmp_path, [TopActivationPanels(layers=["conv2"], maps=2, k=1, max_images=8, tile=16)])
    trainer.fit(_module(), datamodule=_data())
    assert seen and all(c.startswith("conv2 unit ") and " · " not in c for c in seen)


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": []}, "layers must be a non-empty list"),
    ({"num_images": 0}, "num_images must be an int >= 1"),
    ({"epochs": [0]}, "epochs must be a list of epoch numbers >= 1"),
    ({"quantile": 1.0}, "quantile must be a number in (0, 1)"),
    ({"iou_threshold": 2}, "iou_threshold must be a number in [0, 1]"),
    ({"units": 0}, "units must be an int >= 1"),
    ({"k": 0}, "k must be an int >= 1"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
])
def test_arguments_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError) as err:
        UnitLabels(**kwargs)
    assert message in str(err.value)


class _NoMasks(ShapesDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        self.val_dataset = torch.utils.data.TensorDataset(torch.zeros(4, 3, 64, 64), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("datamodule, callback, message", [
    (_NoMasks(train_size=16, val_size=4, test_size=4, batch_size=4), UnitLabels(num_images=2),
     "UnitLabels needs concept masks"),
    (ShapesDataModule(train_size=16, val_size=8, test_size=4, batch_size=8), UnitLabels(num_images=9),
     "num_images: 9 is larger than the validation set (8 images)"),
    (ShapesDataModule(train_size=16, val_size=8, test_size=4, batch_size=8), UnitLabels(layers=["conv6"]),
     "did you mean 'conv5'"),
])
def test_bad_data_or_layer_fails_at_setup(tmp_path, datamodule, callback, message):
    trainer = _trainer(tmp_path, [callback])
    with pytest.raises(ValueError) as err:
        trainer.fit(_module(), datamodule=datamodule)
    assert message in str(err.value)
    assert callback.result is None
