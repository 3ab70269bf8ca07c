"""Callback that draws the paper's Fig. 7 (occlusion sensitivity) for fixed validation images.

Thin by design: it picks the images, calls :func:`zflight.analysis.occlusion.occlusion_analysis`
for the numbers and :func:`~zflight.figures.occlusion.occlusion_figure` for the picture,
and logs. What it promises about the run it watches:

- **When.** After the validation of every ``every_n_epochs``-th training epoch (epochs counted
  from 1), never during the sanity check, and not in ``trainer.validate``.
- **DDP.** Only global rank 0 runs the model and writes (on the plain ``nn.Module``, not the DDP
  wrapper, so no collective is started); then every rank meets at one barrier, so no rank runs
  ahead into the next epoch's collectives while rank 0 is drawing.
- **The run is otherwise unaffected.** The model runs in ``eval()`` mode (every submodule's flag
  restored after); no parameter or ``.grad`` is touched; nothing random is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from zflight.callbacks._common import (
    CallbackConfigError,
    _check_int,
    _check_model_layers,
    _figure_dir,
)

__all__ = ["OcclusionFigures"]


class OcclusionFigures(Callback):
    """Log occlusion-sensitivity figures (Zeiler & Fergus Fig. 7) of fixed validation images.

    For each validation image ``i`` in ``indices`` the figure (image, total activation of the
    tracked feature map, its deconvnet projection, target probability map, most probable class
    map) goes to TensorBoard as image ``occlusion/<i>`` and to
    ``<log_dir>/figures/occlusion_<i>_epoch<NNN>.png``. The target is the image's true label.

    Args:
        every_n_epochs: draw after every n-th training epoch (1 = every epoch).
        indices: validation-set indices of the images to draw; ``None``: four images spread
            over the validation set, the first of each quarter (in a class-sorted set such as
            ImageNet's 50,000, four different classes: 0, 12,500, 25,000 and 37,500).
        size: side of the gray square in pixels; ``None``: a quarter of the image size.
        stride: step between square positions in pixels; ``None``: a quarter of ``size``.
        layer: layer whose strongest feature map is tracked (e.g. ``"relu5"``); ``None``: the
            last convolution, rectified.
        fill: the square's value in normalized input space (0.0: the data mean, the paper's gray).
        batch_size: occluded images per forward pass.

    Raises:
        ValueError: a bad argument (the message names it); at setup
            (:class:`~zflight.callbacks.CallbackConfigError`), a ``layer`` the network lacks or
            ``indices`` outside the validation set.

    Example:
        >>> trainer = Trainer(callbacks=[OcclusionFigures(every_n_epochs=5, indices=[0, 1])])  # doctest: +SKIP
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        indices: Sequence[int] | None = (0, 1, 2, 3),
        size: int | None = None,
        stride: int | None = None,
        layer: str | None = None,
        fill: float = 0.0,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        _check_int("every_n_epochs", every_n_epochs, 1)
        if indices is not None:
            given = indices
            indices = list(indices) if not isinstance(indices, (str, bytes)) else None  # type: ignore[assignment]
            if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
                raise ValueError(f"indices must be a non-empty list of ints >= 0 or None, got {given!r}")
        if size is not None:
            _check_int("size", size, 1)
        if stride is not None:
            _check_int("stride", stride, 1)
        if layer is not None and not isinstance(layer, str):
            raise ValueError(f"layer must be a layer name (str) or None, got {type(layer).__name__}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be a number, got {fill!r}")
        _check_int("batch_size", batch_size, 1)
        self.every_n_epochs = every_n_epochs
        self.indices = indices
        self.size = size
        self.stride = stride
        self.layer = layer
        self.fill = float(fill)
        self.batch_size = batch_size

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Check now what would otherwise fail at the first drawing epoch (epoch 10, say).
        if self.layer is not None:
            _check_model_layers(self, getattr(pl_module, "model", pl_module), [self.layer])
        dm = getattr(trainer, "datamodule", None)
        dataset = getattr(dm, "val_dataset", None) if dm is not None else None
        if dataset is not None:  # set up by now; plain dataloaders are checked when first drawn
            self._check_indices(dataset)

    def _indices(self, dataset: Any) -> list[int]:
        """The images to draw: ``indices``, or the first of each quarter of ``dataset``."""
        if self.indices is not None:
            return list(self.indices)
        n = len(dataset)
        return sorted({k * n // 4 for k in range(4)})

    def _check_indices(self, dataset: Any) -> list[int]:
        """The images to draw (see :meth:`_indices`), each checked to be in ``dataset``."""
        indices = self._indices(dataset)
        bad = [i for i in indices if i >= len(dataset)]
        if bad:
            raise CallbackConfigError(
                f"OcclusionFigures: indices {bad} are outside the validation set (it has {len(dataset)} images)"
            )
        return indices

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not trainer.is_last_batch:  # a validation in the middle of an epoch
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs != 0:
            return
        folder = _figure_dir(trainer)  # every rank: trainer.log_dir broadcasts from rank 0
        if trainer.is_global_zero:
            self._draw(trainer, pl_module, epoch, folder)
        trainer.strategy.barrier("OcclusionFigures")

    # ------------------------------------------------------------------------------- internals
    def _draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int, folder: Path) -> None:
        from zflight.analysis.occlusion import default_geometry, occlusion_analysis
        from zflight.figures import figure_to_tensor, occlusion_figure, save_figure

        dataset = _validation_dataset(trainer)
        indices = self._check_indices(dataset)
        items = [dataset[i] for i in indices]
        images = torch.stack([x for x, *_ in items]).to(pl_module.device)
        targets = [int(y) for _, y, *_ in items]
        model: nn.Module = getattr(pl_module, "model", pl_module)
        size, stride = default_geometry(*images.shape[-2:])
        maps, projections = occlusion_analysis(
            model,
            images,
            targets,
            size=self.size if self.size is not None else size,
            stride=self.stride if self.stride is not None else stride,
            layer=self.layer,
            fill=self.fill,
            batch_size=self.batch_size,
            progress=False,
        )
        display = _display(dataset, images.cpu())
        class_names = getattr(dataset, "classes", None) or getattr(trainer.datamodule, "classes", None)
        maps = maps.to("cpu")
        for k, index in enumerate(indices):
            fig = occlusion_figure(
                display[k : k + 1],
                maps.subset(k),
                projections[k : k + 1].cpu(),
                class_names=class_names,
                titles=[f"val #{index}, epoch {epoch}"],
            )
            save_figure(fig, folder / f"occlusion_{index}_epoch{epoch:03d}.png")
            image = figure_to_tensor(fig)
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_image"):
                    experiment.add_image(f"occlusion/{index}", image, trainer.global_step)


def _validation_dataset(trainer: Trainer) -> Any:
    dm = trainer.datamodule
    dataset = getattr(dm, "val_dataset", None) if dm is not None else None
    if dataset is None:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise ValueError("OcclusionFigures needs a validation data set (datamodule.val_dataset or a val dataloader)")
    return dataset


def _display(dataset: Any, images: torch.Tensor) -> torch.Tensor:
    if hasattr(dataset, "denormalize"):
        return dataset.denormalize(images)
    # Unknown normalization: stretch each image to [0, 1] for display.
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-12)
