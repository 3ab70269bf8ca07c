""":class:`ExplanationScores`: do the maps point at the object yet? Scores logged while training.

Thin: it reads a fixed set of validation images with their object masks, calls
:func:`zflight.analysis.explanations.score_methods` (the loop ``python -m zflight evaluate``
uses, so the numbers agree) and logs the means. What it promises about the run it watches (as
every zflight callback; see :mod:`zflight.callbacks.panels`):

- **When.** After the validation of each listed epoch (epochs counted from 1), never in the
  sanity check or in ``trainer.validate``, and once more at the end of training unless the last
  epoch was already scored.
- **Rank zero.** Only global rank 0 runs the methods (on the plain network, not the DDP wrapper,
  so no collective starts) and logs.
- **The run is otherwise unaffected.** The model runs in ``eval()`` mode (every submodule's flag
  restored), its hooks are restored, no parameter or ``.grad`` changes, and the random state of
  torch, NumPy and Python is restored (the methods draw nothing from it anyway).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from zflight.analysis.explanations import LOCALIZATION, METRICS, check_names
from zflight.attribution.methods import METHODS
from zflight.callbacks._common import (
    _analysis_mode,
    _check_epochs,
    _check_int,
    _LayerEpochCallback,
    _split_dataset,
    _target_model,
)

__all__ = ["ExplanationScores"]


class ExplanationScores(_LayerEpochCallback):
    """Log how well attribution maps find the object, as TensorBoard scalars ``explain/<method>/<metric>``.

    At each listed epoch (and at the end of training) the first ``num_images`` images of the
    validation set (the embedded shapes data holds every class equally often in any prefix) are
    explained for their true label by each of ``methods`` and scored against the objects' masks
    (``dataset.mask(i)``); the mean of each metric goes to every logger of the trainer at the
    global step (``logger.log_metrics``: TensorBoard scalars, CSV columns).

    Args:
        methods: names in :data:`zflight.attribution.methods.METHODS`; the default, the
            deconvnet and occlusion, are the paper's two ways of looking.
        metrics: names in :data:`zflight.analysis.explanations.METRICS`; the default, the three
            localization scores, cost one map per image; ``deletion_auc`` / ``insertion_auc``
            add ``steps + 1`` forwards per image each.
        num_images: how many validation images (the first ones).
        epochs: epochs (counted from 1) after which to score; ``None``: only at the end.
        steps: steps of the deletion / insertion curves (when asked for).
        batch_size: images explained together.
        seed: seed of the isolated random state the methods run under.

    Raises:
        ValueError: a bad argument (the message names it and lists the valid names); at setup,
            a validation data set without ``mask`` (object masks), or ``num_images`` larger
            than it.

    Example:
        >>> trainer = Trainer(callbacks=[ExplanationScores(epochs=[1, 5, 10], num_images=64)])  # doctest: +SKIP
    """

    def __init__(
        self,
        methods: list[str] = ["deconvnet", "occlusion"],  # noqa: B006 - a list default reads well in --help
        metrics: list[str] = list(LOCALIZATION),
        num_images: int = 50,
        epochs: list[int] | None = None,
        steps: int = 16,
        batch_size: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.methods = check_names(methods, list(METHODS), "methods", "method")
        self.metrics = check_names(metrics, list(METRICS), "metrics", "metric")
        _check_int("num_images", num_images, 1)
        _check_int("steps", steps, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        self.num_images, self.steps, self.batch_size, self.seed = num_images, steps, batch_size, seed
        self.epochs = _check_epochs("epochs", epochs)
        # The methods pick their own layers (the last Conv2d, the logits): nothing to resolve.
        self.layers: list[str] = []
        self.last: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(methods=tuple(self.methods), metrics=tuple(self.metrics),
                                        num_images=self.num_images)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        dm = getattr(trainer, "datamodule", None)
        dataset = getattr(dm, "val_dataset", None) if dm is not None else None
        if dataset is not None:  # set up by now; plain dataloaders are checked when first used
            self._check_dataset(dataset)

    def _check_dataset(self, dataset: Any) -> None:
        if not callable(getattr(dataset, "mask", None)):
            raise ValueError(
                f"ExplanationScores needs object masks: the validation data set "
                f"({type(dataset).__name__}) has no mask(index) method (zflight.data.ShapesDataset has)"
            )
        n = len(dataset)
        if self.num_images > n:
            raise ValueError(f"num_images: {self.num_images} is larger than the validation set ({n} images)")

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        if not trainer.is_global_zero:
            return
        from zflight.analysis.explanations import score_methods

        dataset = _split_dataset(trainer, "val")
        self._check_dataset(dataset)
        model = _target_model(pl_module)
        device = next(iter(model.parameters())).device
        n = self.num_images
        with _analysis_mode(model, self.seed):
            items = [dataset[i] for i in range(n)]
            images = torch.stack([x for x, *_ in items]).to(device)
            labels = torch.tensor([int(y) for _, y, *_ in items])
            masks = torch.stack([torch.as_tensor(dataset.mask(i), dtype=torch.bool) for i in range(n)])
            table = score_methods(model, images, labels, masks, self.methods, self.metrics,
                                  steps=self.steps, batch_size=self.batch_size)
        summary = table.summary()
        self.last = {
            f"explain/{method}/{metric}": summary[method][metric]["mean"]
            for method in self.methods
            for metric in self.metrics
        }
        for logger in trainer.loggers:
            logger.log_metrics(self.last, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"done_epochs": list(self._done_epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done_epochs = list(state_dict.get("done_epochs", []))
