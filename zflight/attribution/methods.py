"""The attribution methods under test, in one registry: name -> ``(model, inputs, target) -> maps``.

Every entry takes a classifier, images ``[N, C, H, W]`` and the target class per image (an
int64 tensor ``[N]``) and returns maps ``[N, C or 1, H, W]`` at the input's size. Adding a
method is one line in :data:`METHODS`. :func:`get_method` / :func:`attribute` wrap an entry so
that it runs in ``eval()`` mode and leaves the model exactly as found: every submodule's
``training`` flag and every hook table are restored, also when the method raises.

=====================  ========================================================================
name                   what it computes
=====================  ========================================================================
``deconvnet``          zflight :class:`DeconvNet` ``attribute`` from the target's logit.
``deconvnet_project``  :meth:`DeconvNet.project` of the strongest unit of the last ``Conv2d``:
                       per image, the feature map with the largest single activation, only that
                       activation (``mode="max"``), as in the paper's Fig. 2. Ignores
                       ``target`` (the projection is class-agnostic).
``saliency``           Captum ``Saliency`` (absolute gradient).
``guided_backprop``    zflight :class:`GuidedBackprop` (every ReLU call, functional or reused).
``occlusion``          zflight :func:`occlusion_maps` with a square of ``min(H, W) // 8`` at
                       stride half of it, as Captum's ``Occlusion`` image of the target's
                       log-probability (its drop averaged over the squares covering each pixel,
                       at input size).
``gradcam``            Captum ``LayerGradCam`` of the last ``Conv2d``, ReLU'd, upsampled
                       bilinearly to the input size.
``integrated_gradients``  Captum ``IntegratedGradients``, zero baseline, 16 steps.
``random``             uniform noise in ``[0, 1)``, ``[N, 1, H, W]``, each image's from a generator
                       seeded by the image's bytes (the same map whatever the batch): the
                       baseline every method must beat.
=====================  ========================================================================
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerGradCam, Saliency
from torch import nn

from zflight.attribution._args import check_inputs, per_image_ints
from zflight.attribution._guard import preserve_model
from zflight.attribution._layers import forward_to
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.guided_backprop import GuidedBackprop
from zflight.attribution.occlusion import occlusion_maps

__all__ = ["METHODS", "Method", "attribute", "get_method", "last_conv", "method_names"]

Method = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

# Integration steps of integrated gradients, and images per batch of its interpolated inputs.
_IG_STEPS = 16
_IG_BATCH = 256
_RANDOM_SEED = 0


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """Return the last ``nn.Conv2d`` of ``model`` in registration order, with its dotted name.

    Args:
        model: the network.

    Returns:
        ``(name, module)``.

    Raises:
        ValueError: the model has no ``nn.Conv2d``.

    Example:
        >>> from zflight import zfnet
        >>> last_conv(zfnet(num_classes=10, width=0.125, image_size=64))[0]
        'features.conv5'
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not found:
        raise ValueError(
            f"model ({type(model).__name__}) has no nn.Conv2d layer; this method needs one"
        )
    return found[-1]


def _grad_leaf(inputs: torch.Tensor) -> torch.Tensor:
    # A fresh leaf that requires grad: Captum then does not warn, and the caller's tensor is
    # neither modified nor kept in a graph.
    return inputs.detach().requires_grad_(True)


def _deconvnet(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return DeconvNet(model).attribute(inputs, target=target)


def _deconvnet_project(
    model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    name, conv = last_conv(model)
    with torch.no_grad():
        out = forward_to(model, conv, inputs)
    # The channel whose single strongest activation is the highest (first on ties), per image.
    channels = out.flatten(2).amax(dim=2).argmax(dim=1)
    return DeconvNet(model).project(inputs, layer=name, channels=channels, mode="max")


def _saliency(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return Saliency(model).attribute(_grad_leaf(inputs), target=target, abs=True)


def _guided_backprop(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return GuidedBackprop(model).attribute(inputs, target=target)


def _occlusion(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # An eighth of the image: the scale of the embedded objects' strokes. A quarter-image
    # square (the old default) is wider than most of them, so its strongest block of pixels
    # straddled the silhouette: pointing game 0.66 against 0.81 (log maps, docs/evaluation.md).
    size = max(1, min(inputs.shape[-2:]) // 8)
    maps = occlusion_maps(
        model, inputs, target, size=size, stride=max(1, size // 2), progress=False
    )
    # The loss of log-probability: a model sure enough that the target's probability is 1.0
    # in float32 under most squares left 25 of 500 quickstart maps all zero in probability.
    return maps.pixel_attribution(log=True).unsqueeze(1)


def _gradcam(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _, conv = last_conv(model)
    cam = LayerGradCam(model, conv).attribute(
        _grad_leaf(inputs), target=target, relu_attributions=True
    )
    return F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)


def _integrated_gradients(
    model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    return IntegratedGradients(model).attribute(
        _grad_leaf(inputs),
        baselines=0.0,
        target=target,
        n_steps=_IG_STEPS,
        internal_batch_size=_IG_BATCH,
    )


def _random(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Each image's map comes from its own generator, seeded by the image's bytes: the same map
    # for the same image whatever the batch it is in (scores do not depend on --batch_size),
    # different maps for different images, and the global RNG is not advanced.
    _, _, h, w = inputs.shape
    maps = []
    for image in inputs.detach().cpu():
        seed = zlib.crc32(image.contiguous().numpy().tobytes(), _RANDOM_SEED)
        gen = torch.Generator().manual_seed(seed)
        maps.append(torch.rand(1, h, w, generator=gen, dtype=inputs.dtype))
    return torch.stack(maps).to(inputs.device)


METHODS: dict[str, Method] = {
    "deconvnet": _deconvnet,
    "deconvnet_project": _deconvnet_project,
    "saliency": _saliency,
    "guided_backprop": _guided_backprop,
    "occlusion": _occlusion,
    "gradcam": _gradcam,
    "integrated_gradients": _integrated_gradients,
    "random": _random,
}
"""The registry. A new method is one entry ``name: fn(model, inputs, target) -> maps``."""


def method_names() -> list[str]:
    """Return the registered method names, in registry order.

    Example:
        >>> method_names()[:2]
        ['deconvnet', 'deconvnet_project']
    """
    return list(METHODS)


def get_method(name: str) -> Method:
    """Return the registered method ``name``, wrapped to run safely (see :func:`attribute`).

    Args:
        name: a key of :data:`METHODS`.

    Returns:
        A callable ``(model, inputs, target) -> maps [N, C or 1, H, W]``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.

    Example:
        >>> get_method("saliency").__name__
        'saliency'
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(
            f"method {name!r} does not exist; valid methods: {', '.join(METHODS)}"
        )

    def run(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return attribute(name, model, inputs, target)

    run.__name__ = name
    return run


def attribute(
    name: str,
    model: nn.Module,
    inputs: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """Return the maps of method ``name`` for ``inputs``, leaving ``model`` as found.

    The model runs in ``eval()`` mode; every submodule's ``training`` flag and hook tables are
    restored afterwards, also when the method raises.

    Args:
        name: a key of :data:`METHODS`.
        model: a classifier returning logits ``[N, classes]``.
        inputs: images ``[N, C, H, W]``, floating point.
        target: the class per image: an int for all, ``N`` ints or a 1-D integer tensor.

    Returns:
        Detached maps ``[N, C or 1, H, W]`` on the device of ``inputs``.

    Raises:
        ValueError: unknown ``name`` (the valid names are listed), bad ``inputs`` or ``target``.

    Example:
        >>> from zflight import zfnet
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)
        >>> attribute("gradcam", model, torch.randn(2, 3, 64, 64), [1, 2]).shape
        torch.Size([2, 1, 64, 64])
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(
            f"method {name!r} does not exist; valid methods: {', '.join(METHODS)}"
        )
    check_inputs(inputs)
    tgt = per_image_ints(target, inputs.shape[0], "target").to(inputs.device)
    with preserve_model(model), torch.enable_grad():
        model.eval()
        maps = METHODS[name](model, inputs, tgt)
    n, _, h, w = inputs.shape
    if maps.dim() != 4 or maps.shape[0] != n or tuple(maps.shape[-2:]) != (h, w):
        raise ValueError(
            f"method {name!r} returned maps of shape {tuple(maps.shape)}; expected "
            f"[{n}, C or 1, {h}, {w}]"
        )
    return maps.detach()


