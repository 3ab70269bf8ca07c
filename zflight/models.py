"""ZFNet (Zeiler & Fergus 2014, Fig. 3), the paper's AlexNet replication, and torchvision models by name.

Every layer has a name a user can write in a config: ``conv1`` … ``conv5``, ``relu1`` … ``relu7``,
``pool1``, ``pool2``, ``pool5``, ``norm1``, ``norm2``, ``fc6``, ``fc7``, ``fc8``. They live under
``features`` and ``classifier`` (torchvision style), so the full names are ``features.conv5`` and
``classifier.fc6``; zflight's layer lookup also accepts the short, unique suffix ``conv5``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "LocalResponseNorm",
    "ZFNet",
    "zfnet",
    "alexnet_zf",
    "build_model",
    "fit_head",
    "head_name",
    "renormalize_filters",
    "init_weights",
]

Init = Literal["paper", "kaiming"]


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` with the same result, computed faster on 4-D inputs.

    PyTorch's implementation sums squares over the channel window with a 3-D average pooling,
    which on the CPU costs more than the convolution before it; a cumulative sum over the channel
    axis gives the same window sums (to float rounding) in a fraction of the time. It stays an
    ``nn.LocalResponseNorm``, so code that treats normalization layers specially still finds it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        half = self.size // 2
        # Zero channels before and after, as PyTorch pads: window of channel c is
        # [c - size//2, c + (size-1)//2].
        squares = nn.functional.pad(x * x, (0, 0, 0, 0, half + 1, (self.size - 1) // 2))
        cumulative = squares.cumsum(dim=1)
        window = cumulative[:, self.size :] - cumulative[:, : -self.size]
        return x * (window.mul(self.alpha / self.size).add(self.k)).pow(-self.beta)


def _lrn() -> nn.LocalResponseNorm:
    # The paper's "contrast normalization across feature maps" has no constants; we read it as
    # AlexNet's LRN: n=5, alpha=1e-4, beta=0.75, k=2. AlexNet's alpha multiplies the plain sum of
    # squares, while PyTorch's LocalResponseNorm divides alpha by n, hence alpha = 1e-4 * 5.
    return LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ZFNet(nn.Module):
    """A five-conv-layer, three-FC-layer network in ZFNet's layout.

    Built by :func:`zfnet` and :func:`alexnet_zf`; use those. ``features`` maps an image to the
    pool5 maps, ``classifier`` flattens them and applies fc6 to fc8.

    Args:
        features: the convolutional trunk, ending in ``pool5``.
        num_classes: outputs of fc8.
        image_size: input height and width; fc6's input size is computed for it.
        fc_width: units of fc6 and fc7.
        dropout: dropout probability before fc7 and fc8 (the paper: 0.5 on fc6 and fc7 outputs).
        init: ``"paper"`` draws weights from N(0, 0.01²) with zero biases; ``"kaiming"`` uses
            Kaiming-normal (fan-in) with zero biases.
    """

    def __init__(
        self,
        features: nn.Sequential,
        *,
        num_classes: int,
        image_size: int,
        fc_width: int,
        dropout: float,
        init: Init,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.image_size = image_size
        self.features = features
        with torch.no_grad():
            try:
                out = features(torch.zeros(1, 3, image_size, image_size, device="meta"))
            except RuntimeError as err:
                raise ValueError(
                    f"image_size={image_size} is too small for this network: {err}"
                ) from None
        flat = out.shape[1] * out.shape[2] * out.shape[3]
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten(1)),
                    ("fc6", nn.Linear(flat, fc_width)),
                    ("relu6", nn.ReLU()),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(fc_width, fc_width)),
                    ("relu7", nn.ReLU()),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc8", nn.Linear(fc_width, num_classes)),
                ]
            )
        )
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def init_weights(model: nn.Module, init: Init = "paper") -> None:
    """Initialize every conv and linear layer of ``model`` in place.

    Args:
        model: any module.
        init: ``"paper"`` (N(0, 0.01²) weights, zero biases, as Zeiler & Fergus) or ``"kaiming"``.

    Example:
        >>> init_weights(zfnet(num_classes=10, width=0.25, image_size=64), "kaiming")
    """
    if init not in ("paper", "kaiming"):
        raise ValueError(f"init must be 'paper' or 'kaiming', got {init!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "paper":
                nn.init.normal_(m.weight, mean=0.0, std=1e-2)
            else:
                # fan_in keeps the forward signal's scale through a plain conv/ReLU stack with
                # no batch norm, which is what lets the quickstart leave chance early.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _trunk(
    conv1: tuple[int, int, int],
    conv2: tuple[int, int, int],
    width: float,
    mid_channels: tuple[int, int, int],
) -> nn.Sequential:
    """conv1..pool5 with (kernel, stride, padding) for conv1 and conv2; ceil-mode pooling."""
    c1, c2 = _scaled(96, width), _scaled(256, width)
    c3, c4, c5 = (_scaled(c, width) for c in mid_channels)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, c1, conv1[0], stride=conv1[1], padding=conv1[2])),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("norm1", _lrn()),
                ("conv2", nn.Conv2d(c1, c2, conv2[0], stride=conv2[1], padding=conv2[2])),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("norm2", _lrn()),
                ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
                ("relu3", nn.ReLU()),
                ("conv4", nn.Conv2d(c3, c4, 3, padding=1)),
                ("relu4", nn.ReLU()),
                ("conv5", nn.Conv2d(c4, c5, 3, padding=1)),
                ("relu5", nn.ReLU()),
                ("pool5", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ]
        )
    )


def _check_common(width: float, image_size: int) -> None:
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def zfnet(
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    image_size: int = 224,
    dropout: float = 0.5,
    init: Init = "paper",
    wide: bool = False,
) -> ZFNet:
    """ZFNet exactly as in Fig. 3 of Zeiler & Fergus (2014).

    conv1 96×7×7 stride 2 (pad 1) → 110², max-pool 3/2 → 55², LRN; conv2 256×5×5 stride 2 → 26²,
    max-pool → 13², LRN; conv3 384, conv4 384, conv5 256 (3×3, pad 1) → 13²; max-pool → 6²×256;
    fc6 4096, fc7 4096 (dropout 0.5), fc8. 62,357,608 parameters at 1000 classes and 224 px.

    Args:
        num_classes: number of classes (fc8 outputs).
        width: multiplies every layer's channel count and the fc width (0.25 for the quickstart).
        image_size: input height/width; fc6 is sized for the pool5 maps at this size.
        dropout: dropout probability of fc6 and fc7 outputs.
        init: ``"paper"`` (N(0, 1e-2) weights, zero biases) or ``"kaiming"``.
        wide: the paper's variant (b), with 512, 1024, 512 maps in layers 3, 4, 5.

    Returns:
        The network, layers named ``conv1`` … ``fc8``.

    Example:
        >>> model = zfnet(num_classes=10, width=0.25, image_size=64)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """
    _check_common(width, image_size)
    mid = (512, 1024, 512) if wide else (384, 384, 256)
    features = _trunk((7, 2, 1), (5, 2, 0), width, mid)
    return ZFNet(
        features,
        num_classes=num_classes,
        image_size=image_size,
        fc_width=_scaled(4096, width),
        dropout=dropout,
        init=init,
    )


def alexnet_zf(
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    image_size: int = 224,
    dropout: float = 0.5,
    init: Init = "paper",
) -> ZFNet:
    """The paper's "replication of Krizhevsky et al.": ZFNet's layout with AlexNet's first layers.

    conv1 96×11×11 stride 4 (pad 2) → 55², max-pool → 27², LRN; conv2 256×5×5 stride 1 (pad 2)
    → 27², max-pool → 13², LRN; conv3-5 and the head as in :func:`zfnet` (dense, not split over
    two GPUs). This is the baseline of the paper's architecture comparison (Fig. 6).

    Args:
        num_classes: number of classes.
        width: channel multiplier.
        image_size: input height/width.
        dropout: dropout probability of fc6 and fc7 outputs.
        init: ``"paper"`` or ``"kaiming"``.

    Returns:
        The network, layers named as in :func:`zfnet`.

    Example:
        >>> alexnet_zf(num_classes=10, width=0.25, image_size=96)(torch.zeros(1, 3, 96, 96)).shape
        torch.Size([1, 10])
    """
    _check_common(width, image_size)
    features = _trunk((11, 4, 2), (5, 1, 2), width, (384, 384, 256))
    return ZFNet(
        features,
        num_classes=num_classes,
        image_size=image_size,
        fc_width=_scaled(4096, width),
        dropout=dropout,
        init=init,
    )


_ZF_ARCHS = {"zfnet": zfnet, "alexnet_zf": alexnet_zf}


def build_model(
    arch: str = "zfnet",
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    image_size: int = 224,
    dropout: float = 0.5,
    init: Init = "paper",
    weights: str | None = None,
    model_args: Mapping[str, Any] | str | None = None,
) -> nn.Module:
    """Build a classifier with ``num_classes`` outputs from any model source zflight reads.

    Args:
        arch: ``"zfnet"``, ``"zfnet_b"`` (variant b), ``"alexnet_zf"``, a torchvision
            classification builder name such as ``"resnet18"``, ``"timm:NAME"`` (a timm model) or
            ``"package.module:attr"`` (a class or function of your own code, imported from the
            current folder), as ``--model`` names a model for the analysis tools.
        num_classes: number of classes.
        width: channel multiplier (zflight's networks only).
        image_size: input size (zflight's networks only; the others adapt by pooling).
        dropout: dropout of the fully connected layers (zflight's networks only).
        init: weight initialization of zflight's networks.
        weights: pretrained weights: a torchvision weights name (``"IMAGENET1K_V1"``,
            ``"DEFAULT"``) or ``"pretrained"`` for timm; ``None`` for random weights. They come from
            torchvision's or timm's cache, downloaded there when missing (that needs a network).
            Weights made for another number of classes keep everything but the head, which
            starts fresh with ``num_classes`` outputs (see :func:`fit_head`).
        model_args: keyword arguments for a torchvision, timm or imported builder (a dict or
            a JSON object).

    Returns:
        The model.

    Raises:
        ValueError: one line naming ``arch`` (an unknown name, with close names; an import that
            fails), ``weights`` or ``model_args``.

    Example:
        >>> build_model("resnet18", num_classes=10).fc.out_features
        10
    """
    from zflight import sources

    args = sources.parse_model_args(model_args)
    if arch in _ZF_ARCHS or arch == "zfnet_b":
        if weights is not None:
            raise ValueError(f"weights={weights!r}: zflight's {arch} has no pretrained weights")
        if args:
            raise ValueError(f"model_args: zflight's {arch} takes width, image_size, dropout and init instead")
        kwargs = dict(num_classes=num_classes, width=width, image_size=image_size)
        kwargs.update(dropout=dropout, init=init)
        if arch == "zfnet_b":
            return zfnet(wide=True, **kwargs)
        return _ZF_ARCHS[arch](**kwargs)

    try:
        if arch.startswith("timm:"):
            # timm sizes the head itself and keeps the rest of pretrained weights for another count.
            args.setdefault("num_classes", num_classes)
            return sources._from_timm(arch[len("timm:"):], weights, args, None).model
        if ":" in arch:
            if weights is not None:
                raise ValueError(f"weights: {arch} is your own code, with no named weights; give its weights "
                                 "file as init_from")
            return fit_head(sources._from_import(arch, weights, args).model, num_classes)
        if weights is None:
            return sources._from_torchvision(arch, None, {"num_classes": num_classes, **args}).model
        return fit_head(sources._from_torchvision(arch, weights, args).model, num_classes)
    except ValueError as err:
        text = str(err)
        if text.startswith("model: "):  # sources name the analysis tools' --model; here it is arch
            text = f"arch: {text[len('model: '):]}"
        # Without a network the sources point to --checkpoint FILE; for fit that is init_from.
        text = text.replace("pass the weights with --checkpoint FILE", "give the weights file as init_from")
        text = text.replace("or pass --checkpoint FILE", "or give the weights file as init_from")
        if "is not a torchvision classification model" in text:
            text = text.replace("is not a torchvision classification model",
                                "is not zfnet, zfnet_b, alexnet_zf or a torchvision classification model")
        raise ValueError(text) from None


def fit_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give ``model`` a head (its last ``nn.Linear``) with ``num_classes`` outputs, in place.

    A head of another size is replaced by a fresh ``nn.Linear`` (PyTorch's default init) with the
    same inputs; the rest of the model is untouched. Fine-tuning a network pretrained on
    ImageNet's 1,000 classes on a data set of 101 starts this way (the paper's Table 4).

    Raises:
        ValueError: the model has no linear layer.

    Example:
        >>> fit_head(nn.Sequential(nn.Flatten(), nn.Linear(12, 1000)), 5)[1].out_features
        5
    """
    name = head_name(model)
    head = model.get_submodule(name)
    if head.out_features == num_classes:
        return model
    parent_name, _, attr = name.rpartition(".")
    fresh = nn.Linear(head.in_features, num_classes, bias=head.bias is not None,
                      device=head.weight.device, dtype=head.weight.dtype)
    setattr(model.get_submodule(parent_name), attr, fresh)
    return model


def head_name(model: nn.Module) -> str:
    """The dotted name of ``model``'s last ``nn.Linear``: its classifier head.

    Raises:
        ValueError: the model has no linear layer.

    Example:
        >>> head_name(zfnet(num_classes=10, width=0.125, image_size=64))
        'classifier.fc8'
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to use as the classifier head")
    return linears[-1]


@torch.no_grad()
def renormalize_filters(model: nn.Module, radius: float = 0.1) -> int:
    """Rescale every conv filter whose RMS exceeds ``radius`` to RMS ``radius`` (in place).

    The paper applies this after each update: "crucial, especially in the first layer". A
    filter is one output channel's weights (``in_channels/groups × kH × kW``); biases are left
    alone.

    Args:
        model: any module; all of its ``nn.Conv2d`` layers are renormalized.
        radius: the largest RMS a filter may have.

    Returns:
        How many filters were rescaled.

    Example:
        >>> m = nn.Conv2d(3, 4, 3); _ = m.weight.data.fill_(1.0)
        >>> renormalize_filters(m, radius=0.1)
        4
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    rescaled = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            rms = w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            scale = (radius / rms).clamp(max=1.0)
            rescaled += int((rms > radius).sum())
            w.mul_(scale)
    return rescaled
