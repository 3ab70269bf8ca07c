"""The LightningModule that trains ZFNet (or any torchvision classifier) with the paper's recipe."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from zflight.models import Init, build_model, renormalize_filters

__all__ = ["ImageClassifier"]


class ImageClassifier(LightningModule):
    """Trains ``zfnet``, ``alexnet_zf`` or a torchvision model as Zeiler & Fergus did.

    The defaults are the paper's recipe: SGD with learning rate 1e-2 and momentum 0.9, weights
    drawn from N(0, 1e-2) with zero biases, dropout 0.5 on fc6 and fc7, and after every optimizer
    step each conv filter whose RMS exceeds 0.1 is rescaled to 0.1. The batch size (128) belongs
    to the data module; the learning-rate annealing on a validation plateau is
    ``lr_scheduler: ReduceLROnPlateau`` in the ImageNet configs.

    Logged: ``train/loss``, ``train/acc1``, ``val/loss``, ``val/acc1``, ``val/acc5`` (micro
    accuracy, as the paper counts it: the share of images whose label is in the top 1 or 5),
    and the same under ``test/``. A test batch shaped ``[B, crops, 3, H, W]`` (the paper's
    10-crop protocol) is scored on the softmax averaged over its crops.

    Args:
        arch: ``zfnet``, ``zfnet_b``, ``alexnet_zf`` or a torchvision classification model name.
        num_classes: number of classes (linked to the data module's by the CLI).
        width: channel multiplier of zflight's networks (0.25 in the quickstart).
        image_size: input height/width (linked to the data module's by the CLI).
        dropout: dropout of fc6 and fc7.
        init: ``paper`` (N(0, 1e-2), zero biases) or ``kaiming``.
        weights: torchvision pretrained weights name, or ``None`` for random weights.
        optimizer: a callable that makes the optimizer from the parameters (in a config:
            ``class_path: torch.optim.AdamW`` with ``init_args``); ``None`` is the paper's SGD
            (lr 1e-2, momentum 0.9).
        lr_scheduler: a callable that makes a scheduler from the optimizer, or ``None``.
        monitor: the metric a ``ReduceLROnPlateau`` scheduler watches.
        filter_radius: the RMS radius of the paper's filter renormalization, applied after each
            optimizer step; ``None`` turns it off.
        channels_last: keep the model and batches in channels-last memory format (faster on
            recent GPUs with mixed precision).

    Example:
        >>> module = ImageClassifier(arch="zfnet", num_classes=10, width=0.25, image_size=64)
        >>> module(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        arch: str = "zfnet",
        num_classes: int = 1000,
        width: float = 1.0,
        image_size: int = 224,
        dropout: float = 0.5,
        init: Init = "paper",
        weights: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        monitor: str = "val/acc1",
        filter_radius: float | None = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if filter_radius is not None and not filter_radius > 0:
            raise ValueError(f"filter_radius must be > 0 or None, got {filter_radius}")
        # The optimizer and scheduler factories are code, not data: keeping them out of the
        # hyperparameters keeps checkpoints loadable with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model = build_model(
            arch,
            num_classes=num_classes,
            width=width,
            image_size=image_size,
            dropout=dropout,
            init=init,
            weights=weights,
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.monitor = monitor
        self.filter_radius = filter_radius
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        top5 = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for a batch of images."""
        if self.channels_last and x.dim() == 4:
            # Done here rather than in on_after_batch_transfer, which Lightning warns about when a
            # data module is used too.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc1(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc1", self.train_acc1, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.val_acc1(logits, labels)
        self.val_acc5(logits, labels)
        self.log("val/acc1", self.val_acc1, prog_bar=True)
        self.log("val/acc5", self.val_acc5)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        probs = self.predict_probs(images)
        self.log("test/loss", F.nll_loss(probs.clamp_min(1e-12).log(), labels), sync_dist=True)
        self.test_acc1(probs, labels)
        self.test_acc5(probs, labels)
        self.log("test/acc1", self.test_acc1)
        self.log("test/acc5", self.test_acc5)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_probs(images)

    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities; a ``[B, crops, 3, H, W]`` batch is averaged over its crops.

        Args:
            images: ``[B, 3, H, W]`` or ``[B, crops, 3, H, W]`` (e.g. the paper's 10 crops).

        Returns:
            ``[B, num_classes]`` probabilities.
        """
        if images.dim() == 5:
            b, n = images.shape[:2]
            probs = self(images.flatten(0, 1)).softmax(dim=1)
            return probs.view(b, n, -1).mean(dim=1)
        if images.dim() != 4:
            raise ValueError(
                f"images must be [B, 3, H, W] or [B, crops, 3, H, W], got shape {tuple(images.shape)}"
            )
        return self(images).softmax(dim=1)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # The paper's filter renormalization follows every update.
        if self.filter_radius is not None:
            renormalize_filters(self.model, self.filter_radius)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(params, lr=1e-2, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }
