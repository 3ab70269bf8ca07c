"""Callbacks for the paper's Fig. 2 panels (:class:`TopActivationPanels`) and layer-1 filters
(:class:`FilterGrid`), plus the plumbing every zflight visualization callback shares.

The callbacks are thin: they choose images, layers and feature maps, call
:mod:`zflight.attribution` for the numbers and :mod:`zflight.figures` for the pictures, and
log. What they promise about the run they watch:

- **The run is otherwise unaffected.** All their work happens with the model in ``eval()``
  mode (flags restored after), without touching parameters' ``.grad``, and inside a block that
  saves and restores the torch (CPU and CUDA), NumPy and Python random states; so a run with
  the callbacks has the same loss curve as one without, at a fixed seed.
- **Reproducible images.** Random choices (which feature maps, which probe images) come from
  the callback's own ``seed``; each data set item is read under a torch seed derived from
  ``(seed, index)``, so torch-random augmentations (e.g. flips) give the same picture whichever
  epoch, rank or order reads it.
- **DDP.** Mining the top activations is a collective (every rank mines its shard, results are
  merged); it runs on every rank. Images and files are made on rank 0 only.
- **When.** At the end of a training epoch: after that epoch's validation (before the
  checkpoint of that epoch is written, so a resumed run has it) or, without validation, at the
  training epoch's end. Epochs are counted from 1 (``epochs=[1]`` is after the first epoch).
  Nothing happens during the sanity check.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import Dataset, Subset

from zflight.attribution._layers import forward_to, preserve_modes, resolve_layer
from zflight.attribution.topk import top_activation_crops, top_activations
from zflight.figures import filter_grid, save_png, top_activation_panel

__all__ = ["TopActivationPanels", "FilterGrid"]

#: The layers the paper shows (Fig. 2, Fig. 4), by zflight's layer names.
PAPER_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")

Maps = int | dict[str, list[int]]


# ------------------------------------------------------------------------------ shared plumbing
class _EpochEndCallback(Callback):
    """Calls ``_at_epoch(trainer, pl_module, epoch)`` once at the end of each training epoch.

    Runs after the epoch's validation when there is one (callbacks run before
    ``ModelCheckpoint``, which Lightning always puts last, so the checkpoint of that epoch
    holds what was done), else at ``on_train_epoch_end``. ``epoch`` counts from 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self._done_epochs: list[int] = []

    def _wanted(self, epoch: int) -> bool:
        raise NotImplementedError

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        raise NotImplementedError

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not trainer.is_last_batch:  # a validation in the middle of an epoch
            return
        self._maybe_run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_run(trainer, pl_module)

    def _maybe_run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # not yet incremented at either hook
        if epoch in self._done_epochs or not self._wanted(epoch):
            return
        self._at_epoch(trainer, pl_module, epoch)
        self._done_epochs.append(epoch)


def _target_model(pl_module: LightningModule) -> nn.Module:
    """The network inside the LightningModule (``.model`` for zflight's ImageClassifier)."""
    inner = getattr(pl_module, "model", None)
    return inner if isinstance(inner, nn.Module) else pl_module


def _figure_dir(trainer: Trainer) -> Path:
    # trainer.log_dir broadcasts from rank 0: every rank must ask.
    return Path(trainer.log_dir or trainer.default_root_dir) / "figures"


def _log_image(trainer: Trainer, tag: str, image: torch.Tensor, step: int) -> None:
    """Add ``image`` ([3, H, W] in [0, 1]) to every TensorBoard logger of the trainer (rank 0)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=step)


@contextlib.contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch with ``seed`` inside; restore torch (CPU, CUDA), NumPy and Python RNGs after.

    DataLoader iterators, augmentations and sampling all draw from these; the training run
    must not see a single draw of ours.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def _analysis_mode(model: nn.Module, seed: int) -> Iterator[None]:
    """Eval mode (restored), grad allowed (Lightning runs validation hooks in inference mode),
    and isolated random state."""
    with _isolated_rng(seed), preserve_modes(model, eval_mode=True), torch.inference_mode(False):
        yield


class _SeededItems(Dataset):
    """Reads item ``i`` of ``dataset`` under the torch seed ``(seed, i)``, so that torch-random
    transforms give the same item whoever reads it, in whatever order.

    It reseeds the CPU generator and does not restore it (``fork_rng`` per item costs
    milliseconds): use it inside :func:`_isolated_rng`, which restores everything once.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        torch.default_generator.manual_seed(self.seed * 1_000_003 + int(index))
        return self.dataset[index]


def _split_dataset(trainer: Trainer, split: str) -> Dataset:
    """The ``split`` (``"train"`` or ``"val"``) data set of the running fit."""
    dm = getattr(trainer, "datamodule", None)
    ds = getattr(dm, f"{split}_dataset", None) if dm is not None else None
    if ds is None:
        loaders = trainer.train_dataloader if split == "train" else trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        ds = getattr(loaders, "dataset", None)
    if ds is None:
        raise RuntimeError(
            f"no {split} data set found: the data module has no `{split}_dataset` and the "
            f"trainer has no {split} dataloader with a `.dataset`"
        )
    return ds


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``size`` items (in index order), or the whole data set."""
    n = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= n:
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(n, generator=g)[:size].tolist()))


def _layer_channels(model: nn.Module, layer: str, dataset: Dataset) -> int:
    """Channels of ``layer``'s output, from one image."""
    _, module = resolve_layer(model, layer)
    x = dataset[0]
    x = x[0] if isinstance(x, (tuple, list)) else x
    device = next(iter(model.parameters())).device
    with torch.no_grad():
        return int(forward_to(model, module, x[None].to(device)).shape[1])


def _choose_maps(maps: Maps, layer: str, n_channels: int, seed: int) -> list[int]:
    """``maps`` random feature maps of ``layer`` (sorted), or the listed ones."""
    if isinstance(maps, dict):
        chosen = list(maps[layer])
        bad = [c for c in chosen if not 0 <= c < n_channels]
        if bad:
            raise ValueError(
                f"maps[{layer!r}] has {bad}, out of range for a layer with {n_channels} feature "
                f"maps (valid 0..{n_channels - 1})"
            )
        return chosen
    # A per-layer generator: which maps a layer shows does not depend on the other layers.
    g = torch.Generator().manual_seed(seed * 7919 + sum(map(ord, layer)))
    return sorted(torch.randperm(n_channels, generator=g)[: min(maps, n_channels)].tolist())


def _check_layers(layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    if not all(isinstance(name, str) and name for name in layers):
        raise ValueError(f"layers must hold layer names (str), got {list(layers)!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat, got {list(layers)!r}")
    return list(layers)


def _check_maps(maps: Maps, layers: list[str]) -> Maps:
    if isinstance(maps, dict):
        missing = [name for name in layers if name not in maps]
        if missing:
            raise ValueError(f"maps has no feature maps listed for layers {missing}")
        for name, chans in maps.items():
            if not chans or not all(isinstance(c, int) and not isinstance(c, bool) for c in chans):
                raise ValueError(f"maps[{name!r}] must be a non-empty list of ints, got {chans!r}")
        return {k: list(v) for k, v in maps.items()}
    if isinstance(maps, bool) or not isinstance(maps, int) or maps < 1:
        raise ValueError(f"maps must be a positive int (a random subset) or a dict layer -> list of maps, got {maps!r}")
    return maps


def _check_epochs(name: str, epochs: Sequence[int] | None) -> list[int] | None:
    if epochs is None:
        return None
    if isinstance(epochs, (str, bytes)) or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in epochs):
        raise ValueError(f"{name} must be a list of epoch numbers >= 1 (1 = after the first epoch), got {epochs!r}")
    return sorted(set(epochs))


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= {minimum}{extra}, got {value!r}")


def _file_part(layer: str) -> str:
    return layer.replace("/", "_")


# ------------------------------------------------------------------------------------ callbacks
class TopActivationPanels(_EpochEndCallback):
    """Logs the paper's Fig. 2 panels: each feature map's top-``k`` projections beside their patches.

    For each layer, a set of feature maps (``maps`` of them at random, fixed for the run, or the
    ones listed) is mined over the ``split`` data set with
    :func:`~zflight.attribution.top_activations` (one activation per image, so ``k`` different
    images); each activation is projected to pixels with the deconvnet and shown next to the
    image patch its receptive field covers. Logged at the listed ``epochs`` and at the end of
    training, as TensorBoard images ``top9/<layer>`` (``top<k>``) and PNG files
    ``<log_dir>/figures/top<k>_<layer>_epoch<NNN>.png``.

    Args:
        layers: layer names (``conv1`` … ``conv5`` for zflight's networks, any module name of
            the model, e.g. ``layer3`` for a ResNet).
        maps: how many feature maps per layer, drawn at random with ``seed``; or a dict from
            layer name to the list of maps to show.
        k: activations per feature map (9 in the paper: a 3×3 grid).
        epochs: epochs (counted from 1) after which to log; ``None``: only at the end of
            training.
        split: ``"val"`` (the paper's choice) or ``"train"``.
        max_images: mine only this many images of the split (a fixed random subset);
            ``None`` for all of them.
        batch_size: images per forward pass while mining.
        tile: side of each projection and patch in the panel, in pixels.
        maps_per_row: feature-map cells per row of a panel.
        seed: seed of the random choices (maps, subset) and of augmentations while reading.

    Raises:
        ValueError: a bad argument; the message names it.

    Example:
        >>> trainer = Trainer(callbacks=[TopActivationPanels(layers=["conv1", "conv5"], maps=8)])  # doctest: +SKIP
    """

    def __init__(
        self,
        layers: list[str] = list(PAPER_LAYERS),
        maps: Maps = 8,
        k: int = 9,
        epochs: list[int] | None = None,
        split: Literal["val", "train"] = "val",
        max_images: int | None = None,
        batch_size: int = 64,
        tile: int = 48,
        maps_per_row: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        self.maps = _check_maps(maps, self.layers)
        _check_int("k", k, 1)
        self.epochs = _check_epochs("epochs", epochs)
        if split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {split!r}")
        _check_int("max_images", max_images, 1, allow_none=True)
        _check_int("batch_size", batch_size, 1)
        _check_int("tile", tile, 4)
        _check_int("maps_per_row", maps_per_row, 1)
        _check_int("seed", seed, 0)
        self.k, self.split, self.max_images = k, split, max_images
        self.batch_size, self.tile, self.maps_per_row, self.seed = batch_size, tile, maps_per_row, seed
        self._channels: dict[str, list[int]] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=tuple(self.layers), k=self.k, split=self.split)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        model = _target_model(pl_module)
        for name in self.layers:
            resolve_layer(model, name)  # fail now, with the close names, not after an epoch

    def _wanted(self, epoch: int) -> bool:
        return self.epochs is not None and epoch in self.epochs

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch  # incremented by now: the number of epochs trained
        if epoch >= 1 and epoch not in self._done_epochs:
            self._at_epoch(trainer, pl_module, epoch)
            self._done_epochs.append(epoch)

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        model = _target_model(pl_module)
        folder = _figure_dir(trainer)
        dataset = _SeededItems(_subset(_split_dataset(trainer, self.split), self.max_images, self.seed), self.seed)
        with _analysis_mode(model, self.seed):
            for name in self.layers:
                if name not in self._channels:
                    n = _layer_channels(model, name, dataset)
                    self._channels[name] = _choose_maps(self.maps, name, n, self.seed)
            # All layers in one pass over the data; a collective under DDP: every rank.
            tops = top_activations(
                model, self.layers, dataset, k=self.k, channels=self._channels,
                batch_size=self.batch_size, progress=False,
            )
            if not trainer.is_global_zero:
                return
            for name in self.layers:
                projections, patches = top_activation_crops(
                    model, tops[name], dataset, tile=self.tile, batch_size=self.batch_size
                )
                panel = top_activation_panel(projections, patches, maps_per_row=self.maps_per_row)
                save_png(panel, folder / f"top{self.k}_{_file_part(name)}_epoch{epoch:03d}.png")
                _log_image(trainer, f"top{self.k}/{name}", panel, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"done_epochs": list(self._done_epochs), "channels": {k: list(v) for k, v in self._channels.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done_epochs = list(state_dict.get("done_epochs", []))
        self._channels = {k: list(v) for k, v in state_dict.get("channels", {}).items()}


class FilterGrid(_EpochEndCallback):
    """Logs a first-layer conv's filters as an image grid (the paper's Fig. 6 (b), (c)).

    Each filter is shown on its own scale, centered on zero (mid gray), as a colour patch.
    Logged before training (step 0) and every ``every_n_epochs`` epochs as TensorBoard image
    ``filters/<layer>``; the latest grid is also ``<log_dir>/figures/filters_<layer>.png``.

    Args:
        layer: a conv layer whose filters see 1 or 3 input channels (``conv1``).
        every_n_epochs: log after every this many epochs.
        nrow: filters per row; ``None`` for a near-square grid.

    Raises:
        ValueError: a bad argument; at setup, a layer that is not a conv with 1 or 3 inputs.

    Example:
        >>> trainer = Trainer(callbacks=[FilterGrid("conv1")])  # doctest: +SKIP
    """

    def __init__(self, layer: str = "conv1", every_n_epochs: int = 1, nrow: int | None = None) -> None:
        super().__init__()
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"layer must be a layer name, got {layer!r}")
        _check_int("every_n_epochs", every_n_epochs, 1)
        _check_int("nrow", nrow, 1, allow_none=True)
        self.layer, self.every_n_epochs, self.nrow = layer, every_n_epochs, nrow

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layer=self.layer)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _, module = resolve_layer(_target_model(pl_module), self.layer)
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Conv2d) or weight is None or weight.shape[1] not in (1, 3):
            raise ValueError(
                f"layer={self.layer!r} must be a Conv2d with 1 or 3 input channels (a first "
                f"layer), got {type(module).__name__}"
                + (f" with weight {tuple(weight.shape)}" if weight is not None else "")
            )

    def _wanted(self, epoch: int) -> bool:
        return epoch % self.every_n_epochs == 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0 and 0 not in self._done_epochs:
            self._at_epoch(trainer, pl_module, 0)

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        folder = _figure_dir(trainer)  # all ranks: it broadcasts
        if not trainer.is_global_zero:
            return
        _, module = resolve_layer(_target_model(pl_module), self.layer)
        grid = filter_grid(module.weight.detach(), nrow=self.nrow)
        save_png(grid, folder / f"filters_{_file_part(self.layer)}.png")
        _log_image(trainer, f"filters/{self.layer}", grid, trainer.global_step)
