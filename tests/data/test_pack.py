"""Tests of the ImageNet packer (zflight.data.pack) and the data module that reads packs."""

from __future__ import annotations

import importlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from zflight.data import (
    ImageFolderDataModule,
    PackedImageNetDataModule,
    PackVerificationError,
    UnreadableImageError,
)

from tests.imagenet_folder import CLASSES, CROP, SIZE, make_folder, epoch_batches, packed_module

# zflight.data.pack is the module (the package does not export the function, which would hide it).
packmod = importlib.import_module("zflight.data.pack")


# ----------------------------------------------------------------------------------- packing
def test_round_trip_keeps_labels_class_order_and_pil_pixels(src, packed):
    manifest = packmod.read_manifest(packed)
    folder = ImageFolderDataModule(src, resize=SIZE, crop_size=CROP, num_workers=0)
    folder.setup()
    assert json.loads((packed / "classes.json").read_text()) == sorted(CLASSES) == folder.classes
    assert manifest["splits"]["train"]["count"] == 24 and manifest["splits"]["val"]["count"] == 9
    images = np.load(packed / "train_images.npy", mmap_mode="r")
    labels = np.load(packed / "train_labels.npy")
    files = (packed / "train_files.txt").read_text().splitlines()
    assert [label for _, label in folder.train_dataset.samples] == labels.tolist()
    for row, (path, label) in enumerate(folder.train_dataset.samples):
        assert files[row] == os.path.relpath(path, src / "train")
        with Image.open(path) as img:
            expected = np.asarray(T.CenterCrop(SIZE)(T.Resize(SIZE)(img.convert("RGB"))))
        np.testing.assert_array_equal(images[row], expected)


def test_corrupt_file_is_listed_and_excluded_only_with_skip_corrupt(tmp_path):
    src = make_folder(tmp_path / "src", {"train": 3, "val": 1})
    bad = src / "train" / "bee" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UnreadableImageError) as err:
        packmod.pack(src, tmp_path / "zf", size=SIZE, workers=0, chunk_size=4, progress=False)
    message = str(err.value)
    assert str(bad) in message and "--skip-corrupt" in message and "1 image file" in message
    assert not (tmp_path / "zf" / "manifest.json").exists()  # no pack that looks finished

    decoded = []
    real = packmod._preprocess
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packmod, "_preprocess", lambda p, s: decoded.append(p) or real(p, s))
        manifest = packmod.pack(
            src, tmp_path / "zf", size=SIZE, workers=0, chunk_size=4, skip_corrupt=True, progress=False
        )
    assert decoded == [str(bad)]  # only the bad file is tried again
    assert manifest["splits"]["train"]["excluded"] == 1 and manifest["splits"]["train"]["count"] == 9
    assert [b["path"] for b in manifest["unreadable"]] == [str(bad)]
    dm = packed_module(tmp_path / "zf", batch_size=4)
    dm.setup("fit")
    rows = torch.cat([b.index for b in epoch_batches(dm)])
    bad_row = manifest["unreadable"][0]["index"]
    assert len(rows) == 9 and bad_row not in rows.tolist()


def test_interrupted_pack_resumes_with_the_remaining_chunks(src, packed, tmp_path):
    calls = {"n": 0}
    real_record = packmod._record_chunk

    def record_then_crash(progress, result):
        real_record(progress, result)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after 3 chunks

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packmod, "_record_chunk", record_then_crash)
        with pytest.raises(KeyboardInterrupt):
            packmod.pack(src, tmp_path / "zf", size=SIZE, workers=0, chunk_size=5, progress=False)
    assert not (tmp_path / "zf" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        PackedImageNetDataModule(tmp_path / "zf", crop_size=CROP)

    decoded = []
    real = packmod._preprocess
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packmod, "_preprocess", lambda p, s: decoded.append(p) or real(p, s))
        resumed = packmod.pack(src, tmp_path / "zf", size=SIZE, workers=0, chunk_size=5, progress=False)
    assert len(decoded) == 24 + 9 - 3 * 5  # the 3 recorded chunks are not decoded again
    whole = packmod.read_manifest(packed)
    for split in ("train", "val"):
        assert resumed["splits"][split]["sha256"] == whole["splits"][split]["sha256"]
    # A finished pack is verified and left alone: nothing is decoded.
    decoded.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packmod, "_preprocess", lambda p, s: decoded.append(p) or real(p, s))
        assert packmod.pack(src, tmp_path / "zf", size=SIZE, workers=0, chunk_size=5, progress=False) == resumed
    assert decoded == []
    with pytest.raises(ValueError, match="size 56, not 64"):
        packmod.pack(src, tmp_path / "zf", size=64, workers=0, progress=False)


def test_verify_names_a_modified_file_and_rows(packed, tmp_path):
    copy = tmp_path / "zf"
    shutil.copytree(packed, copy)
    assert packmod.verify(copy, workers=0)["size"] == SIZE
    images = np.load(copy / "train_images.npy", mmap_mode="r+")
    images[7, 3, 3, 0] ^= 1  # one bit of one pixel of row 7 (chunk 1: rows 5-9)
    images.flush()
    del images
    with pytest.raises(PackVerificationError) as err:
        packmod.verify(copy, workers=0)
    assert "rows 5-9" in str(err.value) and "train_images.npy" in str(err.value)
    with pytest.raises(PackVerificationError):  # pack() on it verifies too, and refuses
        packmod.pack(tmp_path / "unused", copy, size=SIZE, workers=0, progress=False)
    (copy / "classes.json").write_text('["a", "b", "c"]')
    with pytest.raises(PackVerificationError, match="classes.json"):
        packmod.verify(copy, workers=0)
