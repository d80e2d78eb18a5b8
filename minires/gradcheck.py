"""Numerical gradient checks: central differences in float64.

The analytic gradient of sum(dout * f(x)) is compared, entry by entry,
with (g(x + eps) - g(x - eps)) / (2 eps), where g = sum(dout * f). A random
upstream gradient dout (rather than ones) catches backward passes that
are only right on average. Large arrays are checked at sampled positions.
"""
from dataclasses import dataclass, field

import numpy as np


def rel_error(a, b, floor=1e-8):
    """max |a - b| / max(max |a| + max |b|, floor): the worst difference,
    relative to the array's scale.

    Why not entry by entry: a central difference carries round-off of about
    1e-16 * |sum(dout * f)| / eps (~1e-9 here) in every entry, so entries
    whose true gradient is that small (batchnorm's dx has many) would show
    large relative errors that say nothing about the backward pass.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs equal shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max() + np.abs(b).max(), floor)
    return float(np.abs(a - b).max() / scale)


def numerical_gradient(f, x, dout, eps=1e-6, indices=None):
    """d sum(dout * f()) / dx by central differences, perturbing x in place.

    f: a function of no arguments that reads x and returns an array shaped
    like dout (or a scalar, with dout = 1). indices: flat positions to
    check (default all); returns the gradient at those positions, or the
    whole (x.shape) gradient when indices is None.
    """
    flat = x.reshape(-1)  # a view: writing it perturbs x
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so it can be perturbed in place")
    positions = range(flat.size) if indices is None else indices
    grad = np.empty(len(positions), dtype=np.float64)
    for out_i, i in enumerate(positions):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(dout * f())
        flat[i] = old - eps
        minus = np.sum(dout * f())
        flat[i] = old
        grad[out_i] = (plus - minus) / (2 * eps)
    return grad.reshape(x.shape) if indices is None else grad


@dataclass
class GradRow:
    name: str
    shape: tuple
    checked: int
    max_rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float


@dataclass
class GradReport:
    """One row per checked array; ok(tol) when every row is below tol."""
    rows: list = field(default_factory=list)
    tol: float = 1e-6

    @property
    def max_error(self):
        return max((r.max_rel_error for r in self.rows), default=0.0)

    def ok(self, tol=None):
        return self.max_error < (self.tol if tol is None else tol)

    def __str__(self):
        lines = [f"{'array':<32} {'shape':<18} {'checked':>7} {'max rel err':>12}  worst at",
                 "-" * 84]
        for r in self.rows:
            flag = "" if r.max_rel_error < self.tol else "  <-- FAIL"
            lines.append(f"{r.name:<32} {str(r.shape):<18} {r.checked:>7} {r.max_rel_error:>12.2e}  "
                         f"{r.worst_index}{flag}")
        lines.append(f"worst: {self.max_error:.2e} (tolerance {self.tol:.0e}) -> "
                     f"{'PASS' if self.ok() else 'FAIL'}")
        return "\n".join(lines)

    __repr__ = __str__  # pytest shows the table when an assertion fails


def _sample(size, max_samples, rng):
    if max_samples is None or size <= max_samples:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_samples, replace=False))


def _compare(name, array, analytic, numeric_at, idx):
    """Row comparing analytic gradient (full array) with numeric values at flat idx."""
    a = analytic.reshape(-1)[idx].astype(np.float64)
    diffs = np.abs(a - numeric_at)
    worst = int(np.argmax(diffs)) if diffs.size else 0
    return GradRow(name, array.shape, len(idx), rel_error(a, numeric_at),
                   tuple(int(i) for i in np.unravel_index(idx[worst], array.shape)) if diffs.size else (),
                   float(a[worst]) if diffs.size else 0.0,
                   float(numeric_at[worst]) if diffs.size else 0.0)


def _require_float64(name, array):
    if array.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays; {name} is {array.dtype} "
                        "(float32 central differences are too coarse to judge)")


def check_op(forward, backward, inputs, kwargs=None, rng=None, eps=1e-6,
             max_samples=60, tol=1e-6):
    """Check every gradient of one functional op.

    forward(*inputs, **kwargs) -> (out, cache); backward(dout, cache) -> one
    gradient per input (a bare array if there is one input). inputs: a dict
    name -> float64 array, passed positionally in that order. An op whose
    out is a scalar (a loss) gets dout = 1.
    """
    rng = np.random.default_rng(20161) if rng is None else rng
    kwargs = kwargs or {}
    names, arrays = list(inputs), [np.ascontiguousarray(a) for a in inputs.values()]
    for n_, a in zip(names, arrays):
        _require_float64(n_, a)
    out, cache = forward(*arrays, **kwargs)
    dout = 1.0 if np.isscalar(out) else rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    grads = (grads,) if len(arrays) == 1 and isinstance(grads, np.ndarray) else grads
    report = GradReport(tol=tol)
    for name, array, grad in zip(names, arrays, grads):
        if grad is None or grad.shape != array.shape:
            raise ValueError(f"backward returned {None if grad is None else grad.shape} "
                             f"for {name}, expected {array.shape}")
        idx = _sample(array.size, max_samples, rng)
        numeric = numerical_gradient(lambda: forward(*arrays, **kwargs)[0], array, dout, eps, idx)
        report.rows.append(_compare(name, array, grad, numeric, idx))
    return report


def _generator_states(module):
    return [(m, m.rng.bit_generator.state) for m in module.modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)]


def numeric_avoiding_kinks(f, array, dout, eps, idx, analytic, tol):
    """Central differences at idx; entries that disagree with the analytic
    gradient are measured again with steps 10x and 100x smaller.

    Why: a whole network holds many ReLUs (and max pools). When a step of
    +-eps moves one of them across its kink, that difference quotient is
    wrong although the backward pass is right. A smaller step rarely crosses
    the same kink, while a wrong backward disagrees at every step size, so
    keeping the closest of the three estimates cannot hide a real error.
    """
    numeric = numerical_gradient(f, array, dout, eps, idx)
    a = analytic.reshape(-1)[idx].astype(np.float64)
    scale = max(np.abs(a).max() + np.abs(numeric).max(), 1e-8) if len(idx) else 1.0
    for smaller in (eps / 10, eps / 100):
        bad = np.flatnonzero(np.abs(a - numeric) > tol * scale)
        if not bad.size:
            break
        retry = numerical_gradient(f, array, dout, smaller, idx[bad])
        closer = np.abs(a[bad] - retry) < np.abs(a[bad] - numeric[bad])
        numeric[bad[closer]] = retry[closer]
    return numeric


def check_module(module, x, rng=None, eps=1e-6, max_samples=20, tol=1e-6):
    """Check the input gradient and every parameter gradient of a float64 module.

    Works in the module's current mode: in training mode batchnorm uses
    batch statistics, and every dropout layer is rewound to the same rng
    state before each forward, so all evaluations see the same masks.
    Entries whose step crossed a ReLU kink are re-measured with smaller steps
    (see numeric_avoiding_kinks).
    """
    rng = np.random.default_rng(20161) if rng is None else rng
    x = np.ascontiguousarray(x)
    _require_float64("x", x)
    params = list(module.named_parameters())
    for name, p in params:
        _require_float64(name, p.data)
    states = _generator_states(module)

    def f():
        for m, state in states:
            m.rng.bit_generator.state = state
        return module.forward(x)

    out = f()
    dout = rng.standard_normal(out.shape)
    module.zero_grad()
    dx = module.backward(dout)
    report = GradReport(tol=tol)
    for name, array, analytic in [("input", x, dx)] + [(n, p.data, p.grad) for n, p in params]:
        idx = _sample(array.size, max_samples, rng)
        numeric = numeric_avoiding_kinks(f, array, dout, eps, idx, analytic, tol)
        report.rows.append(_compare(name, array, analytic, numeric, idx))
    return report


def randomize_batchnorm(model, rng):
    """Give every BatchNorm2d random affine parameters and running statistics,
    as after training, before a whole-model check.

    A fresh BN (beta = 0, running mean 0) maps exact zeros, which a 1x1 conv
    of ReLU outputs often produces at tiny widths, onto the next ReLU's kink:
    there the derivative does not exist and a numerical check is meaningless.
    """
    from .nn import BatchNorm2d
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            c = m.num_features
            m.weight.data[:] = rng.uniform(0.5, 1.5, c)
            m.bias.data[:] = rng.normal(0, 0.2, c)
            m.running_mean[:] = rng.normal(0, 0.2, c)
            m.running_var[:] = rng.uniform(0.5, 1.5, c)
    return model
