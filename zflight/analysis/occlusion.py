"""The paper's Fig. 7 as numbers: occlusion maps plus the tracked feature map's projection.

:func:`occlusion_analysis` runs the model (:func:`~zflight.occlusion_maps` and the deconvnet
projection of the tracked feature map); :func:`occlusion_record` gives the numbers for JSON;
:func:`zflight.figures.occlusion.occlusion_figure` draws them. The CLI
(``python -m zflight occlusion``) and the ``OcclusionFigures`` callback both use these, so a
figure made during training and one made from a checkpoint look the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from zflight.attribution._layers import preserve_modes
from zflight.attribution.deconvnet import DeconvNet
from zflight.attribution.occlusion import Fill, OcclusionMaps, occlusion_maps

__all__ = ["default_geometry", "default_layer", "occlusion_analysis", "occlusion_record", "class_namer"]


def default_geometry(height: int, width: int) -> tuple[int, int]:
    """Return the default ``(size, stride)``: a square of a quarter of the image, 13 steps across.

    The paper gives neither. ``size = min(H, W) // 4`` (56 px at 224, 16 px at 64) hides an
    object part without hiding the object; ``stride = size // 4`` gives a 13 × 13 grid on square
    images, fine enough to outline a part.

    Example:
        >>> default_geometry(64, 64)
        (16, 4)
    """
    size = max(1, min(height, width) // 4)
    return size, max(1, size // 4)


def default_layer(model: nn.Module) -> str:
    """Return the layer whose feature maps are tracked by default: the last conv layer, rectified.

    That is the ReLU right after the last ``nn.Conv2d`` when there is one (zfnet: ``relu5``,
    the paper's layer-5 feature maps, which are rectified), else the last ``nn.Conv2d`` itself.

    Raises:
        ValueError: the model has no ``nn.Conv2d``.

    Example:
        >>> default_layer(zfnet(num_classes=10, width=0.125, image_size=64))  # doctest: +SKIP
        'features.relu5'
    """
    names = [(n, m) for n, m in model.named_modules() if n]
    last = max((i for i, (_, m) in enumerate(names) if isinstance(m, nn.Conv2d)), default=None)
    if last is None:
        raise ValueError(f"layer: {type(model).__name__} has no Conv2d layer; name one with layer=")
    following = names[last + 1] if last + 1 < len(names) else None
    if following is not None and isinstance(following[1], nn.ReLU):
        return following[0]
    return names[last][0]


def occlusion_analysis(
    model: nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None,
    *,
    size: int,
    stride: int,
    layer: str | nn.Module | None = None,
    fill: Fill = 0.0,
    batch_size: int = 64,
    progress: bool | None = None,
) -> tuple[OcclusionMaps, torch.Tensor]:
    """Return the occlusion maps of ``images`` and the projection of each image's tracked map.

    Args:
        model: the classifier (logits out).
        images: ``[N, C, H, W]`` normalized images.
        targets: class per image (or one for all; ``None``: the predicted class).
        size: side of the occluder square in pixels.
        stride: step between square positions in pixels.
        layer: the layer whose feature maps are tracked; ``None`` is :func:`default_layer`.
        fill: the square's value in the model's input space (0.0: the data mean).
        batch_size: occluded images per forward pass.
        progress: progress bar (see :func:`~zflight.occlusion_maps`).

    Returns:
        ``(maps, projections)``: the :class:`~zflight.OcclusionMaps` and ``[N, C, H, W]`` the
        deconvnet projection of the strongest activation of feature map ``maps.channel[n]`` of
        ``maps.layer`` in unoccluded image ``n`` (``DeconvNet.project(..., mode="max")``).

    Example:
        >>> model = zfnet(num_classes=10, width=0.125, image_size=64)  # doctest: +SKIP
        >>> maps, proj = occlusion_analysis(model, torch.randn(2, 3, 64, 64), [1, 2],
        ...                                 size=16, stride=8)  # doctest: +SKIP
    """
    if layer is None:
        layer = default_layer(model)
    maps = occlusion_maps(
        model, images, targets, size=size, stride=stride, fill=fill, layer=layer,
        batch_size=batch_size, progress=progress,
    )
    assert maps.channel is not None and maps.layer is not None  # a layer was given
    # The deconvnet runs the model as it is: eval mode for it too, flags restored after.
    with preserve_modes(model, eval_mode=True):
        projections = DeconvNet(model).project(
            images, layer=maps.layer, channels=maps.channel, mode="max", batch_size=batch_size
        )
    return maps, projections.detach()


def occlusion_record(
    maps: OcclusionMaps, i: int, *, class_names: Sequence[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """Return the numbers behind row ``i`` of the figure as a JSON-ready dict.

    Keys: ``target`` (+ ``target_name``), ``base_prob``, ``base_label``, ``size``, ``stride``,
    ``rows`` / ``cols`` (the square's top / left pixel per map row / column), ``prob``,
    ``label`` (nested lists ``[rows][cols]``), ``lowest_prob`` with its ``position`` and
    ``square`` ``[x0, y0, x1, y1]`` (exclusive ends), and with a layer ``layer``, ``channel``,
    ``base_activation``, ``activation``. ``extra`` items are added as they are.

    Example:
        >>> json.dumps(occlusion_record(maps, 0, index=17))  # doctest: +SKIP
    """
    name = class_namer(class_names)
    r, c = maps.lowest_prob_position()[i].tolist()
    record: dict[str, Any] = dict(extra)
    record.update(
        target=int(maps.targets[i]),
        target_name=name(int(maps.targets[i])),
        base_prob=float(maps.base_prob[i]),
        base_label=int(maps.base_label[i]),
        base_label_name=name(int(maps.base_label[i])),
        size=maps.size,
        stride=maps.stride,
        rows=maps.rows.tolist(),
        cols=maps.cols.tolist(),
        prob=maps.prob[i].tolist(),
        label=maps.label[i].tolist(),
        lowest_prob=float(maps.prob[i, r, c]),
        lowest_prob_position=[r, c],
        lowest_prob_square=list(maps.square(r, c)),
    )
    if maps.activation is not None and maps.channel is not None:
        assert maps.base_activation is not None
        record.update(
            layer=maps.layer,
            channel=int(maps.channel[i]),
            base_activation=float(maps.base_activation[i]),
            activation=maps.activation[i].tolist(),
        )
    return record


def class_namer(class_names: Sequence[str] | None) -> Callable[[int], str]:
    """Return ``name(k)``: the class name of label ``k``, or ``"class k"`` when unknown.

    Example:
        >>> class_namer(["disk", "ring"])(1), class_namer(None)(3)
        ('ring', 'class 3')
    """

    def name(k: int) -> str:
        if class_names is not None and 0 <= k < len(class_names):
            return str(class_names[k])
        return f"class {k}"

    return name
