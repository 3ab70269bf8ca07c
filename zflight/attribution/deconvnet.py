"""Zeiler & Fergus's deconvnet as a Captum attribution: project any activation back to pixels.

The paper's deconvnet takes one activation of a layer (all others set to zero) and maps it down
to the input by repeating, layer by layer: **unpool** (each value goes back to the position its
max-pool window chose in the forward pass, the "switch"), **rectify** (ReLU on the
reconstruction) and **filter** (the layer's own filters, transposed). For networks built from
convolutions, ReLUs and max-pools that is exactly a backward pass in which

- max-pool's backward routes each value to its switch (overlapping windows that share a switch
  add up) — the unpooling;
- a convolution's backward convolves with the transposed (flipped) filters, to the size of the
  forward input — the filtering;
- every ReLU's backward applies ReLU to the incoming signal instead of masking it with the
  forward input's sign — the rectification. This is the only change to autograd.

How the change is made: while the forward pass runs, a :class:`torch.overrides.TorchFunctionMode`
(``_deconv_rules.DeconvRules``) intercepts every ReLU call — ``nn.ReLU`` modules (one or many
calls), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms — and runs it
inside an autograd function whose forward is the very same call (bit-identical values; in-place
calls stay in place and are marked dirty for autograd) and whose backward is ``relu(grad)``. The
mode is exited in ``finally`` as soon as the forward returns; the backward pass only follows the
graph that forward built. No parameter or flag is touched; the only hooks ever registered are
those of ``normalization="identity"`` (below), for the forward pass only.

Other activations (``activation_rule``):

- ``"relu"`` (default): only ReLUs get the deconvnet rule. ReLU6, LeakyReLU, SiLU, GELU,
  Hardswish, ELU, CELU, SELU and Mish are differentiated as usual. This is Captum's choice (it
  hooks ``nn.ReLU`` only) and the paper's network has nothing else.
- ``"rectify"``: each of those activations is treated as the paper treats a ReLU: the signal
  going down is rectified, ``relu(grad)``, whatever the activation's shape or input. (``nn.ReLU6``
  calls ``F.hardtanh(x, 0, 6)``; hardtanh counts as a rectifier only when its lower bound is 0.)

Normalization (``normalization``): the paper does not say how the deconvnet crosses its contrast
normalization layers.

- ``"gradient"`` (default): local response normalization (``nn.LocalResponseNorm``,
  ``nn.CrossMapLRN2d``, ``F.local_response_norm``) is differentiated as usual, as Captum does.
- ``"identity"``: the signal passes through it unchanged, as if the layer were not there going
  down (its forward is still run). The modules are found by type (a temporary forward hook,
  removed in ``finally``), so subclasses with their own forward count too. Under this reading
  the deconvnet is literally "unpool, rectify, filter" and nothing else.

Batch normalization and every other layer are always differentiated as usual. The model runs in
whatever mode it is in: call ``model.eval()`` first (training-mode batch norm mixes the samples
of a batch and updates its running statistics; dropout is random).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union, get_args

import torch
from captum._utils.common import _select_targets
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import nn

from zflight.attribution._args import per_image_ints
from zflight.attribution._deconv_rules import ActivationRule, Normalization, deconv_rules
from zflight.attribution._layers import LayerNotReachedError, forward_to, resolve_layer

__all__ = ["DeconvNet"]

ProjectionMode = Literal["max", "map"]
NeuronSelector = Union[int, tuple, Callable[[torch.Tensor], torch.Tensor]]
Inputs = Union[torch.Tensor, tuple]


class DeconvNet(GradientAttribution):
    """Zeiler & Fergus's deconvnet: attributions and per-feature-map projections to pixels.

    One class for the three ways the deconvnet is used:

    - ``attribute(inputs, target=...)``: the deconvnet signal of an output (Captum's
      ``Deconvolution``);
    - ``attribute(inputs, layer=..., neuron_selector=...)``: of one neuron or an aggregate of a
      layer (Captum's ``NeuronDeconvolution``), with the forward stopped at that layer;
    - ``project(inputs, layer=..., channels=...)``: the paper's projection of one feature map
      per image, fed with the map's own activations, for a whole batch in one pass.

    See the module docstring for the rule, ``activation_rule`` and ``normalization``.

    Args:
        model: any ``nn.Module`` that maps a batch to outputs.
        activation_rule: ``"relu"`` (ReLUs only) or ``"rectify"`` (also ReLU6, LeakyReLU, SiLU,
            GELU, Hardswish, ELU, CELU, SELU, Mish).
        normalization: ``"gradient"`` (differentiate local response normalization) or
            ``"identity"`` (pass the signal through it unchanged).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None).eval()
        >>> dn = DeconvNet(model)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> dn.attribute(x, target=3).shape
        torch.Size([2, 3, 64, 64])
        >>> dn.project(x, layer="layer3", channels=[0, 5], mode="max").shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        activation_rule: ActivationRule = "relu",
        normalization: Normalization = "gradient",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if activation_rule not in get_args(ActivationRule):
            raise ValueError(
                f"activation_rule must be 'relu' or 'rectify', got {activation_rule!r}"
            )
        if normalization not in get_args(Normalization):
            raise ValueError(
                f"normalization must be 'gradient' or 'identity', got {normalization!r}"
            )
        super().__init__(model)
        self.model = model
        self.activation_rule: ActivationRule = activation_rule
        self.normalization: Normalization = normalization

    def _rules(self) -> contextlib.AbstractContextManager[None]:
        return deconv_rules(self.model, self.activation_rule, self.normalization)

    @log_usage()
    def attribute(
        self,
        inputs: Inputs,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        layer: str | nn.Module | None = None,
        neuron_selector: NeuronSelector | None = None,
    ) -> Inputs:
        """Return the deconvnet signal of an output or a layer's neuron at each input value.

        Without ``layer``: like Captum's ``Deconvolution``, the backward starts at the model's
        output selected by ``target``. With ``layer`` and ``neuron_selector``: like Captum's
        ``NeuronDeconvolution``, it starts at the selected neuron(s) of ``layer``'s output, and
        the forward pass stops there (later layers are not run).

        Args:
            inputs: a tensor, or a tuple of tensors the model takes as positional arguments;
                dimension 0 is the batch.
            target: output index per sample, as in Captum: ``None`` for one output per sample,
                an int, a tuple for multi-dimensional outputs, or a list/tensor with one entry
                per sample. Only without ``layer``.
            additional_forward_args: further arguments for the model (a tuple for several),
                passed after ``inputs``; not attributed.
            layer: a submodule of the model or its dotted name (a unique suffix such as
                ``"conv5"`` works too).
            neuron_selector: which neuron(s) of ``layer``'s output (batch dimension excluded):
                an int (2-D outputs), a tuple of ints and slices (slices are summed over), or a
                callable that maps the layer output to one scalar per sample (or one in all).

        Returns:
            Attributions shaped like ``inputs`` (a tuple if ``inputs`` is a tuple).

        Raises:
            ValueError, TypeError: a bad argument; the message names it.

        Example:
            >>> dn = DeconvNet(zfnet(num_classes=10, width=0.125, image_size=64).eval())
            >>> x = torch.randn(2, 3, 64, 64)
            >>> dn.attribute(x, target=[1, 7]).shape
            torch.Size([2, 3, 64, 64])
            >>> dn.attribute(x, layer="conv5", neuron_selector=(3, 1, 1)).shape
            torch.Size([2, 3, 64, 64])
        """
        is_tuple = isinstance(inputs, tuple)
        xs = _check_inputs(inputs)
        extra = _as_tuple(additional_forward_args)
        if layer is None:
            if neuron_selector is not None:
                raise ValueError("neuron_selector needs layer=...: the layer it selects from")
            with torch.enable_grad():
                with self._rules():
                    outputs = self.model(*xs, *extra)
                scalars = _select_output(outputs, target)
                grads = torch.autograd.grad(scalars, xs, allow_unused=True)
        else:
            if target is not None:
                raise ValueError(
                    "target selects model outputs; with layer=... select with neuron_selector"
                )
            if neuron_selector is None:
                raise ValueError("layer=... needs neuron_selector=...: which neuron(s) to use")
            name, module = resolve_layer(self.model, layer)
            with torch.enable_grad():
                out = self._forward_to(name, module, xs, extra)
                scalars = _select_neuron(out, neuron_selector, name)
                grads = torch.autograd.grad(scalars, xs, allow_unused=True)
        grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads))
        return grads if is_tuple else grads[0]

    @log_usage()
    def project(
        self,
        inputs: torch.Tensor,
        *,
        layer: str | nn.Module,
        channels: int | Sequence[int] | torch.Tensor,
        mode: ProjectionMode = "max",
        batch_size: int | None = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Return, for each image, the deconvnet projection of one feature map of ``layer``.

        For sample ``b`` the backward signal is feature map ``channels[b]`` of ``layer``'s
        output, taken from the forward pass itself (the paper feeds the feature maps into the
        deconvnet); every other map is zero. ``mode="max"`` keeps only the map's strongest
        activation (its value at the arg-max, the first one on ties; zero elsewhere),
        ``mode="map"`` the whole map. One forward pass that stops at ``layer`` and one backward
        pass per chunk of ``batch_size`` images.

        Args:
            inputs: a batch of images ``(N, C, H, W)``, floating point.
            layer: a submodule of the model or its dotted name (a unique suffix works too).
            channels: the feature map to project: one int for all images, or one per image
                (a sequence or 1-D tensor of length ``N``).
            mode: ``"max"`` or ``"map"``.
            batch_size: images per forward/backward pass, to bound memory; ``None`` for all.
            additional_forward_args: further arguments for the model; with ``batch_size``,
                tensors whose first dimension is ``N`` are chunked along with ``inputs``.

        Returns:
            The projections, shaped like ``inputs``.

        Raises:
            ValueError, TypeError: a bad argument (the message names it), including a layer
                the forward pass never reaches and a channel out of the layer's range.

        Example:
            >>> model = zfnet(num_classes=10, width=0.125, image_size=64).eval()
            >>> DeconvNet(model).project(torch.randn(4, 3, 64, 64), layer="conv5",
            ...                          channels=[0, 1, 2, 3]).shape
            torch.Size([4, 3, 64, 64])
        """
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if inputs.dim() != 4:
            raise ValueError(
                f"inputs must be a 4-D batch (N, C, H, W), got shape {tuple(inputs.shape)}"
            )
        _check_inputs(inputs)
        if mode not in get_args(ProjectionMode):
            raise ValueError(f"mode must be 'max' or 'map', got {mode!r}")
        n = inputs.shape[0]
        if batch_size is None:
            batch_size = max(n, 1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        chans = per_image_ints(channels, n, "channels")
        name, module = resolve_layer(self.model, layer)

        result = torch.empty_like(inputs)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = inputs[start:stop].detach().requires_grad_(True)
            extra = _as_tuple(_chunk_args(additional_forward_args, start, stop, n))
            with torch.enable_grad():
                out = self._forward_to(name, module, (x,), extra)
                signal = _projection_signal(out, chans[start:stop].to(out.device), mode, name)
                (grad,) = torch.autograd.grad(out, x, grad_outputs=signal)
            result[start:stop] = grad
        return result

    def _forward_to(
        self, name: str, module: nn.Module, xs: tuple[torch.Tensor, ...], extra: tuple
    ) -> torch.Tensor:
        """Run the model under the deconvnet rules until ``module`` and return its output."""
        try:
            with self._rules():
                # forward_to calls model(first, *rest): the other inputs go before extra args.
                return forward_to(self.model, module, xs[0], (*xs[1:], *extra))
        except LayerNotReachedError:
            raise LayerNotReachedError(
                f"layer={name!r} ({type(module).__name__}) is never called in the forward pass "
                f"of {type(self.model).__name__}, so nothing can be projected from it"
            ) from None


def _check_inputs(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    """Validate ``inputs`` and return them as a tuple of leaves that require grad."""
    xs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not xs:
        raise ValueError("inputs must hold at least one tensor, got an empty tuple")
    out = []
    for i, x in enumerate(xs):
        where = "inputs" if not isinstance(inputs, tuple) else f"inputs[{i}]"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{where} must be floating point to be differentiated, got {x.dtype}")
        # A fresh leaf: the caller's tensor is neither modified nor kept in our graph.
        out.append(x.detach().requires_grad_(True))
    return tuple(out)


def _as_tuple(args: Any) -> tuple:
    if args is None:
        return ()
    return args if isinstance(args, tuple) else (args,)


def _select_output(outputs: Any, target: TargetType) -> torch.Tensor:
    """The model outputs selected by ``target``, summed (grads of a sum are per-sample grads)."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"the model must return a tensor, got {type(outputs).__name__}")
    if target is None:
        if outputs.dim() > 1 and outputs[0].numel() != 1:
            raise ValueError(
                f"target is None but the model returns {outputs[0].numel()} values per sample "
                f"(output shape {tuple(outputs.shape)}); pass target=<output index>"
            )
        return outputs.sum()
    try:
        selected = _select_targets(outputs, target)
    except (IndexError, RuntimeError, AssertionError) as err:
        raise ValueError(
            f"target={target!r} does not fit the model output of shape "
            f"{tuple(outputs.shape)}: {err}"
        ) from None
    if selected.numel() != outputs.shape[0]:
        raise ValueError(
            f"target={target!r} selects {selected.numel()} values from an output of shape "
            f"{tuple(outputs.shape)}; it must select one per sample"
        )
    return selected.sum()


def _select_neuron(out: torch.Tensor, selector: NeuronSelector, name: str) -> torch.Tensor:
    """The neuron(s) of a layer output picked by ``selector``, summed over batch and slices."""
    shape = tuple(out.shape)
    if callable(selector):
        picked = selector(out)
        if not isinstance(picked, torch.Tensor):
            raise TypeError(
                f"neuron_selector must return a tensor, returned {type(picked).__name__}"
            )
        if picked.numel() != 1 and tuple(picked.shape) != shape[:1]:
            raise ValueError(
                f"neuron_selector must return one value or one per sample ({shape[0]}), "
                f"returned shape {tuple(picked.shape)}"
            )
        return picked.sum()
    index = (selector,) if isinstance(selector, int) else selector
    if (
        isinstance(selector, bool)
        or not isinstance(index, tuple)
        or not all(isinstance(i, (int, slice)) and not isinstance(i, bool) for i in index)
    ):
        raise TypeError(
            "neuron_selector must be an int, a tuple of ints and slices, or a callable, got "
            f"{selector!r}"
        )
    if len(index) > len(shape) - 1:
        raise ValueError(
            f"neuron_selector={selector!r} has {len(index)} indices but layer {name!r} outputs "
            f"shape {shape} ({len(shape) - 1} after the batch dimension)"
        )
    for i, (idx, size) in enumerate(zip(index, shape[1:])):
        if isinstance(idx, int) and not -size <= idx < size:
            raise ValueError(
                f"neuron_selector={selector!r}: index {idx} at position {i} is out of range "
                f"for layer {name!r} output shape {shape} (valid 0..{size - 1})"
            )
    picked = out[(slice(None), *index)]
    if picked.dim() > 1 and not any(isinstance(i, slice) for i in index):
        raise ValueError(
            f"neuron_selector={selector!r} selects {tuple(picked.shape[1:])} values per sample "
            f"from layer {name!r} output shape {shape}; give an index for every dimension, "
            "or slices to sum over"
        )
    return picked.sum()


def _chunk_args(args: Any, start: int, stop: int, n: int) -> Any:
    """Slice the tensors among ``args`` that have the batch size ``n`` as first dimension."""
    if (start, stop) == (0, n):
        return args

    def cut(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n:
            return a[start:stop]
        return a

    if isinstance(args, tuple):
        return tuple(cut(a) for a in args)
    return cut(args)


def _projection_signal(
    out: torch.Tensor, chans: torch.Tensor, mode: ProjectionMode, name: str
) -> torch.Tensor:
    """The backward signal: map ``chans[b]`` of ``out[b]`` (or its maximum), zero elsewhere."""
    if out.dim() < 2:
        raise ValueError(
            f"layer={name!r} outputs shape {tuple(out.shape)}; projecting needs (N, C, ...)"
        )
    b, c = out.shape[:2]
    bad = (chans < 0) | (chans >= c)
    if bool(bad.any()):
        raise ValueError(
            f"channels: {chans[bad][0].item()} is out of range for layer {name!r}, which has "
            f"{c} channels (valid 0..{c - 1})"
        )
    rows = torch.arange(b, device=out.device)
    maps = out.detach()[rows, chans].reshape(b, -1)  # (b, positions)
    signal = torch.zeros((b, c, maps.shape[1]), dtype=out.dtype, device=out.device)
    if mode == "map":
        signal[rows, chans] = maps
    else:
        where = maps.argmax(dim=1)
        signal[rows, chans, where] = maps[rows, where]
    return signal.reshape(out.shape)
