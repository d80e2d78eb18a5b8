"""Checkers for the tutorial exercises: pass your own function, get feedback.

Each check_<op>(fn) runs fn on several random shapes (stride, padding,
batch 1), compares it with minires's implementation, gradient-checks it in
float64 where it is a backward pass, prints a compact table (exact / close
/ max difference per output) and, on failure, raises AssertionError with a
hint aimed at the usual mistake.

    >>> from minires.exercises import check_relu_backward
    >>> check_relu_backward(my_relu_backward)       # doctest: +SKIP

The signature each checker expects is in its docstring.
"""
import copy

import numpy as np

from . import functional as F
from . import kernels
from .gradcheck import numerical_gradient, rel_error

RTOL = 1e-6


class _Report:
    """Rows of (case, output, exact, close, max difference), printed as a table."""

    def __init__(self, title):
        self.title, self.rows, self.failures = title, [], []

    def compare(self, case, name, mine, ref, tol=RTOL):
        mine = np.asarray(mine) if mine is not None else None
        if mine is None or mine.shape != np.shape(ref):
            got = None if mine is None else mine.shape
            self.rows.append((case, name, False, False, float("nan")))
            self.failures.append(f"{case}: {name} has shape {got}, expected {np.shape(ref)}")
            return False
        exact = bool(np.array_equal(mine, ref))
        err = rel_error(mine, ref)
        close = err < tol
        self.rows.append((case, name, exact, close, float(np.max(np.abs(mine - ref))) if mine.size else 0.0))
        if not close:
            self.failures.append(f"{case}: {name} differs (relative error {err:.2e})")
        return close

    def show(self):
        print(f"{self.title}")
        print(f"  {'case':<34} {'output':<8} {'exact':>5} {'close':>5} {'max diff':>10}")
        for case, name, exact, close, diff in self.rows:
            print(f"  {case:<34} {name:<8} {str(exact):>5} {str(close):>5} {diff:>10.2e}")

    def finish(self, hint=None):
        self.show()
        if self.failures:
            msg = "\n".join(self.failures[:4])
            raise AssertionError(f"{self.title}: FAILED\n{msg}" + (f"\nHint: {hint}" if hint else ""))
        print("  all cases passed")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _same(a, b):
    return a is not None and np.shape(a) == np.shape(b) and rel_error(a, b) < RTOL


# ------------------------------------------------------------------ linear
def check_linear_backward(fn):
    """fn(dout (N, M), x (N, D), w (M, D)) -> (dx (N, D), dw (M, D), db (M,)) for out = x @ w.T + b."""
    report, hint = _Report("check_linear_backward"), None
    rng = _rng()
    for n, d, m in [(4, 5, 3), (1, 3, 2), (7, 2, 6)]:
        case = f"N={n} D={d} M={m}"
        x, w, b = rng.standard_normal((n, d)), rng.standard_normal((m, d)), rng.standard_normal(m)
        _, cache = F.linear_forward(x, w, b)
        dout = rng.standard_normal((n, m))
        before = dout.copy()
        mine = fn(dout, x, w)
        ref = F.linear_backward(dout, cache)
        for name, a, r in zip(("dx", "dw", "db"), mine, ref):
            report.compare(case, name, a, r)
        if mine[1] is not None and np.shape(mine[1]) == (d, m):
            hint = "dw has shape (D, M): transposed weights. w is stored (M, D), so dw = dout.T @ x."
        elif mine[2] is not None and np.shape(mine[2]) == (n, m):
            hint = "db must sum dout over the batch: db = dout.sum(axis=0)."
        if not np.array_equal(dout, before):
            report.failures.append(f"{case}: dout was modified in place")
            hint = "never modify dout in place"
    report.finish(hint)


# ------------------------------------------------------------------ relu
def check_relu_backward(fn):
    """fn(dout, x) -> dx for out = max(x, 0), any shape."""
    report, hint = _Report("check_relu_backward"), None
    rng = _rng(1)
    for shape in [(2, 3, 4, 4), (1, 5), (6,)]:
        case = f"shape={shape}"
        x = rng.standard_normal(shape)
        dout = rng.standard_normal(shape)
        before = dout.copy()
        mine = fn(dout, x)
        ref = np.where(x > 0, dout, 0.0)
        report.compare(case, "dx", mine, ref)
        if _same(mine, np.where(x > 0, 1.0, 0.0)):
            hint = "multiply the mask by dout: the upstream gradient flows through, it is not replaced by 1."
        if not np.array_equal(dout, before):
            report.failures.append(f"{case}: dout was modified in place")
            hint = ("dout was modified in place (dout[x <= 0] = 0): at a residual fork the other "
                    "branch reads the same dout. Build a new array.")
    report.finish(hint)


# ------------------------------------------------------------------ softmax CE
def check_softmax_cross_entropy(fn):
    """fn(logits (N, K), labels (N,)) -> (mean loss: float, dlogits (N, K))."""
    report, hint = _Report("check_softmax_cross_entropy"), None
    rng = _rng(2)
    for n, k in [(5, 10), (1, 3), (8, 2)]:
        case = f"N={n} K={k}"
        logits = rng.standard_normal((n, k)) * 3
        labels = rng.integers(0, k, n)
        loss, dlogits = fn(logits, labels)
        ref_loss, cache = F.softmax_cross_entropy_forward(logits, labels)
        ref_d = F.softmax_cross_entropy_backward(cache)
        report.compare(case, "loss", np.float64(loss), np.float64(ref_loss))
        report.compare(case, "dlogits", dlogits, ref_d)
        if n > 1 and _same(dlogits, ref_d * n):
            hint = "forgot the 1/N: the loss is a mean over the batch, so is its gradient."
        if n > 1 and np.isclose(loss, ref_loss * n):
            hint = "the loss must be the mean over the batch, not the sum."
    big = np.array([[1000.0, 0.0, -1000.0]])
    loss, _ = fn(big, np.array([0]))
    if not np.isfinite(loss):
        report.failures.append("logits of size 1000 give a non-finite loss")
        hint = "subtract the row maximum before exp: softmax(z) = softmax(z - max(z))."
    report.finish(hint)


# ------------------------------------------------------------------ conv
CONV_CASES = [  # (N, C, H, W, F, KH, KW, stride, padding)
    (2, 3, 6, 6, 4, 3, 3, 1, 1),
    (1, 2, 7, 5, 3, 3, 3, 2, 1),
    (2, 1, 5, 8, 2, 2, 3, 1, 0),
    (3, 2, 4, 4, 2, 1, 1, 1, 0),
]


def _conv_cases(rng):
    """Yield (x, w, b, stride, padding, label) for each of CONV_CASES."""
    for n, c, h, w, f, kh, kw, s, p in CONV_CASES:
        x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, kh, kw)), rng.standard_normal(f)
        yield x, wt, b, s, p, f"x{x.shape} w{wt.shape} s={s} p={p}"


def check_conv2d_forward(fn):
    """fn(x (N, C, H, W), w (F, C, KH, KW), b (F,), stride: int, padding: int) -> out (N, F, OH, OW)."""
    report, hint = _Report("check_conv2d_forward"), None
    for x, w, b, s, p, label in _conv_cases(_rng(3)):
        mine = fn(x, w, b, s, p)
        ref, _ = F.conv2d_forward(x, w, b, s, p)
        report.compare(label, "out", mine, ref)
        if _same(mine, F.conv2d_forward(x, w[:, :, ::-1, ::-1].copy(), b, s, p)[0]):
            hint = "you flipped the kernel: deep-learning 'convolution' is cross-correlation (no flip)."
        elif _same(mine, ref - b[None, :, None, None]):
            hint = "add the bias b[f] to every output position of filter f."
        elif mine is not None and np.shape(mine) != ref.shape:
            hint = "OH = (H + 2*padding - KH) // stride + 1, and likewise OW (non-square shapes are tested)."
    report.finish(hint)


def check_conv2d_backward(fn):
    """fn(dout (N, F, OH, OW), x, w, b, stride, padding) -> (dx, dw, db) for conv2d_forward."""
    report, hint = _Report("check_conv2d_backward"), None
    rng = _rng(4)
    for x, w, b, s, p, label in _conv_cases(rng):
        out, cache = F.conv2d_forward(x, w, b, s, p)
        dout = rng.standard_normal(out.shape)
        before = dout.copy()
        mine = fn(dout, x, w, b, s, p)
        ref = F.conv2d_backward(dout, cache)
        for name, a, r in zip(("dx", "dw", "db"), mine, ref):
            report.compare(label, name, a, r)
        if not np.array_equal(dout, before):
            report.failures.append(f"{label}: dout was modified in place")
        # float64 gradient check of dx against the forward, at a few positions
        idx = rng.choice(x.size, size=min(8, x.size), replace=False)
        num = numerical_gradient(lambda: F.conv2d_forward(x, w, b, s, p)[0], x, dout, indices=idx)
        if mine[0] is not None and np.shape(mine[0]) == x.shape:
            report.compare(label, "gradchk", np.asarray(mine[0]).reshape(-1)[idx], num, tol=1e-6)
        if mine[1] is not None and np.shape(mine[1]) == w.shape and _same(mine[1], ref[1][:, :, ::-1, ::-1]):
            hint = "dw is flipped: dw[f, c, i, j] = sum over n, oh, ow of dout * x at (oh*s + i - p, ow*s + j - p)."
        elif mine[0] is not None and p and np.shape(mine[0]) == x.shape and not _same(mine[0], ref[0]):
            hint = ("check dx at the border: drop the gradient that falls on padding, and add (+=) "
                    "where windows overlap.")
    report.finish(hint)


def check_im2col(fn):
    """fn(x (N, C, H, W), kh, kw, stride: int, padding: int) -> cols (C*KH*KW, N*OH*OW),
    rows ordered (c, kh, kw), columns ordered (n, oh, ow)."""
    report, hint = _Report("check_im2col"), None
    for x, w, _, s, p, label in _conv_cases(_rng(5)):
        kh, kw = w.shape[2:]
        mine = fn(x, kh, kw, s, p)
        ref = kernels.im2col(x, kh, kw, s, s, p, p)
        report.compare(label, "cols", mine, ref, tol=1e-12)
        if mine is not None and np.shape(mine) == ref.shape[::-1]:
            hint = "cols is transposed: one COLUMN per output position, shape (C*KH*KW, N*OH*OW)."
        elif mine is not None and np.shape(mine) == ref.shape and not _same(mine, ref):
            hint = ("same shape, different order: rows go (c, kh, kw) with kw fastest, columns "
                    "(n, oh, ow) with ow fastest. A square-only test would miss a swapped KH/KW.")
    report.finish(hint)


# ------------------------------------------------------------------ batchnorm
def check_batchnorm_backward(fn):
    """fn(dout, x (N, C, H, W), gamma (C,), beta (C,), running_mean, running_var, training, eps)
    -> (dx, dgamma, dbeta). training=True normalises with batch statistics,
    training=False with the running ones."""
    report, hint = _Report("check_batchnorm_backward"), None
    rng = _rng(6)
    for shape in [(4, 3, 5, 5), (1, 2, 3, 4), (6, 4, 1, 1)]:
        c = shape[1]
        x = rng.standard_normal(shape) * 2 + 1
        gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
        rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
        for training in (True, False):
            label = f"x{shape} {'train' if training else 'eval'}"
            out, cache = F.batchnorm2d_forward(x, gamma, beta, rm.copy(), rv.copy(), training)
            dout = rng.standard_normal(shape)
            mine = fn(dout, x, gamma, beta, rm.copy(), rv.copy(), training, 1e-5)
            ref = F.batchnorm2d_backward(dout, cache)
            for name, a, r in zip(("dx", "dgamma", "dbeta"), mine, ref):
                report.compare(label, name, a, r)
            train_ref = F.batchnorm2d_backward(
                dout, F.batchnorm2d_forward(x, gamma, beta, rm.copy(), rv.copy(), True)[1])
            if not training and _same(mine[0], train_ref[0]):
                hint = ("in eval mode the mean and variance are the running statistics, constants: "
                        "dx = dout * gamma / sqrt(running_var + eps). You used batch statistics.")
            elif training and mine[0] is not None and np.shape(mine[0]) == shape:
                m = shape[0] * shape[2] * shape[3]
                dxhat = dout * gamma[:, None, None]
                naive = dxhat / np.sqrt(x.var(axis=(0, 2, 3)) + 1e-5)[:, None, None]
                if _same(mine[0], naive):
                    hint = ("in training the batch mean and variance depend on x: dx needs the two "
                            "correction terms, mean(dxhat) and xhat * mean(dxhat * xhat).")
                elif m > 1 and not _same(mine[0], ref[0]):
                    hint = hint or ("average over (N, H, W) for each channel: M = N*H*W values, "
                                    "and the 1/M must appear in both correction terms.")
    report.finish(hint)


# ------------------------------------------------------------------ max pool
def check_max_pool_backward(fn):
    """fn(dout (N, C, OH, OW), x (N, C, H, W), kernel_size: int, stride: int) -> dx."""
    report, hint = _Report("check_max_pool_backward"), None
    rng = _rng(7)
    for shape, k, s in [((2, 3, 6, 6), 2, 2), ((1, 2, 7, 5), 3, 2), ((2, 1, 5, 5), 3, 1)]:
        label = f"x{shape} k={k} s={s}"
        x = rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0   # distinct: no ties
        out, cache = F.max_pool2d_forward(x, k, s)
        dout = rng.standard_normal(out.shape)
        mine = fn(dout, x, k, s)
        ref = F.max_pool2d_backward(dout, cache)
        report.compare(label, "dx", mine, ref)
        if s < k and mine is not None and np.shape(mine) == shape and not _same(mine, ref):
            hint = ("windows overlap when stride < kernel: one pixel can win several windows, "
                    "so add (+=) its gradients rather than assign.")
        elif mine is not None and np.shape(mine) == shape and _same(
                mine, np.broadcast_to(ref.sum(axis=(2, 3), keepdims=True), shape)):
            hint = "route each gradient only to the pixel that won its window (the argmax)."
    report.finish(hint)


# ------------------------------------------------------------------ dropout
def check_dropout(fn):
    """fn(x, p, training, rng: numpy Generator) -> out (inverted dropout)."""
    report, hint = _Report("check_dropout"), None
    x = _rng(8).uniform(1, 2, (200, 50))
    for p in (0.2, 0.5):
        out = np.asarray(fn(x, p, True, np.random.default_rng(0)))
        again = np.asarray(fn(x, p, True, np.random.default_rng(0)))
        kept = out != 0
        frac = 1 - kept.mean()
        label = f"p={p}"
        report.rows.append((label, "drop %", abs(frac - p) < 0.02, abs(frac - p) < 0.02, abs(frac - p)))
        if abs(frac - p) >= 0.02:
            report.failures.append(f"{label}: dropped {frac:.3f} of the units, expected about {p}")
            hint = "drop each unit with probability p: mask = rng.random(x.shape) >= p."
        report.compare(label, "kept", out[kept], x[kept] / (1 - p))
        if np.allclose(out[kept], x[kept]):
            hint = "scale the kept units by 1/(1-p) in training (inverted dropout), so eval needs no change."
        if not np.array_equal(out, again):
            report.failures.append(f"{label}: two calls with the same seed differ")
            hint = "draw every random number from the rng argument, never from np.random directly."
        report.compare(label, "eval", np.asarray(fn(x, p, False, np.random.default_rng(0))), x)
    report.finish(hint)


# ------------------------------------------------------------------ residual
def check_residual_backward(fn):
    """fn(dout, branch_backward, shortcut_backward) -> dx for out = branch(x) + shortcut(x).
    branch_backward and shortcut_backward each map a gradient of out to one of x."""
    report, hint = _Report("check_residual_backward"), None
    rng = _rng(9)
    for shape in [(2, 3, 4, 4), (1, 2, 3, 5)]:
        label = f"shape={shape}"
        scale = rng.standard_normal(shape)
        dout = rng.standard_normal(shape)
        before = dout.copy()

        def branch_backward(d):
            return d * scale

        def shortcut_backward(d):
            return d

        mine = fn(dout, branch_backward, shortcut_backward)
        ref = before * scale + before
        report.compare(label, "dx", mine, ref)
        if _same(mine, before * scale) or _same(mine, before):
            hint = ("x reaches the output along both paths, so the gradient goes down both branches "
                    "and the two results are added: dx = branch_backward(dout) + shortcut_backward(dout).")
        if not np.array_equal(dout, before):
            report.failures.append(f"{label}: dout was modified in place")
            hint = "both branches read the same dout: never modify it in place."
    report.finish(hint)


# ------------------------------------------------------------------ SGD
def check_sgd_momentum_step(fn):
    """fn(param, grad, velocity, lr, momentum, weight_decay) -> (new_param, new_velocity),
    as torch.optim.SGD: g = grad + wd * param; v = momentum * v + g; param - lr * v.
    velocity starts as zeros."""
    report, hint = _Report("check_sgd_momentum_step"), None
    rng = _rng(10)
    p = rng.standard_normal((3, 4))
    v = np.zeros_like(p)
    p_ref, v_ref = p.copy(), v.copy()
    for step in range(4):
        g = rng.standard_normal(p.shape)
        label = f"step {step + 1}"
        p, v = fn(p.copy(), g.copy(), v.copy(), 0.1, 0.9, 1e-2)
        g_ref = g + 1e-2 * p_ref
        v_ref = 0.9 * v_ref + g_ref
        p_ref = p_ref - 0.1 * v_ref
        report.compare(label, "param", p, p_ref)
        report.compare(label, "velocity", v, v_ref)
        if step == 0 and _same(np.asarray(v), 0.1 * g_ref):
            hint = "PyTorch keeps lr out of the velocity: v = momentum * v + g, then param -= lr * v."
        elif step == 0 and _same(np.asarray(v), g):
            hint = "add weight decay to the gradient first: g = grad + weight_decay * param."
        if not report.rows[-1][3]:
            p, v = p_ref.copy(), v_ref.copy()   # keep later steps comparable
    report.finish(hint)


# ------------------------------------------------------------------ basic block
def check_basic_block_backward(fn):
    """fn(block, dout) -> dx for a minires.models.BasicBlock on which forward has run.

    Use its children's backward methods (block.bn2.backward, block.conv2.backward,
    block.bn1.backward -- BN and ReLU fused --, ..., block.shortcut.backward) and
    remember the ReLU after the add."""
    from .models.resnet import BasicBlock
    report, hint = _Report("check_basic_block_backward"), None
    rng = _rng(11)
    for cin, cout, stride, option in [(4, 4, 1, "A"), (4, 8, 2, "A"), (2, 4, 2, "B")]:
        label = f"{cin}->{cout} stride {stride} shortcut {option}"
        block = BasicBlock(cin, cout, stride, option, rng=np.random.default_rng(0)).astype(np.float64)
        x = rng.standard_normal((3, cin, 6, 6))
        mine_block, ref_block = copy.deepcopy(block), copy.deepcopy(block)
        out = mine_block(x)
        ref_block(x)
        dout = rng.standard_normal(out.shape)
        before = dout.copy()
        mine = fn(mine_block, dout)
        ref = ref_block.backward(dout.copy())
        report.compare(label, "dx", mine, ref)
        for (name, p_mine), (_, p_ref) in zip(mine_block.named_parameters(), ref_block.named_parameters()):
            report.compare(label, name[:8], p_mine.grad, p_ref.grad)
        if not np.array_equal(dout, before):
            report.failures.append(f"{label}: dout was modified in place")
        if mine is not None and np.shape(mine) == x.shape and not _same(mine, ref):
            probe = copy.deepcopy(block)
            probe(x)
            if _same(mine, probe.branch_backward(before * (out > 0))):
                hint = "the shortcut's gradient is missing: add block.shortcut.backward(d) at the fork."
            else:
                hint = ("go backward in reverse order: the ReLU after the add first, then the fork "
                        "(branch and shortcut, summed).")
    report.finish(hint)

