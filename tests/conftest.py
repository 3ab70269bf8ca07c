"""Test-wide settings."""

import os
from pathlib import Path

import pytest
import torch

# The suite's models are tiny: one thread is as fast as two for them, and on a busy 2-core
# machine torch's spinning OpenMP threads can make a step 50x slower. Subprocesses (the DDP
# tests) inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_ckpt_factory(tmp_path_factory):
    """``make(val_size)``: a checkpoint of an untrained tiny ZFNet (seed 0) on 64 px shapes."""
    from zflight.module import ImageClassifier

    def make(val_size: int) -> Path:
        torch.manual_seed(0)
        module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, init="kaiming")
        path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "datamodule_hyper_parameters": {"image_size": 64, "val_size": val_size, "seed": 0}}, path)
        return path

    return make


@pytest.fixture
def write_pngs():
    """``write(folder, *colors, blob=False)``: one 80x70 PNG per colour, paths as str.

    The size is neither square nor the model's 64 px, so the files are resized the way the
    analysis CLIs resize image files. ``blob`` adds a light disc that moves with the index, so
    the images differ in more than their colour.
    """
    from PIL import Image, ImageDraw

    def write(folder: Path, *colors: tuple[int, int, int], blob: bool = False) -> list[str]:
        paths = []
        for k, color in enumerate(colors):
            path = folder / f"img{k}.png"
            img = Image.new("RGB", (80, 70), color)
            if blob:
                ImageDraw.Draw(img).ellipse((20 + 5 * k, 15, 45 + 5 * k, 40), fill=(250, 250, 250))
            img.save(path)
            paths.append(str(path))
        return paths

    return write
