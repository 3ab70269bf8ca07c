"""Winograd F(2×2, 3×3) convolution on channels-last tensors, for the windows of occlusion.

A 3×3 convolution computes every 2×2 block of outputs from a 4×4 block of inputs with
36 multiply-adds per input/output channel pair. Winograd's minimal filtering algorithm (Lavin &
Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016) transforms the 4×4 input
block and the 3×3 filter so that the same 2×2 outputs need 16 products, summed over the input
channels as 16 independent matrix products: 2.25× fewer multiply-adds. The transforms use only
additions (and halves, for the filter, done once in float64), so the result equals the direct
convolution to float rounding: measured ≤ 5e-7 relative in float32, the same order as the
direct convolution's own rounding.

On the CPU, PyTorch's convolutions do not use it; for the many small windows of incremental
occlusion (256 to 512 channels, 4 to 20 pixels a side) this version ran 1.0-2.2× faster than
the direct convolution, measured per shape on the 2-core CPU (see
``docs/occlusion-incremental.md``); with 128 channels or fewer it is often slower.

Example:
    >>> import torch, torch.nn.functional as F
    >>> w, b = torch.randn(8, 4, 3, 3), torch.randn(8)
    >>> x = torch.randn(2, 4, 9, 10)
    >>> y = winograd_conv3x3(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(w), b)
    >>> torch.allclose(y.permute(0, 3, 1, 2), F.conv2d(x, w, b), atol=1e-5)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["winograd_conv3x3", "winograd_weight"]

# G (4×3) maps a filter row to the transformed domain; B^T (4×4) an input row; A^T (2×4) a
# product row back to two outputs. kron(M, M) applies one of them to a flattened 2-D block.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_BT = ((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
# Working set of one chunk of samples (see winograd_conv3x3): about a core's share of cache.
_CHUNK_BYTES = 4 << 20


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """Transform ``[C_out, C_in, 3, 3]`` filters into ``[16, C_in, C_out]`` (once per layer).

    The transform is computed in float64 and cast back, so it adds no rounding of its own
    beyond the final cast.
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must be [C_out, C_in, 3, 3], got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ak,oikl,bl->abio", g, weight.detach().double(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def winograd_conv3x3(
    x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A 3×3 convolution, stride 1, no padding, of channels-last ``x`` ``[B, H, W, C_in]``.

    Args:
        x: ``[B, H, W, C_in]``, ``H, W >= 3`` (pad beforehand for a padded convolution).
        u: ``[16, C_in, C_out]`` from :func:`winograd_weight`.
        bias: ``[C_out]`` or ``None``.

    Returns:
        ``[B, H - 2, W - 2, C_out]``, contiguous (channels-last).
    """
    b, h, w, c = x.shape
    # The transforms are memory-bound passes over 16 values per tile and channel: in chunks of
    # samples whose data stays in the cache they cost little, beyond it they cost more than the
    # products save (measured: 0.4-0.8x at 32 windows of 128 channels in one piece).
    tile_bytes = 16 * max(c, u.shape[-1]) * x.element_size()
    per_sample = max(1, ((h - 1) // 2) * ((w - 1) // 2) * tile_bytes)
    chunk = max(1, _CHUNK_BYTES // per_sample)
    if b > chunk:
        return torch.cat([winograd_conv3x3(part, u, bias) for part in x.split(chunk)])
    oh, ow = h - 2, w - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    if (2 * th + 2, 2 * tw + 2) != (h, w):  # odd output size: one extra row/column of tiles
        x = F.pad(x, (0, 0, 0, 2 * tw + 2 - w, 0, 2 * th + 2 - h))
    kb = _kron(_BT, x)
    ka = _kron(_AT, x)
    # Overlapping 4×4 input blocks at stride 2, laid out [16, tiles * C_in] for one matmul.
    d = x.unfold(1, 4, 2).unfold(2, 4, 2).permute(4, 5, 0, 1, 2, 3).reshape(16, -1)
    v = (kb @ d).view(16, -1, c)  # [16, tiles, C_in]
    m = torch.bmm(v, u)  # [16, tiles, C_out]
    co = m.shape[-1]
    y = (ka @ m.view(16, -1)).view(2, 2, b, th, tw, co)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(b, 2 * th, 2 * tw, co)[:, :oh, :ow]
    if bias is not None:
        y = y + bias
    return y.contiguous()


_KRON: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _kron(rows: tuple[tuple[float, ...], ...], like: torch.Tensor) -> torch.Tensor:
    """``kron(M, M)`` of a transform, built once per dtype and device."""
    key = (id(rows), like.dtype, like.device)
    if key not in _KRON:
        m = torch.tensor(rows, dtype=like.dtype, device=like.device)
        _KRON[key] = torch.kron(m, m)
    return _KRON[key]
