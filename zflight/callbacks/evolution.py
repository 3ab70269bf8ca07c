""":class:`FeatureEvolution`: the paper's Fig. 4, grown one column per scheduled epoch.

See :mod:`zflight.callbacks.panels` for what every zflight visualization callback promises
(unaffected training, reproducible images, DDP, when it runs).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from zflight.analysis.topk import top_activation_crops, top_activations
from zflight.callbacks._common import (
    Maps,
    _analysis_mode,
    _check_epochs,
    _check_int,
    _check_layers,
    _check_maps,
    _check_model_layers,
    _choose_maps,
    _EpochEndCallback,
    _figure_dir,
    _file_part,
    _layer_channels,
    _log_image,
    _SeededItems,
    _split_dataset,
    _subset,
    _target_model,
)
from zflight.callbacks.dissection import latest_dissection
from zflight.callbacks.panels import PAPER_LAYERS
from zflight.figures import evolution_grid, normalize_projection, save_png
from zflight.figures.dissection import unit_caption

__all__ = ["FeatureEvolution", "PAPER_EPOCHS"]

#: The epochs of the paper's Fig. 4.
PAPER_EPOCHS: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 40, 64)


class FeatureEvolution(_EpochEndCallback):
    """Logs how chosen feature maps evolve during training (the paper's Fig. 4).

    At each scheduled epoch, for each layer and each chosen feature map, the strongest
    activation over a fixed probe set of training images is found
    (:func:`~zflight.attribution.top_activations` with ``k=1``), projected to pixels with the
    deconvnet and cropped to its receptive field; the crops become a new column of that layer's
    figure (rows = feature maps, columns = epochs so far). The growing figure is logged to
    TensorBoard as ``evolution/<layer>`` at the global step, and written to
    ``<log_dir>/figures/evolution_<layer>.png`` (overwritten, so the file is always the latest).
    At the end of training, a last column is added for the final epoch if it was not scheduled
    (``final=True``), and the figures are written once more. With a
    :class:`~zflight.callbacks.UnitLabels` callback in the trainer, each row is labelled with its
    unit's concept and IoU from the latest dissection (``unit 12 · object/ring 0.21``).

    Epochs beyond ``max_epochs`` simply never come. The state (epochs done, chosen maps, the
    columns, stored as display-ready uint8 tiles) is saved in checkpoints, so a run resumed
    with ``ckpt_path`` continues the same figure with no epoch missing or doubled.

    Args:
        layers: layer names (``conv1`` … ``conv5`` for zflight's networks).
        maps: how many feature maps per layer, at random with ``seed`` (fixed for the run), or
            a dict from layer name to the list of maps.
        epochs: epochs (counted from 1) that get a column; the paper's 1, 2, 5, 10, 20, 30, 40, 64
            by default.
        probe_size: training images searched for each map's strongest activation (a fixed
            random subset); ``None`` for the whole training set, as the paper does.
        batch_size: images per forward pass while searching.
        num_workers: DataLoader worker processes reading the probe images (0: read in the
            training process; more for a large probe set, above all from JPEG folders).
        tile: side of each tile in pixels.
        seed: seed of the random choices (maps, probe images) and of augmentations while reading.
        final: add a column for the last epoch at the end of training if it had none.

    Raises:
        ValueError: a bad argument; the message names it. At setup, a layer the network lacks
            (:class:`~zflight.callbacks.CallbackConfigError`, naming the callback and the layer).

    Example:
        >>> trainer = Trainer(max_epochs=10, callbacks=[FeatureEvolution(layers=["conv1", "conv5"])])  # doctest: +SKIP
    """

    def __init__(
        self,
        layers: list[str] = list(PAPER_LAYERS),
        maps: Maps = 8,
        epochs: list[int] = list(PAPER_EPOCHS),
        probe_size: int | None = 512,
        batch_size: int = 64,
        num_workers: int = 0,
        tile: int = 48,
        seed: int = 0,
        final: bool = True,
    ) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        self.maps = _check_maps(maps, self.layers)
        checked = _check_epochs("epochs", epochs)
        if not checked:
            raise ValueError(f"epochs must list at least one epoch number >= 1, got {epochs!r}")
        self.epochs = checked
        _check_int("probe_size", probe_size, 1, allow_none=True)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        _check_int("tile", tile, 4)
        _check_int("seed", seed, 0)
        self.probe_size, self.batch_size, self.tile, self.seed = probe_size, batch_size, tile, seed
        self.num_workers = num_workers
        self.final = bool(final)
        self._channels: dict[str, list[int]] = {}
        # One entry per column, in order: (epoch, {layer: [maps, 3, tile, tile]}), the
        # projections in float16, each scaled to a peak of 1 (the display rule is applied when
        # drawing, so every picture of them follows the one rule); uint8 display tiles in
        # checkpoints from before.
        self._columns: list[tuple[int, dict[str, torch.Tensor]]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=tuple(self.layers), seed=self.seed)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _check_model_layers(self, _target_model(pl_module), self.layers)  # now, not at epoch 1

    def _wanted(self, epoch: int) -> bool:
        return epoch in self.epochs

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        self._add_column(trainer, pl_module, epoch)
        self._publish(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch  # incremented by now: the number of epochs trained
        if self.final and epoch >= 1 and epoch not in self._done_epochs:
            self._add_column(trainer, pl_module, epoch)
            self._done_epochs.append(epoch)
        if self._columns:
            self._publish(trainer, tensorboard=False)

    def _add_column(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        model = _target_model(pl_module)
        probe = _SeededItems(_subset(_split_dataset(trainer, "train"), self.probe_size, self.seed), self.seed)
        column: dict[str, torch.Tensor] = {}
        with _analysis_mode(model, self.seed):
            for name in self.layers:
                if name not in self._channels:
                    n = _layer_channels(model, name, probe)
                    self._channels[name] = _choose_maps(self.maps, name, n, self.seed)
            # All layers in one pass over the probe; a collective under DDP. Every rank also
            # projects (a few images), so that every rank holds the same state.
            tops = top_activations(
                model, probe, self.layers, k=1, channels=self._channels,
                batch_size=self.batch_size, num_workers=self.num_workers, progress=False,
            )
            for name in self.layers:
                projections, _ = top_activation_crops(
                    model, probe, tops[name], tile=self.tile, batch_size=self.batch_size
                )
                column[name] = _storable(projections[:, 0])
        self._columns.append((epoch, column))

    def _publish(self, trainer: Trainer, tensorboard: bool = True) -> None:
        folder = _figure_dir(trainer)  # all ranks: it broadcasts
        if not trainer.is_global_zero:
            return
        for name in self.layers:
            # A UnitLabels callback's latest dissection, if any, labels the rows.
            grid = self.figure(name, latest_dissection(trainer, name))
            save_png(grid, folder / f"evolution_{_file_part(name)}.png")
            if tensorboard:
                _log_image(trainer, f"evolution/{name}", grid, trainer.global_step)

    def figure(self, layer: str, dissection: Any = None) -> torch.Tensor:
        """Return the evolution figure of ``layer`` so far: rows = maps, columns = epochs.

        Args:
            layer: one of ``layers``.
            dissection: a :class:`~zflight.analysis.Dissection` of ``layer``: each row's label
                then carries the unit's label and IoU (``unit 12 · object/ring 0.21``); during
                training, the latest of a :class:`~zflight.callbacks.UnitLabels` callback.

        Returns:
            A float ``[3, H, W]`` image in [0, 1], the epochs written above the columns.

        Raises:
            ValueError: ``layer`` is not one of ``layers``, or no column exists yet.
        """
        if layer not in self.layers:
            raise ValueError(f"layer={layer!r} is not one of this callback's layers {self.layers}")
        if not self._columns:
            raise ValueError("no column yet: the first scheduled epoch has not ended")
        return evolution_grid(
            [_displayed(col[layer]) for _, col in self._columns],
            labels=[f"epoch {e}" for e, _ in self._columns],
            row_labels=[unit_caption(layer, c, dissection, prefix=f"unit {c}") for c in self._channels[layer]],
            title=f"{layer}: strongest activation per epoch",
            normalize=False,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "done_epochs": list(self._done_epochs),
            "channels": {k: list(v) for k, v in self._channels.items()},
            "column_epochs": [e for e, _ in self._columns],
            "columns": {name: [col[name] for _, col in self._columns] for name in self.layers},
            "tile": self.tile,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        layers = set(state_dict.get("columns", {}))
        if state_dict.get("tile") != self.tile or not set(self.layers) <= layers:
            warnings.warn(
                "FeatureEvolution: the checkpoint's figure was made with other layers or tile size "
                f"(layers {sorted(layers)}, tile {state_dict.get('tile')}); starting a new figure",
                stacklevel=2,
            )
            return
        self._done_epochs = list(state_dict["done_epochs"])
        self._channels = {k: list(v) for k, v in state_dict["channels"].items()}
        cols = state_dict["columns"]
        self._columns = [
            (int(e), {name: cols[name][i] for name in self.layers})
            for i, e in enumerate(state_dict["column_epochs"])
        ]


def _storable(projections: torch.Tensor) -> torch.Tensor:
    """Each projection ``[..., 3, h, w]`` divided by its own largest ``|value|``, in float16.

    The display rule scales every projection on its own, so the picture is unchanged; without
    the scaling, float16 would round to zero the deep layers' projections of a network at the
    paper's N(0, 1e-2) start (1e-8 and below at 224 px), and the first epochs' tiles would be gray.
    """
    x = projections.detach().float().cpu()
    peak = x.abs().amax(dim=(-3, -2, -1), keepdim=True)
    return (x / peak.clamp_min(torch.finfo(torch.float32).tiny)).to(torch.float16)


def _displayed(column: torch.Tensor) -> torch.Tensor:
    """A stored column as display tiles in [0, 1]: raw projections get the display rule."""
    if column.dtype == torch.uint8:  # display tiles from a checkpoint written before
        return column.float() / 255.0
    return normalize_projection(column.float())
