"""Bau et al.'s Fig. 2 material: each unit's top images and its mask ``M_k`` on them
(:func:`unit_examples`), for :mod:`zflight.figures.dissection` to draw.

Example:
    >>> ex = unit_examples(model, dataset, result, 4, k=3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zflight.analysis._dissect_inputs import (
    as_maps,
    capture,
    check_device,
    resolve_layers,
)
from zflight.attribution._layers import preserve_modes

if TYPE_CHECKING:
    from zflight.analysis.dissection import Dissection


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
        masks: ``[U, k, h, w]`` bool, ``M_k = up(a_k) > T_k`` on each image, at the size it
            was scored (:attr:`Dissection.scored_size`: the images' size, or the data set's
            ``mask_size``, e.g. Broden's half-size segmentations).
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
    (``F.interpolate(bilinear, align_corners=False) > T_k``, with the dissection's ``T_k``, at
    the size the masks were scored).

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
    device = check_device(model, device)
    tops = top_activations(
        model, dataset, names, k=k, channels={n: chosen[key] for key, n in zip(chosen, names)},
        batch_size=batch_size, progress=False, device=device,
    )
    _, modules = resolve_layers(model, names)
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
                a = as_maps(capture(model, [module], [key], x)[0], key)
                sel = unit_of[start : start + batch_size].to(a.device)
                maps = a[torch.arange(a.shape[0], device=a.device), sel][:, None]  # [b, 1, h, w]
                # At the size dissect scored it (Broden's masks are half the image), so the
                # picture shows the very mask counted; the figure scales it for display.
                up = F.interpolate(maps, size=result.scored_size, mode="bilinear", align_corners=False)
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
                masks=torch.cat(masks).reshape(u, kk, *result.scored_size),
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
