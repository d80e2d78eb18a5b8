"""The convolution of small feature maps as one matrix product per kernel tap.

With the input laid out as xt = (H, W, N, C) (every pixel a matrix of
images x channels) and w[:, :, i, j] the (F, C) matrix of tap (i, j), the
convolution is a sum over the taps:

    out[oh, ow] += xt[oh*SH + i - PH, ow*SW + j - PW] @ w[:, :, i, j].T     ((N, C) @ (C, F) -> (N, F))

over the output positions whose input pixel lies inside the image. The
outputs whose window hangs over the zero padding just skip that tap: no
product with zeros is ever made. On the maps at the end of an ImageNet
ResNet applied to 32x32 images this is most of the work im2col would do: a
3x3 conv with padding 1 on a 1x1 map has one useful tap of nine, on a 2x2
map 16 useful (position, tap) pairs of 36. The backward pass runs the same
loop with the two other products of each tap:

    dw[:, :, i, j] += dout[outputs].T @ xt[inputs]      dx[inputs] += dout[outputs] @ w[:, :, i, j]

Each tap is one product whose rows are all the images at all its output
positions, long enough for BLAS. The layout changes (NCHW to (H, W, N, C)
and back) copy arrays that are small on such maps.

Skipping a padded product differs from multiplying by zero only when a
weight (forward) or a dout value (backward) is inf or NaN, where 0 * inf is
NaN; such calls take im2col instead (_conv_paths), so NaN reaches the same
outputs as in PyTorch.
"""
import numpy as np


def _inside(k, stride, pad, size_in, size_out):
    """(lo, hi): the output positions o in [lo, hi) whose tap-k input
    o*stride + k - pad lies inside [0, size_in); lo >= hi when none does."""
    shift = k - pad
    lo = 0 if shift >= 0 else (-shift + stride - 1) // stride
    hi = 0 if size_in <= shift else min(size_out, (size_in - shift - 1) // stride + 1)
    return lo, hi


def taps(geometry, in_size, out_size):
    """The useful taps: (i, j, output rows, output columns, input rows, input
    columns) as slices, for every tap that reads at least one pixel."""
    kh, kw, sh, sw, ph, pw = geometry
    (h, w), (oh, ow) = in_size, out_size
    found = []
    for i in range(kh):
        r0, r1 = _inside(i, sh, ph, h, oh)
        for j in range(kw):
            c0, c1 = _inside(j, sw, pw, w, ow)
            if r0 < r1 and c0 < c1:
                rows_in = slice(r0 * sh + i - ph, (r1 - 1) * sh + i - ph + 1, sh)
                cols_in = slice(c0 * sw + j - pw, (c1 - 1) * sw + j - pw + 1, sw)
                found.append((i, j, slice(r0, r1), slice(c0, c1), rows_in, cols_in))
    return found


def to_pixels(a):
    """(N, C, H, W) -> (H, W, N, C), contiguous."""
    return np.ascontiguousarray(a.transpose(2, 3, 0, 1))


def forward(x, w_taps, useful, out_shape):
    """x: (N, C, H, W), w_taps {(i, j): w[:, :, i, j] as an (F, C) matrix} and
    useful from taps for the useful taps (the others are never read), out_shape
    (F, OH, OW) -> out as (OH, OW, N, F) (zero where every tap reads padding)."""
    xt = to_pixels(x)
    f, oh, ow = out_shape
    out = np.zeros((oh, ow, x.shape[0], f), dtype=x.dtype)
    for i, j, rows, cols, rows_in, cols_in in useful:
        block = out[rows, cols]                                     # (R, Q, N, F), a view
        block += (xt[rows_in, cols_in].reshape(-1, xt.shape[3]) @ w_taps[i, j].T).reshape(block.shape)
    return out


def backward(dout, x, w_taps, useful, input_grad=True):
    """dout: (N, F, OH, OW), x: (N, C, H, W) -> dx as (H, W, N, C) (None when
    not input_grad) and dw_taps (T, F, C): dw[:, :, i, j] for each useful tap,
    in the order of useful (the other taps' gradient is zero)."""
    xt, dt = to_pixels(x), to_pixels(dout)
    c, f = xt.shape[3], dt.shape[3]
    dxt = np.zeros(xt.shape, dtype=x.dtype) if input_grad else None
    dw_taps = np.empty((len(useful), f, c), dtype=x.dtype)
    for k, (i, j, rows, cols, rows_in, cols_in) in enumerate(useful):
        d = dt[rows, cols].reshape(-1, f)                           # (R*Q*N, F)
        np.matmul(d.T, xt[rows_in, cols_in].reshape(-1, c), out=dw_taps[k])     # (F, C)
        if input_grad:
            block = dxt[rows_in, cols_in]                           # (R, Q, N, C), a view
            block += (d @ w_taps[i, j]).reshape(block.shape)
    return dxt, dw_taps
