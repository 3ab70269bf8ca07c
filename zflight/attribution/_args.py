"""Per-image integer arguments (``channels``, ``target``, ``targets``): one parser for all of them.

Every attribution and analysis function that takes "a class (or a channel) per image" accepts
the same forms and says the same things when they are wrong, because they come from here. Also
the check of an ``inputs`` batch that methods and metrics share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_inputs", "per_image_ints"]


def per_image_ints(value: int | Sequence[int] | torch.Tensor, n: int, name: str) -> torch.Tensor:
    """Return ``value`` as a 1-D int64 tensor of ``n`` entries on the CPU (one per image).

    An int (or a 0-D integer tensor) is the same for every image; a sequence of ints or a 1-D
    integer tensor gives one per image. Ranges are the caller's to check.

    Args:
        value: the argument as the user gave it.
        n: the number of images.
        name: the argument's name, for the messages.

    Returns:
        ``[n]`` int64.

    Raises:
        TypeError: not an int, a sequence of ints or an integer tensor of at most one dimension
            (bools and floats included).
        ValueError: a number of entries other than ``n``.

    Example:
        >>> per_image_ints(3, 2, "target").tolist(), per_image_ints([1, 4], 2, "target").tolist()
        ([3, 3], [1, 4])
    """
    kinds = "an int, a sequence of ints or a 1-D integer tensor"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {kinds}, got bool")
    if isinstance(value, int):
        return torch.full((n,), value, dtype=torch.int64)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool or value.dim() > 1:
            raise TypeError(
                f"{name} as a tensor must be 0-D or 1-D integers, got {value.dtype} of shape "
                f"{tuple(value.shape)}"
            )
        ints = value.detach().to("cpu", torch.int64).reshape(-1)
        if value.dim() == 0:
            return ints.expand(n).clone()
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must hold ints only, got {list(value)!r}")
        ints = torch.tensor(list(value), dtype=torch.int64)
    else:
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")
    if ints.numel() != n:
        raise ValueError(
            f"{name} has {ints.numel()} entries but inputs has {n} images: give one per image, "
            "or one int for all"
        )
    return ints


def check_inputs(inputs: torch.Tensor, *, not_tensor: type[Exception] = ValueError) -> None:
    """Raise unless ``inputs`` is a floating ``[N, C, H, W]`` tensor.

    Args:
        inputs: the argument as the user gave it.
        not_tensor: what is raised when it is no tensor at all (the caller's documented type).

    Raises:
        not_tensor: ``inputs`` is not a :class:`torch.Tensor`.
        ValueError: not 4-D, or not floating-point.
    """
    if not isinstance(inputs, torch.Tensor):
        raise not_tensor(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() != 4 or not inputs.is_floating_point():
        raise ValueError(
            f"inputs must be a floating [N, C, H, W] batch, got {inputs.dtype} of shape "
            f"{tuple(inputs.shape)}"
        )
