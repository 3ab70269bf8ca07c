"""Network Dissection (Bau et al., CVPR 2017): name what each unit of a layer detects.

:func:`dissect` scores every unit of the requested layers against pixel-labelled concepts and
labels each unit with the concept its thresholded activation overlaps best. The rule is Bau et
al.'s, exactly:

- the threshold ``T_k`` of unit ``k`` is the ``1 - quantile`` quantile of all its activations
  over every position of every image, at the layer's own resolution, as
  ``torch.quantile(values, 1 - quantile)`` (linear interpolation) computes it;
- its mask on an image is ``M_k = F.interpolate(a_k, size=image size, mode="bilinear",
  align_corners=False) > T_k``;
- ``IoU(k, c) = sum_images |M_k & L_c| / sum_images |M_k | L_c|`` over the whole data set;
- the unit's label is the concept of largest IoU (the first one on ties), and the unit is a
  *detector* where that IoU exceeds ``iou_threshold``.

It takes two passes over the data but only one forward pass: the first pass runs the model and
keeps each unit's top values (those the quantile reads, with their places and 3x3
neighbourhoods); the second reads the concept masks and rebuilds, from what the first kept,
every map that can reach a mask. Its memory does not depend on the number of images except
through those top values (``quantile * N * h * w`` per unit, 0.5 % of a layer's activations by
default, each with 9 neighbours and a place).

Example:
    >>> import zflight
    >>> from zflight.data import ShapesDataset
    >>> model = zflight.zfnet(num_classes=10, width=0.125, image_size=64)
    >>> result = dissect(model, ShapesDataset(20), ["conv1", "conv5"], progress=False)  # doctest: +SKIP
    >>> result.summary()["conv5"]["detectors"]  # doctest: +SKIP
    3
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zflight.analysis._unit_masks import (
    PixelClasses,
    Workspace,
    count_masks,
    true_positions,
)
from zflight.attribution._layers import (
    LayerNotReachedError,
    forward_until,
    preserve_modes,
    resolve_layer,
)

__all__ = [
    "CONCEPT_FAMILIES",
    "ConceptSubset",
    "Dissection",
    "LayerDissection",
    "UnitExamples",
    "dissect",
    "unit_examples",
]

#: The concept families :meth:`Dissection.summary` always reports (a concept's family is the
#: text before its first ``/``); other families found in the concept names are added after them.
CONCEPT_FAMILIES: tuple[str, ...] = ("object", "color", "part", "distractor", "background")

@dataclass(frozen=True)
class LayerDissection:
    """One layer's dissection.

    Attributes:
        name: the layer's dotted name in the model.
        feature_size: ``(height, width)`` of the layer's maps.
        iou: ``[units, concepts]`` float64, the data set IoU of each unit with each concept.
        thresholds: ``[units]``, each unit's activation threshold ``T_k`` (the activations'
            dtype; NaN where the unit's activations hold a NaN, as ``torch.quantile`` gives).
        labels: each unit's best concept.
        best_iou: ``[units]`` float64, the IoU of that concept.
        detectors: ``[units]`` bool, ``best_iou > iou_threshold``.
    """

    name: str
    feature_size: tuple[int, int]
    iou: torch.Tensor
    thresholds: torch.Tensor
    labels: list[str]
    best_iou: torch.Tensor
    detectors: torch.Tensor

    @property
    def num_units(self) -> int:
        """Number of units (channels) of the layer."""
        return int(self.iou.shape[0])


@dataclass(frozen=True)
class Dissection:
    """The result of :func:`dissect`: per layer, every unit's IoU with every concept.

    Attributes:
        layers: per requested layer (keyed as it was given), its :class:`LayerDissection`.
        concepts: the concept names, in the order of the IoU matrices' columns.
        quantile: the top fraction of activations that defines each unit's threshold.
        iou_threshold: the IoU above which a unit counts as a detector.
        num_images: images dissected.
        image_size: ``(height, width)`` of the images (and concept masks).
    """

    layers: dict[str, LayerDissection]
    concepts: list[str]
    quantile: float
    iou_threshold: float
    num_images: int
    image_size: tuple[int, int]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Detectors and unique concepts per layer, overall and per concept family.

        Returns:
            ``{layer: {"units", "detectors", "unique_concepts", "concepts", "families"}}`` where
            ``concepts`` lists the detected concepts (sorted) and ``families`` maps each family
            (:data:`CONCEPT_FAMILIES` first, then any other family found) to
            ``{"detectors", "unique_concepts"}``.

        Example:
            >>> result.summary()["conv5"]["families"]["object"]  # doctest: +SKIP
            {'detectors': 4, 'unique_concepts': 3}
        """
        families = list(CONCEPT_FAMILIES)
        families += sorted({_family(c) for c in self.concepts} - set(families))
        out: dict[str, dict[str, Any]] = {}
        for key, layer in self.layers.items():
            found = [lab for lab, det in zip(layer.labels, layer.detectors.tolist()) if det]
            per_family = {
                fam: {
                    "detectors": sum(1 for lab in found if _family(lab) == fam),
                    "unique_concepts": len({lab for lab in found if _family(lab) == fam}),
                }
                for fam in families
            }
            out[key] = {
                "units": layer.num_units,
                "detectors": len(found),
                "unique_concepts": len(set(found)),
                "concepts": sorted(set(found)),
                "families": per_family,
            }
        return out

    def top_units(self, layer: str, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` units of ``layer`` with the largest best IoU.

        Args:
            layer: a key of :attr:`layers` (as given to :func:`dissect`) or a layer's dotted name.
            n: how many units (fewer if the layer has fewer).

        Returns:
            ``[{"unit", "label", "iou", "detector", "threshold"}]`` by descending IoU (lower unit
            index first on ties).

        Raises:
            ValueError: ``layer`` was not dissected, or ``n`` is not a positive int.

        Example:
            >>> result.top_units("conv5", 3)[0]["label"]  # doctest: +SKIP
            'object/circle'
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        ld = self._layer(layer)
        order = sorted(range(ld.num_units), key=lambda k: (-float(ld.best_iou[k]), k))[:n]
        return [
            {
                "unit": k,
                "label": ld.labels[k],
                "iou": float(ld.best_iou[k]),
                "detector": bool(ld.detectors[k]),
                "threshold": _json_float(float(ld.thresholds[k])),
            }
            for k in order
        ]

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (lists, str, float, int, bool, None) holding everything.

        NaN thresholds become ``None``. :meth:`from_json` restores the result exactly.

        Example:
            >>> json.dumps(result.to_json())  # doctest: +SKIP
        """
        return {
            "concepts": list(self.concepts),
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "image_size": list(self.image_size),
            "settings": dict(self.settings),
            "layers": {
                key: {
                    "name": ld.name,
                    "feature_size": list(ld.feature_size),
                    "threshold_dtype": str(ld.thresholds.dtype).removeprefix("torch."),
                    "thresholds": [_json_float(v) for v in ld.thresholds.double().tolist()],
                    "labels": list(ld.labels),
                    "best_iou": ld.best_iou.tolist(),
                    "detectors": ld.detectors.tolist(),
                    "iou": ld.iou.tolist(),
                }
                for key, ld in self.layers.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dissection:
        """Rebuild a :class:`Dissection` from :meth:`to_json`'s dict.

        Args:
            data: the dict (e.g. read back with ``json.load``).

        Returns:
            The dissection.

        Raises:
            ValueError: ``data`` lacks a key :meth:`to_json` writes.

        Example:
            >>> Dissection.from_json(result.to_json()).concepts == result.concepts  # doctest: +SKIP
            True
        """
        try:
            layers = {
                key: LayerDissection(
                    name=d["name"],
                    feature_size=(int(d["feature_size"][0]), int(d["feature_size"][1])),
                    iou=torch.tensor(d["iou"], dtype=torch.float64).reshape(
                        len(d["labels"]), len(data["concepts"])
                    ),
                    thresholds=torch.tensor(
                        [math.nan if v is None else v for v in d["thresholds"]],
                        dtype=getattr(torch, d["threshold_dtype"]),
                    ),
                    labels=list(d["labels"]),
                    best_iou=torch.tensor(d["best_iou"], dtype=torch.float64),
                    detectors=torch.tensor(d["detectors"], dtype=torch.bool),
                )
                for key, d in data["layers"].items()
            }
            return cls(
                layers=layers,
                concepts=list(data["concepts"]),
                quantile=float(data["quantile"]),
                iou_threshold=float(data["iou_threshold"]),
                num_images=int(data["num_images"]),
                image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
                settings=dict(data.get("settings", {})),
            )
        except KeyError as err:
            raise ValueError(f"data is not a Dissection.to_json() dict: missing key {err}") from None

    def _layer(self, layer: str) -> LayerDissection:
        if layer in self.layers:
            return self.layers[layer]
        for ld in self.layers.values():
            if ld.name == layer:
                return ld
        raise ValueError(f"layer={layer!r} was not dissected; dissected: {list(self.layers)}")


def dissect(
    model: nn.Module,
    dataset: Dataset,
    layers: str | nn.Module | Sequence[str | nn.Module],
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Dissection:
    """Label every unit of ``layers`` with the concept it detects (Network Dissection).

    Two passes over ``dataset``, one forward pass in all, stopped after the last requested
    layer. The first finds every unit's threshold (exactly the ``torch.quantile`` of all its
    activations, from a running top-``m`` per unit, ``m`` being the number of top values that
    quantile reads) and keeps, with each top value, its image, position and 3x3 neighbourhood.
    The second reads only the concept masks and counts, per unit and concept, the pixels of
    ``M_k & L_c`` and of ``M_k`` and ``L_c`` over the data set. A bilinear pixel is a convex
    combination of four activations, so it exceeds ``T_k`` only next to a kept value (up to
    rounding, which the kept near-ties cover), and all four lie in that value's neighbourhood:
    the maps rebuilt from the neighbourhoods upsample to the very masks a second forward pass
    would give. The few pixels inside each mask are counted sparsely, per class of pixels that
    share their concepts (:mod:`zflight.analysis._unit_masks`).

    The model runs in ``eval()`` mode without gradients and is left as found: every
    submodule's ``training`` flag is restored and no hook stays registered, also when the
    forward pass raises. It is not moved.

    Under ``torch.distributed`` (a process group initialized), each rank dissects images
    ``rank, rank + world_size, ...``; the per-unit top values are merged with ``all_gather``
    and the pixel counts with ``all_reduce(SUM)``, so every rank returns what one process would.
    Every rank must call this function.

    Args:
        model: a CNN whose ``layers`` output ``[N, units, h, w]`` maps (``[N, units]`` counts
            as 1x1 maps).
        dataset: a map-style data set: ``dataset[i]`` is ``(image [3, H, W], label)`` (or an
            image), ``dataset.concepts`` the concept names and ``dataset.concept_masks(i)`` a
            dict from the names of the concepts present in image ``i`` to bool ``[H, W]``
            masks (absent concepts: all False). All images share one size.
        layers: a layer (module, dotted name or unique suffix such as ``"conv5"``) or a list.
        quantile: top fraction of each unit's activations above its threshold, in (0, 1).
        iou_threshold: a unit whose best IoU exceeds this is a detector, in [0, 1].
        batch_size: images per forward pass.
        device: where the model runs: ``None`` or its parameters' device (it is not moved).
        progress: show a tqdm progress bar (rank 0 only) over both passes.

    Returns:
        A :class:`Dissection` (tensors on the CPU), keyed by layer as given.

    Raises:
        ValueError: an unknown layer (with close names), a repeated layer, a layer whose
            output is not a map, a ``device`` other than the model's, ``quantile`` outside (0, 1), ``iou_threshold`` outside
            [0, 1], a bad ``batch_size``, a data set without ``concepts``/``concept_masks``,
            an empty data set, images of differing sizes, or a mask whose size differs from
            its image or whose concept is unknown (naming the index and the concept).

    Example:
        >>> from zflight import zfnet
        >>> from zflight.data import ShapesDataset
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> result = dissect(model, ShapesDataset(40), ["conv1", "conv5"], progress=False)
        >>> result.layers["conv1"].iou.shape  # 12 units, 65 concepts
        torch.Size([12, 65])
        >>> result.summary()["conv5"]["detectors"] <= 32
        True
    """
    quantile = _check_fraction("quantile", quantile, open_interval=True)
    iou_threshold = _check_fraction("iou_threshold", iou_threshold, open_interval=False)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    concepts = _check_concept_dataset(dataset)
    n_images = len(dataset)  # type: ignore[arg-type]
    if n_images == 0:
        raise ValueError("dataset is empty: there are no images to dissect")
    keys, modules = _resolve_layers(model, layers)

    device = _check_device(model, device)
    rank, world = _dist_rank_world()
    if world > n_images:
        raise ValueError(
            f"dataset has {n_images} images, fewer than the {world} distributed ranks; every "
            "rank needs at least one image"
        )
    shard = list(range(rank, n_images, world))
    states = [_LayerState(key, name, len(concepts)) for key, (name, _m) in zip(keys, modules)]
    order = [m for _n, m in modules]
    image_size: tuple[int, int] | None = None

    bar = _progress_bar(progress and rank == 0, 2 * len(shard))
    try:
        # inference_mode, not no_grad: nothing here needs autograd's bookkeeping (~5 % faster).
        with preserve_modes(model, eval_mode=True), torch.inference_mode():
            # Pass 1, the only forward pass: every unit's running top-m activations, each
            # with its image, position and 3x3 neighbourhood.
            first = 0  # the batch's first row in the shard
            for images in DataLoader(
                _Items(dataset, concepts),
                batch_size=batch_size,
                sampler=shard,
                collate_fn=_collate_images,
            ):
                image_size = _check_image_size(images, image_size)
                outs = _capture(model, order, keys, images.to(device, non_blocking=True))
                for state, out in zip(states, outs):
                    state.update_top(out, first, n_images, quantile)
                first += images.shape[0]
                bar.update(images.shape[0])
        assert image_size is not None  # the data set is not empty
        for state in states:
            state.finish_thresholds(quantile, world)
        # Every unit's pixel counts, all layers in one matrix (one all_reduce under DDP):
        # |M_k & L_c| for c < C, a column for the padding of present-concept lists, |M_k|.
        units = [state.thresholds.numel() for state in states]
        counts = torch.zeros(sum(units), len(concepts) + 2, dtype=torch.float64, device=device)
        offsets = [sum(units[:i]) for i in range(len(units))]

        # Pass 2, the concept masks only: pixel counts of M_k & L_c, M_k and L_c, with each
        # M_k rebuilt from the activations pass 1 kept (no second forward pass).
        concept_pixels = torch.zeros(len(concepts) + 2, dtype=torch.float64, device=device)
        workspace = Workspace()  # the upsampled maps' buffers, reused batch after batch
        first = 0  # the batch's first row in the shard
        for masks, columns in DataLoader(
            _Items(dataset, concepts, masks_of_size=image_size),
            batch_size=batch_size,
            sampler=shard,
            collate_fn=_Collate(len(concepts)),
        ):
            present = PixelClasses.of(masks.to(device, non_blocking=True), columns.to(device), len(concepts))
            concept_pixels += present.pixels
            rows = (first, first + masks.shape[0])
            maps = [(state, offset, state.masks_of(*rows)) for state, offset in zip(states, offsets)]
            _add_counts(counts, maps, present, workspace)
            first = rows[1]
            bar.update(masks.shape[0])
    finally:
        bar.close()

    if world > 1:
        counts, concept_pixels = _sum_across_ranks(counts, concept_pixels)
    counts, concept_pixels = counts.cpu(), concept_pixels.cpu()
    result = {}
    for state, offset, n_units in zip(states, offsets, units):
        result[state.key] = state.finish(
            concepts, counts[offset : offset + n_units], concept_pixels[: len(concepts)], iou_threshold
        )
    return Dissection(
        layers=result,
        concepts=list(concepts),
        quantile=quantile,
        iou_threshold=iou_threshold,
        num_images=n_images,
        image_size=image_size,
        settings={"quantile": quantile, "iou_threshold": iou_threshold, "batch_size": batch_size},
    )


# -------------------------------------------------------------------- examples for the figure
class ConceptSubset(Dataset):
    """Items ``indices`` of a concept data set, keeping ``concepts``, ``concept_masks`` and display.

    ``torch.utils.data.Subset`` forwards only ``__getitem__``; :func:`dissect` also needs
    ``concepts`` and ``concept_masks(i)``, and the figures need the images for display
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
        if name in ("image", "mask", "box", "keypoints") and callable(attr):
            return lambda j, *a, **kw: attr(self.indices[j], *a, **kw)
        return attr


@dataclass(frozen=True)
class UnitExamples:
    """Bau et al.'s Fig. 2 material for some units of one layer: top images and their ``M_k``.

    Attributes:
        layer: the layer's key in the :class:`Dissection`.
        units: ``[U]`` unit indices.
        labels: each unit's label (best concept).
        iou: ``[U]`` float64, each unit's best IoU.
        detectors: ``[U]`` bool, whether the unit is a detector.
        indices: ``[U, k]`` data set index of each unit's top images (strongest activation first).
        images: ``[U, k, 3, H, W]`` float in [0, 1], the images for display.
        masks: ``[U, k, H, W]`` bool, ``M_k = up(a_k) > T_k`` on each image.
    """

    layer: str
    units: torch.Tensor
    labels: list[str]
    iou: torch.Tensor
    detectors: torch.Tensor
    indices: torch.Tensor
    images: torch.Tensor
    masks: torch.Tensor


def unit_examples(
    model: nn.Module,
    dataset: Dataset,
    result: Dissection,
    units: dict[str, Sequence[int]] | int = 8,
    *,
    k: int = 4,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, UnitExamples]:
    """Each unit's ``k`` most activating images with its mask ``M_k`` on them (Bau et al. Fig. 2).

    The images are ranked by the unit's largest activation (one pass over ``dataset`` for all
    layers, :func:`~zflight.analysis.topk.top_activations`); then the chosen images run once
    more, and each unit's map is upsampled and thresholded exactly as :func:`dissect` does
    (``F.interpolate(bilinear, align_corners=False) > T_k``, with the dissection's ``T_k``).

    Under ``torch.distributed`` the ranking is a collective (every rank must call this); the
    second step runs on each rank's copy of the few chosen images.

    Args:
        model: the dissected network (left as found: eval mode inside, flags restored).
        dataset: the dissected images (or others of the same size), items ``(image, label)``.
        result: the :class:`Dissection` whose thresholds and labels are used.
        units: per layer key of ``result``, the units to show; or an int ``n``: the ``n`` units
            of largest IoU of every dissected layer (:meth:`Dissection.top_units`).
        k: images per unit.
        batch_size: images per forward pass.
        device: where the model runs (``None``: its parameters' device).

    Returns:
        ``{layer key: UnitExamples}``, on the CPU, the layers in ``result``'s order.

    Raises:
        ValueError: a layer not in ``result``, a unit out of range, a bad ``k`` / ``units``.

    Example:
        >>> ex = unit_examples(model, ShapesDataset(40), result, 4, k=3)  # doctest: +SKIP
        >>> ex["conv5"].masks.shape  # doctest: +SKIP
        torch.Size([4, 3, 64, 64])
    """
    from zflight.analysis.topk import top_activations

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(units, int) and not isinstance(units, bool):
        if units < 1:
            raise ValueError(f"units must be a positive int or a dict layer -> units, got {units!r}")
        chosen = {key: [u["unit"] for u in result.top_units(key, units)] for key in result.layers}
    elif isinstance(units, dict) and units:
        chosen = {}
        for key, us in units.items():
            ld = result._layer(key)
            us = [int(u) for u in us]
            bad = [u for u in us if not 0 <= u < ld.num_units]
            if not us or bad:
                raise ValueError(
                    f"units[{key!r}] must list units in 0..{ld.num_units - 1}, got {list(units[key])!r}"
                )
            chosen[key] = us
    else:
        raise ValueError(f"units must be a positive int or a dict layer -> units, got {units!r}")
    layer_of = {key: result._layer(key) for key in chosen}
    names = [layer_of[key].name for key in chosen]
    device = _check_device(model, device)
    tops = top_activations(
        model, dataset, names, k=k, channels={n: chosen[key] for key, n in zip(chosen, names)},
        batch_size=batch_size, progress=False, device=device,
    )
    _, modules = _resolve_layers(model, names)
    out: dict[str, UnitExamples] = {}
    with preserve_modes(model, eval_mode=True), torch.no_grad():
        for (key, us), name, (_n, module) in zip(chosen.items(), names, modules):
            ld, top = layer_of[key], tops[name]
            idx = top.indices  # [U, k'] (k' = min(k, len(dataset)))
            flat = idx.reshape(-1).tolist()
            items = [dataset[i] for i in flat]
            images = torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])
            masks = []
            unit_of = torch.tensor(us).repeat_interleave(idx.shape[1])
            for start in range(0, len(flat), batch_size):
                x = images[start : start + batch_size].to(device)
                a = _as_maps(_capture(model, [module], [key], x)[0], key)
                sel = unit_of[start : start + batch_size].to(a.device)
                maps = a[torch.arange(a.shape[0], device=a.device), sel][:, None]  # [b, 1, h, w]
                up = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
                masks.append((up[:, 0] > ld.thresholds.to(a.device)[sel][:, None, None]).cpu())
            shown = _display(dataset, images.float())
            u, kk = idx.shape
            out[key] = UnitExamples(
                layer=key,
                units=torch.tensor(us),
                labels=[ld.labels[x] for x in us],
                iou=ld.best_iou[us].clone(),
                detectors=ld.detectors[us].clone(),
                indices=idx.clone(),
                images=shown.reshape(u, kk, *shown.shape[1:]),
                masks=torch.cat(masks).reshape(u, kk, *images.shape[-2:]),
            )
    return out


def _display(dataset: Any, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1]: the data set's ``denormalize``, else its ``mean``/``std``
    (:class:`~zflight.data.ConceptFolder`), else each image stretched to [0, 1]."""
    denormalize = getattr(dataset, "denormalize", None)
    if callable(denormalize):
        return denormalize(images).clamp(0, 1)
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if mean is not None and std is not None and len(mean) == len(std) == images.shape[1]:
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        return (images * s + m).clamp(0, 1)
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-12)


# ----------------------------------------------------------------------------- per-layer state
class _LayerState:
    """One layer's running top activations (pass 1) and the maps rebuilt from them (pass 2).

    Pass 1 keeps, per unit, the ``m`` largest activations the quantile reads, plus any value
    within rounding of the ``m``-th (:func:`_below`), each with where it is (its index in the
    shard's ``[rows, K, h, w]`` activations) and its 3x3 neighbourhood. After the thresholds,
    the kept values above ``_below(T_k)`` are all a mask needs: a bilinear pixel reads the four activations around
    it, so a pixel of ``M_k`` has a source above ``_below(T_k)`` (else it would be <= ``T_k``,
    rounding included), and all four of its sources lie in that source's neighbourhood. A map
    rebuilt from those neighbourhoods (-inf elsewhere) thus upsamples, through the same kernel,
    to the same mask: pass 2 needs the concept masks, not a second forward pass.
    """

    def __init__(self, key: str, name: str, n_concepts: int) -> None:
        self.key, self.name, self.n_concepts = key, name, n_concepts
        self.feature_size: tuple[int, int] | None = None
        self.n_total = 0
        self.m = 0  # top values the quantile reads, per unit
        # [K, W] kept values (W >= m once full; -inf pads), their places [K, W] int64 and
        # 3x3 neighbourhoods [K, W, 9], in no order.
        self.top = torch.empty(0)
        self.where = torch.empty(0, dtype=torch.int64)
        self.around = torch.empty(0)
        self.bound = torch.empty(0)  # [K] the m-th largest value so far, once top is full
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # not merged yet
        self.pending_width = 0
        self.has_nan = torch.empty(0, dtype=torch.bool)
        self.thresholds = torch.empty(0)
        # Pass 2: the neighbourhoods of the kept values above _below(T_k), sorted by (shard
        # row, unit): each one's 9 values, centre and map ("slot": one per (row, unit), keyed
        # row * K + unit).
        self.values = torch.empty(0)
        self.pos = torch.empty(0, dtype=torch.int64)
        self.slot_of = torch.empty(0, dtype=torch.int64)
        self.slot_key = torch.empty(0, dtype=torch.int64)
        self.slot_rows = torch.empty(0, dtype=torch.int64)

    # ---- pass 1
    def update_top(self, out: torch.Tensor, first_row: int, n_images: int, quantile: float) -> None:
        """Add one batch's maps ``out``, of the shard's images ``first_row ..``, to the top values.

        Each value's place is kept as its index in the shard's ``[rows, K, h, w]`` activations.
        """
        a = _as_maps(out, self.key).contiguous()
        units, h, w = a.shape[1:]
        if self.feature_size is None:
            self.feature_size = (h, w)
            self.n_total = n_images * h * w  # values per unit over the whole data set
            self.m = _quantile_ranks(self.n_total, quantile, a.dtype)[3]
            self.top = a.new_empty((units, 0))
            self.where = torch.empty((units, 0), dtype=torch.int64, device=a.device)
            self.around = a.new_empty((units, 0, 9))
            self.has_nan = torch.zeros(units, dtype=torch.bool, device=a.device)
        offset = first_row * units * h * w
        # amax propagates NaN: torch.quantile returns NaN for a unit with any NaN, so do we.
        self.has_nan |= torch.isnan(a.amax(dim=(2, 3)).amax(dim=0))
        if self.top.shape[1] < self.m:
            values = a.transpose(0, 1).reshape(units, -1)  # [K, B*h*w]
            values = torch.where(torch.isnan(values), float("-inf"), values)
            old = self.top.shape[1]
            values, keep = self._select(torch.cat([self.top, values], dim=1))
            # Entries from this batch and their neighbourhoods (read for every kept entry:
            # cheap, as this happens for the data set's first m values only).
            j = (keep - old).clamp_min(0)
            k = torch.arange(units, device=a.device)[:, None]
            pos = (j // (h * w) * units + k) * (h * w) + j % (h * w)  # in [B, K, h, w]
            new = keep >= old
            where = pos + offset
            around = _neighbourhoods(a, pos.reshape(-1)).view(*pos.shape, 9)
            if old:
                kept_old = keep.clamp_max(old - 1)
                where = torch.where(new, where, self.where.gather(1, kept_old))
                around = torch.where(new[..., None], around, _gather_rows(self.around, kept_old))
            self.top, self.where, self.around = values, where, around
            return
        # Full: only values above _below(bound) can still matter (see _select). Once the data
        # set's first m values per unit are in, few are: pick them out sparsely (one
        # comparison of the whole batch, then the True positions through int64 words).
        pos = true_positions(a > _below(self.bound)[:, None, None])  # NaN is not >
        if pos.numel() == 0:
            return
        # pos indexes [B, K, h, w]; sorted, so the candidates come grouped by image, not unit.
        k = pos // (h * w) % units
        values, where, around = a.view(-1).index_select(0, pos), pos + offset, _neighbourhoods(a, pos)
        per_unit = torch.bincount(k, minlength=units)
        order = torch.argsort(k, stable=True)
        k = k[order]
        slot = torch.arange(k.numel(), device=k.device) - (torch.cumsum(per_unit, 0) - per_unit)[k]
        width = int(per_unit.max())
        new_values = a.new_full((units, width), float("-inf"))
        new_values[k, slot] = values[order]
        new_where = torch.zeros((units, width), dtype=torch.int64, device=a.device)
        new_where[k, slot] = where[order]
        new_around = a.new_zeros((units, width, 9))
        new_around[k, slot] = around[order]
        # Candidates wait until they add up to m: one merge then instead of one per batch.
        # The bound stays the m-th largest merged so far, a lower bound of the final one, so
        # no value that belongs in the top m is missed meanwhile.
        self.pending.append((new_values, new_where, new_around))
        self.pending_width += width
        if self.pending_width >= self.m:
            self._merge_pending()

    def _select(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries to keep of ``values [K, n]``: the top ``m`` and any other above
        ``_below`` of the ``m``-th largest (ties and near-ties: they may reach a mask through
        rounding). Returns their values and indices, unsorted; sets ``bound`` once full."""
        if values.shape[1] < self.m:
            return values, torch.arange(values.shape[1], device=values.device).expand_as(values)
        # An unsorted top-m (a selection, not a sort: 2x faster than merging sorted rows).
        top, keep = values.topk(self.m, dim=1, sorted=False)
        self.bound = top.amin(dim=1)
        # Those above _below(bound) are each unit's largest, so a wider top-k takes them all.
        width = int((values > _below(self.bound)[:, None]).sum(dim=1).max())
        if width > self.m:
            top, keep = values.topk(width, dim=1, sorted=False)
        return top, keep

    def _merge_pending(self) -> None:
        if not self.pending:
            return
        values, keep = self._select(torch.cat([self.top, *(p[0] for p in self.pending)], dim=1))
        where = torch.cat([self.where, *(p[1] for p in self.pending)], dim=1)
        around = torch.cat([self.around, *(p[2] for p in self.pending)], dim=1)
        self.top, self.where, self.around = values, where.gather(1, keep), _gather_rows(around, keep)
        self.pending, self.pending_width = [], 0

    def finish_thresholds(self, quantile: float, world: int) -> None:
        """Turn the top values into ``T_k``, as ``torch.quantile`` of all the values gives, and
        index the kept values that reach a mask by shard row for pass 2."""
        self._merge_pending()
        below, above, weight, _m = _quantile_ranks(self.n_total, quantile, self.top.dtype)
        # Both read positions are among the top m: the m-th largest (ascending position
        # below = n_total - m) and, if above > below, the (m - 1)-th.
        top, has_nan = self.top, self.has_nan
        if world > 1:
            top, has_nan = _merge_top(top.topk(self.m, dim=1).values, has_nan, self.m)
        lowest = top.topk(self.m, dim=1, sorted=False).values.topk(min(2, self.m), dim=1, largest=False).values
        v_below = lowest[:, 0]
        v_above = lowest[:, above - below]
        units = top.shape[0]
        thresholds = torch.lerp(v_below, v_above, weight.to(top.device).expand(units))
        self.thresholds = torch.where(has_nan, float("nan"), thresholds)

        # This rank's kept values that may reach a mask (NaN thresholds: none), by (row, unit).
        assert self.feature_size is not None
        h, w = self.feature_size
        # (Flat index_select: 2-d advanced indexing is several times slower on the CPU.)
        flat = (self.top > _below(self.thresholds)[:, None]).view(-1).nonzero().squeeze(1)
        where = self.where.view(-1).index_select(0, flat)
        row, pos = where // (units * h * w), where % (h * w)  # the image's place in the shard
        key = row * units + flat // self.top.shape[1]
        key, order = torch.sort(key)
        self.pos = pos.index_select(0, order)  # each neighbourhood's centre in its map
        self.values = self.around.view(-1, 9).index_select(0, flat.index_select(0, order))
        self.slot_key, self.slot_of = torch.unique_consecutive(key, return_inverse=True)
        self.slot_rows = self.slot_key // units
        self.top = self.where = self.around = torch.empty(0)  # no longer needed

    # ---- pass 2
    def masks_of(self, first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The maps of shard rows ``first .. stop - 1`` that may reach a mask, rebuilt.

        Returns:
            ``(maps [S, h, w], thresholds [S], images [S], units [S])``: the maps (-inf
            wherever pass 1 kept nothing), and per map its unit's threshold, its image's row
            in the batch and its unit.
        """
        assert self.feature_size is not None
        h, w = self.feature_size
        units = self.thresholds.numel()
        bounds = torch.tensor([first, stop], device=self.slot_rows.device)
        s_lo, s_hi = torch.searchsorted(self.slot_rows, bounds).tolist()
        # The neighbourhoods come sorted by slot.
        lo, hi = torch.searchsorted(self.slot_of, bounds.new_tensor([s_lo, s_hi])).tolist()
        maps = self.values.new_full((s_hi - s_lo, h * w + 1), float("-inf"))
        # Each neighbourhood entry's place in its map (the spare h * w past the map's edge).
        spots = _spots(h, w, maps.device).index_select(0, self.pos[lo:hi])
        spots += (self.slot_of[lo:hi] - s_lo)[:, None] * (h * w + 1)
        # Overlapping neighbourhoods write the same activation to a shared entry (and the
        # entries past an edge, whatever they hold, to the spare one).
        maps.view(-1).index_copy_(0, spots.view(-1), self.values[lo:hi].view(-1))
        maps = maps[:, : h * w].view(-1, h, w)
        key = self.slot_key[s_lo:s_hi]
        k = key % units
        return maps, self.thresholds[k], key // units - first, k

    def finish(
        self, concepts: list[str], counts: torch.Tensor, concept_pixels: torch.Tensor, iou_threshold: float
    ) -> LayerDissection:
        """IoU from this layer's rows of the (rank-summed) counts, labels and detectors."""
        inter, mask_pixels = counts[:, : self.n_concepts], counts[:, -1]
        # Both counts are exact integers in float64 (below 2**53 pixels).
        union = mask_pixels[:, None] + concept_pixels[None, :].double() - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
        # torch.max along a dim does not promise the first maximum on ties; argmax does.
        best_idx = iou.argmax(dim=1)
        best = iou.gather(1, best_idx[:, None])[:, 0]
        assert self.feature_size is not None
        return LayerDissection(
            name=self.name,
            feature_size=self.feature_size,
            iou=iou,
            thresholds=self.thresholds.cpu(),
            labels=[concepts[int(i)] for i in best_idx],
            best_iou=best,
            detectors=best > iou_threshold,
        )


def _add_counts(
    counts: torch.Tensor, layers: list[tuple[_LayerState, int, tuple[torch.Tensor, ...]]],
    present: PixelClasses, workspace: Workspace,
) -> None:
    """Add one batch's ``|M_k & L_c|`` and ``|M_k|`` to ``counts`` (rows: units of all layers).

    ``layers`` holds each layer's state, its first row in ``counts`` and its rebuilt maps
    (:meth:`_LayerState.masks_of`); layers whose maps share a size (conv3-conv5 of ZFNet) go
    together (:func:`count_masks`).
    """
    groups: dict[tuple[Any, ...], list[tuple[torch.Tensor, ...]]] = {}
    for _state, offset, (maps, thresholds, images, units) in layers:
        groups.setdefault((maps.shape[1:], maps.dtype), []).append((images, units + offset, maps, thresholds))
    per_class = None
    for parts in groups.values():
        b, rows, maps, thresholds = (torch.cat([p[i] for p in parts]) for i in range(4))
        if b.numel() == 0:
            continue
        got = count_masks(maps, thresholds, b, rows, counts.shape[0], present, workspace=workspace)
        per_class = got if per_class is None else per_class + got
    if per_class is not None:
        counts += per_class @ present.incidence


def _below(values: torch.Tensor) -> torch.Tensor:
    """``values - 16 eps |values|``: a bilinear pixel whose four sources are all at most
    ``_below(T)`` is at most ``T`` even after its float rounding (a convex combination's
    error is a few eps of its largest source), so only sources above it can make a mask.
    Monotone, so ``_below`` of a lower bound of ``T`` is a lower bound of ``_below(T)``.
    ``-inf`` and NaN stay as they are."""
    return values - 16 * torch.finfo(values.dtype).eps * values.abs()


def _neighbourhoods(a: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The 3x3 activations around flat positions ``pos`` of the contiguous maps ``a [B, K, h,
    w]``: ``[n, 9]``, rows above, at and below. Entries past a map's edge are read from
    wherever the flat offset lands (clamped to ``a``): pass 2 writes them to a spare entry
    (:func:`_spots`), never into a map."""
    w = a.shape[-1]
    step = torch.arange(-1, 2, device=a.device)
    offsets = (step[:, None] * w + step).reshape(-1)
    flat = (pos[:, None] + offsets).clamp_(0, a.numel() - 1)
    return a.view(-1).index_select(0, flat.view(-1)).view(-1, 9)


@functools.lru_cache(maxsize=16)
def _spots(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``[h * w, 9]``: for each position of an ``h x w`` map, where its 3x3 neighbourhood
    (rows above, at and below) lies in the map's ``h * w + 1`` entries, ``h * w`` (the spare)
    for those past the edge."""
    offsets = torch.arange(-1, 2, device=device)
    pos = torch.arange(h * w, device=device)
    i = (pos // w)[:, None, None] + offsets[None, :, None]
    j = (pos % w)[:, None, None] + offsets[None, None, :]
    inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    return torch.where(inside, i * w + j, h * w).reshape(-1, 9)


def _gather_rows(around: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``around[k, keep[k, j], :]`` for ``around [K, n, 9]`` and ``keep [K, W]``."""
    return around.gather(1, keep[..., None].expand(*keep.shape, around.shape[2]))


# ------------------------------------------------------------------------------- the quantile
def _quantile_ranks(n: int, quantile: float, dtype: torch.dtype) -> tuple[int, int, torch.Tensor, int]:
    """Where ``torch.quantile(values, 1 - quantile)`` of ``n`` values reads its sorted input.

    Mirrors its arithmetic: ``q`` becomes a tensor of the values' dtype, the rank is
    ``q * (n - 1)`` (in double or in that dtype, depending on the PyTorch version: see
    :func:`_ranks_in_input_dtype`), and the result interpolates linearly between the ascending
    positions ``floor(rank)`` and ``ceil(rank)`` with weight ``rank - floor(rank)``.

    Returns:
        ``(below, above, weight, m)``: the two ascending positions, the 0-d weight (in
        ``dtype``), and ``m = n - below``, how many of the largest values hold both positions.
    """
    q = torch.tensor(1.0 - quantile, dtype=dtype)
    if _ranks_in_input_dtype():
        rank = q * (n - 1)
        floor = rank.floor()
        below, above, weight = int(floor), int(rank.ceil()), rank - floor
    else:
        rank_f = float(q) * (n - 1)
        below, above = math.floor(rank_f), math.ceil(rank_f)
        weight = torch.tensor(rank_f - below, dtype=dtype)
    return below, above, weight, n - below


@functools.cache
def _ranks_in_input_dtype() -> bool:
    """Whether this PyTorch's ``quantile`` computes ranks in the input's dtype (else double).

    The two give different thresholds for large ``n`` (float32 ranks step by ~0.001 at 10^4),
    and PyTorch's C++ has done it both ways, so this asks the installed version. Probed once on 12,800 values sorted as 12,672 zeros then ones, where
    ``torch.quantile(v, 0.99)`` returns the rank's fraction itself: 0.0098 (float32 rank
    12671.0098) or 0.0101 (double rank 12671.0101).
    """
    n, q = 12800, 0.99
    values = torch.zeros(n)
    values[12672:] = 1.0
    got = float(torch.quantile(values, q))
    in_dtype = float(torch.tensor(q) * (n - 1)) % 1.0
    in_double = (float(torch.tensor(q)) * (n - 1)) % 1.0
    return abs(got - in_dtype) < abs(got - in_double)


def _merge_top(top: torch.Tensor, has_nan: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge every rank's top values per unit: the top ``m`` of their union."""
    import torch.distributed as dist

    comm = _comm_device()
    # A rank with fewer than m values pads with -inf: those never displace a real value that
    # matters (the union holds at least m real ones), and a real -inf is the same number.
    padded = torch.full((top.shape[0], m), float("-inf"), dtype=top.dtype, device=comm)
    padded[:, : top.shape[1]] = top.to(comm)
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    merged = torch.cat(parts, dim=1).topk(m, dim=1).values
    nan = has_nan.to(comm, torch.int32)
    dist.all_reduce(nan, op=dist.ReduceOp.MAX)
    return merged.to(top.device), nan.to(has_nan.device).bool()


def _sum_across_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    import torch.distributed as dist

    comm = _comm_device()
    out = []
    for t in tensors:
        c = t.to(comm).contiguous()
        dist.all_reduce(c, op=dist.ReduceOp.SUM)
        out.append(c.to(t.device))
    return tuple(out)


def _comm_device() -> torch.device:
    import torch.distributed as dist

    # NCCL only moves CUDA tensors; gloo and others take CPU ones.
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------------- data access
class _Items(Dataset):
    """Checked items for the DataLoader: ``(image, index)`` for pass 1, or with
    ``masks_of_size`` (the images' size, known from pass 1) ``(masks [Cp, H, W], concept
    indices [Cp])`` for pass 2: the masks of the concepts present, in concept order."""

    def __init__(self, dataset: Dataset, concepts: list[str], *, masks_of_size: tuple[int, int] | None = None) -> None:
        self.dataset, self.concepts, self.size = dataset, concepts, masks_of_size
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
                    f"dataset.concept_masks({i})[{name!r}] has shape {got}, but image {i} is "
                    f"{self.size[0]}x{self.size[1]}: a mask must have its image's size"
                )
            masks[self.column[name]] = mask if mask.dtype == torch.bool else mask != 0
        columns = sorted(masks)
        stacked = torch.stack([masks[c] for c in columns]) if columns else torch.zeros((0, *self.size), dtype=torch.bool)
        return stacked, torch.tensor(columns, dtype=torch.int64)


def _collate_images(items: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    _same_size(items)  # the indices name the images in its message
    return torch.stack([it[0] for it in items])


class _Collate:
    """Stack, per image, the masks of its present concepts.

    Returns ``masks [B, Cp, H, W]`` bool and ``columns [B, Cp]`` (each mask's concept index;
    ``C`` pads the images with fewer than ``Cp``, the most any image of the batch has). An
    image shows a handful of the concepts (an object, its colour, a few parts, distractors,
    background), so this is ~C/Cp times smaller than a dense ``[B, C, H, W]`` stack.
    :class:`~zflight.analysis._unit_masks.PixelClasses` takes it from there.
    """

    def __init__(self, n_concepts: int) -> None:
        self.n_concepts = n_concepts

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        b, (h, w) = len(items), items[0][0].shape[-2:]
        cp = max(1, max(it[0].shape[0] for it in items))
        masks = torch.zeros((b, cp, h, w), dtype=torch.bool)
        columns = torch.full((b, cp), self.n_concepts, dtype=torch.int64)
        for row, (stacked, present) in enumerate(items):
            masks[row, : stacked.shape[0]] = stacked
            columns[row, : present.numel()] = present
        return masks, columns


def _same_size(items: list[tuple[Any, ...]]) -> None:
    shape = items[0][0].shape
    for it in items[1:]:
        if it[0].shape != shape:
            raise ValueError(
                f"dataset images must share one size: image {it[-1]} is {tuple(it[0].shape)}, "
                f"image {items[0][-1]} is {tuple(shape)}"
            )


def _check_image_size(images: torch.Tensor, seen: tuple[int, int] | None) -> tuple[int, int]:
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if seen is not None and size != seen:
        raise ValueError(f"dataset images must share one size: found {seen} and {size}")
    return size


# ------------------------------------------------------------------------------------ forward
def _capture(
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


def _as_maps(out: torch.Tensor, key: str) -> torch.Tensor:
    if out.dim() == 2:
        return out[:, :, None, None]  # a vector layer: each unit is a 1x1 map
    if out.dim() != 4:
        raise ValueError(
            f"layers: {key!r} outputs shape {tuple(out.shape)}; dissection needs maps "
            "[N, units, h, w] (or [N, units])"
        )
    if not out.is_floating_point():
        raise ValueError(f"layers: {key!r} outputs {out.dtype}, not floating-point activations")
    return out


# ------------------------------------------------------------------------------------- checks
def _check_fraction(name: str, value: Any, *, open_interval: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        interval = "(0, 1), both ends excluded" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _check_concept_dataset(dataset: Any) -> list[str]:
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


def _resolve_layers(
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


def _family(concept: str) -> str:
    return concept.split("/", 1)[0]


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else v


def _check_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
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


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(show: bool, total: int) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="dissect (2 passes)", unit="img", leave=False)
