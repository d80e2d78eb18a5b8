"""The tutorial exercises solved a second way (loops where the reference
solutions in tutorials/solutions/ are vectorised, vectorised where they loop):
every checker must accept both styles."""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def linear_backward(dout, x, w):
    n, m = dout.shape
    d = x.shape[1]
    dx, dw, db = np.zeros((n, d)), np.zeros((m, d)), np.zeros(m)
    for i in range(n):
        for j in range(m):
            db[j] += dout[i, j]
            for k in range(d):
                dx[i, k] += dout[i, j] * w[j, k]
                dw[j, k] += dout[i, j] * x[i, k]
    return dx, dw, db


def relu_backward(dout, x):
    dx = np.zeros_like(dout)
    for i in np.ndindex(x.shape):
        if x[i] > 0:
            dx[i] = dout[i]
    return dx


def softmax_cross_entropy(logits, labels):
    n, k = logits.shape
    loss, d = 0.0, np.zeros_like(logits)
    for i in range(n):
        top = max(logits[i])
        log_sum = math.log(sum(math.exp(z - top) for z in logits[i]))
        loss -= (logits[i, labels[i]] - top - log_sum) / n
        for j in range(k):
            d[i, j] = (math.exp(logits[i, j] - top - log_sum) - (j == labels[i])) / n
    return loss, d


def sgd_momentum_step(param, grad, velocity, lr, momentum, weight_decay):
    new_p, new_v = np.empty_like(param), np.empty_like(velocity)
    for i in np.ndindex(param.shape):
        new_v[i] = momentum * velocity[i] + grad[i] + weight_decay * param[i]
        new_p[i] = param[i] - lr * new_v[i]
    return new_p, new_v


def _pairs(stride, padding):
    return tuple((v, v) if isinstance(v, int) else tuple(v) for v in (stride, padding))


def _windows(x, kh, kw, stride, padding):
    """-> (N, C, OH, OW, KH, KW) views of the zero-padded x."""
    (sh, sw), (ph, pw) = _pairs(stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def conv2d_forward(x, w, b, stride, padding):
    win = _windows(x, *w.shape[2:], stride, padding)
    return np.einsum("nchwij,fcij->nfhw", win, w) + b[None, :, None, None]


def conv2d_backward(dout, x, w, b, stride, padding):
    (sh, sw), (ph, pw) = _pairs(stride, padding)
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh, ow = dout.shape[2:]
    dw = np.einsum("nchwij,nfhw->fcij", _windows(x, kh, kw, stride, padding), dout)
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    for i in range(kh):           # one kernel tap at a time, all positions at once
        for j in range(kw):
            dxp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += np.einsum("nfhw,fc->nchw", dout, w[:, :, i, j])
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, dout.sum(axis=(0, 2, 3))


def im2col(x, kh, kw, stride, padding):
    n, c, h, wd = x.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    cols = np.zeros((c * kh * kw, n * oh * ow))
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                for ni in range(n):
                    for a in range(oh):
                        for b_ in range(ow):
                            r, q = a * stride + i - padding, b_ * stride + j - padding
                            if 0 <= r < h and 0 <= q < wd:
                                cols[(ci * kh + i) * kw + j, (ni * oh + a) * ow + b_] = x[ni, ci, r, q]
    return cols


def batchnorm_backward(dout, x, gamma, beta, running_mean, running_var, training, eps):
    c = x.shape[1]
    dx, dgamma, dbeta = np.empty_like(x), np.empty(c), np.empty(c)
    for k in range(c):
        xc, dc = x[:, k], dout[:, k]
        mean, var = (xc.mean(), xc.var()) if training else (running_mean[k], running_var[k])
        rstd = 1 / math.sqrt(var + eps)
        xhat = (xc - mean) * rstd
        dbeta[k], dgamma[k] = dc.sum(), (dc * xhat).sum()
        dxhat = dc * gamma[k]
        if training:
            dx[:, k] = rstd * (dxhat - dxhat.mean() - xhat * (dxhat * xhat).mean())
        else:
            dx[:, k] = rstd * dxhat
    return dx, dgamma, dbeta


def max_pool_backward(dout, x, kernel_size, stride):
    k = kernel_size
    n, c, oh, ow = dout.shape
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :oh, :ow]
    arg = win.reshape(n, c, oh, ow, k * k).argmax(axis=-1)          # the first maximum wins ties
    rows = np.arange(oh)[:, None] * stride + arg // k                 # (N, C, OH, OW)
    cols = np.arange(ow)[None, :] * stride + arg % k
    nn_, cc = np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None]
    dx = np.zeros_like(x)
    np.add.at(dx, (nn_, cc, rows, cols), dout)
    return dx


def dropout(x, p, training, rng):
    if not training:
        return x.copy()
    keep = rng.binomial(1, 1 - p, size=x.shape)
    return x * keep / (1 - p)


def residual_backward(dout, branch_backward, shortcut_backward):
    dx = np.zeros_like(dout)
    for path in (branch_backward, shortcut_backward):
        dx += path(dout)
    return dx


def basic_block_backward(block, dout):
    d = dout * (block.post_relu_output > 0)            # the ReLU after the add
    d_branch = block.bn2.backward(d)
    d_branch = block.conv2.backward(d_branch)
    d_branch = block.bn1.backward(d_branch)            # BN and its ReLU, fused
    d_branch = block.conv1.backward(d_branch)
    return d_branch + block.shortcut.backward(d)
