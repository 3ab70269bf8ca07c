"""Tests of ShapesDataset's pixel masks: mask(), concepts and concept_masks()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zflight.data.shapes import (
    CLASSES,
    COLOR_NAMES,
    PART_RADIUS,
    ShapesDataset,
    color_name,
)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


@pytest.mark.parametrize(("size", "clutter"), [(64, 1.0), (32, 2.0), (16, 0.0)])
def test_mask_equals_the_pixels_the_object_changes(size, clutter):
    ds = ShapesDataset(20, image_size=size, seed=1, clutter=clutter)
    for i in range(20):
        with_obj, _ = ds._render(i)
        without, _ = ds._render(i, draw_object=False)
        changed, m = _changed(with_obj, without), ds.mask(i).numpy()
        assert not (changed & ~m).any()  # nothing outside the mask changes
        assert (m & ~changed).sum() <= 0.01 * m.sum()  # the rule allows a rim pixel that rounds away


def test_mask_is_bool_image_sized_and_inside_box():
    ds = ShapesDataset(20, image_size=48, seed=2)
    for i in range(20):
        m = ds.mask(i)
        assert m.dtype == torch.bool and m.shape == (48, 48)
        x0, y0, x1, y1 = ds.box(i)
        ys, xs = torch.nonzero(m, as_tuple=True)
        # the box is the mask's own bounding box
        assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)


def test_mask_is_deterministic_and_independent_of_rendering():
    a = ShapesDataset(5, image_size=32, seed=3)
    b = ShapesDataset(5, image_size=32, seed=3).render_all(progress=False)
    assert all(torch.equal(a.mask(i), b.mask(i)) for i in range(5))
    assert a._cache is None  # mask() rendered nothing
    assert torch.equal(a.mask(-1), a.mask(4))


def test_mask_min_coverage_shrinks_the_mask():
    ds = ShapesDataset(3, image_size=64, seed=4)
    m1, m2, m4 = ds.mask(0), ds.mask(0, min_coverage=0.5), ds.mask(0, min_coverage=1.0)
    assert bool((m2 <= m1).all() and (m4 <= m2).all())
    assert m1.sum() > m2.sum() > m4.sum() > 0
    assert torch.equal(ds.mask(0, min_coverage=1 / 4), m1)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), True])
def test_mask_bad_min_coverage_names_the_argument(bad):
    ds = ShapesDataset(2, image_size=32)
    with pytest.raises(ValueError, match="min_coverage"):
        ds.mask(0, min_coverage=bad)
    with pytest.raises(ValueError, match="min_coverage"):
        ds.concept_masks(0, min_coverage=bad)


def test_concepts_are_listed_in_a_fixed_order():
    c = ShapesDataset(2, image_size=32, seed=0).concepts
    assert c == ShapesDataset(9, image_size=64, seed=7).concepts
    assert c[: len(CLASSES)] == [f"object/{k}" for k in CLASSES]
    assert c[len(CLASSES) : len(CLASSES) + len(COLOR_NAMES)] == [f"color/{k}" for k in COLOR_NAMES]
    assert c[-2:] == ["distractor", "background"]
    assert {"part/arrow/tip", "part/triangle/vertex0", "part/ring/rim0"} <= set(c)
    assert "part/ring/center" not in c  # its disk lies in the hole
    assert len(set(c)) == len(c)


def test_concept_masks_are_listed_bool_nonempty_and_image_sized():
    ds = ShapesDataset(30, image_size=40, seed=5)
    known = ds.concepts
    for i in range(30):
        masks = ds.concept_masks(i)
        assert list(masks) == [k for k in known if k in masks]  # concepts order
        for name, m in masks.items():
            assert m.dtype == torch.bool and m.shape == (40, 40), name
            assert m.any(), name  # absent concepts are left out


def test_concept_masks_object_and_color_are_the_silhouette():
    ds = ShapesDataset(20, image_size=64, seed=6)
    for i in range(20):
        masks, m = ds.concept_masks(i), ds.mask(i)
        objects = [k for k in masks if k.startswith("object/")]
        colors = [k for k in masks if k.startswith("color/")]
        assert objects == [f"object/{ds.classes[ds.targets[i]]}"]
        assert len(colors) == 1
        assert torch.equal(masks[objects[0]], m) and torch.equal(masks[colors[0]], m)


def test_concept_masks_color_names_the_drawn_colour():
    ds = ShapesDataset(20, image_size=64, seed=7, clutter=0.0)  # no shading: flat colour
    for i in range(20):
        masks = ds.concept_masks(i)
        name = next(k for k in masks if k.startswith("color/"))
        img = ds.image(i).permute(1, 2, 0)
        inside = ds.mask(i, min_coverage=1.0)
        drawn = img[inside].float().mean(0)  # the object's pixels, flat colour at clutter 0
        assert name == f"color/{color_name(drawn.numpy())}"


def test_color_name_thresholds():
    assert color_name((0, 0, 10)) == "black"
    assert color_name((240, 240, 235)) == "white"
    assert color_name((120, 120, 125)) == "gray"
    assert color_name((250, 40, 30)) == "red"
    assert color_name((250, 170, 165)) == "pink"  # light red
    assert color_name((250, 140, 20)) == "orange"
    assert color_name((120, 70, 20)) == "brown"
    assert color_name((240, 230, 30)) == "yellow"
    assert color_name((30, 200, 60)) == "green"
    assert color_name((30, 200, 210)) == "cyan"
    assert color_name((40, 60, 220)) == "blue"
    assert color_name((140, 40, 220)) == "purple"
    assert color_name((230, 40, 160)) == "pink"
    with pytest.raises(ValueError, match="rgb"):
        color_name((1, 2))


def test_concept_masks_parts_lie_on_the_object_near_their_keypoint():
    ds = ShapesDataset(30, image_size=64, seed=8)
    for i in range(30):
        masks, kps, m = ds.concept_masks(i), ds.keypoints(i), ds.mask(i)
        r = PART_RADIUS * ds._geometry(i, ds._rng(i)).radius
        cls = ds.classes[ds.targets[i]]
        parts = [k for k in masks if k.startswith("part/")]
        # at 64 px every listed part of the class is present, and no other class's
        assert parts == [k for k in ds.concepts if k.startswith(f"part/{cls}/")]
        for name in parts:
            part = masks[name]
            assert not (part & ~m).any(), name  # clipped to the silhouette
            kx, ky = kps[name.rsplit("/", 1)[1]]
            ys, xs = torch.nonzero(part, as_tuple=True)
            dist = torch.hypot(xs + 0.5 - kx, ys + 0.5 - ky)
            assert float(dist.max()) <= r + 1e-6, name


def test_concept_masks_part_disk_radius_scales_with_the_object():
    ds = ShapesDataset(40, image_size=64, seed=9)
    g = [ds._geometry(i, ds._rng(i)) for i in range(40)]
    circles = [i for i in range(40) if ds.classes[ds.targets[i]] == "circle"]
    small, big = min(circles, key=lambda i: g[i].radius), max(circles, key=lambda i: g[i].radius)
    for i in (small, big):
        # the centre disk lies wholly inside a circle: its area is pi (PART_RADIUS r)^2
        area = int(ds.concept_masks(i)["part/circle/center"].sum())
        assert area == pytest.approx(math.pi * (PART_RADIUS * g[i].radius) ** 2, rel=0.15)
    assert ds.concept_masks(big)["part/circle/center"].sum() > ds.concept_masks(small)["part/circle/center"].sum()


def test_concept_masks_distractor_equals_the_pixels_distractors_change():
    ds = ShapesDataset(20, image_size=64, seed=10, clutter=1.5)
    seen = 0
    for i in range(20):
        plain, _ = ds._render(i, draw_object=False, draw_distractors=False)
        cluttered, _ = ds._render(i, draw_object=False)
        changed = _changed(plain, cluttered) & ~ds.mask(i).numpy()  # the object hides what is under it
        d = ds.concept_masks(i).get("distractor", torch.zeros(64, 64, dtype=torch.bool)).numpy()
        assert not (changed & ~d).any()
        assert (d & ~changed).sum() <= 0.01 * max(1, d.sum())  # a stroke drawn in the background colour
        seen += int(d.sum())
    assert seen > 0


def test_concept_masks_object_distractor_background_partition_the_image():
    ds = ShapesDataset(20, image_size=48, seed=11, clutter=2.0)
    for i in range(20):
        masks = ds.concept_masks(i)
        obj = masks[f"object/{ds.classes[ds.targets[i]]}"]
        distractor = masks.get("distractor", torch.zeros_like(obj))
        assert not (obj & distractor).any()
        assert torch.equal(masks["background"], ~(obj | distractor))


def test_concept_masks_clutter_zero_has_no_distractor():
    ds = ShapesDataset(10, image_size=32, seed=12, clutter=0.0)
    for i in range(10):
        masks = ds.concept_masks(i)
        assert "distractor" not in masks
        assert torch.equal(masks["background"], ~ds.mask(i))


def test_concept_masks_are_deterministic():
    a, b = ShapesDataset(6, image_size=32, seed=13), ShapesDataset(6, image_size=32, seed=13)
    for i in (5, 0, 3):  # any order
        ma, mb = a.concept_masks(i), b.concept_masks(i)
        assert list(ma) == list(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_concept_masks_return_separate_tensors():
    ds = ShapesDataset(2, image_size=32, seed=14)
    masks = ds.concept_masks(0)
    obj = next(k for k in masks if k.startswith("object/"))
    color = next(k for k in masks if k.startswith("color/"))
    masks[obj].zero_()
    assert masks[color].any() and ds.concept_masks(0)[obj].any()


def test_concept_masks_leave_the_pictures_unchanged():
    a = ShapesDataset(4, image_size=32, seed=15)
    for i in range(4):
        a.concept_masks(i)
    b = ShapesDataset(4, image_size=32, seed=15)
    assert all(torch.equal(a.image(i), b.image(i)) for i in range(4))
