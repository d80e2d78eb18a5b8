"""Pooling: max (the gradient goes to the winner), average (it is shared
evenly across the window) and global average (over the whole image)."""
from typing import NamedTuple

import numpy as np

from .. import kernels
from ._checks import as_input, check_dout, check_window, pair


class MaxPoolCache(NamedTuple):
    argmax: np.ndarray      # (N, C, OH, OW) int64: the winner's index KH*KW-flat in its window
    x_shape: tuple          # (N, C, H, W)
    dtype: np.dtype
    geometry: tuple         # (KH, KW, SH, SW, PH, PW)


class AvgPoolCache(NamedTuple):
    x_shape: tuple          # (N, C, H, W)
    dtype: np.dtype
    geometry: tuple         # (KH, KW, SH, SW, PH, PW)


def _pool_geometry(x, kernel_size, stride, padding):
    """-> (x C-contiguous, (KH, KW, SH, SW, PH, PW), (N, C, OH, OW))."""
    x = as_input(x, "x", 4, "N, C, H, W")
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size {k}, got {p}")
    n, c, h, w = x.shape
    check_window(h, w, k, s, p)
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    return x, k + s + p, (n, c, oh, ow)


def _out_shape(x_shape, geometry):
    (n, c, h, w), (kh, kw, sh, sw, ph, pw) = x_shape, geometry
    return n, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out: (N, C, OH, OW). stride defaults to kernel_size;
    padding counts as -inf, so it never wins. As in PyTorch, the first maximum
    of a window wins a tie, and a NaN in a window wins over any number (the
    last NaN, where there are several)."""
    x, geometry, _ = _pool_geometry(x, kernel_size, stride, padding)
    out, argmax = kernels.max_pool_forward(x, *geometry)
    return out, MaxPoolCache(argmax, x.shape, x.dtype, geometry)


def max_pool2d_backward(dout, cache):
    """dout: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    dout = check_dout(dout, cache.argmax.shape, cache.dtype, "N, C, OH, OW")
    h, w = cache.x_shape[2:]
    return kernels.max_pool_backward(dout, cache.argmax, h, w, *cache.geometry)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out: (N, C, OH, OW). Zero padding is counted in the
    average (PyTorch's count_include_pad=True)."""
    x, geometry, (n, c, oh, ow) = _pool_geometry(x, kernel_size, stride, padding)
    kh, kw = geometry[:2]
    # Every channel is pooled alike: treat it as an image of one channel.
    cols = kernels.im2col(x.reshape(n * c, 1, *x.shape[2:]), *geometry)   # (KH*KW, N*C*OH*OW)
    out = cols.mean(axis=0).reshape(n, c, oh, ow)
    return out, AvgPoolCache(x.shape, x.dtype, geometry)


def avg_pool2d_backward(dout, cache):
    """dout: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    dout = check_dout(dout, _out_shape(cache.x_shape, cache.geometry), cache.dtype, "N, C, OH, OW")
    n, c, h, w = cache.x_shape
    kh, kw = cache.geometry[:2]
    share = dout.reshape(1, -1) / dout.dtype.type(kh * kw)                  # (1, N*C*OH*OW)
    dcols = np.repeat(share, kh * kw, axis=0)                               # (KH*KW, N*C*OH*OW)
    dx = kernels.col2im(dcols, 1, h, w, *cache.geometry)                     # (N*C, 1, H, W)
    return dx.reshape(n, c, h, w)


def global_avg_pool2d_forward(x):
    """x: (N, C, H, W) -> out: (N, C), the mean of each channel."""
    x = as_input(x, "x", 4, "N, C, H, W")
    return x.mean(axis=(2, 3)), AvgPoolCache(x.shape, x.dtype, None)


def global_avg_pool2d_backward(dout, cache):
    """dout: (N, C) -> dx: (N, C, H, W), each pixel gets 1/(H*W) of its channel's gradient."""
    n, c, h, w = cache.x_shape
    dout = check_dout(dout, (n, c), cache.dtype, "N, C")
    share = dout[:, :, None, None] / dout.dtype.type(h * w)
    return np.broadcast_to(share, (n, c, h, w)).copy()
