"""The LightningModule that trains ZFNet (or any torchvision classifier) with the paper's recipe."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from zflight.models import Init, build_model, head_name, renormalize_filters
from zflight.sources import _output_tensor

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
        arch: ``zfnet``, ``zfnet_b``, ``alexnet_zf``, a torchvision classification model name
            (``resnet18``), ``timm:NAME`` or ``package.module:attr`` (your own network class or
            function, imported from the current folder): the model sources the analysis tools
            read with ``--model``. Its forward returns the class scores (or an output holding
            them; see :meth:`forward`).
        num_classes: number of classes (linked to the data module's by the CLI).
        width: channel multiplier of zflight's networks (0.25 in the quickstart).
        image_size: input height/width (linked to the data module's by the CLI).
        dropout: dropout of fc6 and fc7.
        init: ``paper`` (N(0, 1e-2), zero biases) or ``kaiming``.
        weights: pretrained weights: a torchvision weights name (``IMAGENET1K_V1``) or
            ``pretrained`` (timm); ``None`` for random weights. Weights for another number of
            classes keep all but the head, which starts fresh with ``num_classes`` outputs
            (the paper's Table 4 "pretrained" rows, from an ImageNet network).
        model_args: keyword arguments for a torchvision, timm or imported builder (a dict; a
            JSON object on the command line).
        optimizer: a callable that makes the optimizer from the parameters (in a config:
            ``class_path: torch.optim.AdamW`` with ``init_args``); ``None`` is the paper's SGD
            (lr 1e-2, momentum 0.9).
        lr_scheduler: a callable that makes a scheduler from the optimizer, or ``None``.
        monitor: the metric a ``ReduceLROnPlateau`` scheduler watches.
        filter_radius: the RMS radius of the paper's filter renormalization, applied after each
            optimizer step; ``None`` turns it off.
        channels_last: keep the model and batches in channels-last memory format (faster on
            recent GPUs with mixed precision).
        init_from: fine-tune from a file: a zflight checkpoint (``python -m zflight fit``) or a
            weights file of ``arch``'s network (a ``state_dict``, a Lightning ``.ckpt`` or
            ``.safetensors``, read weights-only; a wrapper's key prefix such as ``model.`` is
            stripped). Every weight is copied into this model but the head's (the last linear
            layer), which starts fresh, sized for ``num_classes``. The network must be the
            file's (for zflight's: ``arch``, ``width``, ``image_size``); a weight that does not
            fit is one line naming it. The paper's Table 4 "pretrained" rows.
        freeze_through: a layer name (``fc7``, ``conv5``): that layer and every layer before it
            (in the order the model registers them) are frozen: no gradient, no filter
            renormalization, and kept in eval mode while training (dropout off, batch-norm
            statistics fixed), so they are a fixed feature extractor. ``None`` trains everything.

    Example:
        >>> module = ImageClassifier(arch="zfnet", num_classes=10, width=0.25, image_size=64)
        >>> module(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])

    Fine-tuning from a checkpoint with everything up to fc7 fixed (LightningCLI:
    ``--model.init_from CKPT --model.freeze_through fc7``)::

        module = ImageClassifier(arch="zfnet", num_classes=5, width=0.25, image_size=64,
                                 init_from="runs/quickstart/version_0/checkpoints/last.ckpt",
                                 freeze_through="fc7")
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
        init_from: str | None = None,
        freeze_through: str | None = None,
        model_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if filter_radius is not None and not filter_radius > 0:
            raise ValueError(f"filter_radius must be > 0 or None, got {filter_radius}")
        if init_from is not None and weights is not None:
            raise ValueError(f"init_from: give the starting weights once: weights={weights!r} or "
                             f"init_from={init_from!r}, not both")
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
            model_args=model_args,
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.monitor = monitor
        self.filter_radius = filter_radius
        self.channels_last = channels_last
        if init_from is not None:
            _copy_all_but_head(self.model, init_from)
        self.frozen: list[torch.nn.Module] = [] if freeze_through is None else _freeze_through(self.model, freeze_through)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        top5 = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for a batch of images.

        A network that returns several outputs is read through its main logits, as the analysis
        tools read it: GoogLeNet's and Inception's in training mode (their auxiliary heads are not
        trained), a Hugging Face-style output's ``.logits``, a tuple's first tensor.
        """
        if self.channels_last and x.dim() == 4:
            # Done here rather than in on_after_batch_transfer, which Lightning warns about when a
            # data module is used too.
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        logits, _ = _output_tensor(out)
        if logits is None:
            raise ValueError(f"arch: {self.hparams.arch}'s forward returns {type(out).__name__} without a tensor "
                             "of class scores")
        return logits

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

    def train(self, mode: bool = True) -> ImageClassifier:
        """Lightning's ``train()``, with the frozen layers (``freeze_through``) kept in eval mode."""
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # The paper's filter renormalization follows every update (of the filters that train).
        if self.filter_radius is not None:
            if not self.frozen:
                renormalize_filters(self.model, self.filter_radius)
            else:
                for m in self.model.modules():
                    if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
                        renormalize_filters(m, self.filter_radius)

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


def _copy_all_but_head(model: torch.nn.Module, path: str) -> None:
    """Copy a weights file's tensors into ``model``, all but the head's; one line if they do not fit."""
    from zflight.sources import _match_prefix, read_weights

    try:
        head = head_name(model) + "."
        state = read_weights(path)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"init_from: {str(err).removeprefix('checkpoint: ')}") from None
    own = model.state_dict()
    theirs = _match_prefix(state, own)  # a LightningModule's "model." prefix, DDP's "module."
    for key, value in own.items():
        if key.startswith(head):
            continue
        if key not in theirs or tuple(theirs[key].shape) != tuple(value.shape):
            got = "missing" if key not in theirs else f"{tuple(theirs[key].shape)}"
            raise ValueError(
                f"init_from: {path} does not fit this model: {key} is {got} there, {tuple(value.shape)} here"
                f"{_zflight_hint(path)}"
            )
    with torch.no_grad():
        for key, value in own.items():
            if not key.startswith(head):
                value.copy_(theirs[key])


def _zflight_hint(path: str) -> str:
    """For a zflight checkpoint that does not fit: the arch, width and image_size it was trained at."""
    from zflight.checkpoint import load_torch_file

    try:
        hp = load_torch_file(path, mmap=True).get("hyper_parameters") or {}
    except Exception:  # only a hint: the error it goes with is already one line
        return ""
    if "arch" not in hp:
        return ""
    return (f" (give the checkpoint's arch, width and image_size: {hp.get('arch')}, {hp.get('width')}, "
            f"{hp.get('image_size')})")


def _freeze_through(model: torch.nn.Module, layer: str) -> list[torch.nn.Module]:
    """Freeze ``layer`` and every leaf module registered before it; return the frozen leaves."""
    from zflight.attribution._layers import resolve_layer

    try:
        name, _ = resolve_layer(model, layer)
    except ValueError as err:
        raise ValueError(f"freeze_through: {err}") from None
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    inside = [i for i, (n, _) in enumerate(leaves) if n == name or n.startswith(name + ".")]
    frozen = [m for _, m in leaves[: max(inside) + 1]]
    try:
        head = head_name(model)
    except ValueError as err:
        raise ValueError(f"freeze_through: {err}") from None
    if any(n == head for n, _ in leaves[: max(inside) + 1]):
        raise ValueError(f"freeze_through={layer!r} freezes the head ({head}): nothing would train")
    for m in frozen:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    return frozen
