"""A tiny ImageNet-style folder and its pack, shared by the pack, packed-module and pack-CLI tests.

Import the fixtures into a test module (``from tests.imagenet_folder import packed, src``) to
use them; each module gets its own folder (module scope).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zflight.data import PackedBatch, PackedImageNetDataModule
from zflight.data import pack as packmod

SIZE, CROP = 56, 48  # the smallest sizes the quarter-width ZFNet accepts, to keep tests fast
CLASSES = ["cat", "ant", "bee"]  # not sorted on purpose: labels follow the sorted folder names


def make_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """JPEGs of assorted sizes and aspect ratios (40-120 px), smooth enough to compress like photos."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(40, 121, 2))
                small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BILINEAR).save(d / f"img{i:03d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imagenet"), {"train": 8, "val": 3})


@pytest.fixture(scope="module")
def packed(src, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("pack") / "zf"
    packmod.pack(src, dst, size=SIZE, workers=0, chunk_size=5, progress=False)
    return dst


def packed_module(root: Path, **kwargs) -> PackedImageNetDataModule:
    """The packed data module over ``root`` at the test sizes (``kwargs`` override the defaults)."""
    kwargs = {"crop_size": CROP, "batch_size": 8, "num_workers": 2, **kwargs}
    return PackedImageNetDataModule(root, **kwargs)


def epoch_batches(dm: PackedImageNetDataModule, epoch: int = 0) -> list[PackedBatch]:
    """Every training batch of ``epoch``."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)
