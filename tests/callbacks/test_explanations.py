"""ExplanationScores: scalars logged at the chosen epochs, equal to score_methods on the same
images; the model, its gradients and the random state left as found; bad arguments; no masks."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from zflight.analysis.explanations import score_methods
from zflight.callbacks import ExplanationScores
from zflight.data import ShapesDataModule
from zflight.module import ImageClassifier


def _module() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")


def _trainer(tmp_path, callbacks, max_epochs=2) -> Trainer:
    return Trainer(
        max_epochs=max_epochs, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1,
        logger=TensorBoardLogger(tmp_path, name="run"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        callbacks=callbacks, accelerator="cpu", devices=1,
    )


class _Spy(ExplanationScores):
    """Checks, around every scoring, that the model, its gradients and the RNG come back as found."""

    calls: list[int]

    def _at_epoch(self, trainer, pl_module, epoch):
        self.calls = getattr(self, "calls", []) + [epoch]
        pl_module.model.features.train()  # a mixed state, which must come back as it was
        pl_module.model.classifier.eval()
        for p in pl_module.parameters():
            p.grad = torch.full_like(p, 0.5)
        flags = [m.training for m in pl_module.modules()]
        params = [p.detach().clone() for p in pl_module.parameters()]
        hooks = [len(m._forward_hooks) + len(m._backward_hooks) for m in pl_module.modules()]
        rng = torch.get_rng_state()
        super()._at_epoch(trainer, pl_module, epoch)
        assert [m.training for m in pl_module.modules()] == flags
        assert all(torch.equal(p, q) for p, q in zip(pl_module.parameters(), params))
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in pl_module.parameters())
        assert [len(m._forward_hooks) + len(m._backward_hooks) for m in pl_module.modules()] == hooks
        assert torch.equal(torch.get_rng_state(), rng)
        for p in pl_module.parameters():
            p.grad = None
        pl_module.train()


def test_logs_scalars_at_chosen_epochs_and_end_equal_to_score_methods(tmp_path):
    dm = ShapesDataModule(image_size=64, train_size=8, val_size=6, test_size=4, batch_size=8)
    spy = _Spy(methods=["deconvnet", "random"], num_images=5, epochs=[1], batch_size=3)
    module = _module()
    trainer = _trainer(tmp_path, [spy], max_epochs=2)
    trainer.fit(module, datamodule=dm)
    assert spy.calls == [1, 2]  # epoch 1 as asked, and once more at the end (epoch 2)

    acc = EventAccumulator(str(tmp_path / "run" / "version_0"))
    acc.Reload()
    tags = {t for t in acc.Tags()["scalars"] if t.startswith("explain/")}
    assert tags == {f"explain/{m}/{k}" for m in ("deconvnet", "random")
                    for k in ("pointing_game", "relevance_mass", "relevance_rank")}
    steps = [e.step for e in acc.Scalars("explain/deconvnet/relevance_mass")]
    assert steps == [1, 2]  # the global step after epoch 1 (one batch each) and at the end

    # The last values are score_methods' means on the trained model, the first 5 val images (in
    # the same batches: the random baseline draws the same noise for each batch).
    ds = dm.val_dataset
    images = torch.stack([ds[i][0] for i in range(5)])
    labels = torch.tensor([ds[i][1] for i in range(5)])
    masks = torch.stack([ds.mask(i) for i in range(5)])
    table = score_methods(module.model, images, labels, masks, ["deconvnet", "random"],
                          ["pointing_game", "relevance_mass", "relevance_rank"], batch_size=3)
    for method in ("deconvnet", "random"):
        for metric in ("pointing_game", "relevance_mass", "relevance_rank"):
            logged = acc.Scalars(f"explain/{method}/{metric}")[-1].value
            expected = float(table.scores[method][metric].mean())
            assert logged == pytest.approx(expected, abs=1e-6), (method, metric)


def test_data_without_masks_fails_at_setup(tmp_path):
    class NoMasks(LightningDataModule):
        def setup(self, stage=None):
            x, y = torch.randn(4, 3, 64, 64), torch.arange(4)
            self.train_dataset = self.val_dataset = TensorDataset(x, y)

        def train_dataloader(self):
            return DataLoader(self.train_dataset, batch_size=4)

        def val_dataloader(self):
            return DataLoader(self.val_dataset, batch_size=4)

    module = _module()
    trainer = _trainer(tmp_path, [ExplanationScores(num_images=2)])
    with pytest.raises(ValueError, match=r"needs object masks.*TensorDataset.*mask\(index\)"):
        trainer.fit(module, datamodule=NoMasks())
    assert trainer.global_step == 0  # failed before the first training step


def test_more_images_than_the_validation_set_fails_at_setup(tmp_path):
    dm = ShapesDataModule(image_size=64, train_size=8, val_size=6, test_size=4, batch_size=8)
    trainer = _trainer(tmp_path, [ExplanationScores(num_images=7)])
    with pytest.raises(ValueError, match=r"num_images: 7 is larger than the validation set \(6 images\)"):
        trainer.fit(_module(), datamodule=dm)
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ["deconvnet", "gradcamm"]}, r"methods: method 'gradcamm' does not exist \(did you mean 'gradcam'\?\); valid methods: deconvnet, "),
        ({"methods": []}, r"methods must be a non-empty list"),
        ({"metrics": ["pointing"]}, r"metrics: metric 'pointing' does not exist.*valid metrics: pointing_game, "),
        ({"methods": ["random", "random"]}, r"methods: random given more than once"),
        ({"num_images": 0}, r"num_images must be an int >= 1"),
        ({"epochs": [0, 2]}, r"epochs must be a list of epoch numbers >= 1"),
        ({"steps": 0}, r"steps must be an int >= 1"),
    ],
)
def test_bad_arguments_are_named_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExplanationScores(**kwargs)


def test_state_dict_keeps_the_scored_epochs():
    first = ExplanationScores(epochs=[1, 3])
    first._done_epochs = [1]
    second = ExplanationScores(epochs=[1, 3])
    second.load_state_dict(first.state_dict())
    assert second._done_epochs == [1]
    assert first.state_key == second.state_key != ExplanationScores(methods=["saliency"]).state_key
