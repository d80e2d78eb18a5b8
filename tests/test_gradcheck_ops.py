"""Float64 gradient checks of every functional op over many shapes, and
proof that the checker fails on a wrong backward."""
import numpy as np
import pytest

import minires.functional as F
from minires.gradcheck import check_op, numerical_gradient, rel_error

TOL = 1e-6

# (N, C, H, W, F, KH, KW, stride, padding): stride 2, padding, non-square, batch 1, odd sizes
CONV_CASES = [
    (2, 3, 8, 8, 4, 3, 3, 1, 1),
    (1, 2, 7, 5, 3, 3, 2, (2, 1), (1, 0)),
    (3, 1, 9, 6, 2, 1, 1, 2, 0),
    (2, 4, 5, 7, 3, 5, 3, 1, 2),
    (1, 3, 6, 6, 2, 2, 4, (1, 3), (0, 2)),
    # maps of up to 16 output positions (the per-tap path): 2x2, 1x1, strided with wide padding
    (2, 3, 2, 2, 4, 3, 3, 1, 1),
    (2, 2, 1, 1, 3, 3, 3, 1, 1),
    (1, 2, 3, 4, 3, 3, 3, 2, 2),
]


def _arrays(rng, *shapes):
    return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(rng, case, bias, monkeypatch):
    from minires.functional import _conv_paths
    monkeypatch.setattr(_conv_paths, "TAP_ROWS", 0)     # the small maps take taps even in a batch of 2
    n, c, h, w, f, kh, kw, stride, padding = case
    x, wt, b = _arrays(rng, (n, c, h, w), (f, c, kh, kw), (f,))
    inputs = dict(x=x, w=wt, b=b) if bias else dict(x=x, w=wt)
    fwd = F.conv2d_forward if bias else (lambda x, w, **kw: F.conv2d_forward(x, w, None, **kw))
    bwd = F.conv2d_backward if bias else (lambda d, c: F.conv2d_backward(d, c)[:2])
    report = check_op(fwd, bwd, inputs, dict(stride=stride, padding=padding), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 2, 6, 4)])
def test_conv2d_winograd_path(rng, shape, monkeypatch):
    """Winograd's F(2x2, 3x3) (forward, dx and dw; WINOGRAD_CHANNELS and
    WINOGRAD_POSITIONS lowered so that a conv small enough for a gradient
    check takes it)."""
    from minires.functional import _conv_paths
    monkeypatch.setattr(_conv_paths, "WINOGRAD_CHANNELS", 1)
    monkeypatch.setattr(_conv_paths, "WINOGRAD_POSITIONS", 0)
    x, wt, b = _arrays(rng, shape, (4, shape[1], 3, 3), (4,))
    assert F.conv2d_forward(x, wt, b, 1, 1)[1].path == "winograd"
    report = check_op(lambda x, w, b, **kw: F.conv2d_forward(x, w, b, relu=True, **kw), F.conv2d_backward,
                      dict(x=x, w=wt, b=b), dict(stride=1, padding=1), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_fused_relu(rng, case):
    """The conv with a ReLU fused on (what fuse_for_inference builds)."""
    n, c, h, w, f, kh, kw, stride, padding = case
    x, wt, b = _arrays(rng, (n, c, h, w), (f, c, kh, kw), (f,))
    report = check_op(lambda x, w, b, **kw: F.conv2d_forward(x, w, b, relu=True, **kw), F.conv2d_backward,
                      dict(x=x, w=wt, b=b), dict(stride=stride, padding=padding), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("shape", [(4, 7), (1, 3), (5, 1)])
def test_linear(rng, shape):
    n, d = shape
    x, w, b = _arrays(rng, (n, d), (6, d), (6,))
    report = check_op(F.linear_forward, F.linear_backward, dict(x=x, w=w, b=b), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 3, 4), (3, 5, 1, 1), (2, 1, 7, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d(rng, shape, training):
    c = shape[1]
    x, g, b = _arrays(rng, shape, (c,), (c,))
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)

    def fwd(x, gamma, beta):
        return F.batchnorm2d_forward(x, gamma, beta, rm.copy(), rv.copy(), training)
    report = check_op(fwd, F.batchnorm2d_backward, dict(x=x, gamma=g, beta=b), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 3, 4), (2, 1, 7, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_relu(rng, shape, training):
    c = shape[1]
    x, g = _arrays(rng, shape, (c,))
    b = rng.uniform(-0.3, 0.3, c)            # about half the outputs on each side of the kink
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)

    def fwd(x, gamma, beta):
        return F.batchnorm2d_relu_forward(x, gamma, beta, rm.copy(), rv.copy(), training)
    report = check_op(fwd, F.batchnorm2d_relu_backward, dict(x=x, gamma=g, beta=b), rng=rng)
    assert report.ok(TOL), report


def test_checker_fails_when_the_fused_relu_mask_is_dropped(rng):
    x, g = _arrays(rng, (4, 3, 5, 5), (3,))
    b = rng.uniform(-0.3, 0.3, 3)

    def fwd(x, gamma, beta):
        return F.batchnorm2d_relu_forward(x, gamma, beta, np.zeros(3), np.ones(3), True)

    def bwd_without_mask(dout, cache):
        return F.batchnorm2d_backward(dout, cache[:-1] + (False,))
    report = check_op(fwd, bwd_without_mask, dict(x=x, gamma=g, beta=b), rng=rng)
    assert not report.ok(TOL)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 7), (5,)])
def test_relu(rng, shape):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where the derivative is undefined
    report = check_op(F.relu_forward, F.relu_backward, dict(x=x), rng=rng)
    assert report.ok(TOL), report


POOL_CASES = [  # (N, C, H, W, kernel, stride, padding)
    (2, 3, 8, 8, 2, None, 0),
    (1, 2, 7, 5, 3, 2, 1),
    (2, 1, 6, 9, (2, 3), (1, 2), (1, 0)),
    (3, 2, 5, 5, 3, 1, 0),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(rng, case):
    n, c, h, w, k, s, p = case
    # Distinct values: ties make the max non-differentiable.
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) / 7.0
    report = check_op(lambda x: F.max_pool2d_forward(x, k, s, p), F.max_pool2d_backward,
                      dict(x=x), eps=1e-4, rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool2d(rng, case):
    n, c, h, w, k, s, p = case
    x = rng.standard_normal((n, c, h, w))
    report = check_op(lambda x: F.avg_pool2d_forward(x, k, s, p), F.avg_pool2d_backward,
                      dict(x=x), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 5, 3, 7), (3, 2, 1, 1)])
def test_global_avg_pool2d(rng, shape):
    report = check_op(F.global_avg_pool2d_forward, F.global_avg_pool2d_backward,
                      dict(x=rng.standard_normal(shape)), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("p", [0.0, 0.3, 0.75])
@pytest.mark.parametrize("training", [True, False])
def test_dropout(rng, p, training):
    x = rng.standard_normal((3, 4, 5))
    seed = int(rng.integers(1 << 30))
    # The same seed on every call: one fixed mask for all the evaluations.
    fwd = lambda x: F.dropout_forward(x, p, training, np.random.default_rng(seed))
    report = check_op(fwd, F.dropout_backward, dict(x=x), rng=rng)
    assert report.ok(TOL), report


def test_add(rng):
    a, b = _arrays(rng, (2, 3, 4, 5), (2, 3, 4, 5))
    report = check_op(F.add_forward, F.add_backward, dict(a=a, b=b), rng=rng)
    assert report.ok(TOL), report


def test_add_relu(rng):
    a, b = _arrays(rng, (2, 3, 4, 5), (2, 3, 4, 5))
    a[np.abs(a + b) < 1e-3] += 0.5      # keep away from the kink
    report = check_op(F.add_relu_forward, F.add_relu_backward, dict(a=a, b=b), rng=rng)
    assert report.ok(TOL), report


@pytest.mark.parametrize("n,k", [(5, 10), (1, 3), (7, 2)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(rng, n, k, smoothing):
    labels = rng.integers(0, k, n)
    fwd = lambda z: F.softmax_cross_entropy_forward(z, labels, smoothing)
    bwd = lambda dout, cache: F.softmax_cross_entropy_backward(dout, cache)
    report = check_op(fwd, bwd, dict(logits=rng.standard_normal((n, k)) * 3), rng=rng)
    assert report.ok(TOL), report


# ---------------------------------------------------------- the checker itself

def test_checker_fails_on_a_wrong_backward(rng):
    """Forgetting the 1/N... here: a conv backward that drops the padding border."""
    x, w = _arrays(rng, (2, 2, 5, 5), (3, 2, 3, 3))

    def wrong_backward(dout, cache):
        dx, dw, _ = F.conv2d_backward(dout, cache)
        dx = dx.copy()
        dx[:, :, 0, :] = 0  # a typical off-by-one at the border
        return dx, dw
    report = check_op(lambda x, w: F.conv2d_forward(x, w, None, padding=1), wrong_backward,
                      dict(x=x, w=w), max_samples=None, rng=rng)
    assert not report.ok(TOL)
    assert report.rows[0].max_rel_error > 1e-2   # dx is caught
    assert report.rows[1].max_rel_error < TOL    # dw is fine
    assert "FAIL" in str(report)


def test_checker_fails_on_transposed_weights(rng):
    x, w, b = _arrays(rng, (3, 4), (4, 4), (4,))
    wrong = lambda dout, cache: (dout @ cache[1].T, dout.T @ cache[0], dout.sum(0))
    assert not check_op(F.linear_forward, wrong, dict(x=x, w=w, b=b), rng=rng).ok(TOL)


def test_checker_rejects_float32(rng):
    with pytest.raises(TypeError, match="float64"):
        check_op(F.relu_forward, F.relu_backward, dict(x=rng.standard_normal(3).astype(np.float32)))


def test_numerical_gradient_of_a_known_function(rng):
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    grad = numerical_gradient(lambda: x ** 3, x, dout)
    np.testing.assert_allclose(grad, 3 * x ** 2 * dout, rtol=1e-7, atol=1e-9)
    assert np.all(np.isfinite(x))  # x is restored after perturbation
    some = numerical_gradient(lambda: x ** 3, x, dout, indices=[0, 5])
    np.testing.assert_allclose(some, (3 * x ** 2 * dout).reshape(-1)[[0, 5]], rtol=1e-7)


def test_rel_error():
    assert rel_error(np.ones(3), np.ones(3)) == 0.0
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 4.2)
    with pytest.raises(ValueError, match="shapes"):
        rel_error(np.ones(2), np.ones(3))


def test_module_check_steps_around_relu_kinks_but_still_catches_errors(rng):
    from minires import nn
    from minires.gradcheck import check_module
    x = rng.standard_normal((4, 6))
    x[0, 0] = 4e-7                 # closer to the kink than the default step of 1e-6
    relu = nn.ReLU()
    assert check_module(relu, x).ok(TOL)

    class WrongReLU(nn.ReLU):
        def backward(self, dout):
            return super().backward(dout) * 1.001   # off by 0.1%
    assert not check_module(WrongReLU(), x).ok(TOL)
