"""Leave a model exactly as found: training flags, hooks and (optionally) weights.

:func:`preserve_model` snapshots, for every submodule,

- its ``training`` flag;
- its hook tables (every ``dict`` attribute whose name contains ``hook``: forward, forward-pre,
  backward, backward-pre, state-dict and load hooks, with and without kwargs) and the
  ``_backward_hooks`` bookkeeping flag ``_is_full_backward_hook``;
- with ``weights=True``: its parameter and buffer *objects*, a copy of their *values*, and each
  parameter's ``.grad`` object (a method that calls ``backward()`` must not leave gradients),

and restores all of it in ``finally``, also when the block raises. Hook tables are restored in
place (cleared and refilled), because a ``RemovableHandle`` the user holds points at the very
``dict`` object; values are restored with ``copy_`` into the original tensors, so they are
bit-identical and every outside reference (an optimizer, a view) still sees them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["preserve_model"]


def _hook_tables(module: nn.Module) -> dict[str, dict]:
    return {k: v for k, v in vars(module).items() if "hook" in k and isinstance(v, dict)}


@contextlib.contextmanager
def preserve_model(model: nn.Module, *, weights: bool = False) -> Iterator[nn.Module]:
    """Restore ``model``'s modes and hooks (and, with ``weights=True``, weights) on exit.

    Args:
        model: the model.
        weights: also restore every parameter and buffer (objects and values, bit-identical).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> with preserve_model(model, weights=True):
        ...     _ = model.register_forward_hook(lambda *a: None)
        ...     nn.init.zeros_(model[0].weight)
        ...     model.eval()
        >>> len(model[0]._forward_hooks), bool(model[0].weight.any()), model.training
        (0, True, True)
    """
    modules = list(model.modules())
    flags = [m.training for m in modules]
    tables = [{k: dict(v) for k, v in _hook_tables(m).items()} for m in modules]
    full_flags = [getattr(m, "_is_full_backward_hook", None) for m in modules]
    saved: list[tuple[dict, dict, dict, dict]] = []
    grads: list[tuple[nn.Parameter, torch.Tensor | None]] = []
    if weights:
        grads = [(p, p.grad) for p in model.parameters()]
        with torch.no_grad():
            for m in modules:
                params, buffers = dict(m._parameters), dict(m._buffers)
                saved.append(
                    (
                        params,
                        buffers,
                        {k: p.detach().clone() for k, p in params.items() if p is not None},
                        {k: b.detach().clone() for k, b in buffers.items() if b is not None},
                    )
                )
    try:
        yield model
    finally:
        for m, flag, table, full in zip(modules, flags, tables, full_flags):
            m.training = flag
            current = _hook_tables(m)
            for name, entries in table.items():
                live = current.get(name)
                if live is None:
                    setattr(m, name, entries)
                else:
                    live.clear()
                    live.update(entries)
            if hasattr(m, "_is_full_backward_hook"):
                m._is_full_backward_hook = full
        if weights:
            _restore_weights(modules, saved)
            for param, grad in grads:
                param.grad = grad


def _restore_weights(modules: list[nn.Module], saved: list[tuple[dict, dict, dict, dict]]) -> None:
    with torch.no_grad():
        for m, (params, buffers, p_values, b_values) in zip(modules, saved):
            # The same objects first (a re-initialization may have replaced one), then values.
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for table, values in ((params, p_values), (buffers, b_values)):
                for name, value in values.items():
                    tensor: Any = table[name]
                    tensor.copy_(value)
