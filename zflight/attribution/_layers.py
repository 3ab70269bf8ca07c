"""Finding a layer by name and running a model only as far as that layer.

Shared by every attribution tool, so each one names layers, reports bad names and stops its
forward pass the same way.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["resolve_layer", "forward_to", "LayerNotReachedError", "preserve_modes"]


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
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
        captured.append(out)
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        args = _as_tuple(additional_forward_args)
        model(inputs, *args)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise LayerNotReachedError(
            f"layer {type(layer).__name__} was never called in the forward pass of "
            f"{type(model).__name__}"
        )
    out = captured[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"layer {type(layer).__name__} returns {type(out).__name__}, not a tensor"
        )
    return out


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
