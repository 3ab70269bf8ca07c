""":class:`UnitLabels`: Network Dissection while training; the labels every other figure shows.

Named ``UnitLabels`` rather than ``Dissection`` because :class:`zflight.analysis.Dissection` is
the result class (what :func:`~zflight.analysis.dissect` returns, and what this callback keeps
in :attr:`UnitLabels.result`); two public classes of one name would make ``from zflight
import Dissection`` ambiguous, and what the callback gives the run is the units' labels.

How a dissection reaches the other figures: the callback keeps its latest result, and
:func:`latest_dissection` finds it in ``trainer.callbacks``. ``TopActivationPanels`` and
``FeatureEvolution`` ask for it each time they draw, and caption every unit with its label and
IoU (``conv5 unit 12 · object/ring 0.21``, :func:`zflight.figures.dissection.unit_caption`).
Callbacks run in the order of the list, so put ``UnitLabels`` before them: at an epoch they
share, they then show that epoch's labels (else the previous ones). Offline,
``python -m zflight visualize --dissection DIR/dissection.json`` does the same for the panels.

What it promises about the run it watches (as every zflight callback; see
:mod:`zflight.callbacks.panels`): the model is in ``eval()`` mode while dissected (every
flag restored), no parameter or ``.grad`` changes, and the torch, NumPy and Python random states
are restored. Under DDP :func:`~zflight.analysis.dissect` is a collective (each rank dissects
its shard, the counts are merged exactly), so it runs on every rank and every rank holds the
same labels; the panel and the logging happen on rank 0.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from zflight.analysis.dissection import ConceptSubset, Dissection, dissect, unit_examples
from zflight.callbacks._common import (
    _analysis_mode,
    _check_epochs,
    _check_int,
    _check_layers,
    _figure_dir,
    _file_part,
    _LayerEpochCallback,
    _log_image,
    _split_dataset,
    _target_model,
)
from zflight.figures import save_png
from zflight.figures.dissection import dissection_panel

__all__ = ["UnitLabels", "latest_dissection"]


class UnitLabels(_LayerEpochCallback):
    """Dissect chosen layers at chosen epochs; log detectors, unique concepts and the labelled panel.

    At each listed epoch (counted from 1) and at the end of training, a fixed random subset of
    ``num_images`` validation images (drawn once with ``seed``) is dissected with
    :func:`zflight.analysis.dissect` (the validation data set must have ``concepts`` and
    ``concept_masks``, as :class:`~zflight.data.ShapesDataset` and
    :class:`~zflight.data.ConceptFolder` do). Logged, per layer:

    - scalars ``dissect/<layer>/detectors`` and ``dissect/<layer>/unique`` (every logger of the
      trainer, ``logger.log_metrics`` at the global step: TensorBoard scalars, CSV columns), so
      one watches concepts emerge while the network trains (Bau et al.'s Fig. 12);
    - the image ``dissect/<layer>``: the ``units`` units of largest IoU, each with its ``k`` most
      activating images of the subset and its mask on them, captioned with label and IoU
      (:func:`zflight.figures.dissection.dissection_panel`), also written to
      ``<log_dir>/figures/dissect_<layer>_epoch<NNN>.png``.

    The latest result is :attr:`result` (and :attr:`result_epoch`); the other figure callbacks
    find it with :func:`latest_dissection`. It is saved in checkpoints, so a resumed run shows
    labels before its next dissection.

    Args:
        layers: layers to dissect (``conv1`` … ``conv5`` for zflight's networks).
        num_images: validation images dissected (a fixed random subset; all if the set has
            exactly this many).
        epochs: epochs (counted from 1) after which to dissect; ``None``: only at the end.
        quantile: top fraction of each unit's activations that defines its threshold, in (0, 1).
        iou_threshold: a unit whose best IoU exceeds this is a detector, in [0, 1].
        units: units drawn per layer in the panel (largest IoU first).
        k: images per drawn unit.
        batch_size: images per forward pass.
        seed: seed of the subset and of the isolated random state.

    Raises:
        ValueError: a bad argument (the message names it); at setup, an unknown layer, a
            validation data set without concept masks, or ``num_images`` larger than it.

    Example:
        >>> trainer = Trainer(callbacks=[UnitLabels(epochs=[1, 5, 10], num_images=500),
        ...                              TopActivationPanels()])  # doctest: +SKIP
    """

    def __init__(
        self,
        layers: list[str] = ["conv1", "conv2", "conv3", "conv4", "conv5"],  # noqa: B006 - reads well in --help
        num_images: int = 500,
        epochs: list[int] | None = None,
        quantile: float = 0.005,
        iou_threshold: float = 0.04,
        units: int = 8,
        k: int = 4,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        _check_int("num_images", num_images, 1)
        self.epochs = _check_epochs("epochs", epochs)
        for name, value, open_interval in (("quantile", quantile, True), ("iou_threshold", iou_threshold, False)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and ((0 < value < 1) if open_interval else (0 <= value <= 1))
            if not ok:
                interval = "(0, 1), both ends excluded" if open_interval else "[0, 1]"
                raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
        _check_int("units", units, 1)
        _check_int("k", k, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        self.num_images, self.quantile, self.iou_threshold = num_images, float(quantile), float(iou_threshold)
        self.units, self.k, self.batch_size, self.seed = units, k, batch_size, seed
        #: The latest dissection (``None`` before the first), and the epoch it was made after.
        self.result: Dissection | None = None
        self.result_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=tuple(self.layers), num_images=self.num_images)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # unknown layers fail here, with close names
        dm = getattr(trainer, "datamodule", None)
        dataset = getattr(dm, "val_dataset", None) if dm is not None else None
        if dataset is not None:  # set up by now; plain dataloaders are checked when first used
            self._check_dataset(dataset)

    def _check_dataset(self, dataset: Any) -> None:
        if not callable(getattr(dataset, "concept_masks", None)) or not hasattr(dataset, "concepts"):
            raise ValueError(
                f"UnitLabels needs concept masks: the validation data set ({type(dataset).__name__}) "
                "has no concepts / concept_masks(index) (zflight.data.ShapesDataset and ConceptFolder have)"
            )
        n = len(dataset)
        if self.num_images > n:
            raise ValueError(f"num_images: {self.num_images} is larger than the validation set ({n} images)")

    def _subset(self, dataset: Any) -> ConceptSubset:
        n = len(dataset)
        g = torch.Generator().manual_seed(self.seed)
        return ConceptSubset(dataset, sorted(torch.randperm(n, generator=g)[: self.num_images].tolist()))

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        dataset = _split_dataset(trainer, "val")
        self._check_dataset(dataset)
        subset = self._subset(dataset)
        model = _target_model(pl_module)
        folder = _figure_dir(trainer)  # all ranks: it broadcasts
        with _analysis_mode(model, self.seed):
            # Collectives under DDP (the dissection, and the ranking of the shown images): every rank.
            result = dissect(model, subset, self.layers, quantile=self.quantile,
                             iou_threshold=self.iou_threshold, batch_size=self.batch_size, progress=False)
            examples = unit_examples(model, subset, result, self.units, k=self.k, batch_size=self.batch_size)
        self.result, self.result_epoch = result, epoch
        if not trainer.is_global_zero:
            return
        summary = result.summary()
        metrics: dict[str, float] = {}
        for name in self.layers:
            metrics[f"dissect/{name}/detectors"] = float(summary[name]["detectors"])
            metrics[f"dissect/{name}/unique"] = float(summary[name]["unique_concepts"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        for name in self.layers:
            s = summary[name]
            panel = dissection_panel(
                examples[name],
                title=f"{name}, epoch {epoch}: {s['detectors']} of {s['units']} units detect a concept, "
                      f"{s['unique_concepts']} unique",
            )
            save_png(panel, folder / f"dissect_{_file_part(name)}_epoch{epoch:03d}.png")
            _log_image(trainer, f"dissect/{name}", panel, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "done_epochs": list(self._done_epochs),
            "result": None if self.result is None else self.result.to_json(),
            "result_epoch": self.result_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done_epochs = list(state_dict.get("done_epochs", []))
        saved = state_dict.get("result")
        self.result = None if saved is None else Dissection.from_json(saved)
        self.result_epoch = state_dict.get("result_epoch")


def latest_dissection(trainer: Trainer | None, layer: str | None = None) -> Dissection | None:
    """The latest dissection of the trainer's :class:`UnitLabels` callbacks, or ``None``.

    With several ``UnitLabels`` (e.g. on different layers), the first in the callbacks list
    that has a result (holding ``layer``, when given) wins.

    Args:
        trainer: the running trainer (``None`` gives ``None``).
        layer: only a dissection of this layer (key or dotted name) counts.

    Returns:
        A :class:`~zflight.analysis.Dissection` or ``None``.

    Example:
        >>> latest_dissection(trainer).summary()["conv5"]["detectors"]  # doctest: +SKIP
        7
    """
    for callback in getattr(trainer, "callbacks", None) or []:
        result = callback.result if isinstance(callback, UnitLabels) else None
        if result is not None and (layer is None or _has_layer(result, layer)):
            return result
    return None


def _has_layer(result: Dissection, layer: str) -> bool:
    try:
        result._layer(layer)
    except ValueError:
        return False
    return True
