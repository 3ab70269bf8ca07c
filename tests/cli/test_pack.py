"""Tests of the ImageNet packer (zflight.data.pack) and the data module that reads packs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zflight.cli.pack import main as pack_main


# zflight.data.pack is the module (the package does not export the function, which would hide it).
packmod = importlib.import_module("zflight.data.pack")

ROOT = Path(__file__).resolve().parents[2]
SIZE, CROP = 56, 48  # the smallest sizes the quarter-width ZFNet accepts, to keep tests fast
CLASSES = ["cat", "ant", "bee"]  # not sorted on purpose: labels follow the sorted folder names


def _make_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
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
    return _make_folder(tmp_path_factory.mktemp("imagenet"), {"train": 8, "val": 3})


@pytest.fixture(scope="module")
def packed(src, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("pack") / "zf"
    packmod.pack(src, dst, size=SIZE, workers=0, chunk_size=5, progress=False)
    return dst


def test_cli_packs_with_worker_processes_and_verifies(src, packed, tmp_path, capsys):
    dst = tmp_path / "zf"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "zflight",
        "pack",
        "--src",
        str(src),
        "--dst",
        str(dst),
        "--size",
        str(SIZE),
        "--workers",
        "2",
        "--chunk-size",
        "5",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        packmod.read_manifest(dst)["splits"]["train"]["sha256"]
        == packmod.read_manifest(packed)["splits"]["train"]["sha256"]
    )
    assert pack_main(["--dst", str(dst), "--verify", "--workers", "0"])["splits"]["val"]["count"] == 9
    assert "24 train + 9 val images" in capsys.readouterr().out


def test_cli_errors_name_the_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pack_main(["--src", str(tmp_path / "nothing"), "--dst", str(tmp_path / "zf"), "--no-progress"])
    assert exit_info.value.code == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
