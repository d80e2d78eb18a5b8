"""Pooling: max (the gradient goes to the winner), average (it is shared
evenly across the window) and global average (over the whole image)."""
import numpy as np

from .. import kernels
from ._checks import check_float_array, check_window, pair


def _pool_geometry(x, kernel_size, stride, padding):
    check_float_array(x, "x", 4, "N, C, H, W")
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size {k}, got {p}")
    check_window(x.shape[2], x.shape[3], k, s, p)
    return k, s, p


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out: (N, C, OH, OW). stride defaults to kernel_size;
    padding counts as -inf, so it never wins."""
    (kh, kw), (sh, sw), (ph, pw) = _pool_geometry(x, kernel_size, stride, padding)
    out, argmax = kernels.max_pool_forward(x, kh, kw, sh, sw, ph, pw)
    return out, (argmax, x.shape, (kh, kw, sh, sw, ph, pw))


def max_pool2d_backward(dout, cache):
    """dout: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    argmax, (n, c, h, w), geometry = cache
    return kernels.max_pool_backward(dout, argmax, h, w, *geometry)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out: (N, C, OH, OW). Zero padding is counted in the
    average (PyTorch's count_include_pad=True)."""
    (kh, kw), (sh, sw), (ph, pw) = _pool_geometry(x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    # Every channel is pooled alike: treat it as an image of one channel.
    cols = kernels.im2col(x.reshape(n * c, 1, h, w), kh, kw, sh, sw, ph, pw)  # (KH*KW, N*C*OH*OW)
    out = cols.mean(axis=0).reshape(n, c, oh, ow)
    return out, (x.shape, (kh, kw, sh, sw, ph, pw))


def avg_pool2d_backward(dout, cache):
    """dout: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    (n, c, h, w), (kh, kw, sh, sw, ph, pw) = cache
    share = dout.reshape(1, -1) / dout.dtype.type(kh * kw)                    # (1, N*C*OH*OW)
    dcols = np.broadcast_to(share, (kh * kw, share.shape[1]))
    dx = kernels.col2im(dcols, 1, h, w, kh, kw, sh, sw, ph, pw)               # (N*C, 1, H, W)
    return dx.reshape(n, c, h, w)


def global_avg_pool2d_forward(x):
    """x: (N, C, H, W) -> out: (N, C), the mean of each channel."""
    check_float_array(x, "x", 4, "N, C, H, W")
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool2d_backward(dout, cache):
    """dout: (N, C) -> dx: (N, C, H, W), each pixel gets 1/(H*W) of its channel's gradient."""
    n, c, h, w = cache
    share = dout[:, :, None, None] / dout.dtype.type(h * w)
    return np.broadcast_to(share, (n, c, h, w)).copy()
