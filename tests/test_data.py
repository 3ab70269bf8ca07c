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


def test_shapes_item_is_normalized_float_image_and_int_label():
    ds = ShapesDataset(12, image_size=32)
    x, y = ds[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < len(ds.classes)
    assert y == ds.targets[5]
    assert len(ds) == 12


def test_shapes_has_at_least_ten_distinct_classes():
    ds = ShapesDataset(1)
    assert len(ds.classes) >= 10
    assert len(set(ds.classes)) == len(ds.classes)
    assert "diamond" not in ds.classes  # a rotated square is a square


def test_shapes_same_seed_gives_identical_pixels():
    a, b = ShapesDataset(6, image_size=32, seed=3), ShapesDataset(6, image_size=32, seed=3)
    for i in range(6):
        assert torch.equal(a.image(i), b.image(i))
        assert a.box(i) == b.box(i)
    assert a.targets == b.targets


def test_shapes_different_seed_gives_different_pixels():
    a, b = ShapesDataset(4, image_size=32, seed=0), ShapesDataset(4, image_size=32, seed=1)
    assert all(not torch.equal(a.image(i), b.image(i)) for i in range(4))


def test_shapes_item_independent_of_access_order_and_size():
    in_order = ShapesDataset(20, image_size=32, seed=7)
    imgs = [in_order.image(i) for i in range(20)]
    alone = ShapesDataset(20, image_size=32, seed=7).image(13)
    longer = ShapesDataset(200, image_size=32, seed=7)
    assert torch.equal(alone, imgs[13])
    assert torch.equal(longer.image(13), imgs[13])
    assert longer.targets[:20] == in_order.targets


def test_shapes_labels_are_balanced():
    ds = ShapesDataset(1000, seed=2)  # targets need no rendering
    counts = np.bincount(ds.targets, minlength=len(ds.classes))
    assert counts.min() == counts.max() == 100
    # and not in a fixed cycle
    assert ds.targets[:10] != ds.targets[10:20]


def test_shapes_box_is_tight_around_the_object():
    ds = ShapesDataset(30, image_size=48, seed=4)
    for i in range(30):
        with_obj, box = ds._render(i)
        without, box2 = ds._render(i, draw_object=False)
        assert box == box2 == ds.box(i)
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
        diff = np.abs(with_obj.astype(int) - without.astype(int)).sum(-1) > 0
        ys, xs = np.nonzero(diff)
        # every changed pixel lies in the box ...
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        # ... and the changed pixels reach the box's edges (a faint antialiased rim may round away)
        assert xs.min() - x0 <= 1 and x1 - 1 - xs.max() <= 1
        assert ys.min() - y0 <= 1 and y1 - 1 - ys.max() <= 1


def test_shapes_object_size_within_30_to_75_percent_of_side():
    ds = ShapesDataset(50, image_size=64, seed=5)
    for i in range(50):
        x0, y0, x1, y1 = ds.box(i)
        assert 0.25 * 64 <= max(x1 - x0, y1 - y0) <= 0.75 * 64


def test_shapes_keypoints_inside_box_with_stable_names():
    ds = ShapesDataset(40, image_size=64, seed=6)
    names: dict[int, set[str]] = {}
    for i in range(40):
        kps = ds.keypoints(i)
        assert "center" in kps
        label = ds.targets[i]
        assert names.setdefault(label, set(kps)) == set(kps)
        x0, y0, x1, y1 = ds.box(i)
        for name, (x, y) in kps.items():
            assert x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1, (ds.classes[label], name)
    arrow = ds.classes.index("arrow")
    assert {"tip", "tail"} <= names[arrow]
    assert {"vertex0", "vertex1", "vertex2"} <= names[ds.classes.index("triangle")]


def test_shapes_normalization_maps_mean_gray_to_zero():
    ds = ShapesDataset(200, image_size=32, seed=8)
    gray = torch.tensor(ds.mean).view(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose((gray - torch.tensor(ds.mean).view(3, 1, 1)) / torch.tensor(ds.std).view(3, 1, 1), torch.zeros(3, 4, 4))
    xs = torch.stack([ds[i][0] for i in range(200)])
    assert xs.mean((0, 2, 3)).abs().max() < 0.1  # the constants fit the data
    assert (xs.std((0, 2, 3)) - 1).abs().max() < 0.15


def test_shapes_denormalize_inverts_normalization():
    ds = ShapesDataset(3, image_size=32)
    x, _ = ds[1]
    back = ds.denormalize(x)
    assert back.min() >= 0 and back.max() <= 1
    assert torch.allclose(back * 255, ds.image(1).float(), atol=1e-3)


def test_shapes_render_all_fills_cache_and_getitem_reuses_it(monkeypatch):
    ds = ShapesDataset(8, image_size=32).render_all(progress=False)
    assert ds._rendered.all()

    def boom(*a, **k):
        raise AssertionError("rendered twice")

    monkeypatch.setattr(ds, "_render", boom)
    for i in range(8):
        ds[i]
        ds.box(i)


def test_shapes_construction_is_cheap():
    ds = ShapesDataset(100_000, image_size=96)
    assert ds._cache is None  # nothing allocated or rendered until first access
    assert len(ds.targets) == 100_000


def test_shapes_image_is_a_uint8_copy():
    ds = ShapesDataset(2, image_size=32)
    img = ds.image(0)
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    img.zero_()
    assert ds.image(0).sum() > 0


def test_shapes_clutter_zero_is_cleaner():
    clean, busy = ShapesDataset(10, image_size=48, clutter=0.0), ShapesDataset(10, image_size=48, clutter=2.0)

    def roughness(img: torch.Tensor) -> float:
        f = img.float()
        return float((f[:, :, 1:] - f[:, :, :-1]).abs().mean())

    assert sum(roughness(clean.image(i)) for i in range(10)) < sum(roughness(busy.image(i)) for i in range(10))


def test_shapes_transform_applied_to_normalized_tensor():
    ds = ShapesDataset(2, image_size=32, transform=lambda x: x.flip(-1))
    plain = ShapesDataset(2, image_size=32)
    assert torch.equal(ds[0][0], plain[0][0].flip(-1))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 5, "image_size": 8}, "image_size"),
        ({"num_samples": 5, "clutter": -1.0}, "clutter"),
        ({"num_samples": 5, "seed": -1}, "seed"),
    ],
)
def test_shapes_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShapesDataset(**kwargs)


def test_shapes_index_out_of_range_raises_index_error():
    ds = ShapesDataset(5, image_size=32)
    with pytest.raises(IndexError, match="index 5"):
        ds[5]
    with pytest.raises(IndexError):
        ds.box(-6)
    assert torch.equal(ds.image(-1), ds.image(4))


# ---------------------------------------------------------------------------- ShapesDataModule


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


# ------------------------------------------------------------------------ ImageFolderDataModule


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
