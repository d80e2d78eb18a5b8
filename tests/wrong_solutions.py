"""Known-wrong solutions to the tutorial exercises, the mistakes learners
make, each with the words its checker's message must contain.

WRONG: a list of (checker name, wrong function, expected text). Most are a
reference solution with one thing changed, written the way a learner would
get it wrong.
"""
import numpy as np

from tutorials.solutions import backprop, batchnorm, convolution, resnets
from minires import functional as F

WRONG = []


def wrong(checker, expected):
    def register(fn):
        WRONG.append((checker, fn, expected))
        return fn
    return register


# ------------------------------------------------------------------ linear
wrong("check_linear_backward", "transposed weights")(lambda d, x, w: (d @ w, x.T @ d, d.sum(0)))
wrong("check_linear_backward", "sum dout over the batch")(lambda d, x, w: (d @ w, d.T @ x, d))
wrong("check_linear_backward", "no 1/N in dw")(lambda d, x, w: (d @ w, d.T @ x / len(x), d.sum(0)))
wrong("check_linear_backward", "a sum over the batch, not a mean")(lambda d, x, w: (d @ w, d.T @ x, d.mean(0)))
wrong("check_linear_backward", "sum without keepdims")(lambda d, x, w: (d @ w, d.T @ x, d.sum(0, keepdims=True)))
wrong("check_linear_backward", "returned 2 values; expected 3")(lambda d, x, w: (d @ w, d.T @ x))
wrong("check_linear_backward", "raised ValueError")(lambda d, x, w: (d @ w.T, d.T @ x, d.sum(0)))


# ------------------------------------------------------------------ relu
@wrong("check_relu_backward", "modified dout in place")
def relu_in_place(dout, x):
    dout[x <= 0] = 0
    return dout


wrong("check_relu_backward", "not x >= 0")(lambda d, x: d * (x >= 0))
wrong("check_relu_backward", "multiply the mask by dout")(lambda d, x: (x > 0).astype(float))
wrong("check_relu_backward", "comes from the forward input x")(lambda d, x: d * (d > 0))
wrong("check_relu_backward", "returned the forward output")(lambda d, x: np.maximum(x, 0))
wrong("check_relu_backward", "a missing return")(lambda d, x: None)
wrong("check_relu_backward", "is a list")(lambda d, x: (d * (x > 0)).tolist())


# ------------------------------------------------------------------ softmax cross-entropy
def _probs(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _grad(z, y):
    d = _probs(z)
    d[np.arange(len(y)), y] -= 1
    return d / len(y)


wrong("check_softmax_cross_entropy", "forgot the 1/N")(
    lambda z, y: (backprop.softmax_cross_entropy(z, y)[0], _grad(z, y) * len(y)))


@wrong("check_softmax_cross_entropy", "subtract the row maximum before exp")
def softmax_without_max(z, y):
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    return -np.log(p[np.arange(len(y)), y]).mean(), d / len(y)


@wrong("check_softmax_cross_entropy", "compute log-probabilities directly")
def softmax_log_of_probability(z, y):
    p = _probs(z)
    return -np.log(p[np.arange(len(y)), y]).mean(), _grad(z, y)


wrong("check_softmax_cross_entropy", "not the sum")(
    lambda z, y: (backprop.softmax_cross_entropy(z, y)[0] * len(y), _grad(z, y)))
wrong("check_softmax_cross_entropy", "wrong sign")(lambda z, y: (backprop.softmax_cross_entropy(z, y)[0], -_grad(z, y)))
wrong("check_softmax_cross_entropy", "subtract 1 at each row's label")(
    lambda z, y: (backprop.softmax_cross_entropy(z, y)[0], _probs(z) / len(y)))


@wrong("check_softmax_cross_entropy", "pick one entry per row")
def softmax_block_of_labels(z, y):
    s = z - z.max(axis=1, keepdims=True)
    log_p = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return -log_p[:, y].mean(), _grad(z, y)


@wrong("check_softmax_cross_entropy", "not one value per row")
def softmax_per_row_loss(z, y):
    s = z - z.max(axis=1, keepdims=True)
    log_p = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y], _grad(z, y)


@wrong("check_softmax_cross_entropy", "normalises each row")
def softmax_over_columns(z, y):
    s = z - z.max(axis=0, keepdims=True)
    log_p = s - np.log(np.exp(s).sum(axis=0, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean(), _grad(z, y)


# ------------------------------------------------------------------ SGD
wrong("check_sgd_momentum_step", "keeps lr out of the velocity")(
    lambda p, g, v, lr, m, wd: (p - lr * (m * v + lr * (g + wd * p)), m * v + lr * (g + wd * p)))
wrong("check_sgd_momentum_step", "keeps lr out of the velocity")(
    lambda p, g, v, lr, m, wd: (p - (m * v + lr * (g + wd * p)), m * v + lr * (g + wd * p)))
wrong("check_sgd_momentum_step", "add weight decay to the gradient first")(
    lambda p, g, v, lr, m, wd: (p - lr * (m * v + g), m * v + g))
wrong("check_sgd_momentum_step", "decoupled")(
    lambda p, g, v, lr, m, wd: (p - lr * (m * v + g) - lr * wd * p, m * v + g))
wrong("check_sgd_momentum_step", "no (1 - momentum) factor")(
    lambda p, g, v, lr, m, wd: (p - lr * (m * v + (1 - m) * (g + wd * p)), m * v + (1 - m) * (g + wd * p)))
wrong("check_sgd_momentum_step", "Nesterov")(
    lambda p, g, v, lr, m, wd: (p - lr * (g + wd * p + m * (m * v + g + wd * p)), m * v + g + wd * p))
wrong("check_sgd_momentum_step", "in that order")(
    lambda p, g, v, lr, m, wd: backprop.sgd_momentum_step(p, g, v, lr, m, wd)[::-1])
wrong("check_sgd_momentum_step", "plus, not minus")(
    lambda p, g, v, lr, m, wd: (p - lr * (m * v + g - wd * p), m * v + g - wd * p))


@wrong("check_sgd_momentum_step", "modified its argument param in place")
def sgd_in_place(param, grad, velocity, lr, momentum, weight_decay):
    velocity = momentum * velocity + grad + weight_decay * param
    param -= lr * velocity
    return param, velocity


# ------------------------------------------------------------------ conv forward
wrong("check_conv2d_forward", "flipped the kernel")(
    lambda x, w, b, s, p: convolution.conv2d_forward(x, w[:, :, ::-1, ::-1], b, s, p))
wrong("check_conv2d_forward", "add the bias")(
    lambda x, w, b, s, p: convolution.conv2d_forward(x, w, np.zeros_like(b), s, p))


def _conv_loops(x, w, b, stride, padding, size, start):
    (sh, sw), (ph, pw) = convolution.as_pair(stride), convolution.as_pair(padding)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = size(h, kh, sh, ph), size(wd, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r, q = start(i, sh), start(j, sw)
            window = xp[:, :, r:r + kh, q:q + kw]
            if window.shape[2:] != (kh, kw):
                window = np.pad(window, ((0, 0), (0, 0), (0, kh - window.shape[2]), (0, kw - window.shape[3])))
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


wrong("check_conv2d_forward", "rounds DOWN")(lambda x, w, b, s, p: _conv_loops(
    x, w, b, s, p, lambda a, k, s_, p_: -(-(a + 2 * p_ - k) // s_) + 1, lambda i, s_: i * s_))
wrong("check_conv2d_forward", "the stride is missing")(lambda x, w, b, s, p: _conv_loops(
    x, w, b, s, p, lambda a, k, s_, p_: (a + 2 * p_ - k) // s_ + 1, lambda i, s_: i))
wrong("check_conv2d_forward", "must count the padding")(lambda x, w, b, s, p: _conv_loops(
    x, w, b, s, 0, lambda a, k, s_, p_: (a - k) // s_ + 1, lambda i, s_: i * s_))


@wrong("check_conv2d_forward", "as pairs (along H, along W)")
def conv_ints_only(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


wrong("check_conv2d_forward", "swapped")(lambda x, w, b, s, p: convolution.conv2d_forward(
    x, w, b, convolution.as_pair(s)[::-1], convolution.as_pair(p)[::-1]))


# ------------------------------------------------------------------ conv backward
wrong("check_conv2d_backward", "dw is flipped")(lambda d, x, w, b, s, p: (lambda r: (r[0], r[1][:, :, ::-1, ::-1], r[2]))(
    convolution.conv2d_backward(d, x, w, b, s, p)))


def _conv_backward(dout, x, w, stride, padding, assign=False, crop=True, stride_in_dx=True, flip_dx=False):
    (sh, sw), (ph, pw) = convolution.as_pair(stride), convolution.as_pair(padding)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    wx = w[:, :, ::-1, ::-1] if flip_dx else w
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            d = dout[:, :, i, j]
            dw += np.tensordot(d, xp[:, :, rows, cols], axes=([0], [0]))
            if not stride_in_dx:
                rows, cols = slice(i, i + kh), slice(j, j + kw)
            if assign:
                dxp[:, :, rows, cols] = np.tensordot(d, wx, axes=([1], [0]))
            else:
                dxp[:, :, rows, cols] += np.tensordot(d, wx, axes=([1], [0]))
    dx = dxp[:, :, ph:ph + h, pw:pw + wd] if crop else dxp
    return dx, dw, dout.sum(axis=(0, 2, 3))


wrong("check_conv2d_backward", "add (+=)")(lambda d, x, w, b, s, p: _conv_backward(d, x, w, s, p, assign=True))
wrong("check_conv2d_backward", "crop the padding")(lambda d, x, w, b, s, p: _conv_backward(d, x, w, s, p, crop=False))
wrong("check_conv2d_backward", "stride is missing in backward")(
    lambda d, x, w, b, s, p: _conv_backward(d, x, w, s, p, stride_in_dx=False))
wrong("check_conv2d_backward", "dx used the flipped kernel")(
    lambda d, x, w, b, s, p: _conv_backward(d, x, w, s, p, flip_dx=True))
wrong("check_conv2d_backward", "db sums dout over N, OH and OW")(
    lambda d, x, w, b, s, p: _conv_backward(d, x, w, s, p)[:2] + (d.sum(axis=0),))
wrong("check_conv2d_backward", "no 1/N in dw")(
    lambda d, x, w, b, s, p: (lambda r: (r[0], r[1] / len(x), r[2]))(_conv_backward(d, x, w, s, p)))


# ------------------------------------------------------------------ im2col
def _six(x, kh, kw, s, p):
    """The right answer as (C, KH, KW, N, OH, OW)."""
    n, c, h, wd = x.shape
    oh, ow = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1
    return convolution.im2col(x, kh, kw, s, p).reshape(c, kh, kw, n, oh, ow)


wrong("check_im2col", "transposed")(lambda x, kh, kw, s, p: convolution.im2col(x, kh, kw, s, p).T)
wrong("check_im2col", "yours go (kh, kw, c)")(
    lambda x, kh, kw, s, p: _six(x, kh, kw, s, p).transpose(1, 2, 0, 3, 4, 5).reshape(x.shape[1] * kh * kw, -1))
wrong("check_im2col", "yours go (c, kw, kh)")(
    lambda x, kh, kw, s, p: _six(x, kh, kw, s, p).transpose(0, 2, 1, 3, 4, 5).reshape(x.shape[1] * kh * kw, -1))
wrong("check_im2col", "yours go (oh, ow, n)")(
    lambda x, kh, kw, s, p: _six(x, kh, kw, s, p).transpose(0, 1, 2, 4, 5, 3).reshape(x.shape[1] * kh * kw, -1))
wrong("check_im2col", "reshape to 2-D")(lambda x, kh, kw, s, p: _six(x, kh, kw, s, p))
wrong("check_im2col", "the padding is missing")(lambda x, kh, kw, s, p: convolution.im2col(x, kh, kw, s, 0))
wrong("check_im2col", "dtype float32")(lambda x, kh, kw, s, p: convolution.im2col(x, kh, kw, s, p).astype(np.float32))


# ------------------------------------------------------------------ batchnorm
def _bn(dout, x, gamma, rm, rv, training, eps, ddof=0, terms=2, dgamma_raw=False):
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = (x.mean(axis=axes), x.var(axis=axes) * m / (m - ddof)) if training else (rm, rv)
    rstd = 1 / np.sqrt(var + eps)[None, :, None, None]
    xhat = (x - mean[None, :, None, None]) * rstd
    dxhat = dout * gamma[None, :, None, None]
    dx = dxhat
    if training and terms >= 1:
        dx = dx - dxhat.mean(axis=axes, keepdims=True)
    if training and terms >= 2:
        dx = dx - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    dgamma = dout.sum(axis=axes) if dgamma_raw else (dout * xhat).sum(axis=axes)
    return dx * rstd, dgamma, dout.sum(axis=axes)


wrong("check_batchnorm_backward", "used batch statistics")(
    lambda d, x, g, b, rm, rv, t, eps: batchnorm.batchnorm_backward(d, x, g, b, rm, rv, True, eps))
wrong("check_batchnorm_backward", "correction terms")(
    lambda d, x, g, b, rm, rv, t, eps: _bn(d, x, g, rm, rv, t, eps, terms=0))
wrong("check_batchnorm_backward", "but not the variance's")(
    lambda d, x, g, b, rm, rv, t, eps: _bn(d, x, g, rm, rv, t, eps, terms=1))
wrong("check_batchnorm_backward", "biased batch variance")(
    lambda d, x, g, b, rm, rv, t, eps: _bn(d, x, g, rm, rv, t, eps, ddof=1))
wrong("check_batchnorm_backward", "include eps")(lambda d, x, g, b, rm, rv, t, eps: _bn(d, x, g, rm, rv, t, 0.0))
wrong("check_batchnorm_backward", "dx carries gamma")(
    lambda d, x, g, b, rm, rv, t, eps: (_bn(d, x, np.ones_like(g), rm, rv, t, eps)[0],) + _bn(d, x, g, rm, rv, t, eps)[1:])
wrong("check_batchnorm_backward", "multiply by the normalised input xhat")(
    lambda d, x, g, b, rm, rv, t, eps: _bn(d, x, g, rm, rv, t, eps, dgamma_raw=True))
wrong("check_batchnorm_backward", "the result has shape (C,)")(
    lambda d, x, g, b, rm, rv, t, eps: (lambda r: (r[0], r[1][None, :, None, None], r[2]))(_bn(d, x, g, rm, rv, t, eps)))


@wrong("check_batchnorm_backward", "modified its argument running_mean in place")
def bn_updates_running_stats(dout, x, gamma, beta, running_mean, running_var, training, eps):
    if training:
        running_mean *= 0.9
        running_mean += 0.1 * x.mean(axis=(0, 2, 3))
    return batchnorm.batchnorm_backward(dout, x, gamma, beta, running_mean, running_var, training, eps) \
        if not training else _bn(dout, x, gamma, running_mean, running_var, training, eps)


# ------------------------------------------------------------------ max pool
def _pool(dout, x, k, s, winner="first", assign=False):
    n, c, oh, ow = dout.shape
    dx = np.zeros_like(x)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = x[ni, ci, i * s:i * s + k, j * s:j * s + k]
                    if winner == "all":
                        dx[ni, ci, i * s:i * s + k, j * s:j * s + k] += dout[ni, ci, i, j] * (win == win.max())
                        continue
                    if winner == "spread":
                        dx[ni, ci, i * s:i * s + k, j * s:j * s + k] += dout[ni, ci, i, j]
                        continue
                    if winner == "average":
                        dx[ni, ci, i * s:i * s + k, j * s:j * s + k] += dout[ni, ci, i, j] / (k * k)
                        continue
                    best = None
                    for a in range(k):
                        for b in range(k):
                            if best is None or win[a, b] > win[best] or (winner == "last" and win[a, b] == win[best]):
                                best = (a, b)
                    if assign:
                        dx[ni, ci, i * s + best[0], j * s + best[1]] = dout[ni, ci, i, j]
                    else:
                        dx[ni, ci, i * s + best[0], j * s + best[1]] += dout[ni, ci, i, j]
    return dx


wrong("check_max_pool_backward", "add (+=)")(lambda d, x, k, s: _pool(d, x, k, s, assign=True))
wrong("check_max_pool_backward", "yours gave it to the last")(lambda d, x, k, s: _pool(d, x, k, s, winner="last"))
wrong("check_max_pool_backward", "every tied pixel")(lambda d, x, k, s: _pool(d, x, k, s, winner="all"))
wrong("check_max_pool_backward", "only to the pixel that won")(lambda d, x, k, s: _pool(d, x, k, s, winner="spread"))
wrong("check_max_pool_backward", "average pooling's backward")(lambda d, x, k, s: _pool(d, x, k, s, winner="average"))
wrong("check_max_pool_backward", "the shape of x")(lambda d, x, k, s: d.copy())


# ------------------------------------------------------------------ dropout
wrong("check_dropout", "1/(1-p)")(lambda x, p, t, rng: x * (rng.random(x.shape) >= p) if t else x)
wrong("check_dropout", "probability to DROP")(lambda x, p, t, rng: x * (rng.random(x.shape) < p) / (1 - p) if t else x)
wrong("check_dropout", "never from np.random")(
    lambda x, p, t, rng: x * (np.random.random(x.shape) >= p) / (1 - p) if t else x)
wrong("check_dropout", "creating a new one inside")(
    lambda x, p, t, rng: x * (np.random.default_rng(0).random(x.shape) >= p) / (1 - p) if t else x)
wrong("check_dropout", "do not multiply")(lambda x, p, t, rng: x * (rng.random(x.shape) >= p) * (1 - p) if t else x)
wrong("check_dropout", "not 1/p")(lambda x, p, t, rng: x * (rng.random(x.shape) >= p) / p if t else x)
wrong("check_dropout", "dropout is the identity")(lambda x, p, t, rng: x * (rng.random(x.shape) >= p) / (1 - p))


@wrong("check_dropout", "modified its argument x in place")
def dropout_in_place(x, p, training, rng):
    if training:
        x *= (rng.random(x.shape) >= p) / (1 - p)
    return x


# ------------------------------------------------------------------ residual
wrong("check_residual_backward", "both branches")(lambda d, bb, sb: bb(d))
wrong("check_residual_backward", "both branches")(lambda d, bb, sb: sb(d))
wrong("check_residual_backward", "use its own backward")(lambda d, bb, sb: bb(d) + d)
wrong("check_residual_backward", "not multiplied")(lambda d, bb, sb: bb(d) * sb(d))
wrong("check_residual_backward", "one branch's result into the other")(lambda d, bb, sb: sb(bb(d)))


@wrong("check_residual_backward", "modified dout in place")
def residual_in_place(dout, branch_backward, shortcut_backward):
    dx = shortcut_backward(dout)      # the identity shortcut returns dout itself...
    dx += branch_backward(dout)       # ...so this adds into dout
    return dx


# ------------------------------------------------------------------ basic block
@wrong("check_basic_block_backward", "shortcut's gradient is missing")
def block_without_shortcut(block, dout):
    d = F.relu_backward(dout, block.post_relu_output)
    return block.conv1.backward(block.bn1.backward(block.conv2.backward(block.bn2.backward(d))))


@wrong("check_basic_block_backward", "start with the ReLU after the add")
def block_without_final_relu(block, dout):
    d_branch = block.conv1.backward(block.bn1.backward(block.conv2.backward(block.bn2.backward(dout))))
    return d_branch + block.shortcut.backward(dout)


@wrong("check_basic_block_backward", "both the branch and the shortcut get the masked gradient")
def block_shortcut_unmasked(block, dout):
    d = F.relu_backward(dout, block.post_relu_output)
    d_branch = block.conv1.backward(block.bn1.backward(block.conv2.backward(block.bn2.backward(d))))
    return d_branch + block.shortcut.backward(dout)


@wrong("check_basic_block_backward", "4->4 stride 1 shortcut A: dx differs at")
def block_wrong_order(block, dout):
    d = F.relu_backward(dout, block.post_relu_output)
    d_branch = block.bn2.backward(block.conv1.backward(block.bn1.backward(block.conv2.backward(d))))
    return d_branch + block.shortcut.backward(d)


wrong("check_basic_block_backward", "a missing return")(lambda block, dout: (resnets.basic_block_backward(block, dout), None)[1])
