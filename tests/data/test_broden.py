"""BrodenDataset: reads NetDissect's on-disk format exactly, and names the file of every bad input."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.broden_folder import LABELS, write_broden
from zflight.data.broden import BrodenDataset, is_broden


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("broden")
    return root, write_broden(root, 10, size=32, seed=3)


def _number(concept: str) -> int:
    name = concept.split("/", 1)[1]
    return next(k for k, (n, _cats) in LABELS.items() if n == name)


def test_masks_decode_r_plus_256g_merge_the_layers_and_cover_the_image_for_whole_labels(folder):
    root, truth = folder
    ds = BrodenDataset(root)
    assert ds.mask_size == (16, 16)
    for i in range(len(ds)):
        got = ds.concept_masks(i)
        expected = {}
        for concept in ds.concepts:
            g = concept.split("/", 1)[0]
            inside = np.zeros((16, 16), bool)
            for layer in truth[i].get(g, []):
                inside |= (np.full((16, 16), layer) if isinstance(layer, int) else layer) == _number(concept)
            if inside.any():
                expected[concept] = inside
        assert list(got) == list(expected)  # in concept order, present ones only
        for concept, mask in got.items():
            assert mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(expected[concept]))
    # The G channel carries 256s: the materials are 300 and 301.
    assert any("material/wood-m" in ds.concept_masks(i) for i in range(len(ds)))
    # A whole-image label covers every pixel.
    assert int(ds.concept_masks(0)[f"scene/{LABELS[truth[0]['scene'][0]][0]}"].sum()) == 256


def test_concepts_are_category_slash_name_in_label_csv_order_with_columns_read_by_name(folder):
    root, truth = folder
    ds = BrodenDataset(root)
    # label.csv order, then category.csv's for a label in two categories (6: object and part).
    assert ds.concepts[:8] == ["color/red-c", "color/green-c", "color/blue-c", "color/black-c",
                               "object/dog", "object/car", "part/car", "object/tree"]
    assert ds.concepts[-2:] == ["material/wood-m", "material/metal-m"]
    assert ds.categories == ["color", "object", "part", "material", "scene", "texture"]
    # index.csv lists its category columns in another order: each image's come by name.
    assert ds.image_categories(4) == ["texture"]
    assert ds.image_categories(0) == [g for g in ds.categories if g in truth[0]]
    assert is_broden(root) and not is_broden(root / "images")


def test_only_images_that_annotate_the_chosen_categories_are_kept(folder):
    root, truth = folder
    ds = BrodenDataset(root, ["part", "object"])
    assert ds.categories == ["object", "part"]  # category.csv's order
    assert len(ds) == sum(1 for t in truth if "object" in t)  # the texture-only images are out
    assert all(c.split("/")[0] in ("object", "part") for c in ds.concepts)
    assert all(set(ds.concept_masks(i)) <= set(ds.concepts) for i in range(len(ds)))
    assert len(BrodenDataset(root, split="val")) == 3  # images 0, 4, 8


def test_images_are_fed_at_their_stored_size_normalized_with_the_given_mean_and_std(folder):
    root, _truth = folder
    ds = BrodenDataset(root, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x, label = ds[1]
    pixels = np.asarray(Image.open(root / "images" / "gen" / "img_00001.jpg").convert("RGB"), dtype=np.float32)
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) / 255 - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) \
        / torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    assert label == -1 and x.shape == (3, 32, 32)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def _rewrite(path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_bad_input_is_one_line_naming_the_file_and_row(tmp_path):
    root = tmp_path / "b"
    write_broden(root, 5, size=16)
    with pytest.raises(ValueError, match=r"categories: 'objects' is not a category of .*\(category.csv has color, object, part, material, scene, texture\)"):
        BrodenDataset(root, ["objects"])
    for name in ["index.csv", "label.csv", "category.csv", "c_part.csv"]:
        broken = tmp_path / f"no_{name}"
        shutil.copytree(root, broken)
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=rf"{broken / name} does not exist"):
            BrodenDataset(broken)

    ds = BrodenDataset(root)
    (root / "images" / "gen" / "img_00001_part_2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_00001_part_2.png \(part, index.csv line 3\) does not exist"):
        ds.concept_masks(1)
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(root / "images" / "gen" / "img_00002_color.png")
    with pytest.raises(ValueError, match=r"img_00002_color.png is 9x8 .* index.csv line 4 .* sw x sh = 8x8"):
        ds.concept_masks(2)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0] = (7, 2, 0)  # 7 + 2 * 256 = 519
    Image.fromarray(rgb).save(root / "images" / "gen" / "img_00003_object.png")
    with pytest.raises(ValueError, match=r"label number 519 in .*img_00003_object.png \(index.csv line 5\) is not in .*label.csv"):
        ds.concept_masks(3)

    def unknown_scene(rows):
        rows[1][rows[0].index("scene")] = "77"

    _rewrite(root / "index.csv", unknown_scene)
    with pytest.raises(ValueError, match=r"label number 77 in index.csv line 2 \(scene\) is not in"):
        BrodenDataset(root).concept_masks(0)

    def two_sizes(rows):
        rows[2][rows[0].index("sh")] = "9"

    _rewrite(root / "index.csv", two_sizes)
    with pytest.raises(ValueError, match=r"segmentation sizes differ \(line 2 is 8x8, line 3 is 9x8\)"):
        _ = BrodenDataset(root).mask_size
