"""The input region each position of a layer's feature maps sees, read off the model itself.

:func:`receptive_field` runs the model once on a blank probe of the given size, up to the layer,
under a :class:`torch.overrides.TorchFunctionMode` that follows every tensor's geometry through
every call: a convolution or pooling widens the field by ``(kernel - 1) × jump`` (with dilation)
and multiplies the jump (stride in input pixels) by its stride; padding moves the field's origin
up and left; an op with several inputs of the same spatial size (a residual sum, a channel
concatenation) takes the union of their fields; an op that keeps the spatial size (ReLU, batch
norm, local response norm) keeps the field. An op that changes the spatial size in a way it does
not know (global or adaptive pooling, flattening, resizing, slicing) makes the field the whole
input, which is what it is for global pooling and fully connected layers and a safe upper
bound otherwise.

Nothing comes from a table of architectures: the same code gives ZFNet's fields (7, 11, 27, 43,
75, 107, 139, 171 pixels for conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5) and a
ResNet's, where the union over the skip connection matters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from zflight.attribution._layers import forward_to, preserve_modes, resolve_layer

__all__ = ["ReceptiveField", "receptive_field"]


@dataclass(frozen=True)
class ReceptiveField:
    """Where each position of a layer's feature maps looks in the input image.

    Position ``(row, col)`` of the feature map sees input rows
    ``offset[0] + row * stride[0]`` to that plus ``size[0]`` (exclusive), and likewise for
    columns. The field may reach past the image (through padding); :meth:`box` clips it.

    Attributes:
        layer: the layer's dotted name.
        size: ``(height, width)`` of the field in input pixels, before clipping.
        stride: ``(rows, cols)`` of input pixels between neighbouring feature-map positions.
        offset: ``(y, x)`` of the top-left corner of position ``(0, 0)``'s field (negative
            when padding reaches outside the image).
        feature_size: ``(height, width)`` of the layer's feature maps at this input size.
        input_size: ``(height, width)`` of the input.
        covers_input: every position sees the whole input (after global pooling, a linear
            layer, or an op whose geometry is not known); then ``box`` is the whole image.
    """

    layer: str
    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    feature_size: tuple[int, int]
    input_size: tuple[int, int]
    covers_input: bool = False

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Return the input box ``(y0, x0, y1, x1)`` seen by position ``(row, col)``, clipped.

        ``y1`` and ``x1`` are exclusive, so the patch is ``image[..., y0:y1, x0:x1]``.

        Args:
            row: feature-map row, ``0 <= row < feature_size[0]``.
            col: feature-map column, ``0 <= col < feature_size[1]``.

        Returns:
            The box clipped to the image.

        Raises:
            ValueError: the position is outside the feature map.

        Example:
            >>> rf = receptive_field(zfnet(num_classes=10, width=0.125, image_size=64), "conv1", (64, 64))
            >>> rf.box(0, 0), rf.box(5, 10)
            ((0, 0, 6, 6), (9, 19, 16, 26))
        """
        for name, value, limit in (("row", row, self.feature_size[0]), ("col", col, self.feature_size[1])):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
                raise ValueError(
                    f"{name}={value!r} is outside layer {self.layer!r}'s feature map of size "
                    f"{self.feature_size} (valid 0..{limit - 1})"
                )
        if self.covers_input:
            return 0, 0, self.input_size[0], self.input_size[1]
        h, w = self.input_size
        y0 = self.offset[0] + row * self.stride[0]
        x0 = self.offset[1] + col * self.stride[1]
        return (
            max(0, y0),
            max(0, x0),
            min(h, y0 + self.size[0]),
            min(w, x0 + self.size[1]),
        )


def receptive_field(
    model: nn.Module,
    layer: str | nn.Module,
    input_size: int | tuple[int, int],
    *,
    in_channels: int = 3,
) -> ReceptiveField:
    """Return the receptive field of ``layer``'s feature maps for inputs of ``input_size``.

    The model runs once, in ``eval()`` mode and without gradients, on a blank ``[1, in_channels,
    H, W]`` probe up to ``layer`` (its flags are restored afterwards), while every op's geometry
    is followed (see the module docstring). It works for any CNN built from ``torch``
    convolutions and poolings, including functional calls and residual connections.

    Args:
        model: the network.
        layer: a submodule of ``model`` or its dotted name (a unique suffix like ``"conv5"``).
        input_size: ``H`` (square) or ``(H, W)`` of the input images.
        in_channels: channels of the probe image.

    Returns:
        A :class:`ReceptiveField`; ``.box(row, col)`` gives a position's input box.

    Raises:
        ValueError: a bad ``input_size``, or a ``layer`` that does not exist, is never reached
            or does not output a tensor.

    Example:
        >>> from zflight import zfnet
        >>> rf = receptive_field(zfnet(num_classes=10, width=0.125, image_size=224), "conv5", 224)
        >>> rf.size, rf.stride
        ((139, 139), (16, 16))
    """
    size = _pair("input_size", input_size)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    name, module = resolve_layer(model, layer)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    probe = torch.zeros(1, in_channels, *size, device=device, dtype=dtype)

    tracer = _GeometryTracer()
    tracer.track(probe, _Geometry.identity(size))
    with preserve_modes(model, eval_mode=True), torch.no_grad():
        with tracer:
            out = forward_to(model, module, probe)
    geometry = tracer.geometry_of(out)
    if geometry is None:
        raise ValueError(
            f"layer={name!r}'s output does not depend on the input image as far as the tracer "
            "can tell (it is not computed from it by torch ops)"
        )
    feature_size = (int(out.shape[-2]), int(out.shape[-1])) if out.dim() >= 3 else (1, 1)
    if geometry.whole or out.dim() < 3:
        return ReceptiveField(name, size, (1, 1), (0, 0), feature_size, size, covers_input=True)
    return ReceptiveField(
        name, geometry.size, geometry.jump, geometry.start, feature_size, size, covers_input=False
    )


# ------------------------------------------------------------------------------------ internals
def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list, torch.Size))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a positive int or a pair (H, W) of them, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class _Geometry:
    """Per axis (rows, cols): the field of feature position ``i`` is ``start + i*jump`` on, ``size`` long."""

    jump: tuple[int, int]
    start: tuple[int, int]
    size: tuple[int, int]
    spatial: tuple[int, int]  # the tensor's own (H, W), to match inputs and outputs
    whole: bool = False

    @staticmethod
    def identity(spatial: tuple[int, int]) -> _Geometry:
        return _Geometry((1, 1), (0, 0), (1, 1), spatial)

    def window(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        spatial: tuple[int, int],
    ) -> _Geometry:
        if self.whole:
            return _Geometry(self.jump, self.start, self.size, spatial, whole=True)
        size, start, jump = [], [], []
        for a in range(2):
            extent = dilation[a] * (kernel[a] - 1) + 1
            size.append(self.size[a] + (extent - 1) * self.jump[a])
            start.append(self.start[a] - padding[a] * self.jump[a])
            jump.append(self.jump[a] * stride[a])
        return _Geometry(tuple(jump), tuple(start), tuple(size), spatial)  # type: ignore[arg-type]

    def shifted(self, before: tuple[int, int], spatial: tuple[int, int]) -> _Geometry:
        """Padding ``before`` rows/cols at the top/left: position 0 now sits that far outside."""
        start = tuple(self.start[a] - before[a] * self.jump[a] for a in range(2))
        return _Geometry(self.jump, start, self.size, spatial, self.whole)  # type: ignore[arg-type]

    def whole_input(self, spatial: tuple[int, int]) -> _Geometry:
        return _Geometry(self.jump, self.start, self.size, spatial, whole=True)


def _union(geoms: list[_Geometry], spatial: tuple[int, int]) -> _Geometry:
    """The smallest field covering every input's field (inputs of the same spatial size)."""
    if len(geoms) == 1:
        g = geoms[0]
        return _Geometry(g.jump, g.start, g.size, spatial, g.whole)
    if any(g.whole for g in geoms) or len({g.jump for g in geoms}) > 1:
        # Different jumps at the same spatial size do not happen in CNNs we know; the whole
        # input is the safe answer.
        return geoms[0].whole_input(spatial)
    start = tuple(min(g.start[a] for g in geoms) for a in range(2))
    end = tuple(max(g.start[a] + g.size[a] for g in geoms) for a in range(2))
    size = tuple(end[a] - start[a] for a in range(2))
    return _Geometry(geoms[0].jump, start, size, spatial)  # type: ignore[arg-type]


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _two(value: Any, default: int | None = None) -> tuple[int, int]:
    if value is None:
        value = default
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _conv_geometry(g: _Geometry, args: tuple, kwargs: dict, spatial: tuple[int, int]) -> _Geometry:
    weight = _arg(args, kwargs, 1, "weight", None)
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    stride = _two(_arg(args, kwargs, 3, "stride", 1))
    dilation = _two(_arg(args, kwargs, 5, "dilation", 1))
    padding = _arg(args, kwargs, 4, "padding", 0)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        # PyTorch puts the odd pixel of 'same' padding at the end: the start moves by the floor.
        padding = tuple(dilation[a] * (kernel[a] - 1) // 2 for a in range(2))
    return g.window(kernel, stride, _two(padding), dilation, spatial)


def _max_pool_geometry(g: _Geometry, args: tuple, kwargs: dict, spatial: tuple[int, int]) -> _Geometry:
    kernel = _two(_arg(args, kwargs, 1, "kernel_size", None))
    stride = _two(_arg(args, kwargs, 2, "stride", None) or kernel)
    padding = _two(_arg(args, kwargs, 3, "padding", 0))
    dilation = _two(_arg(args, kwargs, 4, "dilation", 1))
    return g.window(kernel, stride, padding, dilation, spatial)


def _avg_pool_geometry(g: _Geometry, args: tuple, kwargs: dict, spatial: tuple[int, int]) -> _Geometry:
    kernel = _two(_arg(args, kwargs, 1, "kernel_size", None))
    stride = _two(_arg(args, kwargs, 2, "stride", None) or kernel)
    padding = _two(_arg(args, kwargs, 3, "padding", 0))
    return g.window(kernel, stride, padding, (1, 1), spatial)


def _lp_pool_geometry(g: _Geometry, args: tuple, kwargs: dict, spatial: tuple[int, int]) -> _Geometry:
    kernel = _two(_arg(args, kwargs, 2, "kernel_size", None))
    stride = _two(_arg(args, kwargs, 3, "stride", None) or kernel)
    return g.window(kernel, stride, (0, 0), (1, 1), spatial)


def _pad_geometry(g: _Geometry, args: tuple, kwargs: dict, spatial: tuple[int, int]) -> _Geometry:
    pad = list(_arg(args, kwargs, 1, "pad", ()))
    # F.pad lists (left, right, top, bottom, ...) from the last dimension backwards.
    left = pad[0] if len(pad) >= 2 else 0
    top = pad[2] if len(pad) >= 4 else 0
    return g.shifted((int(top), int(left)), spatial)


# Ops whose geometry we know, by function name (the same name covers torch.*, F.* and the
# boolean-dispatch wrappers that F.max_pool2d goes through).
_WINDOW_OPS: dict[str, Callable[[_Geometry, tuple, dict, tuple[int, int]], _Geometry]] = {
    "conv2d": _conv_geometry,
    "max_pool2d": _max_pool_geometry,
    "_max_pool2d": _max_pool_geometry,
    "max_pool2d_with_indices": _max_pool_geometry,
    "avg_pool2d": _avg_pool_geometry,
    "lp_pool2d": _lp_pool_geometry,
    "pad": _pad_geometry,
}


class _GeometryTracer(TorchFunctionMode):
    """Follows each tensor's receptive-field geometry through every torch call it sees."""

    def __init__(self) -> None:
        super().__init__()
        # id -> (geometry, tensor); holding the tensor keeps its id from being reused.
        self._geoms: dict[int, tuple[_Geometry, torch.Tensor]] = {}

    def track(self, tensor: torch.Tensor, geometry: _Geometry) -> None:
        self._geoms[id(tensor)] = (geometry, tensor)

    def geometry_of(self, tensor: Any) -> _Geometry | None:
        entry = self._geoms.get(id(tensor))
        return entry[0] if entry is not None and entry[1] is tensor else None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        inputs = [g for g in (self.geometry_of(t) for t in leaves if isinstance(t, torch.Tensor)) if g is not None]
        if not inputs:
            return result
        outputs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        name = getattr(func, "__name__", "")
        for out in outputs:
            if out.dim() < 3:
                self.track(out, inputs[0].whole_input((1, 1)))
                continue
            spatial = (int(out.shape[-2]), int(out.shape[-1]))
            if name in _WINDOW_OPS and out.dtype != torch.int64:  # not max-pool's indices
                self.track(out, _WINDOW_OPS[name](inputs[0], args, kwargs, spatial))
                continue
            same = [g for g in inputs if g.spatial == spatial]
            if same and len(same) == len(inputs):
                self.track(out, _union(same, spatial))
            else:
                # Resizing, adaptive pooling, slicing, reshaping: unknown geometry. The whole
                # input is an upper bound that never hides anything the position sees.
                self.track(out, inputs[0].whole_input(spatial))
        return result
