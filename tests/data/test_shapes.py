"""Tests of zflight.data: the embedded shapes data set and the data modules."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from zflight.data import (
    ShapesDataset,
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
