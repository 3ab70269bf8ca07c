"""What :func:`~zflight.analysis.dissection.dissect` and
:func:`~zflight.analysis.dissection.unit_examples` check of their arguments, and how they
capture a layer's maps.

Example:
    >>> check_fraction("quantile", 0.005, open_interval=True)
    0.005
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from zflight.attribution._layers import (
    LayerNotReachedError,
    as_unit_maps,
    forward_until,
    resolve_layer,
)


def capture(
    model: nn.Module, modules: list[nn.Module], keys: list[str], images: torch.Tensor
) -> list[torch.Tensor]:
    """Run ``model`` until every module in ``modules`` has run; their outputs, in order.

    A module called twice keeps its first output (as ``forward_to`` does); hooks are removed
    even when the forward raises (:func:`~zflight.attribution._layers.forward_until`).
    """
    captured = forward_until(model, modules, images)
    outs = []
    for key, m in zip(keys, modules):
        if id(m) not in captured:
            raise LayerNotReachedError(
                f"layers: {key!r} was never called in the forward pass of {type(model).__name__}"
            )
        out = captured[id(m)]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layers: {key!r} returns {type(out).__name__}, not a tensor")
        outs.append(out)
    return outs


def as_maps(out: torch.Tensor, key: str) -> torch.Tensor:
    """A dissected layer's output as ``[N, units, h, w]`` (see :func:`as_unit_maps`)."""
    return as_unit_maps(out, f"layers: {key!r}", "dissection needs maps")


def check_fraction(name: str, value: Any, *, open_interval: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        interval = "(0, 1), both ends excluded" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_concept_dataset(dataset: Any) -> list[str]:
    if not callable(getattr(dataset, "concept_masks", None)) or not hasattr(dataset, "concepts"):
        raise ValueError(
            f"dataset ({type(dataset).__name__}) must have a 'concepts' list and a "
            "'concept_masks(index)' method (like ShapesDataset or ConceptFolder) to be dissected"
        )
    concepts = list(dataset.concepts)
    if not concepts or not all(isinstance(c, str) for c in concepts):
        raise ValueError(f"dataset.concepts must be a non-empty list of str, got {concepts!r}")
    if len(set(concepts)) != len(concepts):
        raise ValueError("dataset.concepts must not repeat a name")
    return concepts


def resolve_layers(
    model: nn.Module, layers: Any
) -> tuple[list[str], list[tuple[str, nn.Module]]]:
    items = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not items:
        raise ValueError("layers is empty: name at least one layer")
    resolved = []
    for item in items:
        try:
            resolved.append(resolve_layer(model, item))
        except (ValueError, TypeError) as err:
            raise ValueError(f"layers: {err}") from None
    keys = [item if isinstance(item, str) else name for item, (name, _m) in zip(items, resolved)]
    names = [name for name, _m in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"layers names a layer twice: {keys}")
    return keys, resolved


def check_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device``, or the model's own if ``None``; the model is never moved, so they must agree."""
    own = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    if device is None:
        return own if own is not None else torch.device("cpu")
    wanted = torch.device(device)
    if own is not None and (own.type != wanted.type or (wanted.index is not None and own != wanted)):
        raise ValueError(
            f"device={str(wanted)!r}, but the model's parameters are on {str(own)!r}: dissect does "
            "not move the model; move it first (model.to(device)) or leave device=None"
        )
    return wanted


def check_mask_size(dataset: Any) -> tuple[int, int] | None:
    """The data set's ``mask_size`` (``(height, width)`` of every concept mask, e.g. Broden's
    segmentation size, half the image), or ``None``: the masks have their image's size."""
    size = getattr(dataset, "mask_size", None)
    if size is None:
        return None
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    if not ok:
        raise ValueError(f"dataset.mask_size must be None or (height, width) positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def concept_categories(dataset: Any, concepts: list[str]) -> tuple[list[str] | None, torch.Tensor | None]:
    """The data set's categories and, per concept, the column of dissect's counts that holds a
    unit's mask pixels over the images of the concept's category.

    A data set with ``categories`` (a list of names) and ``image_categories(i)`` (the names
    image ``i`` annotates) has its concepts named ``<category>/<name>``; a concept of category
    ``g`` is scored over the images that annotate ``g`` only (Network Dissection's ``X_g``).
    Without them, every image counts for every concept.

    Returns:
        ``(None, None)`` without categories, else ``(categories, columns [C])`` with
        ``columns[c] = C + 2 + g`` for concept ``c`` of category ``g``.
    """
    categories = getattr(dataset, "categories", None)
    if categories is None:
        return None, None
    if not callable(getattr(dataset, "image_categories", None)):
        raise ValueError(
            "dataset has 'categories' but no 'image_categories(index)' method: both are needed to "
            "score each category over the images that annotate it"
        )
    categories = list(categories)
    if not categories or not all(isinstance(g, str) for g in categories) or len(set(categories)) != len(categories):
        raise ValueError(f"dataset.categories must be a non-empty list of distinct str, got {categories!r}")
    index = {g: j for j, g in enumerate(categories)}
    columns = []
    for c in concepts:
        g = c.split("/", 1)[0]
        if g not in index:
            raise ValueError(
                f"dataset.concepts has {c!r}, whose category {g!r} is not in dataset.categories {categories}"
            )
        columns.append(len(concepts) + 2 + index[g])
    return categories, torch.tensor(columns, dtype=torch.int64)
