"""The kernels in plain NumPy: the readable spec and the test oracle.

Every function here has a twin of the same name and signature in
``_kernels.pyx``. Tests run both on generated shapes and demand equal
results; ``MINIRES_PURE=1`` makes the library use these instead.

Shape vocabulary: N batch, C channels, H/W input height/width,
KH/KW kernel height/width, OH/OW output height/width.
The column layout is ``cols[(c, kh, kw), (n, oh, ow)]``, i.e. shape
(C*KH*KW, N*OH*OW): one column per output position of the whole batch, so
a convolution is one large matrix product ``w2 @ cols`` with w2 of shape
(F, C*KH*KW), which BLAS runs far better than N small ones.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def output_size(size, kernel, stride, padding):
    """Output length of a sliding window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def _windows(xp, kh, kw, sh, sw):
    """View of every (KH, KW) window of a padded batch.

    xp: (N, C, HP, WP) -> view of shape (N, C, OH, OW, KH, KW); no copy.
    """
    return sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def im2col(x, kh, kw, sh, sw, ph, pw):
    """Unfold every receptive field of x into a column.

    x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW)
    """
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(xp, kh, kw, sh, sw)                  # (N, C, OH, OW, KH, KW)
    cols = win.transpose(1, 4, 5, 0, 2, 3)              # (C, KH, KW, N, OH, OW)
    return np.ascontiguousarray(cols).reshape(c * kh * kw, n * oh * ow)


def col2im(cols, c, h, w, kh, kw, sh, sw, ph, pw):
    """The adjoint of im2col: scatter-add every column back to its pixels.

    cols: (C*KH*KW, N*OH*OW) -> x: (N, C, H, W). Where windows overlap,
    contributions add; padding positions are dropped.
    """
    oh, ow = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    n = cols.shape[1] // (oh * ow)
    cols6 = cols.reshape(c, kh, kw, n, oh, ow)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # (C, N, OH, OW) -> (N, C, OH, OW), added to every position (i, j) reached
            xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols6[:, i, j].transpose(1, 0, 2, 3)
    return xp[:, :, ph:ph + h, pw:pw + w].copy()


def max_pool_forward(x, kh, kw, sh, sw, ph, pw):
    """Max over each window; padding never wins (it is -inf).

    x: (N, C, H, W) -> out: (N, C, OH, OW) and argmax: (N, C, OH, OW) int64,
    the flat index kh*KW + kw of the winner inside its window (first on ties).
    """
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    win = _windows(xp, kh, kw, sh, sw)                  # (N, C, OH, OW, KH, KW)
    flat = win.reshape(win.shape[:4] + (kh * kw,))      # (N, C, OH, OW, KH*KW)
    argmax = flat.argmax(axis=-1)
    out = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    return out.astype(x.dtype), argmax.astype(np.int64)


def max_pool_backward(dout, argmax, h, w, kh, kw, sh, sw, ph, pw):
    """Route each output gradient to the input pixel that won its window.

    dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    n, c, oh, ow = dout.shape
    onehot = np.zeros((n, c, kh * kw, oh, ow), dtype=dout.dtype)
    np.put_along_axis(onehot, argmax[:, :, None], dout[:, :, None], axis=2)
    cols = onehot.transpose(1, 2, 0, 3, 4).reshape(c * kh * kw, n * oh * ow)
    return col2im(cols, c, h, w, kh, kw, sh, sw, ph, pw)
