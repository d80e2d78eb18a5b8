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


def im2col(x, kh, kw, sh, sw, ph, pw, threads=0):
    """Unfold every receptive field of x into a column.

    x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW). threads: ignored here.
    """
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(xp, kh, kw, sh, sw)                  # (N, C, OH, OW, KH, KW)
    cols = win.transpose(1, 4, 5, 0, 2, 3)              # (C, KH, KW, N, OH, OW)
    return np.ascontiguousarray(cols).reshape(c * kh * kw, n * oh * ow)


def col2im(cols, c, h, w, kh, kw, sh, sw, ph, pw, threads=0):
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


# ---------------------------------------------------------------- direct convolution
# The algorithm of the compiled direct kernels, in NumPy. No columns: each
# image is padded once, its stride phases are split into planes (one plane
# for stride 1), and each plane is flattened with row pitch WQ. On that flat
# grid, output position p = oh*WQ + ow reads tap (c, i, j) at p + a shift
# that depends on the tap alone, so a convolution is a sum of KH*KW*C
# shifted whole-plane reads. Positions with ow >= OW are junk (they wrap
# into the next row) and are dropped. The compiled kernel does the same with
# register tiles and several small images per grid.


def _phase_planes(x, kh, kw, sh, sw, ph, pw):
    """x: (C, H, W) -> (planes (C*SH*SW, L) flat, pitch WQ, taps (C*KH*KW,) shifts)."""
    c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))               # (C, HP, WP)
    hq, wq = -(-xp.shape[1] // sh), -(-xp.shape[2] // sw)      # rows, pitch of a phase plane
    planes = np.zeros((c, sh, sw, hq + kh, wq), dtype=x.dtype)  # + KH rows: room for every shift
    for a in range(sh):
        for b in range(sw):
            phase = xp[:, a::sh, b::sw]
            planes[:, a, b, :phase.shape[1], :phase.shape[2]] = phase
    ci, i, j = np.ix_(np.arange(c), np.arange(kh), np.arange(kw))
    plane_of_tap = (ci * sh + i % sh) * sw + j % sw
    shift = plane_of_tap * planes[0, 0, 0].size + (i // sh) * wq + j // sw
    return planes.reshape(-1), wq, shift.reshape(-1)


def direct_weights(w, threads=1):
    """w as conv_direct_forward reads it: here w itself (the compiled twin
    reorders it for its register tiles)."""
    return np.ascontiguousarray(w)


def conv_direct_forward(x, w, out, sh, sw, ph, pw, bias=None, relu=False, threads=1, bn=None, wt=None):
    """x: (T, C, H, W), w: (F, C, KH, KW) -> out: (T, F, OH, OW), written in place;
    bias (F,) or None added, then bn and relu applied when asked (as bias_relu
    does; the compiled kernel as the rows are written). threads, and wt
    (direct_weights(w), which spares the compiled kernel its tiling): ignored here."""
    f, oh, ow = out.shape[1:]
    w2 = w.reshape(f, -1)                                        # (F, C*KH*KW)
    for n in range(x.shape[0]):
        flat, wq, shift = _phase_planes(x[n], *w.shape[2:], sh, sw, ph, pw)
        p = np.arange(oh * wq)                                   # grid positions, junk included
        grid = w2 @ flat[shift[:, None] + p]                     # (F, OH*WQ): taps as shifted reads
        out[n] = grid.reshape(f, oh, wq)[:, :, :ow]
    bias_relu(out, bias, relu, bn=bn)


# ---------------------------------------------------------------- Winograd convolution
# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016) for 3x3,
# stride-1, padding-1 convolutions on maps of even height and width. The
# padded image is cut into 4x4 tiles d, one every 2 pixels; each gives a
# 2x2 block of the output
#     Y = AT [ sum over c of (G g G^T)[f, c] * (BT d[c] BT^T) ] AT^T
# with g the 3x3 kernel. The brackets are 16 independent matrix products
# (one per element of the 4x4 transformed tile) of the transformed weights
# (F, C) with the transformed tiles (C, tiles): 16 multiplications for four
# outputs where the direct sum takes 36. The transforms only add and
# subtract (G halves), so float32 rounding stays near the direct sum's.
WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def winograd_weights(w):
    """w: (F, C, 3, 3) -> the transformed kernels G w G^T as (16, F, C)
    (the compiled twin orders them for its register tiles)."""
    g = WINOGRAD_G.astype(w.dtype)
    with np.errstate(invalid="ignore", over="ignore"):   # a non-finite w: the conv reports it
        return (g @ w @ g.T).transpose(2, 3, 0, 1).reshape(16, *w.shape[:2])


def _winograd_tiles(x):
    """x: (N, C, H, W) -> V = BT d BT^T for every 4x4 tile d of the padded
    images, one every 2 pixels, as (16, C, N*H/2*W/2)."""
    c = x.shape[1]
    bt = WINOGRAD_BT.astype(x.dtype)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    d = sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2]   # (N, C, H/2, W/2, 4, 4) tiles
    with np.errstate(invalid="ignore", over="ignore"):   # inf - inf: the callers report it
        return (bt @ d @ bt.T).transpose(4, 5, 1, 0, 2, 3).reshape(16, c, -1)


def conv_winograd_forward(x, u, out, bias=None, relu=False, bn=None, threads=1):
    """x: (N, C, H, W) with H and W even, u = winograd_weights(w) for w (F, C,
    3, 3) -> out: (N, F, H, W), written in place: the stride-1, padding-1
    convolution, bias (F,) or None added, then bn and relu applied when asked
    (bias_relu). -> False if an output before them was inf or NaN, else True.
    threads: ignored here."""
    n, c, h, wd = x.shape
    f = out.shape[1]
    at = WINOGRAD_AT.astype(x.dtype)
    v = _winograd_tiles(x)                                              # (16, C, tiles)
    with np.errstate(invalid="ignore", over="ignore"):   # inf - inf: reported below, not warned
        m = (u @ v).reshape(4, 4, f, n, h // 2, wd // 2)               # the 16 products
        y = at @ m.transpose(3, 2, 4, 5, 0, 1) @ at.T                   # (N, F, H/2, W/2, 2, 2)
    out[...] = y.transpose(0, 1, 2, 4, 3, 5).reshape(n, f, h, wd)
    finite = bool(np.isfinite(out).all())
    bias_relu(out, bias, relu, bn=bn)
    return finite


def conv_winograd_backward_weight(x, dout):
    """x: (N, C, H, W) with H and W even, dout: (N, F, H, W) -> dw: (F, C, 3, 3)
    of the stride-1, padding-1 convolution, summed over the images. The
    forward pass is linear in U, so dU = sum over tiles of (A dY A^T) * V
    (A = AT^T, dY a 2x2 block of dout): 16 products that sum over the
    tiles; then dw = G^T dU G, the adjoint of U = G w G^T."""
    n, c, h, wd = x.shape
    f = dout.shape[1]
    at, g = WINOGRAD_AT.astype(x.dtype), WINOGRAD_G.astype(x.dtype)
    v = _winograd_tiles(x)                                                     # (16, C, tiles)
    dy = dout.reshape(n, f, h // 2, 2, wd // 2, 2).transpose(0, 1, 2, 4, 3, 5)   # (N, F, H/2, W/2, 2, 2)
    with np.errstate(invalid="ignore", over="ignore"):   # inf - inf: the caller checks dw
        dm = (at.T @ dy @ at).transpose(4, 5, 1, 0, 2, 3).reshape(16, f, -1)   # (16, F, tiles)
        du = (dm @ v.transpose(0, 2, 1)).reshape(4, 4, f, c)                   # the 16 products
        return (g.T @ du.transpose(2, 3, 0, 1) @ g).astype(x.dtype, copy=False)


def tap_weights(w, taps=None):
    """w: (F, C, KH, KW) -> (wt (T, F, C), finite): wt[k] = w[:, :, i, j], the
    (F, C) matrix of kernel tap (i, j) (_conv_taps) for taps[k] = i*KW + j (all
    KH*KW taps by default), and whether every weight is finite."""
    f, c, kh, kw = w.shape
    taps = list(range(kh * kw)) if taps is None else list(taps)
    wt = np.ascontiguousarray(w.reshape(f, c, kh * kw).transpose(2, 0, 1)[taps])
    return wt, bool(np.isfinite(w).all())


def matmul(a, b, out, threads=0):
    """out[...] = a @ b; a: (M, K), b: (K, N), out: (M, N). threads: ignored
    here. The compiled kernel shares the rows of such a product between the
    threads (one image's small maps, where a BLAS call runs on one)."""
    np.matmul(a, b, out=out)


def bias_relu(out, bias, relu, threads=0, bn=None):
    """In place, per channel: out += bias (F,); then, when bn is (mean, rstd,
    gamma, beta, relu_before) of an eval-mode batch norm, out =
    batchnorm_apply(out, ...), after max(out, 0) when relu_before (a conv's
    epilogue: the batch norm that reads its output, in the same pass); then
    out = max(out, 0) if relu. out: (N, F, ...), bias (F,) or None."""
    if bias is not None:
        out += bias.reshape((-1,) + (1,) * (out.ndim - 2))
    if bn is not None:
        *stats, relu_before = bn
        if relu_before:
            np.maximum(out, 0, out=out)
        out[...] = _normalised(out, *stats)
    if relu:
        np.maximum(out, 0, out=out)     # NaN stays NaN, as in PyTorch's ReLU


def conv_direct_backward_weight(x, dout, kh, kw, sh, sw, ph, pw):
    """x: (T, C, H, W), dout: (T, F, OH, OW) -> dw: (F, C, KH, KW), summed over
    the images: dw[f, tap] = sum over p of dout_grid[f, p] * plane[shift[tap] + p]."""
    f, oh, ow = dout.shape[1:]
    dw = np.zeros((f, x.shape[1] * kh * kw), dtype=x.dtype)
    for n in range(x.shape[0]):
        flat, wq, shift = _phase_planes(x[n], kh, kw, sh, sw, ph, pw)
        dgrid = np.zeros((f, oh, wq), dtype=x.dtype)             # junk columns: zero gradient
        dgrid[:, :, :ow] = dout[n]
        p = np.arange(oh * wq)
        dw += dgrid.reshape(f, -1) @ flat[shift[:, None] + p].T
    return dw.reshape(f, x.shape[1], kh, kw)


# ---------------------------------------------------------------- the loops
# The convolution as a learner first writes it: four loops, one window at a
# time. Far too slow to train with; the oracle the fast paths answer to.
def conv_naive_forward(x, w, b, sh, sw, ph, pw):
    """x: (N, C, H, W), w: (F, C, KH, KW), b: (F,) or None -> out: (N, F, OH, OW)."""
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = output_size(h, kh, sh, ph), output_size(wd, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, f, oh, ow), dtype=x.dtype)
    for i in range(n):
        for k in range(f):
            for r in range(oh):
                for c in range(ow):
                    window = xp[i, :, r * sh:r * sh + kh, c * sw:c * sw + kw]   # (C, KH, KW)
                    out[i, k, r, c] = np.sum(window * w[k]) + (b[k] if b is not None else 0)
    return out


def conv_naive_backward(dout, x, w, sh, sw, ph, pw):
    """dout: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (F, C, KH, KW), db: (F,).
    Each output value was sum(window * w[k]) + b[k]: its gradient flows back
    to that window (times w[k]) and to w[k] (times the window)."""
    n, f, oh, ow = dout.shape
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(n):
        for k in range(f):
            for r in range(oh):
                for c in range(ow):
                    rows, cols = slice(r * sh, r * sh + kh), slice(c * sw, c * sw + kw)
                    dxp[i, :, rows, cols] += dout[i, k, r, c] * w[k]
                    dw[k] += dout[i, k, r, c] * xp[i, :, rows, cols]
    dx = dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return dx, dw, dout.sum(axis=(0, 2, 3))


def max_pool_forward(x, kh, kw, sh, sw, ph, pw):
    """Max over each window; padding never wins.

    x: (N, C, H, W) -> out: (N, C, OH, OW) and argmax: (N, C, OH, OW) int64,
    the flat index kh*KW + kw of the winner inside its window. As PyTorch:
    on ties the first maximum wins; a NaN wins over any number (the last
    NaN of the window, where there are several); a window of -inf picks
    its first pixel inside the image.
    """
    pad = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    xp = np.pad(x, pad, constant_values=-np.inf)
    inside = np.pad(np.ones(x.shape, dtype=bool), pad)  # False on the padding
    k = kh * kw
    flat = _windows(xp, kh, kw, sh, sw).reshape(-1, k)  # (N*C*OH*OW, KH*KW)
    valid = _windows(inside, kh, kw, sh, sw).reshape(-1, k)
    nan = np.isnan(flat)
    best = np.max(flat, axis=1, where=valid & ~nan, initial=-np.inf)
    first_best = np.argmax(valid & (flat == best[:, None]), axis=1)
    last_nan = k - 1 - np.argmax(nan[:, ::-1], axis=1)
    argmax = np.where(nan.any(axis=1), last_nan, first_best)
    out = flat[np.arange(len(flat)), argmax]
    shape = x.shape[:2] + (output_size(x.shape[2], kh, sh, ph), output_size(x.shape[3], kw, sw, pw))
    return out.reshape(shape).astype(x.dtype), argmax.reshape(shape).astype(np.int64)


def max_pool_backward(dout, argmax, h, w, kh, kw, sh, sw, ph, pw):
    """Route each output gradient to the input pixel that won its window.

    dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    n, c, oh, ow = dout.shape
    onehot = np.zeros((n, c, kh * kw, oh, ow), dtype=dout.dtype)
    np.put_along_axis(onehot, argmax[:, :, None], dout[:, :, None], axis=2)
    cols = onehot.transpose(1, 2, 0, 3, 4).reshape(c * kh * kw, n * oh * ow)
    return col2im(cols, c, h, w, kh, kw, sh, sw, ph, pw)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training, eps, relu=False):
    """x: (N, C, H, W) -> (out, mean (C,), var (C,)), mean and var in float64.

    training: normalise with the batch's mean and biased variance; otherwise
    with the running statistics (which this function does not update).
    relu: return max(out, 0) instead (a fused BN + ReLU).
    """
    axes = (0, 2, 3)
    if training:
        mean = x.mean(axis=axes, dtype=np.float64)
        var = ((x - mean[:, None, None]) ** 2).mean(axis=axes, dtype=np.float64)
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    return batchnorm_apply(x, mean, 1.0 / np.sqrt(var + eps), gamma, beta, relu), mean, var


def batchnorm_apply(x, mean, rstd, gamma, beta, relu=False):
    """x: (N, C, H, W), mean, rstd: (C,) float64 -> batchnorm_forward's output
    for these statistics: (x - mean) * (gamma * rstd) + beta, max(., 0) if relu."""
    out = _normalised(x, mean, rstd, gamma, beta)
    return np.maximum(out, 0) if relu else out


def _normalised(x, mean, rstd, gamma, beta):
    """(x - mean) * (gamma * rstd) + beta in x's dtype, per channel; x: (N, C, ...)."""
    def per_channel(a):                                         # (C, 1, ...) against x
        return np.asarray(a).reshape((-1,) + (1,) * (x.ndim - 2))
    scale = per_channel((gamma * rstd).astype(x.dtype))
    centred = x - per_channel(mean.astype(x.dtype))
    return (centred * scale + per_channel(beta)).astype(x.dtype, copy=False)


def batchnorm_backward(dout, x, mean, rstd, gamma, beta, training, relu=False):
    """-> dx, dgamma, dbeta. With xhat = (x - mean) * rstd and M = N*H*W:
    dgamma = sum(dout * xhat), dbeta = sum(dout), and
    dx = gamma * rstd * (dout - sum(dout)/M - xhat * sum(dout * xhat)/M) in training,
    dx = gamma * rstd * dout in evaluation (the statistics are constants).
    relu: for a fused BN + ReLU, dout first passes only where the output was > 0."""
    if relu:    # "<= 0 gives 0": where the output was NaN, the gradient passes (as PyTorch)
        dout = np.where(_normalised(x, mean, rstd, gamma, beta) <= 0, 0, dout).astype(x.dtype)
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    xhat = (x - mean[:, None, None]) * rstd[:, None, None]
    dbeta = dout.sum(axis=axes, dtype=np.float64)
    dgamma = (dout * xhat).sum(axis=axes, dtype=np.float64)
    if training:
        k1, k2 = dbeta / m, dgamma / m
        dx = (gamma * rstd)[:, None, None] * (dout - k1[:, None, None] - xhat * k2[:, None, None])
    else:       # no xhat term at all: an inf in x must not give 0 * inf = NaN
        dx = (gamma * rstd)[:, None, None] * dout
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def add_relu(a, b):
    """max(a + b, 0): the residual add and the ReLU after it."""
    return np.maximum(a + b, 0)


def relu(x):
    """max(x, 0), any shape."""
    return np.maximum(x, 0)


def relu_grad(dout, out):
    """0 where the output is <= 0, else the gradient (so it passes where the
    output is NaN, as in PyTorch); a new array."""
    return np.where(out <= 0, 0, dout).astype(out.dtype, copy=False)


def sgd_update(p, grad, buf, lr, momentum, weight_decay, nesterov):
    """One SGD step of a parameter, in place (minires.optim.SGD's update, as
    torch.optim.SGD with dampening 0): p, grad: the same shape; buf: the
    momentum buffer, or None before the first step -> the buffer (None without momentum)."""
    g = grad + weight_decay * p if weight_decay else grad
    if momentum:
        if buf is None:
            buf = g.copy()
        else:
            buf *= momentum
            buf += g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g
    return buf
