"""LightningDataModules: the embedded shapes data set and ImageNet-style image folders."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from zflight.data._base import SplitDataModule
from zflight.data.shapes import CLASSES, SHAPES_MEAN, SHAPES_STD, ShapesDataset

__all__ = [
    "ShapesDataModule",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "UnreadableImageError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
]

#: Per-channel mean and std of ImageNet-1k train pixels in [0, 1] (the torchvision values).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: File name endings (lower case) the folder data module reads as images.
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A data module's ``mean`` and ``std`` as float tuples: 3 values each, every std > 0."""
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean!r}, std={std!r}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class _RandomHFlip:
    """Horizontal flip of a ``[..., H, W]`` tensor with probability 0.5 (picklable, no PIL)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(()) < 0.5 else x

    def __repr__(self) -> str:
        return "RandomHFlip(p=0.5)"


# ------------------------------------------------------------------------------------ shapes
class ShapesDataModule(SplitDataModule):
    """The embedded shapes data set (:class:`~zflight.data.ShapesDataset`) as train/val/test splits.

    The three splits draw from different seeds derived from ``seed`` (``3*seed``, ``3*seed+1``,
    ``3*seed+2``), so they never share an image, and no two values of ``seed`` share a split.
    ``num_classes`` and ``classes`` are known right after construction (the CLI links
    ``data.num_classes`` to the model). With ``num_workers > 0`` the splits are rendered in
    ``setup()`` (progress bar shown) so that forked workers inherit the filled cache instead of
    each rendering its own; with ``num_workers=0`` images render lazily during the first epoch.

    Args:
        image_size: height and width of the images in pixels.
        train_size: number of training images.
        val_size: number of validation images.
        test_size: number of test images.
        seed: base seed (non-negative) of the three splits.
        clutter: background clutter, distractors and noise (0 = clean, 1 = default).
        batch_size: images per batch, in every split.
        num_workers: DataLoader worker processes (0 = load in the main process).
        augment: random horizontal flips of the training images.

    Example:
        >>> dm = ShapesDataModule(train_size=100, val_size=20, test_size=20, batch_size=10)
        >>> dm.num_classes
        10
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape
        torch.Size([10, 3, 64, 64])
    """

    def __init__(
        self,
        *,
        image_size: int = 64,
        train_size: int = 8000,
        val_size: int = 1000,
        test_size: int = 1000,
        seed: int = 0,
        clutter: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _check_int("image_size", image_size, 16)
        _check_int("train_size", train_size, 1)
        _check_int("val_size", val_size, 1)
        _check_int("test_size", test_size, 1)
        _check_int("seed", seed, 0)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        if isinstance(clutter, bool) or not isinstance(clutter, (int, float)) or clutter < 0:
            raise ValueError(f"clutter must be a number >= 0, got {clutter!r}")
        self.save_hyperparameters()
        self.image_size = image_size
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.seed = seed
        self.clutter = float(clutter)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self._classes, self._mean, self._std = CLASSES, SHAPES_MEAN, SHAPES_STD

    def _split(self, k: int, size: int, transform: Callable | None = None) -> ShapesDataset:
        return ShapesDataset(
            size, image_size=self.image_size, seed=3 * self.seed + k, clutter=self.clutter, transform=transform
        )

    def setup(self, stage: str | None = None) -> None:
        """Create the splits that ``stage`` needs (all of them when ``stage`` is None).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None.
        """
        made: list[ShapesDataset] = []
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._split(0, self.train_size, _RandomHFlip() if self.augment else None)
            made.append(self.train_dataset)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._split(1, self.val_size)
            made.append(self.val_dataset)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._split(2, self.test_size)
            made.append(self.test_dataset)
        if self.num_workers > 0:
            for ds in made:
                ds.render_all()


# ------------------------------------------------------------------------------ image folders
class UnreadableImageError(OSError):
    """An image file that cannot be opened or decoded. The message names the file.

    It takes a single message argument, so PyTorch's DataLoader can re-raise it in the main
    process with the worker's traceback (which names the file) instead of a bare error.
    """


def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # convert() forces the (lazy) decode while f is open
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


def _list_images(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    samples: list[tuple[str, int]] = []
    for cls, idx in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
        d = split_dir / cls
        if not d.is_dir():
            continue  # a val folder may lack some classes; labels still follow train's order
        for root, _, files in sorted(os.walk(d, followlinks=True)):
            samples.extend((os.path.join(root, f), idx) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS))
    return samples


class _StackCrops:
    """Turn TenCrop's tuple of PIL crops into one ``[n_crops, 3, h, w]`` tensor (picklable)."""

    def __init__(self, to_tensor: Callable[[Image.Image], torch.Tensor]) -> None:
        self.to_tensor = to_tensor

    def __call__(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.to_tensor(c) for c in crops])

    def __repr__(self) -> str:
        return f"StackCrops({self.to_tensor!r})"


class ImageFolderDataset(Dataset):
    """``(image, label)`` pairs from a list of files, with readable errors for bad files.

    Args:
        samples: ``(path, label)`` pairs.
        transform: applied to the RGB PIL image.
        skip_corrupt: on an unreadable file, warn (once per file and process) and return the next
            readable sample in the list instead (wrapping around), so batches keep their size.
            False: raise :class:`UnreadableImageError` naming the file.

    Example:
        >>> ds = ImageFolderDataset([("a.jpg", 0)], transform=T.ToTensor())  # doctest: +SKIP
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        skip_corrupt: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for k in range(n):
            path, label = self.samples[(index + k) % n]
            try:
                img = _load_rgb(path)
            except UnreadableImageError as e:
                if not self.skip_corrupt:
                    raise
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(f"skipping unreadable image {path} ({e.__cause__}); using the next file", stacklevel=2)
                continue
            return self.transform(img), label
        raise UnreadableImageError(f"none of the {n} image files is readable (first: {self.samples[0][0]})")


class ImageFolderDataModule(SplitDataModule):
    """ImageNet-style folders with the paper's preprocessing.

    Layout: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (sub-folders of a class
    folder are read too). Classes are the sub-folders of ``root/train``, sorted; the other splits
    use the same labels, and may lack some classes.

    Preprocessing (Zeiler & Fergus 2014, Sec. 3): shorter side resized to ``resize``, centre
    ``resize``×``resize`` crop, then for training a random ``crop_size`` crop with a random
    horizontal flip; validation takes the centre ``crop_size`` crop; the test split takes either the
    centre crop (``test_crops=1``) or the 4 corner + centre crops and their flips
    (``test_crops=10``, batches of ``[B, 10, 3, crop_size, crop_size]``, torchvision's TenCrop).

    Mean subtraction: the paper subtracts a per-pixel mean image from raw [0, 255] pixels. We
    subtract a per-channel mean and divide by a per-channel std instead: the per-pixel mean needs
    a full pass over the training set and is tied to one crop geometry, while ImageNet's mean image
    is nearly uniform in space, so per-channel means remove the same thing. To feed the paper's
    pixel scale (inputs roughly in [-128, 128], which its filter-renormalization radius assumes),
    pass ``std=(1/255, 1/255, 1/255)``.

    Args:
        root: folder holding ``train/`` and ``val/`` (and ``test_split``).
        resize: length of the shorter side after resizing, and of the square centre crop.
        crop_size: side of the crops fed to the network.
        test_crops: 1 (centre crop) or 10 (corners + centre, with flips) for the test split.
        test_split: sub-folder of ``root`` used by ``test``/``predict`` (the paper reports val).
        batch_size: images per batch (per process under DDP).
        num_workers: DataLoader worker processes per process.
        pin_memory: page-locked host memory for faster copies to the GPU.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        skip_corrupt: warn about unreadable files and use the next readable file instead of
            raising :class:`UnreadableImageError`.
        mean: per-channel mean of pixels in [0, 1] (ImageNet's by default).
        std: per-channel standard deviation of pixels in [0, 1] (ImageNet's by default).

    Raises:
        FileNotFoundError: ``root`` or ``root/train`` is missing or has no class folders
            (the message names the path); at ``setup()`` the same for the other splits.

    Example:
        >>> dm = ImageFolderDataModule("/data/imagenet", test_crops=10)  # doctest: +SKIP
        >>> dm.num_classes  # doctest: +SKIP
        1000
    """

    def __init__(
        self,
        root: str | Path,
        *,
        resize: int = 256,
        crop_size: int = 224,
        test_crops: int = 1,
        test_split: str = "val",
        batch_size: int = 128,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        skip_corrupt: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        _check_int("resize", resize, 1)
        _check_int("crop_size", crop_size, 1)
        if crop_size > resize:
            raise ValueError(f"crop_size ({crop_size}) must not exceed resize ({resize})")
        if test_crops not in (1, 10):
            raise ValueError(f"test_crops must be 1 or 10, got {test_crops!r}")
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        self._mean, self._std = _mean_std(mean, std)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist (expected {self.root}/train/<class>/*.jpg)")
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise FileNotFoundError(f"training folder {train_dir} does not exist (expected {train_dir}/<class>/*.jpg)")
        self._classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
        if not self._classes:
            raise FileNotFoundError(f"training folder {train_dir} has no class sub-folders")
        self.class_to_idx = {c: i for i, c in enumerate(self._classes)}
        self.resize, self.crop_size, self.test_crops, self.test_split = resize, crop_size, test_crops, test_split
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers, self.skip_corrupt = pin_memory, persistent_workers, skip_corrupt

    def _to_tensor(self) -> T.Compose:
        return T.Compose([T.ToTensor(), T.Normalize(self._mean, self._std)])

    def train_transform(self) -> T.Compose:
        """Shorter side to ``resize``, centre square crop, random ``crop_size`` crop, random flip."""
        return T.Compose(
            [
                T.Resize(self.resize),
                T.CenterCrop(self.resize),
                T.RandomCrop(self.crop_size),
                T.RandomHorizontalFlip(),
                self._to_tensor(),
            ]
        )

    def eval_transform(self) -> T.Compose:
        """Shorter side to ``resize``, centre ``crop_size`` crop."""
        return T.Compose([T.Resize(self.resize), T.CenterCrop(self.crop_size), self._to_tensor()])

    def test_transform(self) -> T.Compose:
        """The eval transform, or with ``test_crops=10`` the ten crops stacked ``[10, 3, h, w]``."""
        if self.test_crops == 1:
            return self.eval_transform()
        return T.Compose(
            [
                T.Resize(self.resize),
                T.CenterCrop(self.resize),
                T.TenCrop(self.crop_size),
                _StackCrops(self._to_tensor()),
            ]
        )

    def _dataset(self, split: str, transform: Callable) -> ImageFolderDataset:
        d = self.root / split
        if not d.is_dir():
            raise FileNotFoundError(f"{split} folder {d} does not exist (expected {d}/<class>/*.jpg)")
        samples = _list_images(d, self.class_to_idx)
        if not samples:
            raise FileNotFoundError(
                f"no images ({', '.join(IMG_EXTENSIONS)}) found in {d}/<class>/ for the classes of {self.root / 'train'}"
            )
        return ImageFolderDataset(samples, transform, skip_corrupt=self.skip_corrupt)

    def setup(self, stage: str | None = None) -> None:
        """List the files of the splits that ``stage`` needs (all when ``stage`` is None).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None.

        Raises:
            FileNotFoundError: a needed split folder is missing or holds no images.
        """
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset("train", self.train_transform())
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset("val", self.eval_transform())
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._dataset(self.test_split, self.test_transform())

    def _loader_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }
