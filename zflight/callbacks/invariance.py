""":class:`InvarianceFigures`: the paper's Fig. 5 for fixed validation images, during training.

See :mod:`zflight.callbacks.panels` for what every zflight visualization callback promises
(unaffected training, reproducible images, DDP, when it runs). This one needs no collective:
only rank 0 computes, draws and logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from zflight.analysis.invariance import TRANSFORMS, default_amounts, invariance_curves
from zflight.callbacks._common import (
    _analysis_mode,
    _check_epochs,
    _check_int,
    _figure_dir,
    _LayerEpochCallback,
    _log_image,
    _SeededItems,
    _split_dataset,
    _target_model,
)
from zflight.figures import figure_to_tensor, save_figure, write_json
from zflight.figures.invariance import example_strip, invariance_figure

__all__ = ["InvarianceFigures"]


class InvarianceFigures(_LayerEpochCallback):
    """Logs how invariant each layer is to translation, scale and rotation (the paper's Fig. 5).

    At each scheduled epoch (and at the end of training), the fixed images ``indices`` of the
    ``split`` data set are translated vertically, scaled and rotated over a range of amounts
    (:func:`~zflight.analysis.invariance.invariance_curves`); the figure (per transformation:
    examples, the feature distance of each layer, the true-label probability) is logged to
    TensorBoard as ``invariance`` at the global step and written to
    ``<log_dir>/figures/invariance_epoch<NNN>.png`` with the numbers in ``.json`` beside it.
    The model is analysed in eval mode; its flags, gradients and the random state are restored.

    Args:
        indices: the images of ``split`` (by index) that are followed; the paper uses 5.
        transforms: any of ``"translate"``, ``"scale"``, ``"rotate"``.
        layers: layers whose features are compared (zfnet's ``norm1`` and ``relu7`` are the
            paper's layers 1 and 7).
        amounts: transform name → amounts; missing ones get
            :func:`~zflight.analysis.invariance.default_amounts`.
        epochs: epochs (counted from 1) after which to log; ``None``: only at the end.
        split: ``"val"`` or ``"train"``.
        fill: value of uncovered pixels in the model's input space (0.0: the data mean).
        relative: plot distances divided by the original's feature norm (else raw).
        seed: seed under which the images are read (so random augmentations repeat).

    Raises:
        ValueError: a bad argument (the message names it); at setup, an unknown layer.

    Example:
        >>> trainer = Trainer(callbacks=[InvarianceFigures(indices=[0, 1, 2, 3, 4], epochs=[1, 5])])  # doctest: +SKIP
    """

    def __init__(
        self,
        indices: list[int] = [0, 1, 2, 3, 4],  # noqa: B006 - a list default reads well in --help
        transforms: list[str] = list(TRANSFORMS),
        layers: list[str] = ["norm1", "relu7"],  # noqa: B006
        amounts: dict[str, list[float]] | None = None,
        epochs: list[int] | None = None,
        split: Literal["val", "train"] = "val",
        fill: float = 0.0,
        relative: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence) or not indices:
            raise ValueError(f"indices must be a non-empty list of image indices, got {indices!r}")
        for i in indices:
            _check_int("indices", i, 0)
        if isinstance(transforms, str) or not transforms or any(t not in TRANSFORMS for t in transforms):
            raise ValueError(f"transforms must be a non-empty list of {', '.join(TRANSFORMS)}; got {transforms!r}")
        if isinstance(layers, str) or not layers or not all(isinstance(n, str) and n for n in layers):
            raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
        amounts = dict(amounts or {})
        unknown = [k for k in amounts if k not in TRANSFORMS]
        if unknown:
            raise ValueError(f"amounts has unknown transforms {unknown}; use {', '.join(TRANSFORMS)}")
        if split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {split!r}")
        _check_int("seed", seed, 0)
        self.indices = [int(i) for i in indices]
        self.transforms = list(transforms)
        self.layers = list(layers)
        self.amounts = {k: [float(a) for a in v] for k, v in amounts.items()}
        self.epochs = _check_epochs("epochs", epochs)
        self.split, self.fill, self.relative, self.seed = split, float(fill), bool(relative), seed

    @property
    def state_key(self) -> str:
        return self._generate_state_key(indices=tuple(self.indices), split=self.split)

    def _at_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        folder = _figure_dir(trainer)  # every rank: it broadcasts
        if not trainer.is_global_zero:
            return
        model = _target_model(pl_module)
        raw = _split_dataset(trainer, self.split)
        n = len(raw)  # type: ignore[arg-type]
        bad = [i for i in self.indices if i >= n]
        if bad:
            raise ValueError(f"indices: {bad[0]} is out of range for the {self.split} set of {n} images")
        dataset = _SeededItems(raw, self.seed)
        with _analysis_mode(model, self.seed):
            items = [dataset[i] for i in self.indices]
            device = next(iter(model.parameters())).device
            images = torch.stack([x for x, _ in items]).to(device)
            labels = torch.tensor([int(y) for _, y in items])
            curves, examples = [], {}
            for t in self.transforms:
                amounts = self.amounts.get(t) or default_amounts(t, images.shape[-2])  # type: ignore[arg-type]
                curves.append(invariance_curves(model, images, labels, transform=t, amounts=amounts,
                                                layers=self.layers, fill=self.fill))
                examples[t] = _display(raw, example_strip(images[0].cpu(), t, amounts, fill=self.fill))
        class_names = getattr(raw, "classes", None)
        fig = invariance_figure(curves, examples=examples, class_names=class_names, relative=self.relative)
        save_figure(fig, folder / f"invariance_epoch{epoch:03d}.png")
        write_json({"epoch": epoch, "indices": self.indices, "curves": [c.to_dict() for c in curves]},
                   folder / f"invariance_epoch{epoch:03d}.json")
        _log_image(trainer, "invariance", figure_to_tensor(fig), trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"done_epochs": list(self._done_epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done_epochs = list(state_dict.get("done_epochs", []))


def _display(dataset: Any, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] for display: the data set's ``denormalize`` or a min-max stretch."""
    denormalize = getattr(dataset, "denormalize", None)
    if callable(denormalize):
        return denormalize(images)
    lo, hi = images.amin(), images.amax()
    return (images - lo) / (hi - lo).clamp_min(1e-12)
