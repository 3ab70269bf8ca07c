"""Concept data sets as :func:`~zflight.analysis.dissection.dissect` reads them: checked
items, their collation, and :class:`ConceptSubset`.

Pass 1 reads ``(image, index)`` items (:class:`Items`, :func:`collate_images`); pass 2 reads
each image's present concepts as stacked masks (:class:`Items` with ``masks_of_size``) and
pads them to the batch's largest (:class:`Collate`).

Example:
    >>> from zflight.data import ShapesDataset
    >>> masks, columns, annotates = Items(ShapesDataset(2), ShapesDataset(1).concepts, masks_of_size=(64, 64))[0]
    >>> masks.dtype, masks.shape[1:]
    (torch.bool, torch.Size([64, 64]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


class ConceptSubset(Dataset):
    """Items ``indices`` of a concept data set, keeping ``concepts``, ``concept_masks`` and display.

    ``torch.utils.data.Subset`` forwards only ``__getitem__``; :func:`dissect` also needs
    ``concepts`` and ``concept_masks(i)`` (and, where the data set has them, ``mask_size``,
    ``categories`` and ``image_categories(i)``), and the figures need the images for display
    (``denormalize`` or ``image(i)``), so this forwards those too, with item ``j`` being
    ``dataset[indices[j]]``.

    Args:
        dataset: a data set with ``concepts`` and ``concept_masks(i)``.
        indices: the items kept, in order.

    Raises:
        ValueError: an index out of range (naming ``indices``).

    Example:
        >>> from zflight.data import ShapesDataset
        >>> sub = ConceptSubset(ShapesDataset(10), range(4))
        >>> len(sub), sub.concepts == ShapesDataset(1).concepts
        (4, True)
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"indices: {bad[0]} is out of range for a data set of {n} items")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Any:
        return self.dataset[self.indices[j]]

    @property
    def concepts(self) -> list[str]:
        """The wrapped data set's concept names."""
        return list(self.dataset.concepts)  # type: ignore[attr-defined]

    def concept_masks(self, j: int) -> dict[str, torch.Tensor]:
        """The wrapped data set's ``concept_masks`` of item ``indices[j]``."""
        return self.dataset.concept_masks(self.indices[j])  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        # denormalize, image, mask, ...: the wrapped data set's (image(i) with the index mapped).
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        attr = getattr(self.dataset, name)
        if name in ("image", "mask", "box", "keypoints", "image_categories") and callable(attr):
            return lambda j, *a, **kw: attr(self.indices[j], *a, **kw)
        return attr


class Items(Dataset):
    """Checked items for the DataLoader: ``(image, index)`` for pass 1, or with
    ``masks_of_size`` (the masks' size: the images', known from pass 1, or the data set's
    ``mask_size``) ``(masks [Cp, H, W], concept indices [Cp], annotates [G])`` for pass 2: the
    masks of the concepts present, in concept order, and which of ``categories`` the image
    annotates (``dataset.image_categories(i)``; ``G = 0`` without categories).

    Args:
        dataset: the concept data set.
        concepts: its concept names.
        masks_of_size: ``None`` for pass 1, else the size every mask must have.
        size_from: what that size is, for the message of a mask of another size.
        size_of: whose size it is, in that message (followed by the image's index).
        categories: the data set's categories, or ``None``.
    """

    def __init__(
        self, dataset: Dataset, concepts: list[str], *, masks_of_size: tuple[int, int] | None = None,
        size_from: str = "its image's size", size_of: str = "image", categories: list[str] | None = None,
    ) -> None:
        self.dataset, self.concepts, self.size = dataset, concepts, masks_of_size
        self.size_from, self.size_of, self.categories = size_from, size_of, categories
        self.column = {c: j for j, c in enumerate(concepts)}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        if self.size is None:
            item = self.dataset[i]
            image = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                raise ValueError(
                    f"dataset[{i}] must be (image tensor [3, H, W], label) or an image tensor, got "
                    f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}"
                )
            return image, i
        raw = self.dataset.concept_masks(i)  # type: ignore[attr-defined]
        if not isinstance(raw, dict):
            raise TypeError(f"dataset.concept_masks({i}) must return a dict, got {type(raw).__name__}")
        masks: dict[int, torch.Tensor] = {}
        for name, mask in raw.items():
            if name not in self.column:
                raise ValueError(
                    f"dataset.concept_masks({i}) has concept {name!r}, which is not in "
                    "dataset.concepts"
                )
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != self.size:
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(
                    f"dataset.concept_masks({i})[{name!r}] has shape {got}, but {self.size_of} "
                    f"{i} is {self.size[0]}x{self.size[1]}: a mask must have {self.size_from}"
                )
            masks[self.column[name]] = mask if mask.dtype == torch.bool else mask != 0
        columns = sorted(masks)
        stacked = torch.stack([masks[c] for c in columns]) if columns else torch.zeros((0, *self.size), dtype=torch.bool)
        annotates = torch.zeros(len(self.categories or ()), dtype=torch.bool)
        if self.categories:
            named = set(self.dataset.image_categories(i))  # type: ignore[attr-defined]
            unknown = sorted(named - set(self.categories))
            if unknown:
                raise ValueError(
                    f"dataset.image_categories({i}) names {unknown[0]!r}, which is not in "
                    f"dataset.categories {self.categories}"
                )
            annotates = torch.tensor([g in named for g in self.categories], dtype=torch.bool)
        return stacked, torch.tensor(columns, dtype=torch.int64), annotates


def collate_images(items: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    same_size(items)  # the indices name the images in its message
    return torch.stack([it[0] for it in items])


class Collate:
    """Stack, per image, the masks of its present concepts.

    Returns ``masks [B, Cp, H, W]`` bool, ``columns [B, Cp]`` (each mask's concept index;
    ``C`` pads the images with fewer than ``Cp``, the most any image of the batch has) and
    ``annotates [B, G]``, the categories each image annotates. An
    image shows a handful of the concepts (an object, its colour, a few parts, distractors,
    background), so this is ~C/Cp times smaller than a dense ``[B, C, H, W]`` stack.
    :class:`~zflight.analysis._unit_masks.PixelClasses` takes it from there.
    """

    def __init__(self, n_concepts: int) -> None:
        self.n_concepts = n_concepts

    def __call__(
        self, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, (h, w) = len(items), items[0][0].shape[-2:]
        cp = max(1, max(it[0].shape[0] for it in items))
        masks = torch.zeros((b, cp, h, w), dtype=torch.bool)
        columns = torch.full((b, cp), self.n_concepts, dtype=torch.int64)
        for row, (stacked, present, _annotates) in enumerate(items):
            masks[row, : stacked.shape[0]] = stacked
            columns[row, : present.numel()] = present
        return masks, columns, torch.stack([it[2] for it in items])


def same_size(items: list[tuple[Any, ...]]) -> None:
    shape = items[0][0].shape
    for it in items[1:]:
        if it[0].shape != shape:
            raise ValueError(
                f"dataset images must share one size: image {it[-1]} is {tuple(it[0].shape)}, "
                f"image {items[0][-1]} is {tuple(shape)}"
            )


def check_image_size(images: torch.Tensor, seen: tuple[int, int] | None) -> tuple[int, int]:
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if seen is not None and size != seen:
        raise ValueError(f"dataset images must share one size: found {seen} and {size}")
    return size
