"""Plumbing shared by zflight's visualization callbacks (and ``python -m zflight visualize``).

:class:`_EpochEndCallback` (when a callback runs), :class:`_LayerEpochCallback` (layers checked
at ``setup``, listed epochs, once more at the end), the analysis context (:func:`_analysis_mode`:
eval mode, grad allowed, isolated random state), the data (:func:`_split_dataset`,
:func:`_subset`, :class:`_SeededItems`), feature-map choice and argument checks. See
:mod:`zflight.callbacks.panels` for what the callbacks promise.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import Dataset, Subset

from zflight.attribution._layers import forward_to, preserve_modes, resolve_layer

Maps = int | dict[str, list[int]]



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



class _LayerEpochCallback(_EpochEndCallback):
    """An :class:`_EpochEndCallback` over ``self.layers`` at the epochs listed in ``self.epochs``.

    The layers are resolved at ``setup`` (a typo fails at once, with the close names, not after
    an epoch); ``epochs=None`` means none during training. Whatever the list, it runs once more
    at the end of training for the last epoch, unless that epoch was already done.
    """

    layers: list[str]
    epochs: list[int] | None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _check_model_layers(self, _target_model(pl_module), self.layers)

    def _wanted(self, epoch: int) -> bool:
        return self.epochs is not None and epoch in self.epochs

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch  # incremented by now: the number of epochs trained
        if epoch >= 1 and epoch not in self._done_epochs:
            self._at_epoch(trainer, pl_module, epoch)
            self._done_epochs.append(epoch)


class CallbackConfigError(ValueError):
    """A callback's configuration does not fit the run it was given (a layer the network lacks).

    Raised at ``setup``, before the first training step, with one line that names the callback
    and the offending value; ``python -m zflight fit`` prints that line as its error.
    """


def _check_model_layers(callback: Callback, model: nn.Module, layers: Sequence[str]) -> None:
    """Resolve every name in ``layers`` in ``model``, or raise one line naming the callback and the layer.

    Called at ``setup``: a config naming a layer the network lacks fails before training starts,
    not at the first scheduled epoch.

    Raises:
        CallbackConfigError: ``FeatureEvolution: layer='conv9' is not a module of ZFNet; did
            you mean ...?``
    """
    for name in layers:
        try:
            resolve_layer(model, name)
        except ValueError as err:
            raise CallbackConfigError(f"{type(callback).__name__}: {err}") from None


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
