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


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 (10 classes, seed 0) saved as a plain ``state_dict``; its path."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def photo_folders(tmp_path_factory):
    """``(classes, flat)``: folders of PNG and JPEG photos (noise with a disc), 3 classes x 3, and 4 flat."""
    import numpy as np
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)

    def write(path: Path, k: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(rng.integers(0, 120, (50, 60, 3), dtype=np.uint8))
        ImageDraw.Draw(img).ellipse((10 + 3 * k, 8, 40 + 3 * k, 38), fill=(220, 200 - 20 * k, 40))
        img.save(path, quality=90)

    for c, name in enumerate(["apple", "bicycle", "cloud"]):
        for k in range(3):
            write(root / "classes" / name / f"{name}{k}.{'png' if k % 2 else 'jpg'}", c + k)
    for k in range(4):
        write(root / "flat" / f"photo{k}.{'png' if k % 2 else 'jpeg'}", k)
    return root / "classes", root / "flat"


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """``write(module, source)``: a user's own code as ``tmp_path/<module path>.py`` (each package
    folder with an ``__init__.py``), with ``tmp_path`` the current folder, where
    ``--model module:attr`` imports it from. ``sys.path`` and ``sys.modules`` are left as found."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    tops: set[str] = set()

    def write(module: str, source: str) -> None:
        *packages, name = module.split(".")
        folder = tmp_path
        for package in packages:
            folder = folder / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (folder / f"{name}.py").write_text(source)
        top = module.split(".")[0]
        tops.add(top)
        for loaded in [m for m in sys.modules if m.split(".")[0] == top]:
            monkeypatch.delitem(sys.modules, loaded)  # another test's copy

    yield write
    for loaded in [m for m in sys.modules if m.split(".")[0] in tops]:
        sys.modules.pop(loaded)


_OWN_NETWORK = """
from torch import nn


class Net(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, 1000)

    def forward(self, x):
        return self.head(self.body(x))
"""


@pytest.fixture
def own_network(tmp_path, user_code):
    """A user's own network code, ``mynets.Net(channels)`` (1,000 outputs), importable from the
    current folder (``tmp_path``) as ``--model mynets:Net`` would import it; returns the module."""
    import importlib
    import sys

    user_code("mynets", _OWN_NETWORK)
    sys.path.insert(0, str(tmp_path))  # for the test's own import; user_code restores sys.path
    return importlib.import_module("mynets")
