"""How much a transformation of the input moves each layer's features (the paper's Fig. 5).

For each image and each amount of a transformation (vertical translation in pixels, scale
factor, rotation in degrees), :func:`invariance_curves` measures, at chosen layers, the
Euclidean distance between the feature vector of the original image and that of the
transformed image, and the probability the classifier gives the true label of the transformed
image.

Definitions (the paper gives only "Euclidean distance between feature vectors"):

- **feature vector**: the layer's whole output for one image, flattened (for zfnet's
  ``norm1``: all 96×55×55 values at 224 px);
- **distance**: ``‖f(T_a(x)) − f(x)‖₂``, reported raw (``distance``, the paper's y axis) and
  divided by ``‖f(x)‖₂`` (``relative``), so layers of very different size and scale share one
  axis: 0 is "unchanged", 1 is "moved as far as the feature vector is long". An image whose
  features are all zero at a layer has ``relative`` NaN there.
- **transformations**, on the model's input tensor, with ``torchvision.transforms.v2.functional``
  and bilinear interpolation; uncovered pixels get ``fill`` (0.0: the data mean after
  normalization, i.e. gray, as zflight's occluder):

  - ``"translate"``: vertical shift by ``amount`` pixels, positive = down (``F.affine``);
  - ``"scale"``: resize by ``amount`` about the center (antialiased), then center-crop or
    pad back to the original size (``F.resize`` + ``F.center_crop``);
  - ``"rotate"``: rotate by ``amount`` degrees about the center, positive =
    counter-clockwise (``F.rotate``; corners filled).

  The identity amount (0 pixels, scale 1, 0 degrees) returns the image untouched, so its
  distance is exactly 0.

The paper's "layer 1" and "layer 7" are zfnet's ``norm1`` (layer 1's output after pooling and
normalization, Fig. 3) and ``relu7`` (fc7 after its ReLU): the defaults. Any module name of
any CNN works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from zflight.attribution._layers import layer_outputs, preserve_modes, resolve_layer

__all__ = ["InvarianceCurves", "invariance_curves", "transform_images", "default_amounts", "TRANSFORMS"]

Transform = Literal["translate", "scale", "rotate"]

#: The transformations :func:`invariance_curves` knows.
TRANSFORMS: tuple[str, ...] = ("translate", "scale", "rotate")

_IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}


@dataclass
class InvarianceCurves:
    """Distances and probabilities per image and amount of one transformation.

    Attributes:
        transform: ``"translate"``, ``"scale"`` or ``"rotate"``.
        amounts: ``[A]`` the amounts (pixels, factors or degrees).
        layers: the layers' full names, in the order asked.
        distance: layer name → ``[N, A]`` Euclidean distance between the feature vectors of the
            original and the transformed image.
        relative: layer name → ``[N, A]`` ``distance`` divided by the norm of the original's
            feature vector.
        feature_norm: layer name → ``[N]`` the norm of the original's feature vector.
        prob: ``[N, A]`` softmax probability of the true label of the transformed image.
        predicted: ``[N, A]`` the most probable class of the transformed image.
        labels: ``[N]`` the true labels.
        fill: the value uncovered pixels got.
    """

    transform: str
    amounts: torch.Tensor
    layers: list[str]
    distance: dict[str, torch.Tensor]
    relative: dict[str, torch.Tensor]
    feature_norm: dict[str, torch.Tensor]
    prob: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor
    fill: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the curves as JSON-ready nested lists (``[image][amount]``).

        Example:
            >>> json.dumps(curves.to_dict())  # doctest: +SKIP
        """
        return {
            "transform": self.transform,
            "amounts": self.amounts.tolist(),
            "fill": self.fill,
            "labels": self.labels.tolist(),
            "layers": {
                name: {
                    "distance": self.distance[name].tolist(),
                    "relative": _nan_to_none(self.relative[name].tolist()),
                    "feature_norm": self.feature_norm[name].tolist(),
                }
                for name in self.layers
            },
            "prob": self.prob.tolist(),
            "predicted": self.predicted.tolist(),
            **self.meta,
        }


def default_amounts(transform: Transform, image_size: int) -> list[float]:
    """Return the default amounts of ``transform``, spanning the ranges of the paper's Fig. 5.

    The paper translates by up to ±60 px at 224 px (about a quarter of the side), scales by
    1 to 1.8 and rotates through 0-360 degrees. Here: translation ``-H/4 … H/4`` in 9 whole-pixel
    steps, scale 1.0, 1.1, … 1.8, rotation every 30 degrees from 0 to 360.

    Args:
        transform: ``"translate"``, ``"scale"`` or ``"rotate"``.
        image_size: the image height in pixels (sets the translation range).

    Returns:
        The amounts, identity included.

    Example:
        >>> default_amounts("translate", 64)
        [-16.0, -12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0, 16.0]
    """
    _check_transform(transform)
    if transform == "translate":
        return [float(round(image_size / 4 * k / 4)) for k in range(-4, 5)]
    if transform == "scale":
        return [round(1.0 + 0.1 * k, 2) for k in range(9)]
    return [float(a) for a in range(0, 361, 30)]


def transform_images(
    images: torch.Tensor, transform: Transform, amount: float, *, fill: float = 0.0
) -> torch.Tensor:
    """Return ``images`` transformed by ``amount`` (see the module docstring for the definitions).

    Args:
        images: ``[N, C, H, W]`` float tensor in the model's input space.
        transform: ``"translate"`` (vertical, pixels, positive down), ``"scale"`` (factor about
            the center) or ``"rotate"`` (degrees counter-clockwise about the center).
        amount: how much.
        fill: value of pixels that the transformation uncovers.

    Returns:
        ``[N, C, H, W]`` transformed images (the input itself at the identity amount).

    Raises:
        ValueError: unknown ``transform``, non-finite ``amount``, or ``scale`` amount <= 0.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> transform_images(x, "translate", 1)[0, 0, :, 0]
        tensor([0., 0., 4., 8.])
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    _check_transform(transform)
    amount = float(amount)
    _check_amount(transform, amount)
    if amount == _IDENTITY[transform]:
        return images
    bilinear = InterpolationMode.BILINEAR
    fills = [float(fill)] * images.shape[1]
    if transform == "translate":
        return TF.affine(images, angle=0.0, translate=[0.0, amount], scale=1.0, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fills)
    if transform == "rotate":
        return TF.rotate(images, amount, interpolation=bilinear, fill=fills)
    h, w = images.shape[-2:]
    size = [max(1, round(h * amount)), max(1, round(w * amount))]
    resized = TF.resize(images, size, interpolation=bilinear, antialias=True)
    if amount >= 1.0:
        return TF.center_crop(resized, [h, w])
    # Smaller than the original: pad back with the fill (center_crop would pad with zeros).
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    out = images.new_full(images.shape, float(fill))
    out[..., top : top + size[0], left : left + size[1]] = resized
    return out


@torch.no_grad()
def invariance_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: int | Sequence[int] | torch.Tensor,
    *,
    transform: Transform = "translate",
    amounts: Sequence[float] | torch.Tensor | None = None,
    layers: Sequence[str | nn.Module] = ("norm1", "relu7"),
    fill: float = 0.0,
    batch_size: int = 64,
) -> InvarianceCurves:
    """Return the paper's Fig. 5 curves: feature distances and true-label probability per amount.

    The model runs in eval mode (flags restored after), without gradients; each batch of
    transformed images goes through the model once, the layers' outputs captured by forward
    hooks that are removed even if the forward raises.

    Args:
        model: a classifier returning logits.
        images: ``[N, C, H, W]`` images in the model's input space.
        labels: the true class per image (or one for all).
        transform: ``"translate"``, ``"scale"`` or ``"rotate"``.
        amounts: amounts of the transformation; ``None``: :func:`default_amounts` for the
            images' height.
        layers: layer names (or modules) whose features are compared; zfnet's ``norm1`` and
            ``relu7`` are the paper's layers 1 and 7.
        fill: value of uncovered pixels (0.0: the data mean, gray).
        batch_size: transformed images per forward pass.

    Returns:
        An :class:`InvarianceCurves`.

    Raises:
        ValueError: a bad argument (the message names it), a layer that does not exist, or
            one the forward pass never reaches.

    Example:
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)  # doctest: +SKIP
        >>> c = invariance_curves(model, x, y, transform="rotate", amounts=[0, 90, 180])  # doctest: +SKIP
        >>> c.relative["features.norm1"].shape  # doctest: +SKIP
        torch.Size([5, 3])
    """
    _check_transform(transform)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            "images must be a [N, C, H, W] tensor, got "
            + (str(tuple(images.shape)) if isinstance(images, torch.Tensor) else type(images).__name__)
        )
    n = images.shape[0]
    if n == 0:
        raise ValueError("images must hold at least one image")
    if amounts is None:
        amounts = default_amounts(transform, images.shape[-2])
    amount_list = [float(a) for a in (amounts.tolist() if isinstance(amounts, torch.Tensor) else amounts)]
    if not amount_list:
        raise ValueError("amounts must hold at least one amount")
    for a in amount_list:
        _check_amount(transform, a)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(layers, (str, nn.Module)) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    resolved = [resolve_layer(model, layer) for layer in layers]
    names = [name for name, _ in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"layers must not repeat, got {names}")

    device = _device(model, images)
    images = images.to(device)
    with preserve_modes(model, eval_mode=True):
        # The originals: reference features and the number of classes.
        ref_feats, logits = layer_outputs(model, resolved, images, batch_size, logits=True)
        num_classes = logits.shape[1]
        label_t = _labels(labels, n, num_classes).to(device)
        ref = {name: f.flatten(1) for name, f in ref_feats.items()}
        a = len(amount_list)
        distance = {name: torch.zeros(n, a) for name in names}
        prob = torch.zeros(n, a)
        predicted = torch.zeros(n, a, dtype=torch.long)
        for j, amount in enumerate(amount_list):
            moved = transform_images(images, transform, amount, fill=fill)
            feats, out = layer_outputs(model, resolved, moved, batch_size, logits=True)
            p = out.softmax(dim=1)
            prob[:, j] = p.gather(1, label_t[:, None])[:, 0].cpu()
            predicted[:, j] = p.argmax(dim=1).cpu()
            for name in names:
                distance[name][:, j] = (feats[name].flatten(1) - ref[name]).norm(dim=1).cpu()
    feature_norm = {name: ref[name].norm(dim=1).cpu() for name in names}
    relative = {
        name: torch.where(
            feature_norm[name][:, None] > 0,
            distance[name] / feature_norm[name][:, None].clamp_min(1e-30),
            torch.full_like(distance[name], math.nan),
        )
        for name in names
    }
    return InvarianceCurves(
        transform=transform,
        amounts=torch.tensor(amount_list),
        layers=names,
        distance=distance,
        relative=relative,
        feature_norm=feature_norm,
        prob=prob,
        predicted=predicted,
        labels=label_t.cpu(),
        fill=float(fill),
    )


# ------------------------------------------------------------------------------------ internals
def _labels(labels: int | Sequence[int] | torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    if isinstance(labels, bool):
        raise ValueError(f"labels must be ints, got {labels!r}")
    if isinstance(labels, int):
        t = torch.full((n,), labels, dtype=torch.long)
    else:
        t = torch.as_tensor(labels)
        if t.dim() == 0:
            t = t.expand(n)
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"labels must hold one class per image ({n}), got shape {tuple(t.shape)}")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"labels must be integer classes, got dtype {t.dtype}")
        t = t.long()
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"labels: class {int(bad[0])} is outside the model's {num_classes} classes (0..{num_classes - 1})"
        )
    return t


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")


def _check_amount(transform: str, amount: float) -> None:
    if not math.isfinite(amount):
        raise ValueError(f"amounts must be finite numbers, got {amount!r}")
    if transform == "scale" and amount <= 0:
        raise ValueError(f"amounts: a scale factor must be > 0, got {amount!r}")


def _device(model: nn.Module, images: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else images.device


def _nan_to_none(values: Any) -> Any:
    # JSON has no NaN: an all-zero feature vector's relative distance is written as null.
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values
