
import pytest

from zflight.module import ImageClassifier


def test_callback_logs_figure_at_the_end_of_training(tmp_path):
    from lightning.pytorch import Trainer

    from zflight.callbacks.invariance import InvarianceFigures
    from zflight.data import ShapesDataModule

    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
    dm = ShapesDataModule(image_size=64, train_size=16, val_size=8, test_size=8, batch_size=8, num_workers=0)
    cb = InvarianceFigures(indices=[0, 1], transforms=["translate"], amounts={"translate": [0, 4]}, epochs=[1])
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[cb], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, dm)
    assert (tmp_path / "figures" / "invariance_epoch001.png").is_file()
    assert (tmp_path / "figures" / "invariance_epoch001.json").is_file()
    assert module.training
    with pytest.raises(ValueError, match="transforms"):
        InvarianceFigures(transforms=["shear"])
