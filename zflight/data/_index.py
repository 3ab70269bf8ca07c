"""Index checking shared by the map-style data sets (shapes, concept folders)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["check_index"]


def check_index(index: Any, size: int, owner: str) -> int:
    """Return ``index`` as an int in ``[0, size)``; negative indices count from the end.

    Raises:
        TypeError: not an int (a one-element tensor is taken as its value).
        IndexError: out of range, naming ``owner`` (e.g. ``"ShapesDataset of 100 samples"``).

    Example:
        >>> check_index(-1, 10, "ShapesDataset of 10 samples")
        9
    """
    if isinstance(index, torch.Tensor) and index.numel() == 1:
        index = int(index.item())
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    i = int(index)
    if i < 0:
        i += size
    if not 0 <= i < size:
        raise IndexError(f"index {index} out of range for {owner}")
    return i
