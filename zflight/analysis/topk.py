"""The strongest activations of a layer's feature maps over a data set (the paper's Fig. 2).

:func:`top_activations` streams a map-style data set through a model up to one layer and keeps,
for every requested feature map, the ``k`` images whose strongest activation of that map is the
largest. Memory stays bounded: only a running ``[C, k]`` top-k is kept and merged with each
batch's per-image maxima; the activations of the data set are never held together.

:func:`top_activation_crops` turns such a result into what the paper shows next to each other:
the deconvnet projection of each of those activations and the image patch it sees (its
receptive field), both cropped to the same box.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zflight.analysis._distributed import comm_device, progress_bar, rank_world
from zflight.attribution._layers import (
    as_unit_maps,
    forward_to,
    forward_until,
    preserve_modes,
    resolve_layer,
)

__all__ = ["TopActivations", "top_activations", "top_activation_crops"]

# Padding entries of a running top-k that holds fewer than k images so far. They sort after
# every real entry (value -inf, largest index) and are cut off at the end.
_PAD_INDEX = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class TopActivations:
    """The ``k`` strongest activations of each of ``C`` feature maps over a data set.

    Attributes:
        layer: the layer's dotted name in the model.
        channels: ``[C]`` the feature maps (channel indices of the layer's output).
        values: ``[C, k]`` the activations, in descending order per row.
        indices: ``[C, k]`` the data set index of the image of each activation.
        positions: ``[C, k, 2]`` ``(row, col)`` of each activation in the feature map.
        feature_size: ``(height, width)`` of the layer's feature maps.
    """

    layer: str
    channels: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    feature_size: tuple[int, int]

    @property
    def k(self) -> int:
        """Activations per feature map (``min(k, len(dataset))``)."""
        return int(self.values.shape[1])


def top_activations(
    model: nn.Module,
    dataset: Dataset,
    layer: str | nn.Module | Sequence[str | nn.Module],
    *,
    k: int = 9,
    channels: int | Sequence[int] | torch.Tensor | dict[str, Any] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> TopActivations | dict[str, TopActivations]:
    """Return the ``k`` strongest activations of each feature map of ``layer`` over ``dataset``.

    Each image counts once per feature map: its strongest activation of that map (the first
    position in row-major order on ties). So the ``k`` activations of a map come from ``k``
    different images, as in the paper's Fig. 2. Ties between images go to the lower data set
    index, which makes the result exactly that of a brute-force loop over the images.

    The model runs in ``eval()`` mode without gradients, only as far as the deepest requested
    layer; every submodule's ``training`` flag is restored afterwards. Several layers (a list)
    share one forward pass per batch. Memory is bounded by one batch of activations plus the
    running ``[C, k]`` top-k of each layer.

    Under ``torch.distributed`` (when a process group is initialized), each rank mines every
    ``world_size``-th image starting at its rank (no padding, no duplicates) and the partial
    results are merged with ``all_gather``: every rank must call this function, and every rank
    gets the same result as one process would.

    Args:
        model: any CNN (``nn.Module``) whose layers output ``[N, C, H, W]`` (or ``[N, C]``,
            counted as 1×1 maps).
        dataset: a map-style data set; items are ``(image, label, ...)`` tuples or images.
        layer: a submodule of ``model`` or its dotted name (a unique suffix like ``"conv5"``),
            or a list of them.
        k: activations per feature map; fewer if the data set has fewer than ``k`` images.
        channels: the feature maps to mine: an int, a sequence of ints, a 1-D tensor, or
            ``None`` for all channels. With a list of layers: a dict from each layer (as given)
            to its channels, or ``None`` for all channels of every layer.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes.
        progress: show a tqdm progress bar (on rank 0 only).
        device: where to run; ``None`` is the device of the model's parameters (CPU if it has
            none). The model is not moved.

    Returns:
        A :class:`TopActivations` with ``values``, ``indices`` (``[C, k]``), ``positions``
        (``[C, k, 2]``) and ``channels`` (``[C]``), on the CPU; for a list of layers, a dict
        from each layer (as given) to its result.

    Raises:
        ValueError: a bad ``k``, ``batch_size``, ``num_workers``, ``channels`` (out of the
            layer's range, repeated) or ``layer`` (unknown, or not a feature map), or an empty
            data set; the message names the argument.

    Example:
        >>> from zflight import zfnet
        >>> from zflight.data import ShapesDataset
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> top = top_activations(model, ShapesDataset(32), "conv5", k=9, progress=False)
        >>> top.values.shape, top.positions.shape
        (torch.Size([32, 9]), torch.Size([32, 9, 2]))
        >>> tops = top_activations(model, ShapesDataset(32), ["conv1", "conv5"], progress=False)
        >>> sorted(tops)
        ['conv1', 'conv5']
    """
    _check_data_order("top_activations", dataset, layer)
    _check_positive_int("k", k)
    _check_positive_int("batch_size", batch_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    n_images = len(dataset)  # type: ignore[arg-type]
    if n_images == 0:
        raise ValueError("dataset is empty: there are no activations to rank")
    single = isinstance(layer, (str, nn.Module))
    layers = [layer] if single else list(layer)  # type: ignore[arg-type]
    if not layers:
        raise ValueError("layer is an empty list: name at least one layer")
    keys = [key if isinstance(key, str) else resolve_layer(model, key)[0] for key in layers]
    if len(set(keys)) != len(keys):
        raise ValueError(f"layer lists a layer twice: {keys}")
    if single:
        per_layer = {keys[0]: channels}
    elif channels is None:
        per_layer = {key: None for key in keys}
    elif isinstance(channels, dict):
        missing = [key for key in keys if key not in channels]
        if missing:
            raise ValueError(f"channels has no entry for layers {missing}; give one per layer or None")
        per_layer = {key: channels[key] for key in keys}
    else:
        raise ValueError("with a list of layers, channels must be a dict layer -> channels, or None")
    mined = {key: _RunningTopK(key, *resolve_layer(model, lay), per_layer[key]) for key, lay in zip(keys, layers)}

    device = _model_device(model) if device is None else torch.device(device)
    rank, world = rank_world()
    shard = list(range(rank, n_images, world))
    k_eff = min(k, n_images)
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=shard,  # a plain list of indices: in order, this rank's images only
        num_workers=num_workers,
    )
    with preserve_modes(model, eval_mode=True), torch.no_grad():
        seen = 0
        label = keys[0] if len(keys) == 1 else f"{len(keys)} layers"
        for batch in _progress(loader, progress and rank == 0, label, len(shard)):
            images = _images_of(batch).to(device, non_blocking=True)
            outputs = _forward_capture(model, [m.module for m in mined.values()], images)
            idx = torch.tensor(shard[seen : seen + images.shape[0]], dtype=torch.int64, device=device)
            seen += images.shape[0]
            for state, out in zip(mined.values(), outputs):
                state.update(out, idx, k_eff)
        if seen == 0:
            # This rank's shard is empty (more ranks than images): shapes from one image, so
            # that this rank still takes part in the all_gather with the right shapes.
            probe = _images_of(dataset[0])[None].to(device)
            outputs = _forward_capture(model, [m.module for m in mined.values()], probe)
            for state, out in zip(mined.values(), outputs):
                state.start(out, k_eff, device)
    results = {}
    for key, state in mined.items():
        v, i, p = state.best_v, state.best_i, state.best_p
        if world > 1:
            v, i, p = _merge_across_ranks(v, i, p, k_eff)
        results[key] = TopActivations(
            layer=state.name,
            channels=state.channels.cpu(),
            values=v.cpu(),
            indices=i.cpu(),
            positions=p.cpu(),
            feature_size=state.feature_size,
        )
    return results[keys[0]] if single else results


class _RunningTopK:
    """One layer's running top-k: ``[C, k]`` values, data set indices and positions."""

    def __init__(self, key: str, name: str, module: nn.Module, channels: Any) -> None:
        self.key, self.name, self.module, self.requested = key, name, module, channels
        self.channels = torch.empty(0, dtype=torch.int64)
        self.best_v = self.best_i = self.best_p = torch.empty(0)
        self.feature_size = (1, 1)
        self.started = False

    def start(self, out: torch.Tensor, k: int, device: torch.device) -> torch.Tensor:
        fmap = as_unit_maps(out, f"layer={self.name!r}", "top activations need feature maps")
        if not self.started:
            self.channels = _channel_list(self.requested, fmap.shape[1], self.name)
            self.feature_size = (int(fmap.shape[2]), int(fmap.shape[3]))
            c = self.channels.numel()
            # Rank in the model's own precision: a float64 model's values and positions must be
            # exactly its own (half precision is upcast: its ranking is exact in float32).
            self.best_v = torch.full((c, k), float("-inf"), dtype=_ranking_dtype(fmap.dtype), device=device)
            self.best_i = torch.full((c, k), _PAD_INDEX, dtype=torch.int64, device=device)
            self.best_p = torch.zeros((c, k, 2), dtype=torch.int64, device=device)
            self.started = True
        return fmap

    def update(self, out: torch.Tensor, idx: torch.Tensor, k: int) -> None:
        fmap = self.start(out, k, idx.device)
        b = fmap.shape[0]
        picked = fmap.index_select(1, self.channels.to(fmap.device)).flatten(2)  # [B, C, HW]
        picked = picked.to(self.best_v.dtype)
        # argmax returns the first maximal position: row-major tie-breaking within a map.
        flat_pos = picked.argmax(dim=2)  # [B, C]
        vals = picked.gather(2, flat_pos.unsqueeze(2)).squeeze(2).to(idx.device)  # [B, C]
        flat_pos = flat_pos.to(idx.device)
        w = self.feature_size[1]
        pos = torch.stack([flat_pos // w, flat_pos % w], dim=-1)  # [B, C, 2]
        self.best_v, self.best_i, self.best_p = _merge(
            self.best_v,
            self.best_i,
            self.best_p,
            vals.t(),
            idx.unsqueeze(0).expand(vals.shape[1], b),
            pos.transpose(0, 1),
            k,
        )


def _ranking_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype activations are ranked in: the model's own, half precision upcast to float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _forward_capture(model: nn.Module, modules: list[nn.Module], inputs: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model`` until every module in ``modules`` has run; return their outputs in order."""
    if len(modules) == 1:
        return [forward_to(model, modules[0], inputs)]
    captured = forward_until(model, modules, inputs)
    missing = [i for i, m in enumerate(modules) if id(m) not in captured]
    if missing:
        # Name them the way forward_to does (it raises LayerNotReachedError).
        forward_to(model, modules[missing[0]], inputs)
    outs = [captured[id(m)] for m in modules]
    for out in outs:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"a layer returns {type(out).__name__}, not a tensor")
    return outs


def top_activation_crops(
    model: nn.Module,
    dataset: Dataset,
    top: TopActivations,
    *,
    tile: int = 48,
    input_size: tuple[int, int] | None = None,
    batch_size: int | None = 64,
    device: torch.device | str | None = None,
    shard: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the deconvnet projection of each top activation and its image patch, cropped alike.

    For feature map ``top.channels[c]`` and its ``j``-th activation, the image
    ``dataset[top.indices[c, j]]`` is projected with :meth:`DeconvNet.project` (``mode="max"``:
    that map's strongest activation, which is the one ``top`` recorded), and both the projection
    and the image are cropped to the activation's receptive field (clipped to the image) and
    scaled, keeping the aspect ratio, into a ``tile``×``tile`` square (letterboxed with zeros for
    projections, mid-gray for patches).

    The model runs in ``eval()`` mode; its flags are restored afterwards.

    Args:
        model: the model ``top`` was mined from.
        dataset: the same data set.
        top: the result of :func:`top_activations`.
        tile: side of each output square in pixels.
        input_size: ``(height, width)`` of the images; read from the data set when ``None``.
        batch_size: images per deconvnet pass (``None``: all at once).
        device: where to run; ``None`` is the model's device.
        shard: under a ``torch.distributed`` process group (``torchrun``), split the work:
            rank ``r`` projects batches ``r, r + world, ...`` and every rank receives every
            tile, the same numbers one process computes (each batch is the one it would run).
            Every rank must then call this together. Without a process group it does nothing.

    Returns:
        ``(projections, patches)``, each ``[C, k, 3, tile, tile]`` on the CPU: the projections
        raw (signed; normalize them for display with :func:`zflight.figures.normalize_projection`),
        the patches in [0, 1] (the data set's ``denormalize`` when it has one, otherwise each
        image min-max scaled).

    Example:
        >>> top = top_activations(model, ds, "conv2", k=9, channels=[0, 1], progress=False)
        >>> proj, patches = top_activation_crops(model, ds, top)  # doctest: +SKIP
        >>> proj.shape
        torch.Size([2, 9, 3, 48, 48])
    """
    from zflight.analysis.receptive_field import receptive_field
    from zflight.attribution.deconvnet import DeconvNet

    if not isinstance(top, TopActivations):
        raise TypeError(f"top_activation_crops(model, dataset, top): top must be a TopActivations, "
                        f"got {type(top).__name__} (the order is model, data, then the result)")
    _check_positive_int("tile", tile)
    device = _model_device(model) if device is None else torch.device(device)
    c, k = top.indices.shape
    flat_idx = top.indices.reshape(-1).tolist()
    n = len(flat_idx)
    if input_size is None:
        first = _images_of(dataset[flat_idx[0]])
        input_size = (int(first.shape[-2]), int(first.shape[-1]))
    chans = top.channels.repeat_interleave(k)
    positions = top.positions.reshape(-1, 2).tolist()
    step = max(n, 1) if batch_size is None else batch_size
    rank, world = rank_world() if shard else (0, 1)
    tiles: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batch start -> its (projections, patches)
    with preserve_modes(model, eval_mode=True):
        rf = receptive_field(model, top.layer, input_size)
        deconv = DeconvNet(model)
        for start in range(rank * step, n, world * step):
            stop = min(start + step, n)
            images = torch.stack([_images_of(dataset[i]) for i in flat_idx[start:stop]]).to(device)
            projections = deconv.project(images, layer=top.layer, channels=chans[start:stop], mode="max",
                                         batch_size=step).cpu()
            shown = _display_images(dataset, images.cpu())
            boxes = [rf.box(row, col) for row, col in positions[start:stop]]
            tiles[start] = (
                torch.stack([_crop_to_tile(p, box, tile, fill=0.0) for p, box in zip(projections, boxes)]),
                torch.stack([_crop_to_tile(x, box, tile, fill=0.5) for x, box in zip(shown, boxes)]),
            )
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, tiles)
        tiles = {start: part for rank_tiles in gathered for start, part in rank_tiles.items()}
    ordered = [tiles[start] for start in sorted(tiles)]
    shape = (c, k, ordered[0][0].shape[1], tile, tile)
    return torch.cat([p for p, _ in ordered]).view(shape), torch.cat([x for _, x in ordered]).view(shape)


# ------------------------------------------------------------------------------------ internals
def _check_data_order(function: str, dataset: Any, layer: Any) -> None:
    """A call in the old order ``(model, layer, dataset)`` is a clear error, not a confusing one."""
    named = isinstance(dataset, (str, nn.Module)) or (
        isinstance(dataset, (list, tuple)) and dataset and all(isinstance(x, (str, nn.Module)) for x in dataset))
    if named and hasattr(layer, "__getitem__") and hasattr(layer, "__len__") and not isinstance(layer, (str, list, tuple)):
        raise TypeError(f"{function} takes (model, dataset, layers, ...): the data set comes before the layers")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _images_of(item: Any) -> torch.Tensor:
    """The image tensor of a data set item or a collated batch: ``(image, label)`` or ``image``."""
    x = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"dataset items must be (image tensor, label) or image tensors, got {type(x).__name__}"
        )
    return x


def _progress(loader: DataLoader, show: bool, layer: str, total_images: int) -> Iterator[Any]:
    if not show:
        yield from loader
        return
    bar = progress_bar(True, total_images, f"top activations {layer}")
    try:
        for batch in loader:
            yield batch
            bar.update(len(_images_of(batch)))
    finally:
        bar.close()


def _channel_list(
    channels: int | Sequence[int] | torch.Tensor | None, n_channels: int, name: str
) -> torch.Tensor:
    if channels is None:
        return torch.arange(n_channels)
    if isinstance(channels, bool):
        raise ValueError("channels must be an int, a sequence of ints, a 1-D tensor or None")
    if isinstance(channels, int):
        chans = torch.tensor([channels])
    elif isinstance(channels, torch.Tensor):
        if channels.is_floating_point() or channels.dim() > 1:
            raise ValueError(
                f"channels must be a 0-D or 1-D integer tensor, got {channels.dtype} of shape "
                f"{tuple(channels.shape)}"
            )
        chans = channels.detach().cpu().to(torch.int64).reshape(-1)
    else:
        values = list(channels)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"channels must hold ints only, got {values!r}")
        chans = torch.tensor(values, dtype=torch.int64)
    if chans.numel() == 0:
        raise ValueError("channels is empty: name at least one feature map, or None for all")
    bad = chans[(chans < 0) | (chans >= n_channels)]
    if bad.numel():
        raise ValueError(
            f"channels {bad.tolist()} out of range for layer={name!r}, which has {n_channels} "
            f"feature maps (valid 0..{n_channels - 1})"
        )
    if chans.unique().numel() != chans.numel():
        raise ValueError(f"channels must not repeat, got {chans.tolist()}")
    return chans


def _merge(
    v: torch.Tensor,
    i: torch.Tensor,
    p: torch.Tensor,
    new_v: torch.Tensor,
    new_i: torch.Tensor,
    new_p: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge a running top-k ``[C, k]`` with candidates ``[C, n]``: value down, then index up."""
    all_v = torch.cat([v, new_v.to(v.dtype)], dim=1)
    all_i = torch.cat([i, new_i], dim=1)
    all_p = torch.cat([p, new_p], dim=1)
    # Two stable sorts give a lexicographic order: by index first, then by value, so that equal
    # values keep the lower index first. NaN activations sort as the largest values (torch's
    # order); they are a bug upstream, not something to hide here.
    by_index = all_i.argsort(dim=1, stable=True)
    all_v, all_i = all_v.gather(1, by_index), all_i.gather(1, by_index)
    all_p = all_p.gather(1, by_index.unsqueeze(-1).expand_as(all_p))
    by_value = all_v.argsort(dim=1, descending=True, stable=True)[:, :k]
    return (
        all_v.gather(1, by_value),
        all_i.gather(1, by_value),
        all_p.gather(1, by_value.unsqueeze(-1).expand(-1, -1, 2)),
    )


def _merge_across_ranks(
    v: torch.Tensor, i: torch.Tensor, p: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch.distributed as dist

    comm = comm_device()

    def gather(t: torch.Tensor) -> list[torch.Tensor]:
        t = t.to(comm).contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        return parts

    vs, is_, ps = gather(v), gather(i), gather(p)
    out_v, out_i, out_p = vs[0], is_[0], ps[0]
    for r in range(1, len(vs)):
        out_v, out_i, out_p = _merge(out_v, out_i, out_p, vs[r], is_[r], ps[r], k)
    return out_v.to(v.device), out_i.to(v.device), out_p.to(v.device)


def _display_images(dataset: Dataset, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] for display: the data set's own ``denormalize`` if it has one."""
    base = dataset
    while hasattr(base, "dataset") and not hasattr(base, "denormalize"):
        base = base.dataset  # torch.utils.data.Subset and similar wrappers
    denormalize = getattr(base, "denormalize", None)
    if callable(denormalize):
        return denormalize(images.float()).clamp(0, 1)
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - lo) / (hi - lo).clamp_min(1e-12)).float()


def _crop_to_tile(
    image: torch.Tensor, box: tuple[int, int, int, int], tile: int, fill: float
) -> torch.Tensor:
    """Crop ``image[:, y0:y1, x0:x1]`` and fit it into a ``tile`` square, aspect ratio kept."""
    y0, x0, y1, x1 = box
    crop = image[:, y0:y1, x0:x1].float()
    h, w = crop.shape[-2:]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # Nearest for upscaling keeps pixels crisp (patches are often small); area for shrinking.
    how = "nearest" if scale >= 1 else "area"
    resized = F.interpolate(crop[None], size=(nh, nw), mode=how)[0]
    out = torch.full((image.shape[0], tile, tile), fill, dtype=resized.dtype)
    top, left = (tile - nh) // 2, (tile - nw) // 2
    out[:, top : top + nh, left : left + nw] = resized
    return out
