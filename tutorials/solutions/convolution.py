"""Notebook 02: convolution with loops, im2col, and the backward pass."""
import numpy as np


def as_pair(v):
    """stride or padding: an int, or a pair (along H, along W)."""
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d_forward(x, w, b, stride, padding):
    """Naive loops: x (N, C, H, W), w (F, C, KH, KW) -> (N, F, OH, OW)."""
    (sh, sw), (ph, pw) = as_pair(stride), as_pair(padding)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]   # (N, C, KH, KW)
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def conv2d_backward(dout, x, w, b, stride, padding):
    (sh, sw), (ph, pw) = as_pair(stride), as_pair(padding)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    _, _, oh, ow = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(oh):
        for j in range(ow):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            d = dout[:, :, i, j]                                           # (N, F)
            dw += np.tensordot(d, xp[:, :, rows, cols], axes=([0], [0]))   # (F, C, KH, KW)
            dxp[:, :, rows, cols] += np.tensordot(d, w, axes=([1], [0]))   # (N, C, KH, KW)
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]
    return dx, dw, dout.sum(axis=(0, 2, 3))


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW): rows (c, i, j), columns (n, oh, ow)."""
    n, c, h, wd = x.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride].transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * oh * ow)
