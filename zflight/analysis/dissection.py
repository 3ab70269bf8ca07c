"""Network Dissection (Bau et al., CVPR 2017): name what each unit of a layer detects.

:func:`dissect` scores every unit of the requested layers against pixel-labelled concepts and
labels each unit with the concept its thresholded activation overlaps best. The rule is Bau et
al.'s, exactly:

- the threshold ``T_k`` of unit ``k`` is the ``1 - quantile`` quantile of all its activations
  over every position of every image, at the layer's own resolution, as
  ``torch.quantile(values, 1 - quantile)`` (linear interpolation) computes it;
- its mask on an image is ``M_k = F.interpolate(a_k, size=mask size, mode="bilinear",
  align_corners=False) > T_k``, the mask size being the image's, or the data set's
  ``mask_size`` (Broden's segmentation size ``sh x sw``, half the image);
- ``IoU(k, c) = sum_{x in X_g} |M_k & L_c| / sum_{x in X_g} |M_k | L_c|``, where ``X_g`` is the
  set of images that annotate the category ``g`` of concept ``c`` (a data set with
  ``categories`` and ``image_categories(i)``, such as :class:`~zflight.data.BrodenDataset`);
  without categories every image counts for every concept;
- the unit's label is the concept of largest IoU (the first one on ties), and the unit is a
  *detector* where that IoU exceeds ``iou_threshold``.

The parts live in their own modules: the running top values and exact quantile
(:mod:`~zflight.analysis._quantile`), the maps rebuilt from kept neighbourhoods
(:mod:`~zflight.analysis._neighbourhoods`), the counting (:mod:`~zflight.analysis._unit_masks`),
the data items and collation (:mod:`~zflight.analysis._concept_data`), the figure's material
(:mod:`~zflight.analysis._unit_examples`).

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zflight.analysis._concept_data import (
    Collate,
    ConceptSubset,
    Items,
    check_image_size,
    collate_images,
)
from zflight.analysis._dissect_inputs import (
    as_maps,
    capture,
    check_concept_dataset,
    check_device,
    check_fraction,
    check_mask_size,
    concept_categories,
    resolve_layers,
)
from zflight.analysis._distributed import progress_bar, rank_world, sum_across_ranks
from zflight.analysis._neighbourhoods import KeptMaps
from zflight.analysis._quantile import RunningTop
from zflight.analysis._unit_examples import UnitExamples, unit_examples
from zflight.analysis._unit_masks import PixelClasses, Workspace, count_masks
from zflight.attribution._layers import preserve_modes

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
        image_size: ``(height, width)`` of the images (and of the concept masks, unless
            ``mask_size`` says otherwise).
        settings: the options of the run; ``"categories"`` where the data set has categories
            (Broden's), each concept then scored over the images of its category.
        mask_size: ``(height, width)`` of the concept masks, at which each ``M_k`` was scored,
            where the data set gives one (Broden's segmentation size, half the image); ``None``:
            ``image_size``.
    """

    layers: dict[str, LayerDissection]
    concepts: list[str]
    quantile: float
    iou_threshold: float
    num_images: int
    image_size: tuple[int, int]
    settings: dict[str, Any] = field(default_factory=dict)
    mask_size: tuple[int, int] | None = None

    @property
    def categories(self) -> list[str] | None:
        """The data set's categories (Broden's ``object``, ``part``, ...), or ``None``."""
        cats = self.settings.get("categories")
        return None if cats is None else list(cats)

    @property
    def scored_size(self) -> tuple[int, int]:
        """``(height, width)`` at which each unit's mask was scored: :attr:`mask_size`, or the
        images' size."""
        return self.mask_size or self.image_size

    def summary(self) -> dict[str, dict[str, Any]]:
        """Detectors and unique concepts per layer, overall and per concept family.

        Returns:
            ``{layer: {"units", "detectors", "unique_concepts", "concepts", "families"}}`` where
            ``concepts`` lists the detected concepts (sorted) and ``families`` maps each family
            (the data set's :attr:`categories` where it has them, else :data:`CONCEPT_FAMILIES`
            first, then any other family found) to ``{"detectors", "unique_concepts"}``: Bau et
            al.'s count table.

        Example:
            >>> result.summary()["conv5"]["families"]["object"]  # doctest: +SKIP
            {'detectors': 4, 'unique_concepts': 3}
        """
        families = self.categories
        if families is None:
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

    def best_per_category(self, layer: str) -> dict[str, dict[str, Any]]:
        """Each unit's best concept within each category (family), as NetDissect's tally lists.

        Args:
            layer: a key of :attr:`layers` or a layer's dotted name.

        Returns:
            ``{category: {"labels": [units] concept names, "iou": [units] float64}}``, the
            categories in :meth:`summary`'s order (those with at least one concept); on ties
            the first concept in :attr:`concepts` order.

        Example:
            >>> result.best_per_category("layer4")["scene"]["labels"][0]  # doctest: +SKIP
            'scene/kitchen-s'
        """
        ld = self._layer(layer)
        families = self.categories or list(dict.fromkeys(_family(c) for c in self.concepts))
        out: dict[str, dict[str, Any]] = {}
        for fam in families:
            cols = [j for j, c in enumerate(self.concepts) if _family(c) == fam]
            if not cols:
                continue
            sub = ld.iou[:, cols]
            best = sub.argmax(dim=1)  # the first maximum, in concept order
            out[fam] = {
                "labels": [self.concepts[cols[int(j)]] for j in best],
                "iou": sub.gather(1, best[:, None])[:, 0],
            }
        return out

    def tally(self, layer: str) -> list[dict[str, Any]]:
        """NetDissect's ``tally.csv`` rows for ``layer``: one per unit, by descending score.

        Each row has ``unit`` (0-based), ``category``, ``label`` (the best concept's name
        without its category) and ``score`` (its IoU), then per category ``g``
        ``<g>-label`` and ``<g>-iou``, the unit's best concept in ``g``
        (:meth:`best_per_category`).

        Example:
            >>> result.tally("layer4")[0]["label"]  # doctest: +SKIP
            'dog'
        """
        ld = self._layer(layer)
        per_cat = self.best_per_category(layer)
        rows = []
        for u in self.top_units(layer, ld.num_units):
            k = u["unit"]
            category, _, name = u["label"].partition("/")
            row: dict[str, Any] = {"unit": k, "category": category, "label": name or category, "score": u["iou"]}
            for fam, best in per_cat.items():
                row[f"{fam}-label"] = best["labels"][k].partition("/")[2] or fam
                row[f"{fam}-iou"] = float(best["iou"][k])
            rows.append(row)
        return rows

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
            **({} if self.mask_size is None else {"mask_size": list(self.mask_size)}),
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
                mask_size=None if data.get("mask_size") is None else (
                    int(data["mask_size"][0]), int(data["mask_size"][1])
                ),
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
    num_workers: int = 0,
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
    Every rank must call this function; a rank whose shard holds fewer values than the quantile
    reads, or no image at all (more ranks than images), takes part all the same.

    Args:
        model: a CNN whose ``layers`` output ``[N, units, h, w]`` maps (``[N, units]`` counts
            as 1x1 maps).
        dataset: a map-style data set: ``dataset[i]`` is ``(image [3, H, W], label)`` (or an
            image), ``dataset.concepts`` the concept names and ``dataset.concept_masks(i)`` a
            dict from the names of the concepts present in image ``i`` to bool masks (absent
            concepts: all False), ``[H, W]`` or, where the data set has a ``mask_size``, of
            that size. All images share one size. A data set with ``categories`` and
            ``image_categories(i)`` names its concepts ``<category>/<name>`` and has each
            scored over the images that annotate its category.
        layers: a layer (module, dotted name or unique suffix such as ``"conv5"``) or a list.
        quantile: top fraction of each unit's activations above its threshold, in (0, 1).
        iou_threshold: a unit whose best IoU exceeds this is a detector, in [0, 1].
        batch_size: images per forward pass.
        device: where the model runs: ``None`` or its parameters' device (it is not moved).
        num_workers: DataLoader workers reading the images and masks (Broden's label PNGs
            are worth decoding in workers); 0 reads them in this process.
        progress: show a tqdm progress bar per pass (rank 0 only), in images/s.

    Returns:
        A :class:`Dissection` (tensors on the CPU), keyed by layer as given.

    Raises:
        ValueError: an unknown layer (with close names), a repeated layer, a layer whose
            output is not a map, a ``device`` other than the model's, ``quantile`` outside (0, 1), ``iou_threshold`` outside
            [0, 1], a bad ``batch_size`` or ``num_workers``, a data set without ``concepts``/``concept_masks``,
            an empty data set, images of differing sizes, a bad ``mask_size``/``categories``,
            or a mask whose size differs from its image (or ``mask_size``) or whose concept is
            unknown (naming the index and the concept).

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
    quantile = check_fraction("quantile", quantile, open_interval=True)
    iou_threshold = check_fraction("iou_threshold", iou_threshold, open_interval=False)
    for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    concepts = check_concept_dataset(dataset)
    n_images = len(dataset)  # type: ignore[arg-type]
    if n_images == 0:
        raise ValueError("dataset is empty: there are no images to dissect")
    mask_size = check_mask_size(dataset)
    categories, mask_columns = concept_categories(dataset, concepts)
    keys, modules = resolve_layers(model, layers)

    device = check_device(model, device)
    rank, world = rank_world()
    # A rank may get no image (more ranks than images): it still takes part in every collective.
    shard = list(range(rank, n_images, world))
    states = [_LayerState(key, name, len(concepts)) for key, (name, _m) in zip(keys, modules)]
    order = [m for _n, m in modules]
    image_size: tuple[int, int] | None = None
    loader_args = {"batch_size": batch_size, "sampler": shard, "num_workers": num_workers}

    show = progress and rank == 0
    bar = progress_bar(show, len(shard), "dissect 1/2: forward")
    try:
        # inference_mode, not no_grad: nothing here needs autograd's bookkeeping (~5 % faster).
        with preserve_modes(model, eval_mode=True), torch.inference_mode():
            # Pass 1, the only forward pass: every unit's running top-m activations, each
            # with its image, position and 3x3 neighbourhood.
            first = 0  # the batch's first row in the shard
            for images in DataLoader(Items(dataset, concepts), collate_fn=collate_images, **loader_args):
                image_size = check_image_size(images, image_size)
                outs = capture(model, order, keys, images.to(device, non_blocking=True))
                for state, out in zip(states, outs):
                    state.update_top(out, first, n_images, quantile)
                first += images.shape[0]
                bar.update(images.shape[0])
            if not shard:
                # Shapes from image 0, which this rank does not count.
                probe = collate_images([Items(dataset, concepts)[0]])
                image_size = check_image_size(probe, None)
                outs = capture(model, order, keys, probe.to(device))
                for state, out in zip(states, outs):
                    state.running.start(as_maps(out, state.key), n_images, quantile)
        bar.close()
        assert image_size is not None  # the data set is not empty
        for state in states:
            state.finish_thresholds(quantile, world)
        # Every unit's pixel counts, all layers in one matrix (one all_reduce under DDP):
        # |M_k & L_c| for c < C, a column for the padding of present-concept lists, |M_k|,
        # then |M_k| over the images of each category (none without categories).
        units = [state.thresholds.numel() for state in states]
        n_columns = len(concepts) + 2 + len(categories or ())
        counts = torch.zeros(sum(units), n_columns, dtype=torch.float64, device=device)
        offsets = [sum(units[:i]) for i in range(len(units))]

        # Pass 2, the concept masks only: pixel counts of M_k & L_c, M_k and L_c, with each
        # M_k rebuilt from the activations pass 1 kept (no second forward pass).
        concept_pixels = torch.zeros(n_columns, dtype=torch.float64, device=device)
        workspace = Workspace()  # the upsampled maps' buffers, reused batch after batch
        first = 0  # the batch's first row in the shard
        items = Items(
            dataset, concepts, masks_of_size=mask_size or image_size, categories=categories,
            size_from="the size dataset.mask_size gives" if mask_size else "its image's size",
            size_of="dataset.mask_size of image" if mask_size else "image",
        )
        bar = progress_bar(show, len(shard), "dissect 2/2: masks")
        for masks, columns, annotates in DataLoader(items, collate_fn=Collate(len(concepts)), **loader_args):
            present = PixelClasses.of(
                masks.to(device, non_blocking=True), columns.to(device), len(concepts),
                annotates if categories else None,
            )
            concept_pixels += present.pixels
            rows = (first, first + masks.shape[0])
            maps = [(state, offset, state.masks_of(*rows)) for state, offset in zip(states, offsets)]
            _add_counts(counts, maps, present, workspace)
            first = rows[1]
            bar.update(masks.shape[0])
    finally:
        bar.close()

    if world > 1:
        counts, concept_pixels = sum_across_ranks(counts, concept_pixels)
    counts, concept_pixels = counts.cpu(), concept_pixels.cpu()
    result = {}
    for state, offset, n_units in zip(states, offsets, units):
        result[state.key] = state.finish(
            concepts, counts[offset : offset + n_units], concept_pixels[: len(concepts)], iou_threshold,
            mask_columns,
        )
    settings: dict[str, Any] = {"quantile": quantile, "iou_threshold": iou_threshold, "batch_size": batch_size}
    if categories is not None:
        settings["categories"] = list(categories)
    return Dissection(
        layers=result,
        concepts=list(concepts),
        quantile=quantile,
        iou_threshold=iou_threshold,
        num_images=n_images,
        image_size=image_size,
        settings=settings,
        mask_size=mask_size,
    )


# ----------------------------------------------------------------------------- per-layer state
class _LayerState:
    """One layer's running top activations (pass 1) and the maps rebuilt from them (pass 2).

    Pass 1 keeps each unit's top values with their neighbourhoods
    (:class:`~zflight.analysis._quantile.RunningTop`); their thresholds then index the ones
    that reach a mask (:class:`~zflight.analysis._neighbourhoods.KeptMaps`), and pass 2
    rebuilds each batch's maps from those, with no second forward pass.
    """

    def __init__(self, key: str, name: str, n_concepts: int) -> None:
        self.key, self.name, self.n_concepts = key, name, n_concepts
        self.running = RunningTop(key)
        self.kept: KeptMaps | None = None
        self.thresholds = torch.empty(0)

    @property
    def feature_size(self) -> tuple[int, int] | None:
        return self.running.feature_size

    # ---- pass 1
    def update_top(self, out: torch.Tensor, first_row: int, n_images: int, quantile: float) -> None:
        """Add one batch's maps ``out``, of the shard's images ``first_row ..``, to the top values."""
        self.running.update(as_maps(out, self.key).contiguous(), first_row, n_images, quantile)

    def finish_thresholds(self, quantile: float, world: int) -> None:
        """Turn the top values into ``T_k``, as ``torch.quantile`` of all the values gives, and
        index the kept values that reach a mask by shard row for pass 2."""
        run = self.running
        self.thresholds = run.thresholds(quantile, world)
        assert run.feature_size is not None
        self.kept = KeptMaps(run.top, run.where, run.around, self.thresholds, run.feature_size)
        run.release()  # no longer needed

    # ---- pass 2
    def masks_of(self, first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The maps of shard rows ``first .. stop - 1`` that may reach a mask, rebuilt
        (:meth:`~zflight.analysis._neighbourhoods.KeptMaps.masks_of`)."""
        assert self.kept is not None
        return self.kept.masks_of(first, stop)

    def finish(
        self, concepts: list[str], counts: torch.Tensor, concept_pixels: torch.Tensor, iou_threshold: float,
        mask_columns: torch.Tensor | None = None,
    ) -> LayerDissection:
        """IoU from this layer's rows of the (rank-summed) counts, labels and detectors.

        ``mask_columns [C]``: the column of ``counts`` that holds ``sum_{x in X_g} |M_k(x)|``
        for each concept's category ``g``; ``None``: every image counts (column ``C + 1``).
        """
        inter = counts[:, : self.n_concepts]
        # Both counts are exact integers in float64 (below 2**53 pixels).
        if mask_columns is None:
            mask_pixels = counts[:, self.n_concepts + 1]
            union = mask_pixels[:, None] + concept_pixels[None, :].double() - inter
        else:
            union = counts[:, mask_columns] + concept_pixels[None, :].double() - inter
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


def _family(concept: str) -> str:
    return concept.split("/", 1)[0]


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else v
