"""Users' own pixel-labelled concepts, for network dissection: :class:`ConceptFolder`.

Layout::

    root/images/<name>.png | .jpg | .jpeg
    root/masks/<concept>/<name>.png          # non-zero = inside the concept

A concept may be nested (``root/masks/color/red/<name>.png`` is concept ``color/red``), so a
folder can use the same names as :meth:`zflight.data.ShapesDataset.concept_masks`. A concept
folder need not hold a mask for every image: a missing mask means the concept is absent there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zflight.data._index import check_index

from zflight.data.datamodules import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    UnreadableImageError,
    _load_rgb,
)

__all__ = ["IMAGE_SUFFIXES", "ConceptFolder"]

#: File endings (lower case) read from ``root/images``; masks are always ``.png`` (lossless).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def _size_arg(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)``, or None; a ValueError names the argument."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be None, an int or (height, width) ints, got {image_size!r}")
    if min(hw) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size!r}")
    return hw


class ConceptFolder(Dataset):
    """Images with per-pixel concept masks from a folder, normalized like the other data sets.

    The images are the files of ``root/images`` ending in ``.png``, ``.jpg`` or ``.jpeg`` (any
    case), sorted by name; an image's *name* is its file name without the ending. The concepts
    are the folders under ``root/masks`` that directly hold ``.png`` files, named by their path
    below ``masks`` with ``/`` separators, sorted. ``root/masks/<concept>/<name>.png`` is the
    mask of that concept in image ``<name>``: a pixel is inside where any channel of the stored
    image is non-zero (for palette images: where the palette index is non-zero), so 0/255 grey
    PNGs, 0/1 label PNGs and black-and-white RGB PNGs all work. A mask file with no image of
    its name is ignored with a warning (a typo would otherwise pass silently).

    ``image_size`` resizes each image to ``height x width`` (aspect ratio not kept) with PIL's
    bilinear filter, which averages when shrinking, and each mask with nearest neighbour after
    it is made binary, so masks stay binary; both filters map pixel centres the same way, so a
    mask stays aligned with its image. Without ``image_size`` images keep their own size, and
    a DataLoader can batch them only if they all share one.

    ``ds[i]`` is ``(x, label)``: ``x`` a float ``[3, H, W]`` tensor, ``(pixel/255 - mean)/std``
    per channel (torchvision's ``ToTensor`` + ``Normalize``), then ``transform``; ``label``
    ``labels[name]`` when given, else -1.

    Masks are read when :meth:`concept_masks` asks for them, and checked then: a mask whose size
    differs from its (original) image raises ValueError naming both.

    Args:
        root: folder holding ``images/`` and ``masks/``.
        image_size: None (keep sizes), an int (square) or ``(height, width)``.
        transform: optional callable applied to the normalized ``[3, H, W]`` tensor.
        mean: per-channel mean of pixels in [0, 1] (ImageNet's by default, like
            :class:`~zflight.data.ImageFolderDataModule`; pass the model's training values).
        std: per-channel standard deviation, all > 0.
        labels: optional mapping from image name to int class label; others get -1.

    Raises:
        FileNotFoundError: ``root``, ``root/images`` or ``root/masks`` is missing, or
            ``root/images`` holds no image file (the message names the folder).
        ValueError: two images share a name (names both files), ``masks`` holds no concept,
            a ``labels`` key names no image, or a bad ``image_size``/``mean``/``std``.

    Example:
        >>> ds = ConceptFolder("my_concepts", image_size=64)  # doctest: +SKIP
        >>> ds.concepts  # doctest: +SKIP
        ['color/red', 'sky', 'wheel']
        >>> x, label = ds[0]  # doctest: +SKIP
        >>> {k: int(m.sum()) for k, m in ds.concept_masks(0).items()}  # doctest: +SKIP
        {'sky': 1490, 'wheel': 212}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int | Sequence[int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        labels: Mapping[str, int] | None = None,
    ) -> None:
        self.image_size = _size_arg(image_size)
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean!r}, std={std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = transform
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"concept folder {self.root} does not exist (expected images/ and masks/ in it)")

        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"images folder {image_dir} does not exist (expected {image_dir}/<name>.png|jpg)")
        by_name: dict[str, Path] = {}
        for entry in sorted(os.scandir(image_dir), key=lambda e: e.name):
            path = Path(entry.path)
            if not entry.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in by_name:
                raise ValueError(f"images {by_name[path.stem]} and {path} share the name {path.stem!r}")
            by_name[path.stem] = path
        if not by_name:
            raise FileNotFoundError(f"images folder {image_dir} holds no {'/'.join(IMAGE_SUFFIXES)} file")
        #: Image names (file names without ending), in index order.
        self.names: list[str] = sorted(by_name)
        #: Image files, in index order.
        self.files: list[Path] = [by_name[n] for n in self.names]

        mask_dir = self.root / "masks"
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"masks folder {mask_dir} does not exist (expected {mask_dir}/<concept>/<name>.png)")
        # concept -> {image name -> mask file}; a concept is any folder holding .png files.
        self._masks: dict[str, dict[str, Path]] = {}
        orphans: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(mask_dir, followlinks=True):
            dirnames.sort()
            pngs = sorted(f for f in filenames if f.lower().endswith(".png"))
            if not pngs:
                continue
            concept = Path(dirpath).relative_to(mask_dir).as_posix()
            if concept == ".":
                raise ValueError(
                    f"mask files lie directly in {mask_dir} (e.g. {pngs[0]}): put them in {mask_dir}/<concept>/"
                )
            files: dict[str, Path] = {}
            for f in pngs:
                name = f[: -len(".png")]
                if name in by_name:
                    files[name] = Path(dirpath) / f
                else:
                    orphans.append(Path(dirpath) / f)
            self._masks[concept] = files
        if not self._masks:
            raise ValueError(f"masks folder {mask_dir} holds no concept folder with .png masks")
        if orphans:
            warnings.warn(
                f"{len(orphans)} mask file(s) have no image in {image_dir} and are ignored, e.g. {orphans[0]}",
                stacklevel=2,
            )
        self._concepts = sorted(self._masks)

        labels = dict(labels or {})
        unknown = sorted(set(labels) - set(by_name))
        if unknown:
            raise ValueError(f"labels names {len(unknown)} image(s) not in {image_dir}, e.g. {unknown[0]!r}")
        #: Label of each image, -1 where ``labels`` has none.
        self.targets: list[int] = [int(labels.get(n, -1)) for n in self.names]
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    # ----------------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(image, label)``: a normalized float ``[3, H, W]`` tensor and an int (-1 if unlabelled)."""
        i = self._check_index(index)
        x = (self.image(i).float().div_(255.0) - self._mean_t) / self._std_t
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]

    def __repr__(self) -> str:
        return f"ConceptFolder({str(self.root)!r}, {len(self)} images, {len(self._concepts)} concepts)"

    @property
    def concepts(self) -> list[str]:
        """Concept names (mask folders below ``masks/``), sorted."""
        return list(self._concepts)

    def image(self, index: int) -> torch.Tensor:
        """The picture of item ``index``, resized, for display.

        Args:
            index: item index.

        Returns:
            uint8 ``[3, H, W]`` tensor.

        Raises:
            UnreadableImageError: the image file cannot be decoded (the message names it).

        Example:
            >>> ConceptFolder("my_concepts", image_size=64).image(0).shape  # doctest: +SKIP
            torch.Size([3, 64, 64])
        """
        img = _load_rgb(str(self.files[self._check_index(index)]))
        if self.image_size is not None:
            h, w = self.image_size
            img = img.resize((w, h), Image.BILINEAR)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def concept_masks(self, index: int) -> dict[str, torch.Tensor]:
        """The masks of the concepts labelled in item ``index``.

        Same interface as :meth:`zflight.data.ShapesDataset.concept_masks`: only concepts with at
        least one pixel inside are returned (a concept with no mask file for this image, or an
        all-zero one, is absent from the dict and is all False here).

        Args:
            index: item index.

        Returns:
            Dict from concept name (in :attr:`concepts` order) to a bool ``[H, W]`` tensor, at
            ``image_size`` when given, else at the image's own size.

        Raises:
            ValueError: a mask's size differs from its image's (names the mask file).
            UnreadableImageError: a mask or image file cannot be decoded (names it).

        Example:
            >>> ConceptFolder("my_concepts").concept_masks(0)["sky"].dtype  # doctest: +SKIP
            torch.bool
        """
        i = self._check_index(index)
        name, image_path = self.names[i], self.files[i]
        size: tuple[int, int] | None = None  # the original image's (width, height), read once
        out: dict[str, torch.Tensor] = {}
        for concept in self._concepts:
            path = self._masks[concept].get(name)
            if path is None:
                continue
            inside = self._read_mask(path)
            if size is None:
                size = self._image_size_of(image_path)
            if (inside.shape[1], inside.shape[0]) != size:
                raise ValueError(
                    f"mask {path} is {inside.shape[1]}x{inside.shape[0]} pixels but its image {image_path} "
                    f"is {size[0]}x{size[1]} (width x height)"
                )
            if self.image_size is not None:
                h, w = self.image_size
                small = Image.fromarray(inside.astype(np.uint8) * 255, "L").resize((w, h), Image.NEAREST)
                inside = np.asarray(small) > 0
            if inside.any():
                out[concept] = torch.from_numpy(np.ascontiguousarray(inside))
        return out

    # ---------------------------------------------------------------------------------- internals
    def _check_index(self, index: int) -> int:
        return check_index(index, len(self.names), f"ConceptFolder of {len(self.names)} images")

    @staticmethod
    def _read_mask(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                a = np.asarray(img)  # palette images stay indices: index 0 is outside
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImageError(f"cannot read mask file {path}: {type(e).__name__}: {e}") from e
        return a.any(axis=-1) if a.ndim == 3 else a != 0

    @staticmethod
    def _image_size_of(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as img:  # the header only: no decode
                return img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImageError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
