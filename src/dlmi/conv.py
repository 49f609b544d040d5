"""Convolution from scratch in NumPy, and the arithmetic of sizes and receptive fields.

Deep-learning "convolution" is cross-correlation: the kernel is not flipped. Arrays follow
PyTorch's layout: images ``(C, H, W)`` or ``(N, C, H, W)``, weights ``(C_out, C_in, K, K)``.
Every function here is checked against ``torch.nn.functional`` in ``tests/test_conv.py``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

# Classic 3×3 kernels (cross-correlation orientation).
KERNELS: dict[str, np.ndarray] = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32),
    "box blur": np.full((3, 3), 1 / 9, dtype=np.float32),
    "gaussian blur": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
    "edge (Laplacian)": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32),
    "Sobel x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32),
    "Sobel y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32),
}


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution: ``floor((W + 2P - D(K-1) - 1) / S) + 1``.

    With ``D = 1`` this is the lecture's ``(W - K + 2P) / S + 1``, rounded down.
    """
    span = dilation * (kernel - 1) + 1
    if size + 2 * padding < span:
        raise ValueError(f"kernel span {span} is larger than the padded input {size + 2 * padding}")
    return (size + 2 * padding - span) // stride + 1


def same_padding(kernel: int, dilation: int = 1) -> int:
    """Padding that keeps the size at stride 1: ``P = D(K-1)/2`` (odd ``K``)."""
    if kernel % 2 == 0:
        raise ValueError(f"'same' padding needs an odd kernel, got {kernel}")
    return dilation * (kernel - 1) // 2


def conv_transpose_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """Output length of a transposed convolution: ``(W-1)S - 2P + D(K-1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def conv_params(c_in: int, c_out: int, kernel: int, bias: bool = True, groups: int = 1) -> int:
    """Parameters of a 2D convolution: ``C_out * (C_in/groups) * K * K`` weights (+ ``C_out`` biases)."""
    return c_out * (c_in // groups) * kernel * kernel + (c_out if bias else 0)


def _as_batch(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x)
    if x.ndim == 2:
        return x[None, None], True
    if x.ndim == 3:
        return x[None], True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"expected (H, W), (C, H, W) or (N, C, H, W), got shape {x.shape}")


def _as_weight(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    return w[None, None] if w.ndim == 2 else w


def conv2d_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                 stride: int = 1, padding: int = 0,
                 dilation: int = 1) -> np.ndarray:
    """Convolution with explicit loops: slow, every multiply-add visible.

    ``x``: (C, H, W) or (H, W); ``w``: (O, C, K, K) or (K, K).
    Returns (O, H', W').
    """
    xb, _ = _as_batch(x)
    x3, w4 = xb[0], _as_weight(w)
    c_out, c_in, kh, kw = w4.shape
    if x3.shape[0] != c_in:
        raise ValueError(f"input has {x3.shape[0]} channels, "
                         f"kernel expects {c_in}")
    xp = np.pad(x3, ((0, 0), (padding, padding), (padding, padding)))
    ho = conv_output_size(x3.shape[1], kh, stride, padding, dilation)
    wo = conv_output_size(x3.shape[2], kw, stride, padding, dilation)
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    out = np.zeros((c_out, ho, wo), dtype=np.result_type(x3, w4))
    for o in range(c_out):                  # every filter
        for i in range(ho):                 # every output row
            for j in range(wo):             # every output column
                r, c = i * stride, j * stride
                patch = xp[:, r:r + span_h:dilation, c:c + span_w:dilation]
                out[o, i, j] = np.sum(patch * w4[o])
                if b is not None:
                    out[o, i, j] += b[o]
    return out


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
           stride: int = 1, padding: int = 0, dilation: int = 1,
           groups: int = 1) -> np.ndarray:
    """Vectorized convolution (sliding windows + one ``einsum``).

    ``x``: (H, W), (C, H, W) or (N, C, H, W);
    ``w``: (K, K) or (O, C/groups, K, K). Returns (N, O, H', W'),
    or (O, H', W') when ``x`` had no batch axis — like ``F.conv2d``.
    """
    xb, single = _as_batch(x)
    w4 = _as_weight(w)
    n, c_in, h, wd = xb.shape
    c_out, c_grp, kh, kw = w4.shape
    if c_in != c_grp * groups or c_out % groups:
        raise ValueError(f"channels do not match: input {c_in}, "
                         f"kernel {w4.shape}, groups {groups}")
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    xp = np.pad(xb, pad)
    span = (dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    win = sliding_window_view(xp, span, axis=(2, 3))
    win = win[..., ::dilation, ::dilation]     # dilated taps only
    win = win[:, :, ::stride, ::stride]        # (N, C, H', W', K, K)
    ho, wo = win.shape[2:4]
    win = win.reshape(n, groups, c_grp, ho, wo, kh, kw)
    wg = w4.reshape(groups, c_out // groups, c_grp, kh, kw)
    # sum over input channels c and kernel taps i, j, per group g
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    out = out.reshape(n, c_out, ho, wo)
    if b is not None:
        out = out + np.asarray(b)[None, :, None, None]
    return out[0] if single else out


def conv_transpose2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0,
                     output_padding: int = 0) -> np.ndarray:
    """Transposed convolution as the lecture draws it: put ``S-1`` zeros between input pixels,
    pad by ``K-1-P``, then convolve with the flipped kernel.

    ``x``: (C_in, H, W); ``w``: (C_in, C_out, K, K) as in ``F.conv_transpose2d``.
    """
    x = np.asarray(x)
    c_in, h, wd = x.shape
    k = w.shape[-1]
    up = np.zeros((c_in, (h - 1) * stride + 1, (wd - 1) * stride + 1), dtype=x.dtype)
    up[:, ::stride, ::stride] = x
    pad = k - 1 - padding
    if pad < 0:
        raise ValueError(f"padding {padding} must be at most K-1 = {k - 1}")
    up = np.pad(up, ((0, 0), (pad, pad + output_padding), (pad, pad + output_padding)))
    flipped = np.flip(np.asarray(w), axis=(2, 3)).transpose(1, 0, 2, 3)  # (C_out, C_in, K, K)
    return conv2d(up, flipped)


def pool2d(x: np.ndarray, kernel: int = 2, stride: int | None = None, mode: str = "max") -> np.ndarray:
    """Max or average pooling of (C, H, W) or (N, C, H, W), each channel on its own."""
    xb, single = _as_batch(x)
    stride = stride or kernel
    win = sliding_window_view(xb, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    if mode == "max":
        out = win.max(axis=(-2, -1))
    elif mode == "avg":
        out = win.mean(axis=(-2, -1))
    else:
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    return out[0] if single else out


def receptive_field(layers: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Receptive field and jump after each layer, for layers given as ``(K, S[, D])``.

    ``r_l = r_{l-1} + D (K - 1) j_{l-1}`` and ``j_l = j_{l-1} S``, starting from ``r_0 = j_0 = 1``.
    Pooling layers count as ``(K, S)`` too.
    """
    r, j, out = 1, 1, []
    for layer in layers:
        k, s, d = (*layer, 1)[:3]
        r += d * (k - 1) * j
        j *= s
        out.append((r, j))
    return out


def empirical_receptive_field(model: nn.Module, channels: int = 1, size: int = 65) -> int:
    """Width of the input region that influences the centre output pixel, found with autograd."""
    x = torch.zeros(1, channels, size, size, requires_grad=True)
    y = model(x)
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    assert x.grad is not None  # x requires grad and reached y
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0)
    if len(cols) and (cols.min() == 0 or cols.max() == size - 1):
        raise ValueError(f"receptive field reaches the border of a {size}-pixel input; use a larger size")
    return int(cols.max() - cols.min() + 1) if len(cols) else 0


def relative_change(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """``||a - b|| / ||a||``: how much a representation moved."""
    a, b = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t, dtype=np.float64) for t in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))
