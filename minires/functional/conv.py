"""2-D convolution (cross-correlation, as in PyTorch).

With xp = x zero-padded by PH rows and PW columns on each side:

    out[n, f, oh, ow] = b[f] + sum over c, i, j of w[f, c, i, j] * xp[n, c, oh*SH + i, ow*SW + j]

Every output value is a dot product of the kernel w[f] with one window of
the input, so its gradient goes back to that window and to the kernel:

    db[f]                         = sum over n, oh, ow of dout[n, f, oh, ow]
    dw[f, c, i, j]                = sum over n, oh, ow of dout[n, f, oh, ow] * xp[n, c, oh*SH + i, ow*SW + j]
    dxp[n, c, oh*SH + i, ow*SW + j] += dout[n, f, oh, ow] * w[f, c, i, j]   (then drop the padding)

In matrix form: im2col unfolds every window into a column, cols of shape
(C*KH*KW, N*OH*OW), and with w2 = w.reshape(F, C*KH*KW):

    out2 = w2 @ cols,    dw2 = dout2 @ cols.T,    dcols = w2.T @ dout2,  dx = col2im(dcols)

where col2im, the adjoint of im2col, adds each column back onto its window.
conv2d_forward_numpy and conv2d_backward_numpy below are exactly that, in
NumPy. conv2d_forward and conv2d_backward compute the same numbers faster:
_conv_paths.py picks the algorithm (one product per kernel tap on small
maps, 1x1 products, a direct kernel, im2col in tiles of images) and splits the batch across threads; tests hold every
path to the NumPy form and to a four-loop version (_kernels_ref.conv_naive_*).
"""
from typing import NamedTuple

import numpy as np

from .. import _kernels_ref, kernels
from . import _conv_paths
from ._checks import as_input, check_channel_params, check_dout, check_shape, check_window, pair


class ConvCache(NamedTuple):
    x: np.ndarray           # (N, C, H, W); for a 1x1 conv the strided input it read, (N, C, OH*OW)
    w: np.ndarray           # (F, C, KH, KW)
    geometry: tuple         # (KH, KW, SH, SW, PH, PW)
    has_bias: bool
    x_shape: tuple          # (N, C, H, W)
    out_shape: tuple        # (N, F, OH, OW)
    path: str               # the algorithm forward used: "taps", "pointwise", "winograd", "direct" or "im2col"
    relu_out: np.ndarray    # (N, F, OH, OW), the output when a ReLU was fused on (its mask); else None


def conv2d_forward(x, w, b=None, stride=1, padding=0, relu=False, kept=None):
    """x: (N, C, H, W), w: (F, C, KH, KW), b: (F,) or None -> out: (N, F, OH, OW).

    stride, padding: an int or a pair (along H, along W).
    OH = (H + 2*PH - KH) // SH + 1, and likewise OW.
    relu=True returns max(out, 0) from the same pass (a conv with batch norm
    folded in and a ReLU after it, see nn.fuse_for_inference); backward then
    first zeroes dout where that output is <= 0, as relu_backward does.
    kept: None, or a dict the caller keeps with a read-only w (a folded
    model's conv does): the fast paths keep there what they derive from w
    (Winograd's transformed kernels, the direct kernel's tiled weights, the
    path each input shape takes) instead of deriving it on every call.
    Writeable weights may change between calls, so they ignore it. Speed only:
    the outputs are the same either way, within float32 rounding.
    """
    x, w, b, geometry = _check_args(x, w, b, stride, padding)
    # = w2 @ im2col(x) + b, as (N, F, OH, OW), then the ReLU
    out, saved, path = _conv_paths.forward(x, w, geometry, b, relu, kept=kept)
    return out, ConvCache(saved, w, geometry, b is not None, x.shape, out.shape, path, out if relu else None)


def conv2d_backward(dout, cache, input_grad=True):
    """dout: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (F, C, KH, KW), db: (F,) or None.
    input_grad=False: dx is not computed (None)."""
    dout = check_dout(dout, cache.out_shape, cache.w.dtype, "N, F, OH, OW")
    if cache.relu_out is not None:
        dout = kernels.relu_grad(dout, cache.relu_out)          # through the fused ReLU first
    dx, dw = _conv_paths.backward(dout, cache, input_grad)      # col2im(w2.T @ dout2), dout2 @ cols.T
    db = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw, db


def conv2d_output(cache):
    """The output (N, F, OH, OW) of the forward that made `cache`, computed
    again: bit for bit the same values (the same path on the same input and
    weights). It lets the batch norm after a conv keep no copy of its input
    between forward and backward (see nn.recompute). Only for a conv without
    bias or fused ReLU, whose cache holds all that its forward read."""
    if cache.has_bias or cache.relu_out is not None:
        raise ValueError("conv2d_output needs the cache of a conv without bias or fused ReLU")
    x, w, geometry, path = cache.x, cache.w, cache.geometry, cache.path
    if path == "pointwise":     # the cache holds the strided input it read: a stride-1 1x1 conv of it
        n, f, oh, ow = cache.out_shape
        x, geometry = x.reshape(n, x.shape[1], oh, ow), (1, 1, 1, 1, 0, 0)
    return _conv_paths.forward(x, w, geometry, path=path)[0]


def conv2d_batchnorm_eval(x, w, b, stride, padding, gamma, beta, running_mean, running_var, eps=1e-5,
                          relu=False, relu_before=False):
    """x: (N, C, H, W), w: (F, C, KH, KW), b: (F,) or None; gamma, beta,
    running_mean, running_var: (F,) -> out: (N, F, OH, OW), equal to

        batchnorm2d_forward(conv2d_forward(x, w, b, stride, padding)[0], gamma, beta,
                            running_mean, running_var, training=False, eps=eps)[0]

    (then max(., 0) if relu; with relu_before, the batch norm reads
    max(conv, 0), as in a conv, ReLU, BN stack) in one pass. In eval mode a batch norm is a fixed
    affine map per channel, so the conv applies it to each value as it writes
    its output, with the very floats and operations batchnorm2d_forward uses:
    the same numbers, and the activation written once instead of written,
    read and written again. Inference only: there is no cache to backpropagate
    through. (nn.fuse_for_inference instead folds the batch norm into w and b
    for good, which rounds differently.)
    """
    x, w, b, geometry = _check_args(x, w, b, stride, padding)
    check_channel_params(w.shape[0], "F", gamma, beta, running_mean, running_var)
    rstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    # in x's dtype, as batchnorm2d_forward's kernel takes them
    bn = (np.asarray(running_mean, dtype=np.float64), rstd, np.ascontiguousarray(gamma, dtype=x.dtype),
          np.ascontiguousarray(beta, dtype=x.dtype), bool(relu_before))
    return _conv_paths.forward(x, w, geometry, b, relu, bn=bn)[0]


def conv2d_forward_numpy(x, w, b=None, stride=1, padding=0):
    """conv2d_forward (without relu) in plain NumPy, one product for the whole batch
    (slow, memory-hungry, readable). Returns (out, cache) for conv2d_backward_numpy."""
    x, w, b, geometry = _check_args(x, w, b, stride, padding)
    n, f = x.shape[0], w.shape[0]
    cols = _kernels_ref.im2col(x, *geometry)                   # (C*KH*KW, N*OH*OW)
    out2 = w.reshape(f, -1) @ cols                             # (F, N*OH*OW)
    kh, kw, sh, sw, ph, pw = geometry
    oh, ow = _kernels_ref.output_size(x.shape[2], kh, sh, ph), _kernels_ref.output_size(x.shape[3], kw, sw, pw)
    out = out2.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)     # (N, F, OH, OW)
    if b is not None:
        out = out + b[:, None, None]
    return np.ascontiguousarray(out), (x, w, geometry, cols)


def conv2d_backward_numpy(dout, cache):
    """conv2d_backward in plain NumPy -> dx, dw, db."""
    x, w, geometry, cols = cache
    n, c, h, wd = x.shape
    f = w.shape[0]
    dout2 = dout.transpose(1, 0, 2, 3).reshape(f, -1)          # (F, N*OH*OW)
    dw = (dout2 @ cols.T).reshape(w.shape)                     # (F, C, KH, KW)
    dx = _kernels_ref.col2im(w.reshape(f, -1).T @ dout2, c, h, wd, *geometry)   # (N, C, H, W)
    return dx, dw, dout.sum(axis=(0, 2, 3))


def _check_args(x, w, b, stride, padding):
    """-> x, w, b (C-contiguous) and geometry (KH, KW, SH, SW, PH, PW), or a
    ValueError/TypeError naming the argument."""
    x = as_input(x, "x", 4, "N, C, H, W")
    w = as_input(w, "w", 4, "F, C, KH, KW", dtype=x.dtype)
    n, c, h, wd = x.shape
    f, wc, kh, kw = w.shape
    if wc != c:
        raise ValueError(f"w must have shape (F, C, KH, KW) with C = {c} (x's channels), got {w.shape}")
    if b is not None:
        b = as_input(b, "b", dtype=x.dtype)
        check_shape(b, "b", (f,), "F")
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    check_window(h, wd, (kh, kw), (sh, sw), (ph, pw), name="kernel (KH, KW)")
    return x, w, b, (kh, kw, sh, sw, ph, pw)
