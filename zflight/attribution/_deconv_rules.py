"""The deconvnet's backward rules, installed for one forward pass by a torch function mode.

:class:`DeconvRules` is a :class:`torch.overrides.TorchFunctionMode`. While it is active, every
call of a recognized activation (``F.relu``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu``,
``Tensor.relu_``, and so ``nn.ReLU``, which calls ``F.relu``) is routed through
:class:`_RectifiedBackward`, an autograd function whose forward *is* the original call (same
function, same arguments, so the values are bit-identical and in-place calls stay in place) and
whose backward is ``relu(grad)`` instead of ``grad * (input > 0)``. Everything else passes
through untouched. With ``relu_backward="guided"`` the ReLUs are routed through
:class:`_GuidedBackward` instead, whose backward is guided backprop's ``grad * (grad > 0) *
(output > 0)``; everything else about the mode is the same.

With ``normalization="identity"``, local response normalization passes the signal unchanged:
``F.local_response_norm`` calls are routed through :class:`_IdentityBackward` by the mode, and
``nn.LocalResponseNorm`` / ``nn.CrossMapLRN2d`` modules get a forward hook for the call (their
forward may be reimplemented without ``F.local_response_norm``, as zflight's own is) that
replaces the output by a copy of the same values whose backward hands the signal to the input.
:func:`deconv_rules` installs both and removes both in ``finally``.

Why a mode rather than module hooks: a mode sees every call, whichever way it is written, so
functional ReLUs, a module called several times, a ReLU whose input is used elsewhere and
in-place ReLUs all get one autograd node each, placed exactly where the forward op was.
Module backward hooks see modules only and must rewrite the gradient of the module's input
tensor, which also carries the gradient of every other use of that tensor.

The mode only exists while the forward runs (``with DeconvRules(...):``); the backward pass
needs nothing installed, because the rules live in the autograd graph that forward built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ActivationRule",
    "Normalization",
    "ReluBackward",
    "DeconvRules",
    "deconv_rules",
    "RELU_FUNCS",
    "RECTIFIER_FUNCS",
]

ActivationRule = Literal["relu", "rectify"]
Normalization = Literal["gradient", "identity"]
# What a ReLU's backward passes: the deconvnet's relu(grad), or guided backprop's grad where
# both the forward output and grad are positive (Springenberg et al., 2015).
ReluBackward = Literal["deconvnet", "guided"]


def _existing(*candidates: Any) -> frozenset:
    return frozenset(c for c in candidates if c is not None)


# Every way to call a ReLU that reaches Python. F.relu_ is torch.relu_; nn.ReLU calls F.relu.
RELU_FUNCS: frozenset = _existing(
    F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_
)

# Rectifier-like activations: rectified too under activation_rule="rectify". nn.ReLU6 calls
# F.hardtanh(x, 0, 6), so hardtanh counts only when its lower bound is 0 (see _is_rectifier).
RECTIFIER_FUNCS: frozenset = _existing(
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    getattr(F, "leaky_relu_", None),
    F.silu,
    F.gelu,
    F.hardswish,
    F.elu,
    getattr(F, "elu_", None),
    F.celu,
    F.selu,
    F.mish,
)

NORMALIZATION_FUNCS: frozenset = _existing(F.local_response_norm)
NORMALIZATION_MODULES: tuple[type[nn.Module], ...] = (nn.LocalResponseNorm, nn.CrossMapLRN2d)


class _SameForward(torch.autograd.Function):
    """Forward: the original call, unchanged. Subclasses choose the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        out = call(x)
        if out is x:
            # The call ran in place: tell autograd, so the version counter and any view of x are
            # rebased onto this node exactly as for a built-in in-place op.
            ctx.mark_dirty(x)
        return out


class _RectifiedBackward(_SameForward):
    """Forward: the original activation call. Backward: ``relu(grad)``, whatever the input was."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.relu(grad), None


class _GuidedBackward(_SameForward):
    """Forward: the original ReLU call. Backward: ``grad`` where ``grad > 0`` and ``out > 0``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        out = _SameForward.forward(ctx, x, call)
        # The sign pattern, not ``out`` itself: a later in-place op on ``out`` (a residual
        # ``+=``) must not change which units passed, nor trip autograd's version check.
        ctx.save_for_backward(out > 0)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (passed,) = ctx.saved_tensors
        return torch.where(passed & (grad > 0), grad, torch.zeros_like(grad)), None


class _IdentityBackward(_SameForward):
    """Forward: the original normalization call. Backward: the signal passes unchanged."""

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _PassSignalTo(torch.autograd.Function):
    """Forward: a copy of ``value``. Backward: the signal goes to ``through``, unchanged."""

    @staticmethod
    def forward(ctx: Any, through: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # A copy, not ``value`` itself: a custom function returning its input as-is would alias
        # it, and later in-place ops on the output would then be refused.
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _identity_backward_hook(module: nn.Module, args: tuple, output: Any) -> Any:
    if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
        if args[0].shape == output.shape:
            return _PassSignalTo.apply(args[0], output.detach())
    return None


def _split_input(args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """Separate the activation's input tensor from its other arguments."""
    if args:
        return args[0], args[1:], kwargs
    for key in ("input", "self"):
        if key in kwargs:
            rest = dict(kwargs)
            return rest.pop(key), (), rest
    return None, args, kwargs


def _is_rectifier(func: Callable, rest: tuple, kwargs: dict) -> bool:
    if func is F.hardtanh:
        # hardtanh(x, 0, m) is a clipped ReLU (ReLU6 for m = 6); other bounds are not rectifiers.
        min_val = kwargs.get("min_val", rest[0] if rest else -1.0)
        return min_val == 0
    return True


class DeconvRules(TorchFunctionMode):
    """While active, activations and normalizations get the deconvnet's backward rules.

    Args:
        activation_rule: ``"relu"`` rectifies the signal at ReLUs only; ``"rectify"`` also at
            ReLU6 (and ``hardtanh(x, 0, m)``), LeakyReLU, SiLU, GELU, Hardswish, ELU, CELU,
            SELU and Mish.
        normalization: ``"gradient"`` differentiates local response normalization as usual;
            ``"identity"`` passes the signal through it unchanged.
        relu_backward: ``"deconvnet"`` (default): a ReLU passes ``relu(grad)``; ``"guided"``
            (guided backprop): it passes ``grad`` where both ``grad`` and the forward output are
            positive, zero elsewhere. ``"guided"`` needs ``activation_rule="relu"``.

    Raises:
        ValueError: ``relu_backward`` is unknown, or ``"guided"`` with ``"rectify"``.

    Example:
        >>> x = torch.randn(4, requires_grad=True)
        >>> with DeconvRules("relu", "gradient"):
        ...     y = torch.relu(x)
        >>> torch.autograd.grad(y, x, torch.tensor([1.0, -1.0, 2.0, -2.0]))[0]
        tensor([1., 0., 2., 0.])
    """

    def __init__(
        self,
        activation_rule: ActivationRule,
        normalization: Normalization,
        *,
        relu_backward: ReluBackward = "deconvnet",
    ) -> None:
        super().__init__()
        if relu_backward not in ("deconvnet", "guided"):
            raise ValueError(
                f"relu_backward must be 'deconvnet' or 'guided', got {relu_backward!r}"
            )
        if relu_backward == "guided" and activation_rule != "relu":
            # Guided backprop's mask is "forward output > 0", which is a ReLU's own derivative;
            # for the other rectifiers it is not, so the combination is refused, not guessed.
            raise ValueError(
                f"relu_backward='guided' needs activation_rule='relu', got {activation_rule!r}"
            )
        self._relu_rule: type[torch.autograd.Function] = (
            _GuidedBackward if relu_backward == "guided" else _RectifiedBackward
        )
        rectified = set(RELU_FUNCS)
        if activation_rule == "rectify":
            rectified |= RECTIFIER_FUNCS
        self._rectified = frozenset(rectified)
        self._identity = NORMALIZATION_FUNCS if normalization == "identity" else frozenset()

    def __torch_function__(
        self,
        func: Callable,
        types: Any,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        # The mode is popped while this handler runs, so calls made from here (the original
        # activation inside the autograd function included) are not intercepted again.
        if func in self._rectified or func in self._identity:
            x, rest, other = _split_input(args, kwargs)
            if isinstance(x, torch.Tensor) and (
                func in self._identity or _is_rectifier(func, rest, other)
            ):
                rule = _IdentityBackward if func in self._identity else self._relu_rule
                return rule.apply(x, lambda t: func(t, *rest, **other))
        return func(*args, **kwargs)


@contextlib.contextmanager
def deconv_rules(
    model: nn.Module,
    activation_rule: ActivationRule,
    normalization: Normalization,
    *,
    relu_backward: ReluBackward = "deconvnet",
) -> Iterator[None]:
    """Install the deconvnet's rules on ``model`` for the block; remove them on exit.

    Args:
        model: the model whose forward pass runs in the block.
        activation_rule: see :class:`DeconvRules`.
        normalization: see :class:`DeconvRules`; ``"identity"`` also hooks the model's local
            response normalization modules for the block.
        relu_backward: see :class:`DeconvRules`.

    Example:
        >>> lrn = nn.LocalResponseNorm(2)
        >>> x = torch.rand(1, 4, 2, 2, requires_grad=True)
        >>> with deconv_rules(lrn, "relu", "identity"):
        ...     y = lrn(x)
        >>> bool((torch.autograd.grad(y.sum(), x)[0] == 1).all())
        True
    """
    handles = []
    try:
        if normalization == "identity":
            for module in model.modules():
                if isinstance(module, NORMALIZATION_MODULES):
                    handles.append(module.register_forward_hook(_identity_backward_hook))
        with DeconvRules(activation_rule, normalization, relu_backward=relu_backward):
            yield
    finally:
        for handle in handles:
            handle.remove()
