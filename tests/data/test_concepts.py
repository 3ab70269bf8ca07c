"""Tests of ConceptFolder: users' own images with per-concept pixel masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zflight.data.concepts import ConceptFolder
from zflight.data.datamodules import IMAGENET_MEAN, IMAGENET_STD, UnreadableImageError

W, H = 12, 8  # not square, so that width and height cannot be swapped unnoticed


def _write_mask(path: Path, inside: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = inside.astype(np.uint8) * 255
    img = Image.fromarray(a, "L")
    img.convert(mode).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three 12x8 images (a.png, b.jpg, c.jpeg); masks: 'sky' for a and b, 'color/red' for a."""
    root = tmp_path / "concepts"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.jpeg"):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / name)
    (root / "images" / "notes.txt").write_text("not an image")
    sky = np.zeros((H, W), bool)
    sky[:3] = True
    _write_mask(root / "masks" / "sky" / "a.png", sky)
    _write_mask(root / "masks" / "sky" / "b.png", sky[::-1])  # bottom rows
    red = np.zeros((H, W), bool)
    red[4:6, 2:5] = True
    _write_mask(root / "masks" / "color" / "red" / "a.png", red, mode="RGB")
    return root


def test_concepts_are_mask_folders_sorted_with_nested_names(folder):
    ds = ConceptFolder(folder)
    assert ds.concepts == ["color/red", "sky"]
    assert ds.names == ["a", "b", "c"] and len(ds) == 3


def test_concept_masks_read_nonzero_as_inside(folder):
    masks = ConceptFolder(folder).concept_masks(0)
    assert list(masks) == ["color/red", "sky"]
    assert masks["sky"].dtype == torch.bool and masks["sky"].shape == (H, W)
    assert masks["sky"][:3].all() and not masks["sky"][3:].any()
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[4:6, 2:5] = True
    assert torch.equal(masks["color/red"], expected)  # an RGB mask works too


def test_concept_masks_missing_mask_file_means_absent(folder):
    ds = ConceptFolder(folder)
    assert list(ds.concept_masks(1)) == ["sky"]
    assert ds.concept_masks(2) == {}


def test_concept_masks_all_zero_mask_is_absent(folder):
    _write_mask(folder / "masks" / "sky" / "c.png", np.zeros((H, W), bool))
    assert ConceptFolder(folder).concept_masks(2) == {}


def test_concept_masks_palette_and_label_pngs(folder):
    inside = np.zeros((H, W), bool)
    inside[1, 1] = True
    Image.fromarray(inside.astype(np.uint8), "L").save(folder / "masks" / "sky" / "c.png")  # 0/1 labels
    assert int(ConceptFolder(folder).concept_masks(2)["sky"].sum()) == 1
    pal = Image.fromarray(inside.astype(np.uint8), "P")
    pal.putpalette([255, 255, 255, 0, 0, 0])  # index 0 white: inside follows the index, not the colour
    pal.save(folder / "masks" / "sky" / "c.png")
    m = ConceptFolder(folder).concept_masks(2)["sky"]
    assert int(m.sum()) == 1 and bool(m[1, 1])


def test_getitem_normalizes_with_imagenet_statistics_and_label_minus_one(folder):
    ds = ConceptFolder(folder)
    x, y = ds[0]
    raw = np.asarray(Image.open(folder / "images" / "a.png").convert("RGB"), dtype=np.float32) / 255.0
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    expected = torch.from_numpy(((raw - mean) / std).transpose(2, 0, 1))
    assert x.dtype == torch.float32 and x.shape == (3, H, W)
    assert torch.allclose(x, expected, atol=1e-5)
    assert y == -1


def test_getitem_uses_given_mean_std_transform_and_labels(folder):
    ds = ConceptFolder(folder, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       transform=lambda t: t.flip(-1), labels={"b": 3})
    x, y = ds[1]
    img = ds.image(1).float() / 255.0
    assert torch.allclose(x, ((img - 0.5) / 0.25).flip(-1), atol=1e-6)
    assert y == 3 and ds[0][1] == -1 and ds.targets == [-1, 3, -1]


def test_image_size_resizes_image_bilinear_and_masks_nearest(folder):
    ds = ConceptFolder(folder, image_size=(4, 6))  # half size
    x, _ = ds[0]
    assert x.shape == (3, 4, 6)
    expected = Image.open(folder / "images" / "a.png").convert("RGB").resize((6, 4), Image.BILINEAR)
    assert torch.equal(ds.image(0), torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    sky = ds.concept_masks(0)["sky"]
    assert sky.shape == (4, 6) and sky.dtype == torch.bool
    # nearest takes the source pixel under each target pixel's centre (at half size that centre
    # lies on a source pixel edge, and PIL takes the pixel after it): source rows 1, 3, 5, 7 and
    # cols 1, 3, ..., 11. Sky is rows 0-2:
    assert sky[0].all() and not sky[1:].any()
    red = ds.concept_masks(0)["color/red"]  # rows 4-5, cols 2-4: only source (5, 3) is sampled
    assert red.nonzero().tolist() == [[2, 1]]


def test_image_size_int_is_square(folder):
    ds = ConceptFolder(folder, image_size=16)
    assert ds[2][0].shape == (3, 16, 16)
    assert ds.concept_masks(0)["sky"].shape == (16, 16)


def test_missing_images_folder_names_the_folder(tmp_path):
    (tmp_path / "masks" / "sky").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"images folder .*images"):
        ConceptFolder(tmp_path)


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ConceptFolder(tmp_path / "nowhere")


def test_empty_images_folder_names_the_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("x")
    (tmp_path / "masks" / "sky").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"images folder .*images holds no"):
        ConceptFolder(tmp_path)


def test_missing_masks_folder_names_the_folder(folder):
    import shutil

    shutil.rmtree(folder / "masks")
    with pytest.raises(FileNotFoundError, match=r"masks folder .*masks"):
        ConceptFolder(folder)


def test_masks_folder_without_concepts_raises(folder):
    import shutil

    shutil.rmtree(folder / "masks")
    (folder / "masks" / "empty").mkdir(parents=True)
    with pytest.raises(ValueError, match="no concept folder"):
        ConceptFolder(folder)


def test_mask_size_mismatch_names_the_mask_file(folder):
    _write_mask(folder / "masks" / "sky" / "c.png", np.ones((H + 1, W), bool))
    ds = ConceptFolder(folder)
    with pytest.raises(ValueError, match=r"mask .*sky.c\.png is 12x9 pixels but its image .*c\.jpeg is 12x8"):
        ds.concept_masks(2)


def test_two_images_with_one_name_raise_naming_both(folder):
    Image.new("RGB", (W, H)).save(folder / "images" / "a.jpg")
    with pytest.raises(ValueError, match=r"a\.jpg and .*a\.png|a\.png and .*a\.jpg"):
        ConceptFolder(folder)


def test_mask_without_image_warns_naming_the_file(folder):
    _write_mask(folder / "masks" / "sky" / "zebra.png", np.ones((H, W), bool))
    with pytest.warns(UserWarning, match="zebra.png"):
        ds = ConceptFolder(folder)
    assert ds.names == ["a", "b", "c"]


def test_unreadable_mask_names_the_file(folder):
    (folder / "masks" / "sky" / "c.png").write_bytes(b"not a png")
    with pytest.raises(UnreadableImageError, match=r"c\.png"):
        ConceptFolder(folder).concept_masks(2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": (4, 4, 4)}, "image_size"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"labels": {"nobody": 1}}, "labels.*'nobody'"),
    ],
)
def test_bad_arguments_are_named(folder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConceptFolder(folder, **kwargs)


def test_index_out_of_range_raises_index_error(folder):
    ds = ConceptFolder(folder)
    with pytest.raises(IndexError, match="index 3"):
        ds[3]
    assert torch.equal(ds.image(-1), ds.image(2))


def test_batches_through_a_dataloader_when_resized(folder):
    ds = ConceptFolder(folder, image_size=8)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [-1, -1, -1]
