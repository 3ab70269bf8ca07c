"""A torchvision model from a state_dict and folders of photos, for the analysis subcommands' tests.

Import the fixtures into a test module (``from tests.any_model import photos, resnet18_file``)
to use them; each module gets its own files (module scope). :data:`RESNET` are the options that
name the model on a command line (``resnet18`` with 3 classes, 32 px inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

CLASSES = ["cat", "dog", "fox"]  # the model's class names (--classes) and the folders' names


def model_options(state_dict: Path, classes: Path | None = None) -> list[str]:
    """``--model resnet18`` with 3 classes and the weights file, read at 32 px (and its class names)."""
    options = ["--model", "resnet18", "--model_args", '{"num_classes": 3}', "--checkpoint", str(state_dict),
               "--resize", "36", "--image_size", "32"]
    return options + (["--classes", str(classes)] if classes is not None else [])


def write_photo(path: Path, seed: int, size: tuple[int, int] = (44, 38)) -> Path:
    """A smooth colour image with a bright disc (PNG or JPEG by the suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, 3)
    img = np.clip(base + 0.8 * (xx[..., None] - yy[..., None]), 0, 255)
    cx, cy = int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < 64] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> dict[str, Path]:
    """``{"state_dict": resnet18 (3 classes, seed 0) weights, "classes": its class names file}``."""
    folder = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), folder / "resnet18.pt")
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"state_dict": folder / "resnet18.pt", "classes": folder / "classes.txt"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Folders of PNG and JPEG photos: ``classes`` (cat/, dog/: two each), ``flat`` (three, 44x38),
    and ``masks`` (a binary PNG per ``classes`` photo at the same relative path: the box rows
    10-27, columns 12-31). The ``classes`` photos are 40x36: at ``--resize 36 --image_size 32``
    they are only cropped (rows 2-33, columns 4-35), so the model sees the box at rows 8-25,
    columns 8-27."""
    root = tmp_path_factory.mktemp("photos")
    files = ["cat/a.png", "cat/b.jpg", "dog/c.png", "dog/d.jpg"]
    for k, name in enumerate(files):
        write_photo(root / "classes" / name, k, size=(40, 36))
        mask = np.zeros((36, 40), dtype=np.uint8)
        mask[10:28, 12:32] = 1  # non-zero = object
        out = root / "masks" / Path(name).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(out)
    for k, name in enumerate(["x.png", "y.jpg", "z.png"]):
        write_photo(root / "flat" / name, 10 + k)
    return {"classes": root / "classes", "flat": root / "flat", "masks": root / "masks"}
