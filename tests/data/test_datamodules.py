"""Tests of zflight.data: the embedded shapes data set and the data modules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zflight.data import (
    ImageFolderDataModule,
    ShapesDataModule,
    ShapesDataset,
    UnreadableImageError,
)

# ------------------------------------------------------------------------------- ShapesDataset


def test_shapes_datamodule_batches_and_num_classes():
    dm = ShapesDataModule(image_size=32, train_size=40, val_size=20, test_size=20, batch_size=8)
    assert dm.num_classes == len(dm.classes) >= 10  # known before setup
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (8, 3, 32, 32)
    assert dm.test_dataset is None
    dm.setup("test")
    assert len(dm.test_dataset) == 20


def test_shapes_datamodule_splits_use_different_seeds():
    dm = ShapesDataModule(image_size=32, train_size=5, val_size=5, test_size=5, seed=1)
    dm.setup()
    seeds = {dm.train_dataset.seed, dm.val_dataset.seed, dm.test_dataset.seed}
    assert len(seeds) == 3
    assert not torch.equal(dm.train_dataset.image(0), dm.val_dataset.image(0))
    other = ShapesDataModule(image_size=32, train_size=5, val_size=5, test_size=5, seed=2)
    other.setup()
    assert not ({other.train_dataset.seed, other.val_dataset.seed, other.test_dataset.seed} & seeds)


def test_shapes_datamodule_train_augment_flips_horizontally():
    dm = ShapesDataModule(image_size=32, train_size=4, val_size=2, test_size=2, augment=True)
    dm.setup("fit")
    ref = ShapesDataset(4, image_size=32, seed=dm.train_dataset.seed)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        x, _ = dm.train_dataset[0]
        if torch.equal(x, ref[0][0]):
            seen.add("plain")
        elif torch.equal(x, ref[0][0].flip(-1)):
            seen.add("flipped")
        else:
            raise AssertionError("augmentation changed more than a flip")
    assert seen == {"plain", "flipped"}


def test_shapes_datamodule_bad_argument_named():
    with pytest.raises(ValueError, match="batch_size"):
        ShapesDataModule(batch_size=0)


def _write_folder(root: Path, sizes=((300, 260), (260, 400), (500, 300))) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for ci, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for k, (w, h) in enumerate(sizes):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                arr[..., 0] = 60 + 120 * ci  # red channel tells the class apart
                Image.fromarray(arr).save(d / f"{cls}{k}.jpg", quality=80)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _write_folder(tmp_path)
    return tmp_path


def test_image_folder_classes_known_after_init(folder):
    dm = ImageFolderDataModule(folder, num_workers=0)
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2


def test_image_folder_train_crops_and_labels(folder):
    dm = ImageFolderDataModule(folder, batch_size=6, num_workers=0, pin_memory=False)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (6, 3, 224, 224)
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    # label 1 ("dog") images have the brighter red channel
    red = x[:, 0].mean((1, 2))
    assert red[y == 1].min() > red[y == 0].max()


def test_image_folder_val_center_crop(folder):
    dm = ImageFolderDataModule(folder, resize=64, crop_size=48, batch_size=6, num_workers=0, pin_memory=False)
    dm.setup("validate")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (6, 3, 48, 48) and y.tolist() == [0, 0, 0, 1, 1, 1]
    x2, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(x, x2)  # deterministic


def test_image_folder_ten_crop_test_batch_shape(folder):
    dm = ImageFolderDataModule(folder, resize=64, crop_size=48, test_crops=10, batch_size=4, num_workers=0, pin_memory=False)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 10, 3, 48, 48) and y.shape == (4,)
    # crops 5..9 are the horizontal flips of crops 0..4
    assert torch.allclose(x[:, 4].flip(-1), x[:, 9])


def test_image_folder_val_labels_follow_train_when_val_lacks_a_class(folder):
    import shutil

    shutil.rmtree(folder / "val" / "cat")
    dm = ImageFolderDataModule(folder, resize=32, crop_size=32, num_workers=0, pin_memory=False)
    dm.setup("validate")
    assert set(dm.val_dataset.targets) == {1}


def test_image_folder_missing_root_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageFolderDataModule(missing)


def test_image_folder_missing_train_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        ImageFolderDataModule(tmp_path)


def test_image_folder_missing_val_names_path_at_setup(folder):
    import shutil

    shutil.rmtree(folder / "val")
    dm = ImageFolderDataModule(folder, num_workers=0)
    with pytest.raises(FileNotFoundError, match=str(folder / "val")):
        dm.setup("fit")


def _corrupt(folder: Path) -> Path:
    bad = folder / "train" / "cat" / "cat1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return bad


def test_image_folder_corrupt_file_error_names_file(folder):
    bad = _corrupt(folder)
    dm = ImageFolderDataModule(folder, resize=32, crop_size=32, num_workers=0, pin_memory=False)
    dm.setup("fit")
    with pytest.raises(UnreadableImageError, match="cat1.jpg"):
        list(dm.train_dataloader())
    assert str(bad) in str(pytest.raises(UnreadableImageError, dm.train_dataset.__getitem__, 1).value)


def test_image_folder_corrupt_file_error_names_file_from_worker(folder):
    _corrupt(folder)
    dm = ImageFolderDataModule(
        folder, resize=32, crop_size=32, num_workers=1, persistent_workers=False, pin_memory=False
    )
    dm.setup("fit")
    with pytest.raises(UnreadableImageError, match="cat1.jpg"):
        list(dm.train_dataloader())


def test_image_folder_skip_corrupt_warns_and_replaces(folder):
    _corrupt(folder)
    dm = ImageFolderDataModule(folder, resize=32, crop_size=32, num_workers=0, pin_memory=False, skip_corrupt=True)
    dm.setup("fit")
    with pytest.warns(UserWarning, match="cat1.jpg"):
        x, y = dm.train_dataset[1]  # the corrupt one: replaced by the next file in the list
    assert x.shape == (3, 32, 32) and y == dm.train_dataset.targets[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.train_dataset[1]  # warned once per file


@pytest.mark.parametrize(("kwargs", "name"), [({"test_crops": 5}, "test_crops"), ({"crop_size": 300}, "crop_size")])
def test_image_folder_bad_arguments_named(folder, kwargs, name):
    with pytest.raises(ValueError, match=name):
        ImageFolderDataModule(folder, **kwargs)


def test_dataloader_before_setup_names_the_split():
    dm = ShapesDataModule(train_size=4, val_size=4, test_size=4, batch_size=2)
    with pytest.raises(RuntimeError, match=r"val_dataset is not set up yet: call setup\(\) first"):
        dm.val_dataloader()
    dm.setup("validate")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 64, 64) and y.shape == (2,)
