"""Callbacks for the paper's Fig. 2 panels (:class:`TopActivationPanels`) and layer-1 filters
(:class:`FilterGrid`). The plumbing every zflight visualization callback shares is in
:mod:`zflight.callbacks._common`.

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

from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from torch import nn

from zflight.attribution._layers import resolve_layer
from zflight.analysis.topk import top_activation_crops, top_activations
from zflight.callbacks._common import (
    CallbackConfigError,
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
    _LayerEpochCallback,
    _log_image,
    Maps,
    _SeededItems,
    _split_dataset,
    _subset,
    _target_model,
)
from zflight.callbacks.dissection import latest_dissection
from zflight.figures import filter_grid, save_png, top_activation_panel
from zflight.figures.dissection import unit_caption

__all__ = ["TopActivationPanels", "FilterGrid"]

#: The layers the paper shows (Fig. 2, Fig. 4), by zflight's layer names.
PAPER_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")


# ------------------------------------------------------------------------------------ callbacks
class TopActivationPanels(_LayerEpochCallback):
    """Logs the paper's Fig. 2 panels: each feature map's top-``k`` projections beside their patches.

    For each layer, a set of feature maps (``maps`` of them at random, fixed for the run, or the
    ones listed) is mined over the ``split`` data set with
    :func:`~zflight.attribution.top_activations` (one activation per image, so ``k`` different
    images); each activation is projected to pixels with the deconvnet and shown next to the
    image patch its receptive field covers. Logged at the listed ``epochs`` and at the end of
    training, as TensorBoard images ``top9/<layer>`` (``top<k>``) and PNG files
    ``<log_dir>/figures/top<k>_<layer>_epoch<NNN>.png``. With a
    :class:`~zflight.callbacks.UnitLabels` callback in the trainer (listed before this one),
    each map's caption carries its unit's label and IoU from the latest dissection
    (``conv5 unit 12 · object/ring 0.21``).

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
        num_workers: DataLoader worker processes reading the images while mining (0: read in
            the training process; more for JPEG folders, which decode slowly).
        tile: side of each projection and patch in the panel, in pixels.
        maps_per_row: feature-map cells per row of a panel.
        seed: seed of the random choices (maps, subset) and of augmentations while reading.

    Raises:
        ValueError: a bad argument; the message names it. At setup, a layer the network lacks
            (:class:`~zflight.callbacks.CallbackConfigError`, naming the callback and the layer).

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
        num_workers: int = 0,
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
        _check_int("num_workers", num_workers, 0)
        _check_int("tile", tile, 4)
        _check_int("maps_per_row", maps_per_row, 1)
        _check_int("seed", seed, 0)
        self.k, self.split, self.max_images = k, split, max_images
        self.batch_size, self.tile, self.maps_per_row, self.seed = batch_size, tile, maps_per_row, seed
        self.num_workers = num_workers
        self._channels: dict[str, list[int]] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=tuple(self.layers), k=self.k, split=self.split)

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
                model, dataset, self.layers, k=self.k, channels=self._channels,
                batch_size=self.batch_size, num_workers=self.num_workers, progress=False,
            )
            if not trainer.is_global_zero:
                return
            for name in self.layers:
                projections, patches = top_activation_crops(
                    model, dataset, tops[name], tile=self.tile, batch_size=self.batch_size
                )
                # A UnitLabels callback's latest dissection, if any: label and IoU per unit.
                labels = latest_dissection(trainer, name)
                panel = top_activation_panel(
                    projections, patches, maps_per_row=self.maps_per_row,
                    captions=[unit_caption(name, c, labels) for c in tops[name].channels.tolist()],
                    title=f"top-{self.k} of {name}, epoch {epoch}",
                )
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
        ValueError: a bad argument; at setup (:class:`~zflight.callbacks.CallbackConfigError`),
            a layer the network lacks or that is not a conv with 1 or 3 inputs.

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
        model = _target_model(pl_module)
        _check_model_layers(self, model, [self.layer])
        _, module = resolve_layer(model, self.layer)
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Conv2d) or weight is None or weight.shape[1] not in (1, 3):
            raise CallbackConfigError(
                f"FilterGrid: layer={self.layer!r} must be a Conv2d with 1 or 3 input channels (a "
                f"first layer), got {type(module).__name__}"
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
