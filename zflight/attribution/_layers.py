"""Finding a layer by name and running a model only as far as that layer.

Shared by every attribution tool, so each one names layers, reports bad names and stops its
forward pass the same way.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "resolve_layer",
    "layer_label",
    "as_unit_maps",
    "forward_to",
    "forward_until",
    "layer_outputs",
    "LayerNotReachedError",
    "preserve_modes",
]


class LayerNotReachedError(ValueError):
    """The forward pass finished without calling the requested layer."""


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for ``layer`` in ``model``.

    ``layer`` is a submodule of ``model``, its dotted name from ``model.named_modules()``, or a
    unique dotted suffix of such a name (``"conv5"`` finds ``"features.conv5"``).

    Raises:
        ValueError: the name does not exist or is ambiguous (the message lists close names), or
            the module is not part of ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    names = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in names.items():
            if module is layer:
                return name, module
        raise ValueError(
            f"layer: the module {type(layer).__name__} is not a submodule of "
            f"{type(model).__name__}"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module or a str name, got {type(layer).__name__}")
    if layer in names and layer != "":
        return layer, names[layer]
    suffix_matches = [n for n in names if n.endswith("." + layer)]
    if len(suffix_matches) == 1:
        return suffix_matches[0], names[suffix_matches[0]]
    if len(suffix_matches) > 1:
        raise ValueError(
            f"layer={layer!r} is ambiguous in {type(model).__name__}: it could be "
            f"{', '.join(suffix_matches[:5])}"
        )
    candidates = [n for n in names if n]
    close = difflib.get_close_matches(layer, candidates, n=3, cutoff=0.5)
    close += [
        n for n in difflib.get_close_matches(layer, [n.rsplit(".", 1)[-1] for n in candidates])
        if n not in close
    ]
    hint = f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""
    raise ValueError(f"layer={layer!r} is not a module of {type(model).__name__}{hint}")


def layer_label(name: str) -> str:
    """How figures and tables title a layer: its dotted name, less zflight's container prefix.

    ZFNet's ``features.conv5`` and ``classifier.fc7`` become ``conv5`` and ``fc7`` (the paper's
    names); every other name stays whole, since its last part alone is ambiguous (``conv2`` of
    ResNet's ``layer4.1.conv2`` is one of eight) or meaningless (``28`` of VGG's ``features.28``).

    Example:
        >>> [layer_label(n) for n in ["features.conv5", "layer4.1.conv2", "features.28"]]
        ['conv5', 'layer4.1.conv2', 'features.28']
    """
    head, _, tail = name.partition(".")
    if head in ("features", "classifier") and tail and "." not in tail and not tail[0].isdigit():
        return tail
    return name


def as_unit_maps(out: torch.Tensor, label: str, needs: str) -> torch.Tensor:
    """A layer's output as ``[N, units, h, w]``; a vector layer's units become 1 x 1 maps.

    Args:
        out: the layer's output.
        label: how the error names the layer (``"layer='fc7'"``, ``"layers: 'fc7'"``).
        needs: what the tool needs, for the error (``"dissection needs maps"``).

    Raises:
        ValueError: ``out`` is neither ``[N, C, H, W]`` nor ``[N, C]``, or not floating-point.

    Example:
        >>> as_unit_maps(torch.zeros(2, 5), "layer='fc7'", "top activations need feature maps").shape
        torch.Size([2, 5, 1, 1])
    """
    if out.dim() == 2:
        out = out[:, :, None, None]
    elif out.dim() != 4:
        raise ValueError(f"{label} outputs shape {tuple(out.shape)}; {needs} [N, C, H, W] (or [N, C])")
    if not out.is_floating_point():
        raise ValueError(f"{label} outputs {out.dtype}, not floating-point activations")
    return out


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def forward_to(
    model: nn.Module,
    layer: nn.Module,
    inputs: torch.Tensor,
    additional_forward_args: Any = None,
) -> torch.Tensor:
    """Run ``model(inputs, *additional_forward_args)`` up to ``layer`` and return its output.

    Later layers are not run. The output stays in the autograd graph if grad is enabled. The
    hook is removed even when the forward raises.

    Raises:
        LayerNotReachedError: the forward pass ended without calling ``layer``.
    """
    captured = forward_until(model, [layer], inputs, *_as_tuple(additional_forward_args))
    if id(layer) not in captured:
        raise LayerNotReachedError(
            f"layer {type(layer).__name__} was never called in the forward pass of "
            f"{type(model).__name__}"
        )
    out = captured[id(layer)]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"layer {type(layer).__name__} returns {type(out).__name__}, not a tensor"
        )
    return out


def forward_until(model: nn.Module, modules: Sequence[nn.Module], *args: Any) -> dict[int, Any]:
    """Run ``model(*args)`` until every module in ``modules`` has run; their outputs by ``id``.

    Later layers are not run. A module called twice keeps its first output; one never called
    is missing from the result (the caller names it). The hooks are removed even when the
    forward raises. :func:`forward_to` is this for one layer, with its checks.
    """
    wanted = {id(m): m for m in modules}
    captured: dict[int, Any] = {}

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        captured.setdefault(id(module), out)
        if len(captured) == len(wanted):
            raise _StopForward

    handles = [m.register_forward_hook(hook) for m in wanted.values()]
    try:
        model(*args)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def layer_outputs(
    model: nn.Module,
    resolved: Sequence[tuple[str, nn.Module]],
    images: torch.Tensor,
    batch_size: int,
    *,
    device: str | torch.device | None = None,
    logits: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Run ``model`` over ``images`` once per batch and collect several layers' outputs, flattened.

    Every layer in ``resolved`` is captured by a forward hook during one full forward pass per
    batch (hooks removed even when the forward raises). A module called twice keeps its first
    output, as :func:`forward_to` does. Outputs are detached.

    Args:
        model: the network (its mode is left as it is; see :func:`preserve_modes`).
        resolved: ``(name, module)`` pairs from :func:`resolve_layer`.
        images: the inputs, already on the model's device.
        batch_size: images per forward pass.
        device: where each batch's features are moved (``None``: left where the model ran).
        logits: also return the model's outputs, which must be ``[N, classes]`` logits.

    Returns:
        ``({name: [N, features]}, [N, classes] logits or None)``.

    Raises:
        ValueError: with ``logits``, the model does not return a 2-d tensor.
        LayerNotReachedError: a layer was never called in the forward pass.
        TypeError: a layer returns something other than a tensor.

    Example:
        >>> feats, out = layer_outputs(model, [resolve_layer(model, "relu5")], x, 64, logits=True)  # doctest: +SKIP
    """
    feats: dict[str, list[torch.Tensor]] = {name: [] for name, _ in resolved}
    outs: list[torch.Tensor] = []
    current: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
            # A module called twice (shared) keeps its first output, as forward_to does.
            current.setdefault(name, out.detach())

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in resolved]
    try:
        for start in range(0, images.shape[0], batch_size):
            current.clear()
            out = model(images[start : start + batch_size])
            if logits and (not isinstance(out, torch.Tensor) or out.dim() != 2):
                raise ValueError(
                    f"model must return [N, classes] logits, got "
                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                )
            missing = [name for name, _ in resolved if name not in current]
            if missing:
                raise LayerNotReachedError(
                    f"layers {missing} were never called in the forward pass of {type(model).__name__}"
                )
            for name in feats:
                f = current[name].flatten(1)
                feats[name].append(f if device is None else f.to(device))
            if logits:
                outs.append(out.detach())
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(v) for name, v in feats.items()}, (torch.cat(outs) if logits else None)


def _as_tuple(args: Any) -> tuple:
    if args is None:
        return ()
    if isinstance(args, tuple):
        return args
    return (args,)


@contextlib.contextmanager
def preserve_modes(model: nn.Module, *, eval_mode: bool | None = None) -> Iterator[nn.Module]:
    """Restore every submodule's ``training`` flag on exit; optionally switch to eval inside.

    Args:
        model: the model.
        eval_mode: ``True`` puts the model in ``eval()`` for the block, ``None`` leaves it.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
