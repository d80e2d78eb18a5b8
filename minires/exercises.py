"""Checkers for the tutorial exercises: pass your own function, get feedback.

Each check_<op>(fn) runs fn on cases chosen so that the usual mistakes give
different numbers (batch 1 and batch > 1, stride and padding that differ
along H and W, extreme logits, values exactly at the ReLU kink, ties in a
pooling window, a shortcut that is not the identity, ...), compares what
fn returns with minires (or a plain NumPy reference), gradient-checks it in
float64 with central differences where it is a backward pass, and prints a
small table (exact / close / max difference / relative error / worst
position per output). On failure it raises AssertionError with

- what was expected and what came back, when fn returns None, a list, a
  tuple of the wrong length, the wrong shape or dtype, or raises;
- which argument fn modified in place (every array argument is checked);
- a hint, only when fn's output equals the answer that a known mistake
  gives on that case (the mistake is computed, never guessed);
- otherwise which case failed, at which position, and by how much.

    >>> from minires.exercises import check_relu_backward
    >>> check_relu_backward(my_relu_backward)       # doctest: +SKIP

The signature each checker expects is in its docstring.
"""
import copy

import numpy as np

from . import functional as F
from . import kernels
from .gradcheck import numeric_avoiding_kinks, numerical_gradient, rel_error

RTOL = 1e-6         # outputs: relative error (scale-based, see gradcheck.rel_error)
GRAD_TOL = 1e-6     # numerical gradient check, float64 central differences


# ------------------------------------------------------------------ machinery
def _describe(value):
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}, dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40]}{'...' if len(text) > 40 else ''})"


def _unchanged(before, after):
    return (before.shape == after.shape and before.dtype == after.dtype
            and np.array_equal(before, after, equal_nan=before.dtype.kind in "fc"))


def _close(a, b, tol=RTOL):
    """a and b agree: same shape, NaN and inf at the same places, finite parts within tol."""
    if a is None or b is None:
        return False
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return False
    a, b = a.astype(np.float64), b.astype(np.float64)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return False
    return rel_error(a[fa], b[fb]) < tol


def _worst(mine, ref):
    """(flat index, relative error) of the worst entry; non-finite entries count as worst."""
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(mine - ref)
    diff = np.where(np.isfinite(diff), diff, np.inf).reshape(-1)
    if diff.size == 0:
        return 0, 0.0
    i = int(np.argmax(diff))
    if not np.isfinite(diff[i]):
        return i, float("inf")
    return i, rel_error(mine, ref)


def _pos(i, shape):
    return tuple(int(k) for k in np.unravel_index(i, shape)) if shape else ()


MUTATION_HINTS = {
    "dout": ("{fn} modified dout in place (for example dout[x <= 0] = 0 or dout *= ...): at a residual "
             "fork the other branch reads the same dout. Build a new array instead."),
}
MUTATION_HINT = ("{fn} modified its argument {name} in place (an in-place operator such as -=, *=, "
                 "or an assignment into {name}[...]): the caller still needs {name} as it was. "
                 "Build a new array instead (for example {name} = {name} - ..., or a .copy()).")


class _Check:
    """One checker's state: table rows, failures, hints; the learner's fn."""

    def __init__(self, title, fn, signature):
        self.title, self.fn, self.signature = title, fn, signature
        self.name = getattr(fn, "__name__", "your function")
        self.rows, self.failures, self.hints = [], [], []

    # -- calling fn --------------------------------------------------------
    def call(self, case, args, names, on_error=None):
        """fn(*copies of args). Exceptions become an AssertionError naming the case
        (a NotImplementedError says the exercise is not written yet); every array
        argument that fn changed is reported with its own hint."""
        if not callable(self.fn):
            self.stop(f"expected a function {self.signature}, got {_describe(self.fn)}")
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        try:
            result = self.fn(*copies)
        except NotImplementedError as e:
            raise NotImplementedError(
                f"{self.name} is not written yet ({e}): fill in the exercise cell above, run it, "
                f"then run this check again (stuck? a solution is in tutorials/solutions/).") from None
        except Exception as e:
            hint = on_error(e) if on_error else None
            self.stop(f"{case}: {self.name} raised {type(e).__name__}: {e}", hint, cause=e)
        for name, before, after in zip(names, args, copies):
            if isinstance(before, np.ndarray) and not _unchanged(before, after):
                self.failures.append(f"{case}: {name} was modified in place")
                self.hint(MUTATION_HINTS.get(name, MUTATION_HINT).format(fn=self.name, name=name))
        return result

    # -- validating what came back -------------------------------------------
    def outputs(self, case, result, specs):
        """specs: [(name, shape, dtype, {wrong shape: hint})]. Returns the arrays, or stops
        with what was expected and what came back."""
        names = ", ".join(s[0] for s in specs)
        if len(specs) == 1:
            values = [result]
        elif result is None:
            self.stop(f"{case}: {self.name} returned None (a missing return statement?); "
                      f"expected a tuple ({names})")
        elif not isinstance(result, (tuple, list)):
            self.stop(f"{case}: {self.name} returned {_describe(result)}; expected a tuple ({names})")
        elif len(result) != len(specs):
            self.stop(f"{case}: {self.name} returned {len(result)} values; expected {len(specs)}: ({names})")
        else:
            values = list(result)
        return [self.array(case, name, v, shape, dtype, hints)
                for (name, shape, dtype, hints), v in zip(specs, values)]

    def array(self, case, name, value, shape, dtype=np.float64, shape_hints=None):
        shape = tuple(shape)
        want = f"a numpy array of shape {shape}, dtype {np.dtype(dtype)}"
        if value is None:
            self.stop(f"{case}: {name} is None (a missing return statement?); expected {want}")
        if not isinstance(value, np.ndarray):
            self.stop(f"{case}: {name} is {_describe(value)}; expected {want} "
                      "(build it with NumPy, or convert with np.asarray)")
        if value.shape != shape:
            hint = None
            for wrong, text in (shape_hints or {}).items():
                if tuple(wrong) != shape and value.shape == tuple(wrong):
                    hint = text
                    break
            self.stop(f"{case}: {name} has shape {value.shape}; expected {shape}", hint)
        if value.dtype != dtype:
            self.stop(f"{case}: {name} has dtype {value.dtype}; expected {np.dtype(dtype)}, the inputs' "
                      "dtype (a float32 literal, astype or np.zeros(..., dtype=...) changes it; "
                      "np.zeros_like(x) keeps it)")
        return value

    def scalar(self, case, name, value):
        """A number: a Python float, a NumPy float64 or a 0-d float64 array."""
        if value is None:
            self.stop(f"{case}: {name} is None (a missing return statement?); expected one number")
        if isinstance(value, (float, int)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, (np.ndarray, np.generic)):
            if np.shape(value) != ():
                self.stop(f"{case}: {name} has shape {np.shape(value)}; expected a single number "
                          "(the mean over the batch, not one value per row)")
            if np.asarray(value).dtype != np.float64:
                self.stop(f"{case}: {name} has dtype {np.asarray(value).dtype}; expected float64, "
                          "the inputs' dtype")
            return float(value)
        self.stop(f"{case}: {name} is {_describe(value)}; expected one number (a float)")

    # -- comparing ----------------------------------------------------------
    def compare(self, case, name, mine, ref, tol=RTOL):
        mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
        exact = bool(np.array_equal(mine, ref))
        close = exact or _close(mine, ref, tol)
        i, err = _worst(mine, ref)
        with np.errstate(invalid="ignore", over="ignore"):
            maxdiff = float(np.max(np.abs(mine - ref))) if mine.size else 0.0
        where = _pos(i, mine.shape)
        self.rows.append((case, name, exact, close, maxdiff, err, where))
        if not close:
            a, r = mine.reshape(-1)[i], ref.reshape(-1)[i]
            at = f" at {where}" if mine.shape else ""
            self.failures.append(f"{case}: {name} differs{at}: yours {a:.6g}, expected {r:.6g} "
                                 f"(relative error {err:.1e})")
        return close

    def gradcheck(self, case, name, analytic, forward, array, dout, rng, samples=8, kinks=False):
        """Compare analytic (fn's gradient of sum(dout * forward()) w.r.t. array) with
        float64 central differences at sampled positions. forward() reads array, which
        is perturbed in place (pass a private copy)."""
        idx = np.sort(rng.choice(array.size, size=min(samples, array.size), replace=False))
        if kinks:
            numeric = numeric_avoiding_kinks(forward, array, dout, 1e-6, idx, analytic, GRAD_TOL)
        else:
            numeric = numerical_gradient(forward, array, dout, indices=idx)
        a = np.asarray(analytic, np.float64).reshape(-1)[idx]
        j, err = _worst(a, numeric)
        where = _pos(idx[j], array.shape)
        close = err < GRAD_TOL
        self.rows.append((case, f"{name} num", False, close, float(np.max(np.abs(a - numeric))), err, where))
        if not close:
            self.failures.append(
                f"{case}: numerical gradient check of {name}: worst relative error {err:.1e} at {where} "
                f"(yours {a[j]:.6g}, central difference {numeric[j]:.6g})")
        return close

    def diagnose(self, mine, ref, candidates):
        """mine, ref: dicts name -> array. candidates: [(hint, thunk)], thunk() -> dict
        name -> what that mistake gives. A hint is given only when fn's output equals
        the mistake's on every output the mistake predicts, and the mistake differs from
        the right answer on this case (else it cannot show here)."""
        for hint, thunk in candidates:
            try:
                with np.errstate(all="ignore"):
                    predicted = thunk()
            except Exception:       # a mistake that cannot be computed on this case
                continue
            if not predicted:
                continue
            if all(_close(predicted[k], ref[k]) for k in predicted):
                continue
            if all(_close(mine[k], predicted[k]) for k in predicted):
                self.hint(hint)
                return True
        return False

    # -- ending -------------------------------------------------------------
    def hint(self, text):
        if text and text not in self.hints:
            self.hints.append(text)

    def show(self):
        print(self.title)
        print(f"  {'case':<40} {'output':<11} {'exact':>5} {'close':>5} {'max diff':>9} {'rel err':>8}  worst at")
        for case, name, exact, close, diff, err, where in self.rows:
            print(f"  {case:<40} {name:<11} {str(exact):>5} {str(close):>5} {diff:>9.2e} {err:>8.1e}  {where}")

    def _message(self, failures):
        text = f"{self.title}: FAILED\n" + "\n".join(failures[:4])
        if len(failures) > 4:
            text += f"\n(and {len(failures) - 4} more)"
        for h in self.hints[:3]:
            text += f"\nHint: {h}"
        if not self.hints:
            text += "\nNo common mistake gives these numbers: work through the first failing case by hand."
        return text

    def stop(self, message, hint=None, cause=None):
        self.hint(hint)
        self.show()
        raise AssertionError(self._message(self.failures + [message])) from cause

    def finish(self):
        self.show()
        if self.failures:
            raise AssertionError(self._message(self.failures))
        print("  all cases passed")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


# ------------------------------------------------------------------ linear
def check_linear_backward(fn):
    """fn(dout (N, M), x (N, D), w (M, D)) -> (dx (N, D), dw (M, D), db (M,)) for out = x @ w.T + b."""
    chk = _Check("check_linear_backward", fn, "linear_backward(dout, x, w) -> (dx, dw, db)")
    rng = _rng()
    for n, d, m in [(4, 5, 3), (1, 3, 2), (6, 4, 4), (3, 2, 5)]:
        case = f"N={n} D={d} M={m}"
        x, w, b = rng.standard_normal((n, d)), rng.standard_normal((m, d)), rng.standard_normal(m)
        _, cache = F.linear_forward(x, w, b)
        dout = rng.standard_normal((n, m))
        ref = dict(zip(("dx", "dw", "db"), F.linear_backward(dout, cache)))
        result = chk.call(case, (dout, x, w), ("dout", "x", "w"))
        transposed = "dw is (D, M), transposed weights: w is stored (M, D), so dw = dout.T @ x."
        dx, dw, db = chk.outputs(case, result, [
            ("dx", (n, d), np.float64, {(n, m): "dx has dout's shape (N, M): multiply by w, dx = dout @ w."}),
            ("dw", (m, d), np.float64, {(d, m): transposed}),
            ("db", (m,), np.float64, {(n, m): "db must sum dout over the batch: db = dout.sum(axis=0).",
                                      (1, m): "db has shape (M,): sum without keepdims.",
                                      (n,): "db sums over the batch (axis 0), not over the outputs."})])
        mine = dict(dx=dx, dw=dw, db=db)
        ok = [chk.compare(case, k, mine[k], ref[k]) for k in ("dx", "dw", "db")]
        for name, arr, analytic in (("dx", x, dx), ("dw", w, dw), ("db", b, db)):
            x_, w_, b_ = x.copy(), w.copy(), b.copy()
            probe = dict(dx=x_, dw=w_, db=b_)[name]
            chk.gradcheck(case, name, analytic, lambda: x_ @ w_.T + b_, probe, dout, rng, samples=6)
        if not all(ok):
            chk.diagnose(mine, ref, [
                (transposed, lambda: dict(dw=x.T @ dout)),
                ("no 1/N in dw: the mean over the batch is already in dout (the loss's gradient). "
                 "dw = dout.T @ x.", lambda: dict(dw=ref["dw"] / n)),
                ("db is a sum over the batch, not a mean: db = dout.sum(axis=0).",
                 lambda: dict(db=dout.mean(axis=0))),
                ("dx = dout @ w, without a 1/N.", lambda: dict(dx=ref["dx"] / n)),
            ])
    chk.finish()


# ------------------------------------------------------------------ relu
def check_relu_backward(fn):
    """fn(dout, x) -> dx for out = max(x, 0), any shape. At x == 0 exactly the
    gradient is 0, as in PyTorch (the mask is x > 0)."""
    chk = _Check("check_relu_backward", fn, "relu_backward(dout, x) -> dx")
    rng = _rng(1)
    for shape in [(2, 3, 4, 4), (1, 5), (7,)]:
        case = f"shape={shape}, some x == 0"
        x = rng.standard_normal(shape)
        x.reshape(-1)[::3] = 0.0                          # values exactly at the kink
        dout = rng.standard_normal(shape)
        ref = np.where(x > 0, dout, 0.0)
        mine = chk.array(case, "dx", chk.call(case, (dout, x), ("dout", "x")), shape)
        ok = chk.compare(case, "dx", mine, ref)
        xs = x.copy()
        xs[xs == 0] = 0.5                                 # a check away from the kink
        chk.gradcheck(case.split(",")[0] + ", x != 0", "dx", chk.array(
            case, "dx", chk.call(case, (dout, xs), ("dout", "x")), shape),
            lambda: np.maximum(xs, 0), xs, dout, rng, samples=xs.size)
        if not ok:
            chk.diagnose(dict(dx=mine), dict(dx=ref), [
                ("at x == 0 exactly the gradient is 0 (PyTorch's convention, and minires's): "
                 "the mask is x > 0, not x >= 0.", lambda: dict(dx=np.where(x >= 0, dout, 0.0))),
                ("multiply the mask by dout: the upstream gradient flows through, it is not replaced by 1.",
                 lambda: dict(dx=(x > 0).astype(np.float64))),
                ("the mask comes from the forward input x, not from dout: dx = dout * (x > 0).",
                 lambda: dict(dx=np.where(dout > 0, dout, 0.0))),
                ("you returned the forward output max(x, 0); backward returns dout * (x > 0).",
                 lambda: dict(dx=np.maximum(x, 0))),
                ("the mask is x > 0: you let the gradient through where x < 0.",
                 lambda: dict(dx=np.where(x < 0, dout, 0.0))),
            ])
    chk.finish()


# ------------------------------------------------------------------ softmax CE
def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _softmax_ce(logits, labels):
    """The reference, plain NumPy: (mean loss, dlogits)."""
    n = logits.shape[0]
    log_p = _log_softmax(logits)
    d = np.exp(log_p)
    d[np.arange(n), labels] -= 1
    return -log_p[np.arange(n), labels].mean(), d / n


SOFTMAX_CASES = [   # (name, logits, labels); the extreme rows: the label at the max, the min, the middle
    ("extreme logits", np.array([[1000.0, 0.0, -1000.0], [1000.0, 0.0, -1000.0],
                                 [-1000.0, 1000.0, 0.0], [0.0, -800.0, 900.0]]), np.array([0, 2, 1, 0])),
]


def check_softmax_cross_entropy(fn):
    """fn(logits (N, K), labels (N,) ints) -> (mean loss: float, dlogits (N, K)),
    the loss and its gradient with respect to the logits."""
    chk = _Check("check_softmax_cross_entropy", fn, "softmax_cross_entropy(logits, labels) -> (loss, dlogits)")
    rng = _rng(2)
    cases = []
    for n, k in [(5, 10), (1, 3), (8, 2), (6, 4)]:
        labels = rng.permutation(np.arange(n) % k)      # labels at different positions
        cases.append((f"N={n} K={k}", rng.standard_normal((n, k)) * 3, labels))
    cases += [(name, z.copy(), y.copy()) for name, z, y in SOFTMAX_CASES]
    for case, logits, labels in cases:
        n, k = logits.shape
        ref_loss, ref_d = _softmax_ce(logits, labels)
        result = chk.call(case, (logits, labels), ("logits", "labels"))
        if result is None or not isinstance(result, (tuple, list)) or len(result) != 2:
            chk.outputs(case, result, [("loss", (), np.float64, None), ("dlogits", (n, k), np.float64, None)])
        loss = chk.scalar(case, "loss", result[0])
        d = chk.array(case, "dlogits", result[1], (n, k))
        ok = [chk.compare(case, "loss", loss, ref_loss), chk.compare(case, "dlogits", d, ref_d)]
        if "extreme" not in case:
            z = logits.copy()
            chk.gradcheck(case, "dlogits", d, lambda: _softmax_ce(z, labels)[0], z, 1.0, rng)
        if all(ok):
            continue
        p = np.exp(_log_softmax(logits))
        onehot = np.zeros_like(logits)
        onehot[np.arange(n), labels] = 1

        def no_max():
            e = np.exp(logits)
            q = e / e.sum(axis=1, keepdims=True)
            return dict(loss=-np.log(q[np.arange(n), labels]).mean())

        def log_of_softmax():
            q = np.exp(logits - logits.max(axis=1, keepdims=True))
            q /= q.sum(axis=1, keepdims=True)
            return dict(loss=-np.log(q[np.arange(n), labels]).mean())

        def columns_for_labels():
            return dict(loss=-_log_softmax(logits)[:, labels].mean())

        def axis0():
            s = logits - logits.max(axis=0, keepdims=True)
            lp = s - np.log(np.exp(s).sum(axis=0, keepdims=True))
            return dict(loss=-lp[np.arange(n), labels].mean())

        chk.diagnose(dict(loss=loss, dlogits=d), dict(loss=ref_loss, dlogits=ref_d), [
            ("subtract the row maximum before exp: softmax(z) = softmax(z - max(z)); exp(1000) overflows.",
             no_max),
            ("the probability of a label 1000 below the maximum underflows to 0, and log(0) = -inf: compute "
             "log-probabilities directly, log_p = z - max - log(sum(exp(z - max))), not log(softmax).",
             log_of_softmax),
            ("the loss must be the mean over the batch, not the sum.", lambda: dict(loss=ref_loss * n)),
            ("forgot the 1/N: the loss is a mean over the batch, so is its gradient.",
             lambda: dict(dlogits=ref_d * n)),
            ("dlogits has the wrong sign: it is (softmax - onehot) / N.", lambda: dict(dlogits=-ref_d)),
            ("subtract 1 at each row's label: dlogits = (softmax - onehot(labels)) / N.",
             lambda: dict(dlogits=p / n)),
            ("pick one entry per row: log_p[np.arange(N), labels], not log_p[:, labels] (an N x N block).",
             columns_for_labels),
            ("softmax normalises each row (axis=1, over the K classes), not each column.", axis0),
        ])
    chk.finish()


# ------------------------------------------------------------------ conv
CONV_CASES = [  # (N, C, H, W, F, KH, KW, stride, padding); stride, padding: int or (along H, along W)
    (2, 3, 6, 6, 4, 3, 3, 1, 1),
    (1, 2, 7, 6, 3, 3, 3, 2, 1),              # (H + 2P - K) % S = 0 along H, 1 along W
    (2, 1, 5, 8, 2, 2, 3, 1, 0),              # a non-square kernel
    (3, 2, 4, 4, 2, 1, 1, 1, 0),              # 1x1 (its own flip)
    (1, 2, 8, 7, 3, 3, 2, (2, 3), (1, 0)),    # everything differs along H and W
]


def _conv_cases(rng):
    """Yield (x, w, b, stride, padding, label) for each of CONV_CASES."""
    for n, c, h, w, f, kh, kw, s, p in CONV_CASES:
        x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, kh, kw)), rng.standard_normal(f)
        yield x, wt, b, s, p, f"x{x.shape} w{wt.shape[2:]} s={s} p={p}"


def _conv_out(h, w, kh, kw, stride, padding, size=lambda a, k, s, p: (a + 2 * p - k) // s + 1):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    return size(h, kh, sh, ph), size(w, kw, sw, pw)


def _conv_shape_hints(x, w, stride, padding):
    n, f = x.shape[0], w.shape[0]
    (h, wd), (kh, kw) = x.shape[2:], w.shape[2:]
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    hints = {}

    def add(size, text):
        hints.setdefault((n, f) + _conv_out(h, wd, kh, kw, stride, padding, size), text)

    add(lambda a, k, s, p: -(-(a + 2 * p - k) // s) + 1,
        "OH = (H + 2*padding - KH) // stride + 1 rounds DOWN: a window that would run past the padded "
        "border is not computed.")
    add(lambda a, k, s, p: (a - k) // s + 1, "the output size must count the padding: OH = (H + 2*padding - KH) // stride + 1.")
    add(lambda a, k, s, p: (a + p - k) // s + 1, "pad both sides: OH = (H + 2*padding - KH) // stride + 1.")
    add(lambda a, k, s, p: a + 2 * p - k + 1, "the output size divides by the stride: OH = (H + 2*padding - KH) // stride + 1.")
    if (sh, ph) != (sw, pw):
        swapped = "stride and padding are given as (along H, along W): you swapped the two axes."
        hints.setdefault((n, f) + _conv_out(h, wd, kh, kw, (sw, sh), (pw, ph)), swapped)
        hints.setdefault((n, f) + _conv_out(h, wd, kw, kh, (sw, sh), (pw, ph)), swapped)
    return hints


def _stride_hint(e, stride, padding):
    if isinstance(e, TypeError) and (not isinstance(stride, int) or not isinstance(padding, int)):
        return ("this case passes stride and padding as pairs (along H, along W): unpack them, for example "
                "sh, sw = (stride, stride) if isinstance(stride, int) else stride.")
    return None


def check_conv2d_forward(fn):
    """fn(x (N, C, H, W), w (F, C, KH, KW), b (F,), stride, padding) -> out (N, F, OH, OW).
    stride and padding are ints, or pairs (along H, along W)."""
    chk = _Check("check_conv2d_forward", fn, "conv2d_forward(x, w, b, stride, padding) -> out")
    for x, w, b, s, p, label in _conv_cases(_rng(3)):
        ref, _ = F.conv2d_forward(x, w, b, s, p)
        result = chk.call(label, (x, w, b, s, p), ("x", "w", "b", "stride", "padding"),
                          on_error=lambda e: _stride_hint(e, s, p))
        mine = chk.array(label, "out", result, ref.shape, np.float64, _conv_shape_hints(x, w, s, p))
        if chk.compare(label, "out", mine, ref):
            continue
        oh, ow = ref.shape[2:]
        chk.diagnose(dict(out=mine), dict(out=ref), [
            ("you flipped the kernel: deep-learning 'convolution' is cross-correlation (no flip).",
             lambda: dict(out=F.conv2d_forward(x, w[:, :, ::-1, ::-1].copy(), b, s, p)[0])),
            ("add the bias b[f] to every output position of filter f.",
             lambda: dict(out=ref - b[None, :, None, None])),
            ("window (i, j) starts at (i*stride, j*stride) in the padded input: the stride is missing.",
             lambda: dict(out=F.conv2d_forward(x, w, b, 1, p)[0][:, :, :oh, :ow])),
            ("you swapped stride and padding along H and W: each is (along H, along W).",
             lambda: dict(out=F.conv2d_forward(x, w, b, _pair(s)[::-1], _pair(p)[::-1])[0])),
        ])
    chk.finish()


def _conv_backward_loops(dout, x, w, stride, padding, assign=False):
    """Loops over output positions; assign=True writes dx windows with = (the overlap mistake)."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = w.shape[2:]
    h, wd = x.shape[2:]
    dxp = np.zeros((x.shape[0], x.shape[1], h + 2 * ph, wd + 2 * pw))
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            contribution = np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
            if assign:
                dxp[:, :, rows, cols] = contribution
            else:
                dxp[:, :, rows, cols] += contribution
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def check_conv2d_backward(fn):
    """fn(dout (N, F, OH, OW), x, w, b, stride, padding) -> (dx, dw, db) for conv2d_forward
    (stride and padding: ints, or pairs (along H, along W))."""
    chk = _Check("check_conv2d_backward", fn, "conv2d_backward(dout, x, w, b, stride, padding) -> (dx, dw, db)")
    rng = _rng(4)
    for x, w, b, s, p, label in _conv_cases(rng):
        out, cache = F.conv2d_forward(x, w, b, s, p)
        dout = rng.standard_normal(out.shape)
        ref = dict(zip(("dx", "dw", "db"), F.conv2d_backward(dout, cache)))
        (ph, pw), f = _pair(p), w.shape[0]
        n, c, h, wd = x.shape
        result = chk.call(label, (dout, x, w, b, s, p), ("dout", "x", "w", "b", "stride", "padding"),
                          on_error=lambda e: _stride_hint(e, s, p))
        dx, dw, db = chk.outputs(label, result, [
            ("dx", x.shape, np.float64, {(n, c, h + 2 * ph, wd + 2 * pw):
                                         "dx has the padded shape: crop the padding off (it is not part of x)."}),
            ("dw", w.shape, np.float64, {w.shape[:2] + w.shape[2:][::-1]: "dw has KH and KW swapped."}),
            ("db", (f,), np.float64, {(n, f): "db sums dout over N, OH and OW: dout.sum(axis=(0, 2, 3)).",
                                      (f, out.shape[2], out.shape[3]):
                                      "db sums dout over N, OH and OW: dout.sum(axis=(0, 2, 3))."})])
        mine = dict(dx=dx, dw=dw, db=db)
        ok = [chk.compare(label, k, mine[k], ref[k]) for k in ("dx", "dw", "db")]
        for name, analytic in (("dx", dx), ("dw", dw), ("db", db)):
            x_, w_, b_ = x.copy(), w.copy(), b.copy()
            probe = dict(dx=x_, dw=w_, db=b_)[name]
            chk.gradcheck(label, name, analytic, lambda: F.conv2d_forward(x_, w_, b_, s, p)[0], probe, dout,
                          rng, samples=6)
        if all(ok):
            continue
        chk.diagnose(mine, ref, [
            ("dw is flipped: dw[f, c, i, j] = sum over n, oh, ow of dout * x at (oh*s + i - p, ow*s + j - p).",
             lambda: dict(dw=ref["dw"][:, :, ::-1, ::-1])),
            ("dx used the flipped kernel: in this loop form, dx's window gets dout[n, f, i, j] * w[f] unflipped.",
             lambda: dict(dx=F.conv2d_backward(dout, F.conv2d_forward(
                 x, w[:, :, ::-1, ::-1].copy(), b, s, p)[1])[0])),
            ("windows overlap: add (+=) each window's gradient into dx, do not assign (=).",
             lambda: dict(dx=_conv_backward_loops(dout, x, w, s, p, assign=True))),
            ("the stride is missing in backward: window (i, j) starts at (i*stride, j*stride).",
             lambda: dict(dx=_conv_backward_loops(dout, x, w, 1, p))),
            ("no 1/N in dw: the mean over the batch is already in dout.", lambda: dict(dw=ref["dw"] / n)),
            ("db is a sum over N, OH and OW, not a mean.", lambda: dict(db=dout.mean(axis=(0, 2, 3)))),
        ])
    chk.finish()


def check_im2col(fn):
    """fn(x (N, C, H, W), kh, kw, stride: int, padding: int) -> cols (C*KH*KW, N*OH*OW),
    rows ordered (c, kh, kw), columns ordered (n, oh, ow)."""
    chk = _Check("check_im2col", fn, "im2col(x, kh, kw, stride, padding) -> cols")
    for x, w, _, s, p, label in _conv_cases(_rng(5)):
        if not isinstance(s, int) or not isinstance(p, int):
            continue                                    # im2col takes ints
        kh, kw = w.shape[2:]
        n, c = x.shape[:2]
        ref = kernels.im2col(x, kh, kw, s, s, p, p)
        oh, ow = _conv_out(x.shape[2], x.shape[3], kh, kw, s, p)
        result = chk.call(label, (x, kh, kw, s, p), ("x", "kh", "kw", "stride", "padding"))
        hints = {ref.shape[::-1]: "cols is transposed: one COLUMN per output position, shape (C*KH*KW, N*OH*OW).",
                 (c, kh, kw, n, oh, ow): "reshape to 2-D: (C*KH*KW, N*OH*OW).",
                 (c * kh * kw, n, oh * ow): "reshape to 2-D: (C*KH*KW, N*OH*OW)."}
        hints.update({(c * kh * kw, n * a * b_): t for (a, b_), t in (
            (_conv_out(x.shape[2], x.shape[3], kh, kw, s, 0), "the padding is missing."),
            (_conv_out(x.shape[2], x.shape[3], kh, kw, 1, p), "the stride is missing."))})
        mine = chk.array(label, "cols", result, ref.shape, x.dtype, hints)
        if chk.compare(label, "cols", mine, ref, tol=1e-12):
            continue
        six = ref.reshape(c, kh, kw, n, oh, ow)
        chk.diagnose(dict(cols=mine), dict(cols=ref), [
            ("rows are ordered (c, kh, kw): channel slowest, kw fastest; yours go (kh, kw, c).",
             lambda: dict(cols=six.transpose(1, 2, 0, 3, 4, 5).reshape(ref.shape))),
            ("rows are ordered (c, kh, kw), kw fastest; yours go (c, kw, kh) -- a square-only test would miss it.",
             lambda: dict(cols=six.transpose(0, 2, 1, 3, 4, 5).reshape(ref.shape))),
            ("columns are ordered (n, oh, ow), n slowest; yours go (oh, ow, n).",
             lambda: dict(cols=six.transpose(0, 1, 2, 4, 5, 3).reshape(ref.shape))),
            ("columns are ordered (n, oh, ow), ow fastest; yours go (n, ow, oh).",
             lambda: dict(cols=six.transpose(0, 1, 2, 3, 5, 4).reshape(ref.shape))),
            ("you reshaped (N, C, ...) windows straight into rows: move the channel axis first, "
             "(C, KH, KW, N, OH, OW), then reshape.",
             lambda: dict(cols=six.transpose(3, 0, 1, 2, 4, 5).reshape(ref.shape))),
        ])
    chk.finish()


# ------------------------------------------------------------------ batchnorm
def _bn_variant(dout, x, gamma, rm, rv, training, eps, ddof=0, terms=2):
    axes = (0, 2, 3)
    g = gamma[None, :, None, None]
    if training:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mean, var = x.mean(axis=axes), x.var(axis=axes) * m / (m - ddof)
    else:
        mean, var = rm, rv
    rstd = 1 / np.sqrt(var + eps)[None, :, None, None]
    xhat = (x - mean[None, :, None, None]) * rstd
    dxhat = dout * g
    dx = dxhat * rstd
    if training and terms >= 1:
        dx = dx - rstd * dxhat.mean(axis=axes, keepdims=True)
    if training and terms >= 2:
        dx = dx - rstd * xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    return dx


def check_batchnorm_backward(fn):
    """fn(dout, x (N, C, H, W), gamma (C,), beta (C,), running_mean, running_var, training, eps)
    -> (dx, dgamma, dbeta). training=True normalises with batch statistics (biased
    variance, as PyTorch), training=False with the running ones."""
    chk = _Check("check_batchnorm_backward", fn,
                 "batchnorm_backward(dout, x, gamma, beta, running_mean, running_var, training, eps)")
    rng = _rng(6)
    eps = 1e-5
    for shape in [(4, 3, 5, 5), (1, 2, 3, 4), (6, 4, 1, 1)]:
        c = shape[1]
        x = rng.standard_normal(shape) * 2 + 1
        gamma, beta = rng.uniform(0.5, 2, c) * rng.choice([-1, 1], c), rng.standard_normal(c)
        rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
        for training in (True, False):
            label = f"x{shape} {'train' if training else 'eval'}"
            _, cache = F.batchnorm2d_forward(x, gamma, beta, rm.copy(), rv.copy(), training, eps=eps)
            dout = rng.standard_normal(shape)
            ref = dict(zip(("dx", "dgamma", "dbeta"), F.batchnorm2d_backward(dout, cache)))
            result = chk.call(label, (dout, x, gamma, beta, rm, rv, training, eps),
                              ("dout", "x", "gamma", "beta", "running_mean", "running_var", "training", "eps"))
            per_channel = "sum over N, H and W for each channel: the result has shape (C,)."
            dx, dg, db = chk.outputs(label, result, [
                ("dx", shape, np.float64, None),
                ("dgamma", (c,), np.float64, {(1, c, 1, 1): per_channel, shape[1:]: per_channel}),
                ("dbeta", (c,), np.float64, {(1, c, 1, 1): per_channel, shape[1:]: per_channel})])
            mine = dict(dx=dx, dgamma=dg, dbeta=db)
            ok = [chk.compare(label, k, mine[k], ref[k]) for k in ("dx", "dgamma", "dbeta")]
            for name, analytic in (("dx", dx), ("dgamma", dg), ("dbeta", db)):
                x_, g_, b_ = x.copy(), gamma.copy(), beta.copy()
                probe = dict(dx=x_, dgamma=g_, dbeta=b_)[name]
                chk.gradcheck(label, name, analytic, lambda: F.batchnorm2d_forward(
                    x_, g_, b_, rm.copy(), rv.copy(), training, eps=eps)[0], probe, dout, rng, samples=5)
            if all(ok):
                continue
            axes = (0, 2, 3)
            chk.diagnose(mine, ref, [
                ("in eval mode the mean and variance are the running statistics, constants: "
                 "dx = dout * gamma / sqrt(running_var + eps). You used batch statistics.",
                 lambda: dict(dx=_bn_variant(dout, x, gamma, rm, rv, True, eps)) if not training else None),
                ("in training the batch mean and variance depend on x: dx needs the two "
                 "correction terms, mean(dxhat) and xhat * mean(dxhat * xhat).",
                 lambda: dict(dx=_bn_variant(dout, x, gamma, rm, rv, training, eps, terms=0))),
                ("dx has the mean's correction but not the variance's: subtract xhat * mean(dxhat * xhat) too.",
                 lambda: dict(dx=_bn_variant(dout, x, gamma, rm, rv, training, eps, terms=1))),
                ("normalise with the biased batch variance (divide by M = N*H*W, not M - 1), as the forward does.",
                 lambda: dict(dx=_bn_variant(dout, x, gamma, rm, rv, training, eps, ddof=1))),
                ("include eps: rstd = 1 / sqrt(var + eps).",
                 lambda: dict(dx=_bn_variant(dout, x, gamma, rm, rv, training, 0.0))),
                ("dx carries gamma: dxhat = dout * gamma.",
                 lambda: dict(dx=_bn_variant(dout, x, np.ones_like(gamma), rm, rv, training, eps))),
                ("dgamma = sum of dout * xhat over (N, H, W): multiply by the normalised input xhat.",
                 lambda: dict(dgamma=dout.sum(axis=axes))),
                ("dgamma multiplies dout by the normalised xhat, not by the raw x.",
                 lambda: dict(dgamma=(dout * x).sum(axis=axes))),
                ("dbeta = dout.sum(axis=(0, 2, 3)), a sum, not a mean.", lambda: dict(dbeta=dout.mean(axis=axes))),
            ])
    chk.finish()


# ------------------------------------------------------------------ max pool
def _pool_variant(dout, x, k, s, mode):
    """Max-pool backward mistakes: 'assign', 'last' (ties to the last max), 'all' (ties to every max),
    'spread' (dout to every pixel of the window), 'average' (dout / k^2 to every pixel)."""
    n, c, oh, ow = dout.shape
    dx = np.zeros_like(x)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k]                  # (N, C, k, k)
            d = dout[:, :, i, j][:, :, None, None]
            if mode == "spread":
                dx[:, :, i * s:i * s + k, j * s:j * s + k] += d
            elif mode == "average":
                dx[:, :, i * s:i * s + k, j * s:j * s + k] += d / (k * k)
            elif mode == "all":
                dx[:, :, i * s:i * s + k, j * s:j * s + k] += d * (win == win.max(axis=(2, 3), keepdims=True))
            else:
                flat = win.reshape(n, c, -1)
                arg = flat.argmax(2) if mode == "assign" else k * k - 1 - flat[:, :, ::-1].argmax(2)
                wi, wj = np.unravel_index(arg, (k, k))
                nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
                if mode == "assign":
                    dx[nn_, cc, i * s + wi, j * s + wj] = dout[:, :, i, j]
                else:
                    np.add.at(dx, (nn_, cc, i * s + wi, j * s + wj), dout[:, :, i, j])
    return dx


def check_max_pool_backward(fn):
    """fn(dout (N, C, OH, OW), x (N, C, H, W), kernel_size: int, stride: int) -> dx.
    On a tie inside a window the first maximum (row-major order) gets the
    gradient, as in PyTorch and minires."""
    chk = _Check("check_max_pool_backward", fn, "max_pool_backward(dout, x, kernel_size, stride) -> dx")
    rng = _rng(7)
    for shape, k, s, ties in [((2, 3, 6, 6), 2, 2, False), ((1, 2, 8, 6), 3, 2, False),
                              ((2, 1, 5, 5), 3, 1, False), ((2, 2, 6, 7), 2, 2, True), ((1, 2, 7, 7), 3, 2, True)]:
        label = f"x{shape} k={k} s={s}" + (" ties" if ties else "")
        if ties:
            x = rng.integers(0, 3, shape).astype(np.float64)           # many ties in every window
        else:
            x = rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0   # distinct values
        out, cache = F.max_pool2d_forward(x, k, s)
        dout = rng.standard_normal(out.shape)
        ref = F.max_pool2d_backward(dout, cache)
        result = chk.call(label, (dout, x, k, s), ("dout", "x", "kernel_size", "stride"))
        mine = chk.array(label, "dx", result, shape, np.float64,
                         {out.shape: "dx has the shape of x (N, C, H, W), not of dout."})
        ok = chk.compare(label, "dx", mine, ref)
        if not ties:
            x_ = x.copy()
            chk.gradcheck(label, "dx", mine, lambda: F.max_pool2d_forward(x_, k, s)[0], x_, dout, rng)
        if ok:
            continue
        chk.diagnose(dict(dx=mine), dict(dx=ref), [
            ("windows overlap when stride < kernel: one pixel can win several windows, so add (+=) "
             "its gradients rather than assign.", lambda: dict(dx=_pool_variant(dout, x, k, s, "assign"))),
            ("on a tie the FIRST maximum of the window (row-major order) gets the gradient, as in PyTorch "
             "and minires (np.argmax returns the first); yours gave it to the last.",
             lambda: dict(dx=_pool_variant(dout, x, k, s, "last"))),
            ("on a tie only one pixel gets the gradient, the first maximum (np.argmax), as in PyTorch; "
             "a mask x == max sends it to every tied pixel.", lambda: dict(dx=_pool_variant(dout, x, k, s, "all"))),
            ("route each gradient only to the pixel that won its window (the argmax).",
             lambda: dict(dx=_pool_variant(dout, x, k, s, "spread"))),
            ("that is average pooling's backward: max pooling routes the whole gradient to the winner.",
             lambda: dict(dx=_pool_variant(dout, x, k, s, "average"))),
        ])
    chk.finish()


# ------------------------------------------------------------------ dropout
def check_dropout(fn):
    """fn(x, p, training, rng: numpy Generator) -> out (inverted dropout): in training
    each unit is zeroed with probability p and the others are scaled by 1/(1-p);
    out of training, out equals x. Every random number comes from rng."""
    chk = _Check("check_dropout", fn, "dropout(x, p, training, rng) -> out")
    x = _rng(8).uniform(1, 2, (200, 50))
    names = ("x", "p", "training", "rng")
    for p in (0.2, 0.5, 0.7):
        label = f"p={p}"
        out = chk.array(label, "out", chk.call(label, (x, p, True, np.random.default_rng(0)), names), x.shape)
        kept = out != 0
        frac = 1 - kept.mean()
        good = abs(frac - p) < 0.03
        chk.rows.append((label, "drop frac", good, good, abs(frac - p), abs(frac - p) / p, ()))
        if not good:
            chk.failures.append(f"{label}: dropped {frac:.3f} of the units, expected about {p}")
            if abs(frac - (1 - p)) < 0.03:
                chk.hint("p is the probability to DROP: keep a unit where rng.random(x.shape) >= p.")
        if not chk.compare(label, "kept", out[kept], x[kept] / (1 - p)):
            ratio = np.median(out[kept] / x[kept]) if kept.any() else np.nan
            for factor, text in ((1.0, "scale the kept units by 1/(1-p) in training (inverted dropout), so "
                                       "evaluation needs no change."),
                                 (1 - p, "divide the kept units by (1-p), do not multiply."),
                                 (1 / p, "the scale is 1/(1-p), the probability to keep, not 1/p.")):
                if abs(ratio - factor) < 1e-9 and abs(factor - 1 / (1 - p)) > 1e-9:
                    chk.hint(text)
                    break
        seed_a = chk.array(label, "out", chk.call(label, (x, p, True, np.random.default_rng(0)), names), x.shape)
        if not np.array_equal(out, seed_a):
            chk.failures.append(f"{label}: two calls with generators of the same seed gave different masks")
            chk.hint("draw every random number from the rng argument (rng.random(x.shape)), never from np.random.")
        gen = np.random.default_rng(1)
        first = chk.array(label, "out", chk.call(label, (x, p, True, gen), names), x.shape)
        second = chk.array(label, "out", chk.call(label, (x, p, True, gen), names), x.shape)
        if np.array_equal(first, second):
            chk.failures.append(f"{label}: two calls with one generator gave the same mask")
            chk.hint("use the generator you are given: creating a new one inside (np.random.default_rng(seed)) "
                     "repeats the same mask on every call.")
        ev = chk.array(label + " eval", "out", chk.call(label + " eval", (x, p, False, np.random.default_rng(0)),
                                                        names), x.shape)
        if not chk.compare(label + " eval", "out", ev, x):
            chk.hint("out of training, dropout is the identity: return x unchanged (no mask, no scale).")
    chk.finish()


# ------------------------------------------------------------------ residual
def check_residual_backward(fn):
    """fn(dout, branch_backward, shortcut_backward) -> dx for out = branch(x) + shortcut(x).
    branch_backward and shortcut_backward each map a gradient of out to one of x
    (the shortcut is not always the identity)."""
    chk = _Check("check_residual_backward", fn, "residual_backward(dout, branch_backward, shortcut_backward) -> dx")
    rng = _rng(9)
    for shape, identity in [((2, 3, 4, 4), True), ((1, 2, 3, 5), False), ((3, 4), False)]:
        label = f"shape={shape} " + ("identity shortcut" if identity else "scaling shortcut")
        x = rng.standard_normal(shape)
        scale = rng.standard_normal(shape)
        s2 = np.ones(shape) if identity else rng.uniform(0.5, 2, shape)
        dout = rng.standard_normal(shape)

        def branch_forward(x_):
            return 0.5 * scale * x_ ** 2

        def branch_backward(d):
            return d * scale * x

        def shortcut_backward(d):
            return d if identity else d * s2        # the identity returns dout itself, as nn.Identity

        ref = dout * scale * x + dout * s2
        result = chk.call(label, (dout, branch_backward, shortcut_backward),
                          ("dout", "branch_backward", "shortcut_backward"))
        mine = chk.array(label, "dx", result, shape)
        ok = chk.compare(label, "dx", mine, ref)
        x_ = x.copy()
        chk.gradcheck(label, "dx", mine, lambda: branch_forward(x_) + s2 * x_, x_, dout, rng)
        if ok:
            continue
        b, sc = dout * scale * x, dout * s2
        chk.diagnose(dict(dx=mine), dict(dx=ref), [
            ("x reaches the output along both paths, so the gradient goes down both branches "
             "and the two results are added: dx = branch_backward(dout) + shortcut_backward(dout).",
             lambda: dict(dx=b)),
            ("x reaches the output along both paths, so the gradient goes down both branches "
             "and the two results are added: dx = branch_backward(dout) + shortcut_backward(dout).",
             lambda: dict(dx=sc)),
            ("the shortcut is not always the identity: use its own backward, shortcut_backward(dout), "
             "not dout itself.", lambda: dict(dx=b + dout)),
            ("at a fork the gradients add (+), they are not multiplied.", lambda: dict(dx=b * sc)),
            ("each branch gets dout itself: do not pass one branch's result into the other.",
             lambda: dict(dx=dout * scale * x * s2)),
        ])
    chk.finish()


# ------------------------------------------------------------------ SGD
def check_sgd_momentum_step(fn):
    """fn(param, grad, velocity, lr, momentum, weight_decay) -> (new_param, new_velocity),
    as torch.optim.SGD: g = grad + wd * param; v = momentum * v + g; param - lr * v.
    velocity starts as zeros. Return new arrays: the arguments stay unchanged."""
    chk = _Check("check_sgd_momentum_step", fn,
                 "sgd_momentum_step(param, grad, velocity, lr, momentum, weight_decay) -> (param, velocity)")
    rng = _rng(10)
    lr, mom, wd = 0.03, 0.8, 0.05       # lr != 1 - momentum, wd != lr: no coincidences
    p = rng.standard_normal((3, 4))
    v = np.zeros_like(p)
    for step in range(4):
        g = rng.standard_normal(p.shape)
        label = f"step {step + 1}" + (" (velocity 0)" if step == 0 else "")
        g_ref = g + wd * p
        v_ref = mom * v + g_ref
        p_ref = p - lr * v_ref
        result = chk.call(label, (p, g, v, lr, mom, wd), ("param", "grad", "velocity", "lr", "momentum",
                                                          "weight_decay"))
        new_p, new_v = chk.outputs(label, result, [("param", p.shape, np.float64, None),
                                                   ("velocity", p.shape, np.float64, None)])
        mine, ref = dict(param=new_p, velocity=new_v), dict(param=p_ref, velocity=v_ref)
        ok = [chk.compare(label, k, mine[k], ref[k]) for k in ("param", "velocity")]
        if not all(ok):
            def state(v_new, p_new):
                return dict(param=p_new, velocity=v_new)
            v_lr = mom * v + lr * g_ref
            v_nowd = mom * v + g
            v_damp = mom * v + (1 - mom) * g_ref
            chk.diagnose(mine, ref, [
                ("return (new_param, new_velocity), in that order.", lambda: state(p_ref, v_ref)),
                ("PyTorch keeps lr out of the velocity: v = momentum * v + g, then param -= lr * v.",
                 lambda: state(v_lr, p - v_lr)),
                ("PyTorch keeps lr out of the velocity: v = momentum * v + g, then param -= lr * v "
                 "(yours applies lr twice).", lambda: state(v_lr, p - lr * v_lr)),
                ("add weight decay to the gradient first: g = grad + weight_decay * param.",
                 lambda: state(v_nowd, p - lr * v_nowd)),
                ("weight decay pulls param toward 0: g = grad + weight_decay * param (plus, not minus).",
                 lambda: state(mom * v + g - wd * p, p - lr * (mom * v + g - wd * p))),
                ("PyTorch's SGD adds weight decay to the gradient before momentum; yours decays the "
                 "parameter separately (decoupled, as AdamW).",
                 lambda: state(v_nowd, p - lr * v_nowd - lr * wd * p)),
                ("no (1 - momentum) factor: PyTorch's SGD (dampening 0) adds the whole gradient, v = momentum * v + g.",
                 lambda: state(v_damp, p - lr * v_damp)),
                ("that is Nesterov momentum (param -= lr * (g + momentum * v)); the plain step is param -= lr * v.",
                 lambda: state(v_ref, p - lr * (g_ref + mom * v_ref))),
                ("update the velocity first, then step with the NEW velocity: param -= lr * v_new.",
                 lambda: state(v_ref, p - lr * v)),
            ])
        p, v = p_ref, v_ref             # the next step starts from the right state
    chk.finish()


# ------------------------------------------------------------------ basic block
def check_basic_block_backward(fn):
    """fn(block, dout) -> dx for a minires.models.BasicBlock on which forward has run;
    fills the gradients of the block's parameters.

    Use its children's backward methods (block.bn2.backward, block.conv2.backward,
    block.bn1.backward -- BN and ReLU fused --, ..., block.shortcut.backward) and
    remember the ReLU after the add: its output is block.post_relu_output."""
    from .models.resnet import BasicBlock
    chk = _Check("check_basic_block_backward", fn, "basic_block_backward(block, dout) -> dx")
    rng = _rng(11)
    for cin, cout, stride, option in [(4, 4, 1, "A"), (4, 8, 2, "A"), (2, 4, 2, "B")]:
        label = f"{cin}->{cout} stride {stride} shortcut {option}"
        block = BasicBlock(cin, cout, stride, option, rng=np.random.default_rng(0)).astype(np.float64)
        for m in block.modules():                          # as after training: no ReLU input at 0
            if hasattr(m, "running_var"):
                m.weight.data[:] = rng.uniform(0.5, 1.5, m.weight.shape)
                m.bias.data[:] = rng.normal(0, 0.2, m.bias.shape)
        x = rng.standard_normal((3, cin, 6, 6))
        mine_block, ref_block = copy.deepcopy(block), copy.deepcopy(block)
        out = mine_block(x)
        ref_block(x)
        dout = rng.standard_normal(out.shape)
        ref = ref_block.backward(dout.copy())
        result = chk.call(label, (mine_block, dout), ("block", "dout"))
        mine = chk.array(label, "dx", result, x.shape, np.float64, {out.shape: "dx has the shape of the block's input x."})
        ok = chk.compare(label, "dx", mine, ref)
        for (name, p_mine), (_, p_ref) in zip(mine_block.named_parameters(), ref_block.named_parameters()):
            if not isinstance(p_mine.grad, np.ndarray) or p_mine.grad.shape != p_ref.grad.shape:
                chk.stop(f"{label}: {name}.grad is {_describe(p_mine.grad)}; expected an array of shape "
                         f"{p_ref.grad.shape} (let the children's backward methods fill it)")
            ok = chk.compare(label, name[:10], p_mine.grad, p_ref.grad) and ok
        probe = copy.deepcopy(block)
        x_ = x.copy()
        chk.gradcheck(label, "dx", mine, lambda: probe.forward(x_), x_, dout, rng, samples=6, kinks=True)
        if ok:
            continue

        def attempt(how):
            b = copy.deepcopy(block)
            b(x)
            mask = F.relu_backward(dout, b.post_relu_output)
            d_branch, d_short = {"no shortcut": (mask, None), "no relu": (dout, dout),
                                 "shortcut before relu": (mask, dout)}[how]
            dx = b.branch_backward(d_branch)
            if d_short is not None:
                dx = dx + b.shortcut.backward(d_short)
            return dict(dx=dx)

        chk.diagnose(dict(dx=mine), dict(dx=ref), [
            ("the shortcut's gradient is missing: add block.shortcut.backward(d) at the fork.",
             lambda: attempt("no shortcut")),
            ("start with the ReLU after the add: d = relu_backward(dout, block.post_relu_output), then "
             "the fork.", lambda: attempt("no relu")),
            ("the ReLU after the add comes before the fork in backward: both the branch and the shortcut "
             "get the masked gradient.", lambda: attempt("shortcut before relu")),
        ])
    chk.finish()
