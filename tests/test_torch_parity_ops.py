"""Every functional op against torch.nn.functional: forward and backward,
float32 and float64. Skipped without torch unless MINIRES_REQUIRE_TORCH=1."""
import numpy as np
import pytest

import minires.functional as F
from conftest import tol

DTYPES = [np.float32, np.float64]


def _t(torch, a, grad=True):
    return torch.tensor(a, requires_grad=grad)


def _grads(*tensors):
    return [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding,k", [(1, 1, (3, 3)), ((2, 1), (0, 2), (3, 2)), (2, 0, (1, 1))])
def test_conv2d(torch, rng, dtype, stride, padding, k):
    x = rng.standard_normal((2, 3, 9, 7)).astype(dtype)
    w = rng.standard_normal((4, 3) + k).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    out, cache = F.conv2d_forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = F.conv2d_backward(dout, cache)
    tx, tw, tb = _t(torch, x), _t(torch, w), _t(torch, b)
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    for mine, theirs in zip((dx, dw, db), _grads(tx, tw, tb)):
        assert mine.dtype == dtype
        np.testing.assert_allclose(mine, theirs, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels,stride", [((16, 16), 1), ((3, 70), 1), ((70, 5), 1), ((16, 32), 2),
                                             ((5, 4), (3, 2))])
def test_conv2d_direct_and_im2col_paths(torch, rng, dtype, channels, stride, monkeypatch):
    """Convs take the direct kernels; they agree with PyTorch, and forcing
    the im2col path on the same conv gives the same numbers."""
    from minires.functional import _conv_paths
    c, f = channels
    x = rng.standard_normal((3, c, 10, 9)).astype(dtype)
    w = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    out, cache = F.conv2d_forward(x, w, None, stride, 1)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = F.conv2d_backward(dout, cache)[:2]
    tx, tw = _t(torch, x), _t(torch, w)
    tout = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    for mine, theirs in zip(grads, _grads(tx, tw)):
        np.testing.assert_allclose(mine, theirs, **tol(dtype))
    assert cache.path == "direct"
    monkeypatch.setattr(_conv_paths, "_direct_applies", lambda *a, **k: False)
    out2, cache2 = F.conv2d_forward(x, w, None, stride, 1)
    assert cache2.path == "im2col"
    np.testing.assert_allclose(out2, out, **tol(dtype))
    for a, b in zip(F.conv2d_backward(dout, cache2)[:2], grads):
        np.testing.assert_allclose(a, b, **tol(dtype))


@pytest.mark.parametrize("f,strided", [(8, True), (64, True), (65, False)])
@pytest.mark.parametrize("value", [None, np.inf, np.nan])
def test_conv2d_strided_backward_takes_the_direct_weight_gradient(torch, rng, f, strided, value, monkeypatch):
    """A strided 3x3 conv of at most STRIDED_DIRECT_CHANNELS output channels
    takes its dw from the direct kernel and its dx through col2im; both agree
    with PyTorch, and an inf or NaN in x lands where PyTorch puts it (in the
    last column too, which the kernel's junk columns read: 0 * inf is NaN)."""
    from minires.functional import _conv_paths
    calls = []
    real = _conv_paths._strided_backward
    monkeypatch.setattr(_conv_paths, "_strided_backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = rng.standard_normal((3, 5, 11, 10))
    w = rng.standard_normal((f, 5, 3, 3)) / 7
    if value is not None:
        x[1, 2, 4, 6] = x[2, 1, 7, 9] = value
    out, cache = F.conv2d_forward(x, w, None, 2, 1)
    assert cache.path == "direct"
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = F.conv2d_backward(dout, cache)
    assert len(calls) == strided
    tx, tw = _t(torch, x), _t(torch, w)
    torch.nn.functional.conv2d(tx, tw, None, stride=2, padding=1).backward(torch.tensor(dout))
    for mine, theirs in zip((dx, dw), _grads(tx, tw)):
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
        np.testing.assert_allclose(mine, theirs, **tol(np.float64))
    if value is not None:
        assert not np.isfinite(dw).all()             # so its sum was redone through im2col


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,f", [((3, 32, 8, 10), 40), ((1, 33, 6, 4), 32), ((2, 32, 16, 16), 64)])
def test_conv2d_winograd_path(torch, rng, dtype, shape, f, monkeypatch):
    """3x3 convs with stride 1 and padding 1, even maps and 32 channels or
    more take Winograd's F(2x2, 3x3), forward, dx and dw; bias and ReLU are
    fused into its output transform."""
    from minires.functional import _conv_paths
    monkeypatch.setattr(_conv_paths, "WINOGRAD_POSITIONS", 0)       # small batches too
    x = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal((f, shape[1], 3, 3)) / np.sqrt(9 * shape[1])).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    for relu in (False, True):
        out, cache = F.conv2d_forward(x, w, b, 1, 1, relu=relu)
        assert cache.path == "winograd"
        dout = rng.standard_normal(out.shape).astype(dtype)
        grads = F.conv2d_backward(dout, cache)
        tx, tw, tb = _t(torch, x), _t(torch, w), _t(torch, b)
        tout = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
        tout = torch.relu(tout) if relu else tout
        tout.backward(torch.tensor(dout))
        for mine, theirs in zip((out, *grads), (tout.detach().numpy(), *_grads(tx, tw, tb))):
            assert mine.dtype == dtype
            # dw sums up to 512 products of values near 1 in float32: its
            # rounding is relative to the largest entries, not to each one
            scaled = dict(tol(dtype), atol=tol(dtype)["atol"] * max(1.0, np.abs(theirs).max()))
            np.testing.assert_allclose(mine, theirs, **scaled)


@pytest.mark.parametrize("where", ["x", "dout", "w"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_conv2d_winograd_path_propagates_inf_and_nan_like_torch(torch, rng, where, value):
    """Winograd's transforms would spread one non-finite value over a whole
    tile and its neighbours (inf - inf); such chunks are redone by the
    direct kernel, so NaN and inf land exactly where PyTorch puts them."""
    x = rng.standard_normal((4, 32, 16, 32))
    w = rng.standard_normal((32, 32, 3, 3)) / 17
    dout = rng.standard_normal((4, 32, 16, 32))
    {"x": x, "dout": dout, "w": w}[where][(1, 5, 3, 4) if where != "w" else (1, 5, 1, 1)] = value
    out, cache = F.conv2d_forward(x, w, None, 1, 1)
    assert cache.path == "winograd"
    dx, dw, _ = F.conv2d_backward(dout, cache)
    tx, tw = _t(torch, x), _t(torch, w)
    tout = torch.nn.functional.conv2d(tx, tw, None, padding=1)
    tout.backward(torch.tensor(dout))
    assert not np.isfinite(out).all() or not np.isfinite(dx).all()
    for mine, theirs in zip((out, dx, dw), (tout.detach().numpy(), *_grads(tx, tw))):
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
        np.testing.assert_allclose(mine, theirs, **tol(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(torch, rng, dtype):
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(5, 7), (3, 7), (3,)])
    out, cache = F.linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = F.linear_backward(dout, cache)
    tx, tw, tb = _t(torch, x), _t(torch, w), _t(torch, b)
    tout = torch.nn.functional.linear(tx, tw, tb)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    for mine, theirs in zip(grads, _grads(tx, tw, tb)):
        np.testing.assert_allclose(mine, theirs, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused_relu", [False, True])
def test_batchnorm2d_with_running_statistics(torch, rng, dtype, training, fused_relu):
    x = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(dtype)
    g, b = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    t_rm, t_rv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    forward, backward = ((F.batchnorm2d_relu_forward, F.batchnorm2d_relu_backward) if fused_relu
                         else (F.batchnorm2d_forward, F.batchnorm2d_backward))
    out, cache = forward(x, g, b, rm, rv, training, momentum=0.1, eps=1e-5)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = backward(dout, cache)
    tx, tg, tb = _t(torch, x), _t(torch, g), _t(torch, b)
    tout = torch.nn.functional.batch_norm(tx, t_rm, t_rv, tg, tb, training, 0.1, 1e-5)
    if fused_relu:
        tout = torch.relu(tout)
        assert (out == 0).mean() > 0.2                 # the ReLU does cut
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    for mine, theirs in zip(grads, _grads(tx, tg, tb)):
        np.testing.assert_allclose(mine, theirs, **tol(dtype))
    # running statistics updated in place exactly as PyTorch (unbiased variance)
    np.testing.assert_allclose(rm, t_rm.numpy(), **tol(dtype))
    np.testing.assert_allclose(rv, t_rv.numpy(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(torch, rng, dtype):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    out, cache = F.relu_forward(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = F.relu_backward(dout, cache)
    tx = _t(torch, x)
    torch.relu(tx).backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, torch.relu(torch.tensor(x)).numpy())
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol(dtype))


POOLS = [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 0)), (3, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", POOLS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling(torch, rng, dtype, k, s, p, kind):
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    fwd, bwd = ((F.max_pool2d_forward, F.max_pool2d_backward) if kind == "max"
                else (F.avg_pool2d_forward, F.avg_pool2d_backward))
    tfn = (torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d)
    out, cache = fwd(x, k, s, p)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = bwd(dout, cache)
    tx = _t(torch, x)
    tout = tfn(tx, k, s, p)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool2d(torch, rng, dtype):
    x = rng.standard_normal((3, 4, 5, 7)).astype(dtype)
    out, cache = F.global_avg_pool2d_forward(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = F.global_avg_pool2d_backward(dout, cache)
    tx = _t(torch, x)
    tout = torch.nn.functional.adaptive_avg_pool2d(tx, 1).flatten(1)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused_relu", [False, True])
def test_add(torch, rng, dtype, fused_relu):
    a, b = (rng.standard_normal((2, 3, 4, 4)).astype(dtype) for _ in range(2))
    forward, backward = ((F.add_relu_forward, F.add_relu_backward) if fused_relu
                         else (F.add_forward, F.add_backward))
    out, cache = forward(a, b)
    dout = rng.standard_normal(out.shape).astype(dtype)
    da, db = backward(dout, cache)
    ta, tb = _t(torch, a), _t(torch, b)
    tout = torch.relu(ta + tb) if fused_relu else ta + tb
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    np.testing.assert_allclose(da, ta.grad.numpy(), **tol(dtype))
    np.testing.assert_allclose(db, tb.grad.numpy(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_dropout_matches_torch_scaling(torch, rng, dtype, p):
    """Masks come from different generators, so compare what they must share:
    the kept values are x / (1 - p), the rest 0, eval mode is the identity,
    and the gradient uses the forward's mask."""
    x = rng.uniform(1, 2, (50, 40)).astype(dtype)
    out, cache = F.dropout_forward(x, p, True, np.random.default_rng(0))
    tout = torch.nn.functional.dropout(torch.tensor(x), p, True).numpy()
    for o in (out, tout):
        kept = o != 0
        np.testing.assert_allclose(o[kept], x[kept] / (1 - p), **tol(dtype))
        assert abs(kept.mean() - (1 - p)) < 0.05
    dout = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_allclose(F.dropout_backward(dout, cache), dout * (out / x), **tol(dtype))
    ev, _ = F.dropout_forward(x, p, False, None)
    np.testing.assert_array_equal(ev, torch.nn.functional.dropout(torch.tensor(x), p, False).numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(torch, rng, dtype, smoothing):
    logits = (rng.standard_normal((6, 10)) * 4).astype(dtype)
    labels = rng.integers(0, 10, 6)
    loss, cache = F.softmax_cross_entropy_forward(logits, labels, smoothing)
    dlogits = F.softmax_cross_entropy_backward(1.0, cache)
    tz = _t(torch, logits)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(labels), label_smoothing=smoothing)
    tloss.backward()
    assert isinstance(loss, float)
    assert loss == pytest.approx(tloss.item(), rel=tol(dtype)["rtol"])
    np.testing.assert_allclose(dlogits, tz.grad.numpy(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding,k,c", [(1, 1, (3, 3), 3), (2, 1, (3, 3), 3), (1, 0, (1, 1), 3),
                                                (2, 0, (1, 1), 5), (1, 2, (2, 2), 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_fused_relu(torch, rng, dtype, stride, padding, k, c, bias):
    """conv2d_forward(..., relu=True) = relu(conv2d(...)) on every path (direct,
    strided direct, pointwise, strided pointwise, im2col), forward and backward."""
    x = rng.standard_normal((2, c, 9, 7)).astype(dtype)
    w = rng.standard_normal((4, c) + k).astype(dtype)
    b = rng.standard_normal(4).astype(dtype) if bias else None
    out, cache = F.conv2d_forward(x, w, b, stride, padding, relu=True)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = F.conv2d_backward(dout, cache)
    tx, tw = _t(torch, x), _t(torch, w)
    tb = _t(torch, b) if bias else None
    tout = torch.relu(torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding))
    tout.backward(torch.tensor(dout))
    assert (out == 0).any() and (out > 0).any()            # the ReLU did cut, and let through
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(dtype))
    for mine, theirs in zip((dx, dw, db) if bias else (dx, dw), _grads(*((tx, tw, tb) if bias else (tx, tw)))):
        np.testing.assert_allclose(mine, theirs, **tol(dtype))


@pytest.mark.parametrize("k,stride,padding,size", [(1, 1, 0, 2), (1, 1, 0, 1), (3, 1, 1, 2), (3, 1, 1, 1),
                                                   (3, 2, 1, (8, 7)), (3, 1, 1, 4), (1, 2, 0, 3), (5, 1, 2, (1, 3)),
                                                   (3, (2, 1), 2, (3, 2)), (2, 1, 1, 1)])
def test_conv2d_small_maps_take_taps(torch, rng, k, stride, padding, size, monkeypatch):
    """Maps of up to 16 output positions run one product per kernel tap, and
    skip the taps that read only padding."""
    from minires.functional import _conv_paths
    monkeypatch.setattr(_conv_paths, "TAP_ROWS", 0)           # a batch of 5 would pick im2col
    size = size if isinstance(size, tuple) else (size, size)
    x = rng.standard_normal((5, 6, *size))
    w = rng.standard_normal((7, 6, k, k))
    out, cache = F.conv2d_forward(x, w, None, stride, padding)
    assert cache.path == "taps"
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = F.conv2d_backward(dout, cache)
    tx, tw = _t(torch, x), _t(torch, w)
    tout = torch.nn.functional.conv2d(tx, tw, None, stride=stride, padding=padding)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol(np.float64))
    for mine, theirs in zip((dx, dw), _grads(tx, tw)):
        np.testing.assert_allclose(mine, theirs, **tol(np.float64))


@pytest.mark.parametrize("where", ["w", "dout"])
def test_conv2d_small_maps_propagate_nan_through_the_padding_like_torch(torch, rng, where, monkeypatch):
    """0 * inf is NaN: an inf weight at a tap that reads only padding (a 1x1
    map) makes the output NaN, and an inf in dout makes NaN in the weight
    gradient of such a tap. The taps path skips those products, so it hands
    these calls to im2col."""
    from minires.functional import _conv_paths
    monkeypatch.setattr(_conv_paths, "TAP_ROWS", 0)
    x = rng.standard_normal((2, 3, 1, 1))
    w = rng.standard_normal((4, 3, 3, 3))
    dout = rng.standard_normal((2, 4, 1, 1))
    if where == "w":
        w[1, 2, 0, 0] = np.inf
    else:
        dout[0, 3, 0, 0] = np.inf
    out, cache = F.conv2d_forward(x, w, None, 1, 1)
    assert cache.path == ("im2col" if where == "w" else "taps")
    dx, dw, _ = F.conv2d_backward(dout, cache)
    tx, tw = _t(torch, x), _t(torch, w)
    tout = torch.nn.functional.conv2d(tx, tw, None, padding=1)
    tout.backward(torch.tensor(dout))
    assert np.isnan(dw).any() or np.isnan(out).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(tout.detach().numpy()))
    for mine, theirs in zip((dx, dw), _grads(tx, tw)):
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
        np.testing.assert_allclose(mine, theirs, **tol(np.float64))




@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding,k", [(1, 1, (3, 3)), (2, 1, (3, 3)), (2, 0, (1, 1)), ((2, 1), (0, 2), (3, 2))])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_batchnorm_eval(torch, rng, dtype, stride, padding, k, relu):
    """conv2d_batchnorm_eval = (relu of) batch_norm(conv2d(x), training=False)."""
    x = rng.standard_normal((2, 3, 9, 7)).astype(dtype)
    w = rng.standard_normal((4, 3) + k).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(dtype), rng.standard_normal(4).astype(dtype)
    mean, var = (rng.standard_normal(4) * 0.5).astype(np.float32), rng.uniform(0.3, 3, 4).astype(np.float32)
    out = F.conv2d_batchnorm_eval(x, w, None, stride, padding, gamma, beta, mean, var, eps=1e-3, relu=relu)
    ty = torch.nn.functional.conv2d(_t(torch, x, False), _t(torch, w, False), stride=stride, padding=padding)
    tout = torch.nn.functional.batch_norm(ty, torch.tensor(mean, dtype=ty.dtype), torch.tensor(var, dtype=ty.dtype),
                                          _t(torch, gamma, False), _t(torch, beta, False), training=False, eps=1e-3)
    if relu:
        tout = torch.relu(tout)
    np.testing.assert_allclose(out, tout.numpy(), **tol(dtype))
