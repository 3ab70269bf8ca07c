"""Broden (Bau et al., CVPR 2017), read from the folder NetDissect's script downloads:
:class:`BrodenDataset`.

Layout (``broden1_224`` or ``broden1_227``)::

    root/index.csv      image,split,ih,iw,sh,sw,<one column per category>
    root/label.csv      number,name,category,frequency,coverage,syns
    root/category.csv   name,first,last,count,frequency
    root/c_<category>.csv   code,number,name,frequency,coverage (the labels of one category)
    root/images/...     the images and their label PNGs, at the paths index.csv names

Each category cell of ``index.csv`` is empty (the image does not annotate the category) or a
``;``-separated list: an all-digit token is a label number covering the whole image (scenes,
textures), any other token a PNG (relative to ``images/``) whose pixels carry label numbers as
``R + 256 * G`` (0: unlabelled). A category may have several PNG layers (parts). The PNGs are
``sh x sw``, the segmentation size (half the image in Broden).

A concept is a label of a category, named ``<category>/<name>`` (``object/dog``,
``color/red-c``, ``scene/kitchen-s``), for each label a category's ``c_<category>.csv`` lists;
the concepts are in ``label.csv`` order (then ``category.csv`` order for a label in several
categories), so that "the first concept" on ties is the first in ``label.csv``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
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

__all__ = ["BrodenDataset", "is_broden"]



def is_broden(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` is a Broden-format folder (it holds ``index.csv``).

    Example:
        >>> is_broden("/nonexistent")
        False
    """
    return (Path(root).expanduser() / "index.csv").is_file()


class _Row:
    """One image of ``index.csv``: its file, sizes, line (for messages) and category cells."""

    __slots__ = ("cells", "ih", "image", "iw", "line", "sh", "split", "sw")

    def __init__(self, record: dict[str, str], line: int, categories: Sequence[str]) -> None:
        self.line = line
        self.image, self.split = record["image"], record.get("split") or ""
        try:
            self.ih, self.iw, self.sh, self.sw = (int(record[k]) for k in ("ih", "iw", "sh", "sw"))
        except (TypeError, ValueError):
            raise ValueError(
                f"index.csv line {line}: ih, iw, sh, sw must be ints, got "
                f"{[record.get(k) for k in ('ih', 'iw', 'sh', 'sw')]}"
            ) from None
        #: category -> its tokens (label numbers as int, PNG paths as str); annotated ones only.
        self.cells: dict[str, list[int | str]] = {}
        for g in categories:
            tokens = [t for t in (record.get(g) or "").split(";") if t]
            if tokens:
                self.cells[g] = [int(t) if t.isdigit() else t for t in tokens]


class BrodenDataset(Dataset):
    """Broden's images with per-pixel concept masks, for :func:`~zflight.analysis.dissect`.

    ``ds[i]`` is ``(x, -1)``: ``x`` the image at its stored size (224 for ``broden1_224``) as a
    float ``[3, ih, iw]`` tensor, ``(pixel/255 - mean)/std`` per channel (pass the model's
    training values), then ``transform``. :meth:`concept_masks` gives the image's concepts as
    bool ``[sh, sw]`` masks (:attr:`mask_size`, half the image), :meth:`image_categories` the
    categories the image annotates. Only the images that annotate at least one of
    ``categories`` are kept (as NetDissect does).

    The label PNGs are read when :meth:`concept_masks` asks for them (read them in DataLoader
    workers: ``dissect(..., num_workers=4)``), and checked then.

    Args:
        root: the Broden folder (holding ``index.csv``).
        categories: the categories to read (default: every one of ``category.csv``).
        mean: per-channel mean of pixels in [0, 1] (ImageNet's by default).
        std: per-channel standard deviation, all > 0.
        transform: optional callable applied to the normalized ``[3, H, W]`` tensor.
        split: keep only the images of this ``split`` column value (``"train"``, ``"val"``);
            ``None``: all.

    Raises:
        FileNotFoundError: ``index.csv``, ``label.csv``, ``category.csv`` or a selected
            category's ``c_<category>.csv`` is missing (the message names the file).
        ValueError: an unknown category (listing the valid ones), an ``index.csv`` without a
            needed column or with a bad size, no image annotating the categories, a bad
            ``mean``/``std``.

    Example:
        >>> ds = BrodenDataset("broden1_224", ["object", "part"])  # doctest: +SKIP
        >>> ds.concepts[:2], ds.mask_size  # doctest: +SKIP
        (['object/person', 'part/person'], (112, 112))
        >>> sorted(ds.concept_masks(0))[:1]  # doctest: +SKIP
        ['object/wall']
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        categories: Sequence[str] | None = None,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        split: str | None = None,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean!r}, std={std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = transform
        self.root = Path(root).expanduser()
        index_records, index_columns = _read_csv(self.root / "index.csv", ("image", "ih", "iw", "sh", "sw"))
        label_records, _ = _read_csv(self.root / "label.csv", ("number", "name"))
        category_records, _ = _read_csv(self.root / "category.csv", ("name",))

        known = [r["name"] for r in category_records]
        if categories is None:
            chosen = known
        else:
            if isinstance(categories, str):
                categories = [categories]
            unknown = [g for g in categories if g not in known]
            if unknown:
                raise ValueError(
                    f"categories: {unknown[0]!r} is not a category of {self.root} (category.csv has "
                    f"{', '.join(known)})"
                )
            chosen = [g for g in known if g in set(categories)]  # category.csv's order
        missing = [g for g in chosen if g not in index_columns]
        if missing:
            raise ValueError(f"{self.root / 'index.csv'} has no column for category {missing[0]!r}")
        #: The categories read, in ``category.csv`` order.
        self.categories: list[str] = list(chosen)

        # label number -> name, in label.csv order; 0 is "unlabelled" wherever it appears.
        self._names: dict[int, str] = {}
        for line, r in enumerate(label_records, start=2):
            number = _int(r["number"], "label.csv", line, "number")
            if number != 0:
                self._names[number] = r["name"]
        members: dict[str, set[int]] = {}
        for g in self.categories:
            path = self.root / f"c_{g}.csv"
            records, _ = _read_csv(path, ("number",))
            members[g] = {_int(r["number"], path.name, line, "number") for line, r in enumerate(records, start=2)}
        concepts: list[str] = []
        size = max(self._names, default=0) + 1
        #: Per category: label number -> concept column, -1 for none (a number that
        #: label.csv has but this category does not, as NetDissect's dense maps drop it).
        self._column: dict[str, np.ndarray] = {g: np.full(size, -1, dtype=np.int64) for g in self.categories}
        self._known = np.zeros(size, dtype=bool)
        for number, name in self._names.items():
            self._known[number] = True
            for g in self.categories:
                if number in members[g]:
                    concept = f"{g}/{name}"
                    if concept in concepts:  # two labels of one name: keep both apart
                        concept = f"{g}/{name} ({number})"
                    self._column[g][number] = len(concepts)
                    concepts.append(concept)
        self._concepts = concepts

        rows = [_Row(r, line, self.categories) for line, r in enumerate(index_records, start=2)]
        self._rows = [r for r in rows if r.cells and (split is None or r.split == split)]
        if not self._rows:
            raise ValueError(
                f"{self.root / 'index.csv'} has no image that annotates {', '.join(self.categories)}"
                + ("" if split is None else f" in split {split!r}")
            )
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    # ----------------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image, -1)``: a normalized float ``[3, ih, iw]`` tensor (Broden has no class labels)."""
        x = (self.image(index).float().div_(255.0) - self._mean_t) / self._std_t
        if self.transform is not None:
            x = self.transform(x)
        return x, -1

    def __repr__(self) -> str:
        return (f"BrodenDataset({str(self.root)!r}, {len(self)} images, {len(self._concepts)} concepts in "
                f"{', '.join(self.categories)})")

    @property
    def concepts(self) -> list[str]:
        """Concept names ``<category>/<name>``, in ``label.csv`` order."""
        return list(self._concepts)

    @property
    def files(self) -> list[Path]:
        """The image files, in index order."""
        return [self.root / "images" / r.image for r in self._rows]

    @property
    def mask_size(self) -> tuple[int, int]:
        """``(sh, sw)``, the size of every concept mask (the segmentation size of ``index.csv``).

        Raises:
            ValueError: the images do not share one segmentation size (naming two lines).
        """
        first = self._rows[0]
        for r in self._rows:
            if (r.sh, r.sw) != (first.sh, first.sw):
                raise ValueError(
                    f"index.csv: the segmentation sizes differ (line {first.line} is {first.sh}x{first.sw}, "
                    f"line {r.line} is {r.sh}x{r.sw}); dissect needs one mask size"
                )
        return first.sh, first.sw

    def image_categories(self, index: int) -> list[str]:
        """The categories image ``index`` annotates (non-empty cells of ``index.csv``).

        Example:
            >>> BrodenDataset("broden1_224").image_categories(0)  # doctest: +SKIP
            ['color', 'object', 'part']
        """
        return list(self._rows[self._check_index(index)].cells)

    def image(self, index: int) -> torch.Tensor:
        """The picture of item ``index`` for display: uint8 ``[3, ih, iw]``.

        Raises:
            UnreadableImageError: the image cannot be decoded (names it).
            ValueError: its size is not ``ih x iw`` of ``index.csv`` (names it and its line).
        """
        row = self._rows[self._check_index(index)]
        path = self.root / "images" / row.image
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (index.csv line {row.line}) does not exist")
        img = _load_rgb(str(path))
        if img.size != (row.iw, row.ih):
            raise ValueError(
                f"image {path} is {img.size[0]}x{img.size[1]} (width x height) but index.csv line "
                f"{row.line} says {row.iw}x{row.ih}"
            )
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def concept_masks(self, index: int) -> dict[str, torch.Tensor]:
        """The masks of the concepts labelled in item ``index``, at ``sh x sw``.

        Same interface as :meth:`zflight.data.ShapesDataset.concept_masks`: only concepts with
        at least one pixel are returned. A whole-image label (an all-digit token) covers every
        pixel; a PNG layer's pixels carry ``R + 256 * G``; the layers of one category are
        merged (a pixel carries every label any layer gives it).

        Returns:
            Dict from concept name (in :attr:`concepts` order) to a bool ``[sh, sw]`` tensor.

        Raises:
            FileNotFoundError: a PNG of the row is missing (names it and its line).
            ValueError: a PNG is not ``sh x sw``, or a label number is not in ``label.csv``.
            UnreadableImageError: a PNG cannot be decoded.

        Example:
            >>> BrodenDataset("broden1_224").concept_masks(0)["object/wall"].shape  # doctest: +SKIP
            torch.Size([112, 112])
        """
        row = self._rows[self._check_index(index)]
        masks: dict[int, np.ndarray] = {}
        for g, tokens in row.cells.items():
            column = self._column[g]
            for token in tokens:
                if isinstance(token, int):
                    self._check_known(np.array([token]), f"index.csv line {row.line} ({g})")
                    if token and column[token] >= 0:
                        masks[int(column[token])] = np.ones((row.sh, row.sw), dtype=bool)
                    continue
                codes = self._read_png(row, g, token)
                numbers = np.unique(codes)
                numbers = numbers[numbers != 0]
                path = self.root / "images" / token
                self._check_known(numbers, f"{path} (index.csv line {row.line})")
                for number in numbers.tolist():
                    col = int(column[number])
                    if col < 0:
                        continue
                    inside = codes == number
                    masks[col] = masks[col] | inside if col in masks else inside
        return {self._concepts[c]: torch.from_numpy(masks[c]) for c in sorted(masks)}

    # ---------------------------------------------------------------------------------- internals
    def _check_index(self, index: int) -> int:
        return check_index(index, len(self._rows), f"BrodenDataset of {len(self._rows)} images")

    def _check_known(self, numbers: np.ndarray, where: str) -> None:
        bad = numbers[(numbers >= self._known.size) | ~self._known[np.minimum(numbers, self._known.size - 1)]]
        bad = bad[bad != 0]
        if bad.size:
            raise ValueError(f"label number {int(bad[0])} in {where} is not in {self.root / 'label.csv'}")

    def _read_png(self, row: _Row, category: str, token: str) -> np.ndarray:
        path = self.root / "images" / token
        try:
            with Image.open(path) as img:
                if img.mode not in ("RGB", "RGBA"):
                    img = img.convert("RGB")
                a = np.asarray(img)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"label PNG {path} ({category}, index.csv line {row.line}) does not exist"
            ) from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImageError(f"cannot read label PNG {path}: {type(e).__name__}: {e}") from e
        if a.shape[:2] != (row.sh, row.sw):
            raise ValueError(
                f"label PNG {path} is {a.shape[1]}x{a.shape[0]} (width x height), but index.csv line "
                f"{row.line} gives the segmentation size sw x sh = {row.sw}x{row.sh}"
            )
        return a[:, :, 0].astype(np.int32) + 256 * a[:, :, 1].astype(np.int32)


def _read_csv(path: Path, needed: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """The rows of a CSV with a header line, and its columns; the message names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (a Broden folder holds index.csv, label.csv, "
                                "category.csv and c_<category>.csv)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
        columns = list(reader.fieldnames or [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{path} has no {missing[0]!r} column (its columns: {', '.join(columns)})")
    return records, columns


def _int(value: str | None, file: str, line: int, column: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise ValueError(f"{file} line {line}: {column} must be an int, got {value!r}") from None
