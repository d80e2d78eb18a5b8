"""2-D convolution (cross-correlation, as in PyTorch) by im2col + matrix multiply.

Each receptive field of x is unfolded into a column (im2col), so the
convolution becomes one matrix product per image:
    out[n] = w2 @ cols[n],   w2 = w.reshape(F, C*KH*KW)
The backward pass is two more products and col2im, im2col's adjoint.
"""
import numpy as np

from .. import kernels
from ._checks import check_float_array, check_shape, check_window, pair


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """x: (N, C, H, W), w: (F, C, KH, KW), b: (F,) or None -> out: (N, F, OH, OW).

    stride, padding: an int or a pair (along H, along W).
    OH = (H + 2*PH - KH) // SH + 1, and likewise OW.
    """
    check_float_array(x, "x", 4, "N, C, H, W")
    check_float_array(w, "w", 4, "F, C, KH, KW", dtype=x.dtype)
    n, c, h, wd = x.shape
    f, wc, kh, kw = w.shape
    if wc != c:
        raise ValueError(f"w must have shape (F, C, KH, KW) with C = {c} (x's channels), got {w.shape}")
    if b is not None:
        check_float_array(b, "b", dtype=x.dtype)
        check_shape(b, "b", (f,), "F")
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    check_window(h, wd, (kh, kw), (sh, sw), (ph, pw), name="kernel (KH, KW)")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1

    cols = kernels.im2col(x, kh, kw, sh, sw, ph, pw)   # (N, C*KH*KW, OH*OW)
    w2 = w.reshape(f, c * kh * kw)                     # (F, C*KH*KW)
    out = np.matmul(w2, cols)                          # (N, F, OH*OW)
    if b is not None:
        out += b[:, None]
    out = out.reshape(n, f, oh, ow)
    cache = (cols, w, x.shape, (sh, sw), (ph, pw), b is not None)
    return out, cache


def conv2d_backward(dout, cache):
    """dout: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (F, C, KH, KW), db: (F,) or None."""
    cols, w, (n, c, h, wd), (sh, sw), (ph, pw), has_bias = cache
    f, _, kh, kw = w.shape
    d2 = dout.reshape(n, f, -1)                        # (N, F, OH*OW)
    w2 = w.reshape(f, c * kh * kw)                     # (F, C*KH*KW)
    # dw sums every image's (F, OH*OW) @ (OH*OW, C*KH*KW) product.
    dw = np.einsum("nfp,nkp->fk", d2, cols, optimize=True).reshape(w.shape)
    dcols = np.matmul(w2.T, d2)                        # (N, C*KH*KW, OH*OW)
    dx = kernels.col2im(dcols, c, h, wd, kh, kw, sh, sw, ph, pw)
    db = d2.sum(axis=(0, 2)) if has_bias else None
    return dx, dw, db
