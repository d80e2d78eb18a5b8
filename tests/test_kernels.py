"""The Cython kernels against the NumPy reference, on generated shapes."""
import os
import subprocess
import sys
import threading

from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minires import _kernels, _kernels_ref, kernels
from minires.functional import _conv_paths


@st.composite
def window_case(draw):
    """A batch, a kernel, a stride and a padding that fit together (non-square allowed)."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)
    return x, (kh, kw, sh, sw, ph, pw)


@settings(max_examples=150, deadline=None)
@given(window_case())
def test_im2col_matches_reference(case):
    x, geo = case
    got, want = _kernels.im2col(x, *geo), _kernels_ref.im2col(x, *geo)
    assert got.dtype == x.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@settings(max_examples=150, deadline=None)
@given(window_case())
def test_col2im_matches_reference_and_is_the_adjoint(case):
    x, geo = case
    n, c, h, w = x.shape
    cols = _kernels_ref.im2col(x, *geo)
    y = np.random.default_rng(0).standard_normal(cols.shape).astype(x.dtype)
    got = _kernels.col2im(y, c, h, w, *geo)
    want = _kernels_ref.col2im(y, c, h, w, *geo)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # <im2col(x), y> = <x, col2im(y)>: col2im is the adjoint, not the inverse.
    lhs = np.sum(cols.astype(np.float64) * y)
    rhs = np.sum(x.astype(np.float64) * got)
    assert np.isclose(lhs, rhs, rtol=1e-4, atol=1e-4)


@st.composite
def direct_conv_case(draw):
    """A convolution the direct kernels take: padding below the kernel size, strides 1-3;
    F and C crossing the kernels' register-tile widths (8, 16 and 32 channels; float32
    layers of at most 16 output channels take the narrow weight-gradient tile)."""
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 3, 8, 9, 16, 17, 33]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    dout = rng.standard_normal((n, f, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)).astype(dtype)
    return x, wt, dout, (sh, sw, ph, pw)


@settings(max_examples=150, deadline=None)
@given(direct_conv_case())
def test_direct_conv_matches_reference(case):
    x, w, dout, geometry = case
    tol = dict(rtol=1e-5, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    got, want = np.full(dout.shape, np.nan, x.dtype), np.empty(dout.shape, x.dtype)
    _kernels.conv_direct_forward(x, w, got, *geometry)
    _kernels_ref.conv_direct_forward(x, w, want, *geometry)
    np.testing.assert_allclose(got, want, **tol)
    shared = np.full(dout.shape, np.nan, x.dtype)
    _kernels.conv_direct_forward(x, w, shared, *geometry, threads=2)      # the tiles of each grid shared
    np.testing.assert_array_equal(shared, got)
    kh, kw = w.shape[2:]
    dw = _kernels.conv_direct_backward_weight(x, dout, kh, kw, *geometry)
    assert dw.dtype == x.dtype and dw.shape == w.shape
    np.testing.assert_allclose(dw, _kernels_ref.conv_direct_backward_weight(x, dout, kh, kw, *geometry), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [6, 7, 13])
def test_direct_conv_tiles_of_several_images(n, dtype):
    """8x8 maps run 6 images to a grid: whole tiles, and a partial last tile
    whose empty slots must contribute nothing to the weight gradient (float32:
    the narrow weight-gradient tile, 5 channels padded to 16)."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((5, 3, 3, 3)).astype(dtype)
    dout = rng.standard_normal((n, 5, 8, 8)).astype(dtype)
    # float32: dw sums up to 13 * 64 products, so its rounding reaches about 1e-4
    tol = dict(rtol=1e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    got, want = np.empty(dout.shape, dtype), np.empty(dout.shape, dtype)
    _kernels.conv_direct_forward(x, w, got, 1, 1, 1, 1)
    _kernels_ref.conv_direct_forward(x, w, want, 1, 1, 1, 1)
    np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_allclose(_kernels.conv_direct_backward_weight(x, dout, 3, 3, 1, 1, 1, 1),
                               _kernels_ref.conv_direct_backward_weight(x, dout, 3, 3, 1, 1, 1, 1), **tol)


@pytest.mark.parametrize("shape, f, stride, dtype", [
    ((2, 3, 32, 32), 9, 1, np.float32), ((1, 2, 33, 35), 17, 1, np.float32),
    ((2, 2, 64, 66), 5, 2, np.float32), ((1, 3, 23, 24), 9, 1, np.float64)])
def test_direct_weight_gradient_on_big_planes(shape, f, stride, dtype):
    """Output planes of 4 KB and more are transposed in blocks of 8 channels x
    8 columns (the hypothesis cases above stay below that size)."""
    rng = np.random.default_rng(f)
    x = rng.standard_normal(shape).astype(dtype)
    oh, ow = (shape[2] - 1) // stride + 1, (shape[3] - 1) // stride + 1
    assert oh * ow * np.dtype(dtype).itemsize >= 4096
    dout = rng.standard_normal((shape[0], f, oh, ow)).astype(dtype)
    tol = dict(rtol=1e-4, atol=2e-3) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(_kernels.conv_direct_backward_weight(x, dout, 3, 3, stride, stride, 1, 1),
                               _kernels_ref.conv_direct_backward_weight(x, dout, 3, 3, stride, stride, 1, 1), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, padding", [
    ((1, 16, 32, 32), (3, 3), (1, 1)), ((7, 3, 8, 8), (3, 3), (1, 1)), ((13, 2, 6, 9), (5, 3), (2, 0)),
    ((2, 4, 5, 7), (2, 4), (0, 3))])
def test_direct_conv_writes_every_value_of_its_stride_1_planes(shape, kernel, padding, dtype):
    """The stride-1 planes are allocated without zeroing: the loader writes
    the padding around the image rows (and the empty slots of a partial tile
    of images: 8x8 maps go 6 to a grid) itself. Just before each call, NaN
    arrays of the planes' size are made and freed, so that the planes come
    from memory holding NaN: a value the loader skipped would put NaN in the output."""
    rng = np.random.default_rng(shape[0])
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((5, shape[1], *kernel)).astype(dtype)
    out_shape = [_kernels_ref.output_size(s, k, 1, p) for s, k, p in zip(shape[2:], kernel, padding)]
    want = np.empty((shape[0], 5, *out_shape), dtype)
    _kernels_ref.conv_direct_forward(x, w, want, 1, 1, *padding)
    dout = rng.standard_normal(want.shape).astype(dtype)
    dw_want = _kernels_ref.conv_direct_backward_weight(x, dout, *kernel, 1, 1, *padding)
    plane_values = shape[1] * _kernels._grid(shape, *kernel, 1, 1, *padding)[4]
    tol = dict(rtol=1e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for _ in range(3):
        _free_nan_arrays(plane_values, dtype)
        got = np.empty(want.shape, dtype)
        _kernels.conv_direct_forward(x, w, got, 1, 1, *padding)
        np.testing.assert_allclose(got, want, **tol)
        _free_nan_arrays(plane_values, dtype)
        np.testing.assert_allclose(_kernels.conv_direct_backward_weight(x, dout, *kernel, 1, 1, *padding),
                                   dw_want, **tol)


def _free_nan_arrays(size, dtype):
    """Fill a few arrays of `size` values with NaN and free them: the allocator
    hands that memory to the next arrays of the size."""
    arrays = [np.full(size, np.nan, dtype) for _ in range(4)]
    del arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_weights_given_once_give_the_same_output(dtype):
    """conv_direct_forward(wt=direct_weights(w)) equals the call that tiles w
    itself, bit for bit (on one thread and shared by two), and the kernel
    reads wt, not w (the tiles of -w give -out); a wt that cannot be w's
    tiling (other weights' shape, another dtype) is refused by name."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 9, 11)).astype(dtype)
    w = rng.standard_normal((9, 5, 3, 3)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype)
    wt = _kernels.direct_weights(w)
    for threads in (1, 2):
        want, got = np.empty((2, 9, 9, 11), dtype), np.empty((2, 9, 9, 11), dtype)
        _kernels.conv_direct_forward(x, w, want, 1, 1, 1, 1, b, True, threads=threads)
        _kernels.conv_direct_forward(x, w, got, 1, 1, 1, 1, b, True, threads=threads, wt=wt)
        np.testing.assert_array_equal(got, want)
        _kernels.conv_direct_forward(x, w, want, 1, 1, 1, 1, threads=threads)
        _kernels.conv_direct_forward(x, w, got, 1, 1, 1, 1, threads=threads, wt=_kernels.direct_weights(-w))
        np.testing.assert_array_equal(got, -want)
    other_dtype = np.float64 if dtype == np.float32 else np.float32
    for bad in (_kernels.direct_weights(w[:, :4]), wt.astype(other_dtype)):
        with pytest.raises(ValueError, match="wt must be direct_weights"):
            _kernels.conv_direct_forward(x, w, got, 1, 1, 1, 1, wt=bad)


@pytest.mark.parametrize("n", [1, 4])
def test_kept_direct_weights_and_path_are_made_once_for_their_own_weights(monkeypatch, n):
    """conv2d_forward(kept=...) on the direct path (one image shared between
    the threads, or a batch in chunks): the weights are tiled and the path
    chosen on the first call and reused, with the same numbers as without
    kept; new weights get their own tiling; writeable weights never use them."""
    from minires import parallel
    from minires.functional import conv as F
    monkeypatch.setattr(parallel, "_threads", 2)
    tilings, choices = [], []
    real_tiling, real_choice = kernels.direct_weights, _conv_paths.choose_path
    monkeypatch.setattr(kernels, "direct_weights", lambda w, threads=1: tilings.append(w) or real_tiling(w))
    monkeypatch.setattr(_conv_paths, "choose_path", lambda *a, **k: choices.append(a) or real_choice(*a, **k))
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 16, 32, 32)).astype(np.float32)
    w = _frozen(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) / 12)
    b = rng.standard_normal(16).astype(np.float32)
    want, _ = F.conv2d_forward(x, w.copy(), b, padding=1)
    assert tilings == [] and len(choices) == 1
    kept = {}
    for _ in range(2):
        out, cache = F.conv2d_forward(x, w, b, padding=1, kept=kept)
        assert cache.path == "direct" and len(tilings) == 1 and kept["direct"][0] is w and len(choices) == 2
        np.testing.assert_array_equal(out, want)
    w2 = _frozen(-w)
    out, _ = F.conv2d_forward(x, w2, b, padding=1, kept=kept)
    assert len(tilings) == 2 and kept["direct"][0] is w2
    np.testing.assert_array_equal(out, F.conv2d_forward(x, -w, b, padding=1)[0])
    out, _ = F.conv2d_forward(x, w.copy(), b, padding=1, kept=kept)
    assert len(tilings) == 2 and kept["direct"][0] is w2
    np.testing.assert_array_equal(out, want)


@settings(max_examples=150, deadline=None)
@given(window_case())
def test_max_pool_matches_reference(case):
    x, geo = case
    out, arg = _kernels.max_pool_forward(x, *geo)
    out_r, arg_r = _kernels_ref.max_pool_forward(x, *geo)
    np.testing.assert_array_equal(out, out_r)
    np.testing.assert_array_equal(arg, arg_r)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    h, w = x.shape[2:]
    np.testing.assert_allclose(_kernels.max_pool_backward(dout, arg, h, w, *geo),
                               _kernels_ref.max_pool_backward(dout, arg_r, h, w, *geo),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 5, 7), (3, 1, 32, 34)])
def test_max_pool_2x2_matches_reference(shape, dtype):
    """2x2 stride 2 has a kernel of its own: ties (values on a coarse grid),
    NaN (one or several in a window) and odd sizes (the last row and column dropped)."""
    rng = np.random.default_rng(shape[3])
    x = rng.integers(-2, 3, shape).astype(dtype)
    x.reshape(-1)[rng.choice(x.size, x.size // 10, replace=False)] = np.nan
    out, arg = _kernels.max_pool_forward(x, 2, 2, 2, 2, 0, 0)
    out_r, arg_r = _kernels_ref.max_pool_forward(x, 2, 2, 2, 2, 0, 0)
    np.testing.assert_array_equal(out, out_r)
    np.testing.assert_array_equal(arg, arg_r)
    assert {0, 1, 2, 3} <= set(np.unique(arg))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,padding", [((2, 3, 16, 16), 1), ((2, 3, 16, 16), 0), ((1, 2, 5, 7), 1),
                                           ((1, 2, 5, 7), 0), ((3, 1, 9, 4), 1), ((3, 1, 9, 4), 0),
                                           ((1, 1, 1, 1), 1), ((1, 2, 2, 3), 1), ((2, 2, 6, 10), 1),
                                           ((1, 3, 2, 2), 1), ((1, 1, 32, 8), 1)])
def test_max_pool_3x3_stride_2_matches_reference(shape, dtype, padding):
    """3x3 stride 2 has kernels of its own (border windows read clamped
    pixels; float32 maps of even size with padding 1 in two vectorised
    passes): ties, NaN (one or several in a window), -inf everywhere in a
    border window, odd sizes, a 1x1 image."""
    rng = np.random.default_rng(shape[3] + padding)
    x = rng.integers(-2, 3, shape).astype(dtype)
    x.reshape(-1)[rng.choice(x.size, x.size // 8, replace=False)] = np.nan
    x[0, 0, :2, :2] = -np.inf
    out, arg = _kernels.max_pool_forward(x, 3, 3, 2, 2, padding, padding)
    out_r, arg_r = _kernels_ref.max_pool_forward(x, 3, 3, 2, 2, padding, padding)
    np.testing.assert_array_equal(out, out_r)
    np.testing.assert_array_equal(arg, arg_r)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(_kernels.max_pool_backward(dout, arg, *shape[2:], 3, 3, 2, 2, padding, padding),
                               _kernels_ref.max_pool_backward(dout, arg_r, *shape[2:], 3, 3, 2, 2, padding, padding),
                               rtol=1e-6, atol=1e-6)       # overlapping windows: sums in another order


def test_max_pool_ties_pick_the_first():
    x = np.ones((1, 1, 2, 2), dtype=np.float64)
    for backend in (_kernels, _kernels_ref):
        _, arg = backend.max_pool_forward(x, 2, 2, 2, 2, 0, 0)
        assert arg.item() == 0


def test_threads_setting_keeps_results(rng):
    """One thread and two (set explicitly: `make test` runs with OMP_NUM_THREADS=1)."""
    x = rng.standard_normal((4, 3, 9, 7)).astype(np.float32)
    n = _kernels.get_num_threads()
    try:
        _kernels.set_num_threads(1)
        one = _kernels.im2col(x, 3, 3, 1, 1, 1, 1)
        _kernels.set_num_threads(2)
        assert _kernels.get_num_threads() == 2
        np.testing.assert_array_equal(_kernels.im2col(x, 3, 3, 1, 1, 1, 1), one)
    finally:
        _kernels.set_num_threads(n)
    with pytest.raises(ValueError, match="num_threads"):
        kernels.set_num_threads(0)


def _every_kernel(x, dout):
    """The outputs of every threaded loop, on x (N, C, H, W) and dout of x's shape."""
    c = x.shape[1]
    g, b = np.linspace(0.5, 2, c).astype(x.dtype), np.linspace(-1, 1, c).astype(x.dtype)
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    outs = [_kernels.relu(x), _kernels.relu_grad(dout, x), _kernels.add_relu(x, dout)]
    for plane in (0, 64):                           # per channel and per column
        with mock.patch.object(_kernels, "SMALL_PLANE", plane):
            out, mean, var = _kernels.batchnorm_forward(x, g, b, rm, rv, True, 1e-5, True)
            outs += [out, mean, var, *_kernels.batchnorm_backward(dout, x, mean, 1 / np.sqrt(var + 1e-5),
                                                                  g, b, True, True)]
    pooled, arg = _kernels.max_pool_forward(x, 2, 2, 2, 2, 0, 0)
    outs += [pooled, arg, _kernels.max_pool_backward(pooled, arg, *x.shape[2:], 2, 2, 2, 2, 0, 0)]
    cols = _kernels.im2col(x, 3, 3, 1, 1, 1, 1)
    outs += [cols, _kernels.col2im(cols, c, *x.shape[2:], 3, 3, 1, 1, 1, 1)]
    biased = x.copy()
    _kernels.bias_relu(biased, b, True)
    for columns in (3, 15):                         # the dot form and the broadcast form
        a2, b2 = x.reshape(-1, 720 // columns // 4), dout.reshape(720 // columns // 4, -1)[:, :columns]
        product = np.empty((a2.shape[0], columns), x.dtype)
        _kernels.matmul(a2, np.ascontiguousarray(b2), product)
        outs.append(product)
    return outs + [biased]


def test_threaded_loops_equal_one_thread(rng):
    """Every prange loop split over two threads (GRAIN 0: even small arrays)
    gives the same bits as one thread, and as the default grain, under which
    small arrays stay on the calling thread."""
    x = rng.standard_normal((3, 5, 8, 6)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    n = _kernels.get_num_threads()
    try:
        _kernels.set_num_threads(1)
        one = _every_kernel(x, dout)
        _kernels.set_num_threads(2)
        default_grain = _every_kernel(x, dout)
        with mock.patch.object(_kernels, "GRAIN", 0):
            assert _kernels._threads(10) == 2
            two = _every_kernel(x, dout)
    finally:
        _kernels.set_num_threads(n)
    assert _kernels._threads(10) == 1 and _kernels._threads(1 << 20) == n
    for a, b, c in zip(one, two, default_grain):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_pure_mode_selects_the_reference():
    r = _run("import minires.kernels as k; print(k.name)", MINIRES_PURE="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reference"


def test_missing_extension_says_how_to_build():
    code = ("import sys; sys.modules['minires._kernels'] = None\n"
            "import minires.kernels")
    r = _run(code, MINIRES_PURE="0")
    assert r.returncode != 0
    assert "pip install -e ." in r.stderr and "MINIRES_PURE=1" in r.stderr


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([np.float32, np.float64]), st.booleans(), st.booleans(), st.integers(0, 2**31),
       st.sampled_from([0, 64]))
def test_batchnorm_kernels_match_reference(n, c, h, w, dtype, training, relu, seed, small_plane):
    """Both loop orders: per channel (SMALL_PLANE 0) and per column (planes of up to 64 values)."""
    with mock.patch.object(_kernels, "SMALL_PLANE", small_plane):
        _check_batchnorm_kernels(n, c, h, w, dtype, training, relu, seed)


def _check_batchnorm_kernels(n, c, h, w, dtype, training, relu, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * 3 + 2).astype(dtype)
    g, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    got = _kernels.batchnorm_forward(x, g, b, rm, rv, training, 1e-5, relu)
    want = _kernels_ref.batchnorm_forward(x, g, b, rm, rv, training, 1e-5, relu)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a, r, **tol)
    assert got[0].dtype == dtype
    # batchnorm_apply with the forward's statistics is its output again, bit for bit (nn.recompute)
    for backend, (out, mean, var) in ((_kernels, got), (_kernels_ref, want)):
        np.testing.assert_array_equal(backend.batchnorm_apply(x, mean, 1 / np.sqrt(var + 1e-5), g, b, relu), out)
    dout = rng.standard_normal(x.shape).astype(dtype)
    rstd = 1 / np.sqrt(want[2] + 1e-5)
    for a, r in zip(_kernels.batchnorm_backward(dout, x, want[1], rstd, g, b, training, relu),
                    _kernels_ref.batchnorm_backward(dout, x, want[1], rstd, g, b, training, relu)):
        np.testing.assert_allclose(a, r, **tol)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**31))
def test_relu_kernels_match_reference(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out = _kernels.relu(x)
    np.testing.assert_array_equal(out, _kernels_ref.relu(x))
    np.testing.assert_array_equal(_kernels.relu_grad(dout, out), _kernels_ref.relu_grad(dout, out))
    np.testing.assert_array_equal(_kernels.add_relu(x, dout), _kernels_ref.add_relu(x, dout))


@st.composite
def small_map_case(draw):
    """A conv whose output has at most 16 positions (the per-tap path), with any
    padding (up to and past the kernel size: taps that read only padding)."""
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh + 1)), draw(st.integers(0, kw + 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 6))
    w = draw(st.integers(max(1, kw - 2 * pw), 6))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    assume(oh * ow <= 16 and not (oh * ow == 16 and kh == kw == 1 and ph == pw == 0))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    arrays = [rng.standard_normal(s).astype(dtype) for s in ((n, c, h, w), (f, c, kh, kw), (n, f, oh, ow))]
    return (*arrays, (sh, sw, ph, pw))


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul")   # 0 * inf: the NaN looked for
def test_small_maps_take_taps_when_the_rows_pay_for_the_weight_copies():
    from minires.functional._conv_paths import choose_path
    w = np.ones((8, 4, 3, 3), np.float32)
    assert choose_path((64, 4, 2, 2), (3, 3, 1, 1, 1, 1), w) == "taps"       # 256 rows
    assert choose_path((2, 4, 2, 2), (3, 3, 1, 1, 1, 1), w) == "im2col"      # 8 rows, every tap useful
    assert choose_path((4, 4, 1, 1), (3, 3, 1, 1, 1, 1), w) == "taps"        # one useful tap of nine
    assert choose_path((64, 4, 8, 8), (3, 3, 1, 1, 1, 1), w) == "direct"
    assert choose_path((64, 4, 8, 8), (1, 1, 2, 2, 0, 0), w[:, :, :1, :1]) == "pointwise"   # 16 positions
    x = np.ones((64, 4, 2, 2), np.float32)
    assert _conv_paths.forward(x, w, (3, 3, 1, 1, 1, 1))[2] == "taps"
    for value in (np.nan, np.inf):
        w[0, 0, 0, 0] = value           # a weight that is not finite: forward takes im2col after all
        out, _, path = _conv_paths.forward(x, w, (3, 3, 1, 1, 1, 1))
        assert path == "im2col" and not np.isfinite(out[:, 0]).any()
        assert np.isnan(out[:, 0, 0, 0]).all()         # the tap that meets the padding there: 0 * inf


@pytest.mark.parametrize("backend", [_kernels, _kernels_ref])
@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (5, 3, 1, 1), (2, 7, 3, 2), (1, 1, 7, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tap_weights_are_each_taps_matrix_and_say_whether_all_are_finite(backend, shape, dtype):
    w = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    wt, finite = backend.tap_weights(w)
    assert finite is True and wt.shape == (shape[2] * shape[3], *shape[:2]) and wt.flags.c_contiguous
    for i in range(shape[2]):
        for j in range(shape[3]):
            np.testing.assert_array_equal(wt[i * shape[3] + j], w[:, :, i, j])
    for value in (np.nan, np.inf, -np.inf):
        bad = w.copy()
        bad[-1, -1, -1, -1] = value
        assert backend.tap_weights(bad)[1] is False


@pytest.mark.parametrize("backend", [_kernels, _kernels_ref])
@pytest.mark.parametrize("taps", [[4], [0, 2, 8], [8, 1]])
def test_tap_weights_copy_the_taps_asked_and_check_them_all(backend, taps):
    """On a 1x1 map a 3x3 conv uses its centre tap alone: only that one is
    copied, but a NaN at any tap still says 'not finite' (it makes NaN at the
    padding, as in PyTorch)."""
    w = np.random.default_rng(0).standard_normal((6, 5, 3, 3)).astype(np.float32)
    wt, finite = backend.tap_weights(w, taps)
    assert finite is True and wt.shape == (len(taps), 6, 5) and wt.flags.c_contiguous
    for k, t in enumerate(taps):
        np.testing.assert_array_equal(wt[k], w[:, :, t // 3, t % 3])
    unused = next(t for t in range(9) if t not in taps)
    bad = w.copy()
    bad[2, 3, unused // 3, unused % 3] = np.inf
    assert backend.tap_weights(bad, taps)[1] is False


def test_the_tap_path_skips_the_input_gradient_when_asked():
    import minires.functional as F
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 2, 2)).astype(np.float32)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    out, cache = F.conv2d_forward(x, w, None, 1, 1)
    assert cache.path == "taps"
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx, dw, _ = F.conv2d_backward(dout, cache)
    no_dx, dw_only, _ = F.conv2d_backward(dout, cache, input_grad=False)
    assert dx is not None and no_dx is None
    np.testing.assert_array_equal(dw_only, dw)


@settings(max_examples=100, deadline=None)
@given(small_map_case())
def test_the_tap_path_agrees_with_the_loop_convolution(case):
    """Small maps take one product per useful tap (functional/_conv_taps.py):
    forward and all three gradients against the four-loop convolution."""
    import minires.functional as F
    x, w, dout, (sh, sw, ph, pw) = case
    tol = dict(rtol=1e-4, atol=1e-4) if x.dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    b = np.arange(w.shape[0], dtype=x.dtype)
    with mock.patch.object(_conv_paths, "TAP_ROWS", 0):      # small batches too (they pick im2col)
        out, cache = F.conv2d_forward(x, w, b, (sh, sw), (ph, pw))
    assert cache.path == "taps"
    np.testing.assert_allclose(out, _kernels_ref.conv_naive_forward(x, w, b, sh, sw, ph, pw), **tol)
    grads = F.conv2d_backward(dout, cache)
    for got, want in zip(grads, _kernels_ref.conv_naive_backward(dout, x, w, sh, sw, ph, pw)):
        assert got.dtype == x.dtype
        np.testing.assert_allclose(got, want, **tol)


@settings(max_examples=40, deadline=None)
@given(direct_conv_case())
def test_the_loop_convolution_agrees_with_the_library(case):
    """conv_naive_* (four loops, the version a learner writes first) against
    minires.functional's conv: forward and all three gradients, float64."""
    import minires.functional as F
    x, w, dout, (sh, sw, ph, pw) = case
    x, w, dout = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    b = np.arange(w.shape[0], dtype=np.float64)
    out, cache = F.conv2d_forward(x, w, b, (sh, sw), (ph, pw))
    np.testing.assert_allclose(_kernels_ref.conv_naive_forward(x, w, b, sh, sw, ph, pw), out, rtol=1e-10, atol=1e-10)
    grads = F.conv2d_backward(dout, cache)
    for got, want in zip(_kernels_ref.conv_naive_backward(dout, x, w, sh, sw, ph, pw), grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # and the matrix form in plain NumPy, which the module's docstring derives
    out_np, cache_np = F.conv.conv2d_forward_numpy(x, w, b, (sh, sw), (ph, pw))
    np.testing.assert_allclose(out_np, out, rtol=1e-10, atol=1e-10)
    for got, want in zip(F.conv.conv2d_backward_numpy(dout, cache_np), grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("geometry", [(1, 1, 1, 1), (2, 2, 1, 1), (1, 1, 0, 0)])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True), (True, True)])
def test_direct_conv_bias_and_relu_epilogue(geometry, bias, relu):
    """The forward kernel adds the bias and applies the ReLU as it writes its rows."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32) if bias else None
    sh, sw, ph, pw = geometry
    shape = (3, 6, (9 + 2 * ph - 3) // sh + 1, (8 + 2 * pw - 3) // sw + 1)
    plain, got, want = (np.empty(shape, np.float32) for _ in range(3))
    _kernels.conv_direct_forward(x, w, plain, *geometry)
    _kernels.conv_direct_forward(x, w, got, *geometry, b, relu)
    _kernels_ref.conv_direct_forward(x, w, want, *geometry, b, relu)
    expected = plain + (b[:, None, None] if bias else 0)
    expected = np.maximum(expected, 0) if relu else expected
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(want, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [_kernels, _kernels_ref])
def test_bias_relu_in_place_keeps_nan(backend):
    out = np.array([[[-1.0, 0.5, np.nan, -np.inf], [2.0, -3.0, np.inf, 0.0]]], np.float32)   # (1, 2, 4)
    backend.bias_relu(out, np.array([0.5, 1.0], np.float32), True)
    np.testing.assert_array_equal(out, [[[0.0, 1.0, np.nan, 0.0], [3.0, 0.0, np.inf, 1.0]]])
    backend.bias_relu(out, None, False)                          # nothing to do
    np.testing.assert_array_equal(out, [[[0.0, 1.0, np.nan, 0.0], [3.0, 0.0, np.inf, 1.0]]])


@st.composite
def winograd_case(draw):
    """A batch for the Winograd kernel: even maps (non-square, down to 2x2),
    channel counts crossing the register tile's 8 output channels, on one
    thread or shared between 2 or 3 (one block of all the tiles)."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    f = draw(st.sampled_from([1, 3, 8, 9, 16, 17, 33]))
    h, w = 2 * draw(st.integers(1, 8)), 2 * draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if draw(st.booleans()) else None
    return x, wt, b, draw(st.booleans()), draw(st.sampled_from([1, 2, 3]))


def _winograd(backend, x, w, b, relu, threads=1):
    out = np.full((x.shape[0], w.shape[0], *x.shape[2:]), np.nan, x.dtype)
    finite = backend.conv_winograd_forward(x, backend.winograd_weights(w), out, b, relu, threads=threads)
    return out, finite


@settings(max_examples=150, deadline=None)
@given(winograd_case())
def test_winograd_conv_matches_reference_and_the_loops(case):
    x, w, b, relu, threads = case
    tol = dict(rtol=1e-5, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    got, finite = _winograd(_kernels, x, w, b, relu, threads)
    want, want_finite = _winograd(_kernels_ref, x, w, b, relu)
    assert finite is True and want_finite is True
    np.testing.assert_allclose(got, want, **tol)
    loops = _kernels_ref.conv_naive_forward(x, w, b, 1, 1, 1, 1)
    np.testing.assert_allclose(got, np.maximum(loops, 0) if relu else loops, **tol)


@settings(max_examples=100, deadline=None)
@given(winograd_case())
def test_winograd_weight_gradient_matches_reference_and_the_loops(case):
    x, w = case[:2]
    dout = np.random.default_rng(x.shape[1]).standard_normal((x.shape[0], w.shape[0], *x.shape[2:]))
    dout = dout.astype(x.dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if x.dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    got = _kernels.conv_winograd_backward_weight(x, dout)
    assert got.dtype == x.dtype and got.shape == w.shape
    np.testing.assert_allclose(got, _kernels_ref.conv_winograd_backward_weight(x, dout), **tol)
    np.testing.assert_allclose(got, _kernels_ref.conv_naive_backward(dout, x, w, 1, 1, 1, 1)[1], **tol)


@pytest.mark.parametrize("shape", [(70, 1, 8, 8), (9, 3, 16, 16), (3, 2, 32, 32), (5, 40, 4, 6)])
def test_winograd_conv_in_several_blocks(shape):
    """Images go through the kernel in blocks of about WINOGRAD_BLOCK tiles:
    several blocks and a partial last one (70 images of 8x8 with 1 channel),
    one image per block, and blocks smaller than an image's tiles."""
    rng = np.random.default_rng(shape[0])
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((9, shape[1], 3, 3)).astype(np.float32)
    got, finite = _winograd(_kernels, x, w, None, False)
    assert finite
    np.testing.assert_allclose(got, _kernels_ref.conv_naive_forward(x, w, None, 1, 1, 1, 1), rtol=1e-4, atol=1e-4)
    dout = rng.standard_normal(got.shape).astype(np.float32)
    want = _kernels_ref.conv_direct_backward_weight(x.astype(np.float64), dout.astype(np.float64), 3, 3, 1, 1, 1, 1)
    np.testing.assert_allclose(_kernels.conv_winograd_backward_weight(x, dout), want,
                               rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape,dtype", [((3, 5, 32, 32), np.float32), ((4, 3, 16, 16), np.float32),
                                         ((5, 2, 8, 8), np.float32), ((3, 4, 12, 20), np.float32),
                                         ((3, 3, 16, 16), np.float64)])
def test_winograd_blocks_start_and_end_inside_images(monkeypatch, shape, dtype):
    """With WINOGRAD_BLOCK at 1 the forward's blocks are the fewest tile rows
    that fill a register tile: they start and end inside images (the vector
    transforms of maps 8, 16 and 32 wide, the loops for 20 wide and float64);
    likewise the blocks of the forward shared between threads, side by side."""
    monkeypatch.setattr(_kernels, "WINOGRAD_BLOCK", 1)
    monkeypatch.setattr(_kernels, "WINOGRAD_SHARED_BLOCK", 1)
    rng = np.random.default_rng(shape[1])
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((9, shape[1], 3, 3)).astype(dtype)
    rows = _kernels._winograd_blocks(x.shape, 12, True)[0]
    if shape[2] >= 16:
        assert rows < shape[2] // 2                 # less than an image per block
    want = np.maximum(_kernels_ref.conv_naive_forward(x, w, None, 1, 1, 1, 1), 0)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for threads in (1, 2):
        got, finite = _winograd(_kernels, x, w, None, True, threads)
        assert finite
        np.testing.assert_allclose(got, want, **tol)
    dout = rng.standard_normal(got.shape).astype(dtype)
    np.testing.assert_allclose(_kernels.conv_winograd_backward_weight(x, dout),
                               _kernels_ref.conv_naive_backward(dout, x, w, 1, 1, 1, 1)[1], **tol)


def test_winograd_weight_gradient_blocks_hold_whole_images_and_enough_tiles():
    """256 channels at 8x8: 16 tiles an image, so a block of the weight
    gradient takes WINOGRAD_WEIGHT_TILES of them (4 images); at 32x32 one image."""
    x = np.zeros((8, 256, 8, 8), np.float32)
    assert _kernels._winograd_blocks(x.shape, 256, False)[0] == _kernels.WINOGRAD_WEIGHT_TILES // 4   # rows of 4 tiles
    assert _kernels._winograd_blocks((8, 64, 32, 32), 64, False)[0] == 16


def test_winograd_weight_gradient_comparison_fails_for_a_wrong_adjoint(monkeypatch):
    """dw = G^T dU G: with dU's middle rows swapped before the final transform
    (as if G's middle rows were) the comparison above fails."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    right = _kernels.conv_winograd_backward_weight(x, dout)
    adjoint = _kernels._winograd_weight_gradient
    swapped = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]
    monkeypatch.setattr(_kernels, "_winograd_weight_gradient",
                        lambda du, dw: adjoint(np.ascontiguousarray(du[swapped]), dw))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(_kernels.conv_winograd_backward_weight(x, dout), right, rtol=1e-4, atol=1e-4)


def test_winograd_comparison_fails_for_a_wrong_transformed_kernel():
    """The checks above can fail: one of the 16 transformed kernels off by
    a little moves whole 2x2 output blocks beyond the tolerance."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    u = _kernels.winograd_weights(w)
    u[5] *= 1.001
    got = np.empty((2, 8, 8, 8), np.float32)
    _kernels.conv_winograd_forward(x, u, got)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, _kernels_ref.conv_naive_forward(x, w, None, 1, 1, 1, 1),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [_kernels, _kernels_ref])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("width,dtype", [(8, np.float32), (16, np.float32), (32, np.float32), (6, np.float32),
                                         (8, np.float64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_conv_reports_non_finite_sums(backend, value, width, dtype, threads):
    """A non-finite input spreads over a whole tile (inf - inf in the
    transforms), so the kernel says so and the caller computes that chunk
    again with the direct kernel; even a ReLU that would turn -inf into 0
    does not hide it (float32 maps 8, 16 and 32 wide take the vector code),
    nor does the thread that meets it (the last output channels' share)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 6, width)).astype(dtype)
    w = np.random.default_rng(2).standard_normal((12, 3, 3, 3)).astype(dtype)
    assert _winograd(backend, x, w, None, True, threads)[1] is True
    x[1, 2, 3, 4] = value
    assert _winograd(backend, x, w, None, True, threads)[1] is False
    w[-1, 0, 0, 0] = value          # only the last output channel, on the last thread, meets it
    x[1, 2, 3, 4] = 0
    assert _winograd(backend, x, w, None, True, threads)[1] is False


def test_one_image_shares_its_grid_between_the_threads(monkeypatch):
    """Fewer images than threads: one kernel call on every thread (SPLIT_MACS
    and up), with the bits of the one-thread call; small convs stay on one thread."""
    from minires import parallel
    monkeypatch.setattr(parallel, "_threads", 2)
    calls = []
    real = kernels.conv_direct_forward
    monkeypatch.setattr(kernels, "conv_direct_forward",
                        lambda *a, threads=1, **k: calls.append(threads) or real(*a, threads=threads, **k))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 16, 12)).astype(np.float32)
    w = rng.standard_normal((24, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    assert w.size * 16 * 12 >= _conv_paths.SPLIT_MACS
    got = _conv_paths._direct_forward(x, w, (3, 3, 1, 1, 1, 1), b, True)
    want = np.empty_like(got)
    real(x, w, want, 1, 1, 1, 1, b, True)
    assert calls == [2]
    np.testing.assert_array_equal(got, want)
    _conv_paths._direct_forward(x[:, :4], w[:4, :4], (3, 3, 1, 1, 1, 1), None, False)
    _conv_paths._direct_forward(np.concatenate([x, x]), w, (3, 3, 1, 1, 1, 1), None, False)
    assert calls == [2, 1, 1, 1]       # small: one thread; two images: one chunk per thread


def _record_matmul(monkeypatch, main_thread=True):
    """Count the calls of kernels.matmul (the product shared between the
    threads when main_thread: then never called from the pool's threads)."""
    from minires import parallel
    monkeypatch.setattr(parallel, "_threads", 2)
    calls = []
    real = kernels.matmul

    def record(a, b, out, **k):
        assert threading.current_thread() is threading.main_thread() or not main_thread
        calls.append(b.shape)
        real(a, b, out, **k)
    monkeypatch.setattr(kernels, "matmul", record)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_one_image_1x1_conv_shares_its_product_and_keeps_its_backward(monkeypatch, stride, dtype):
    """A 1x1 conv on one image takes kernels.matmul, whose rows are shared
    between the threads (a BLAS product would run on one); two images take
    one product per thread. Forward and backward agree with the NumPy form."""
    from minires.functional import conv as F
    calls = _record_matmul(monkeypatch)
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((1, 64, 32, 32)).astype(dtype)
    w = rng.standard_normal((72, 64, 1, 1)).astype(dtype)
    b = rng.standard_normal(72).astype(dtype)
    out, cache = F.conv2d_forward(x, w, b, stride=stride)
    want, numpy_cache = F.conv2d_forward_numpy(x, w, b, stride=stride)
    assert cache.path == "pointwise" and calls == [(64, 32 * 32 // stride**2)]
    tol = 1e-12 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, expected in zip(F.conv2d_backward(dout, cache), F.conv2d_backward_numpy(dout, numpy_cache)):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * 10)
    F.conv2d_forward(np.concatenate([x, x]), w, b, stride=stride)
    assert len(calls) == 1


@pytest.mark.parametrize("geometry,size", [((3, 3, 1, 1, 1, 1), 4), ((3, 3, 1, 1, 1, 1), 1),
                                           ((3, 3, 2, 2, 1, 1), 8), ((1, 1, 2, 2, 0, 0), 4)])
def test_one_image_small_map_shares_its_product(monkeypatch, geometry, size):
    """One image on a small map (im2col: 4x4 and smaller) multiplies its
    columns with kernels.matmul; the result is the reference conv's."""
    from minires import parallel
    from minires.functional import conv as F
    calls = _record_matmul(monkeypatch)
    rng = np.random.default_rng(size)
    kh, kw, sh, sw, ph, pw = geometry
    x = rng.standard_normal((1, 48, size, size)).astype(np.float32)
    w = rng.standard_normal((40, 48, kh, kw)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    out, cache = F.conv2d_forward(x, w, b, stride=(sh, sw), padding=(ph, pw))
    assert cache.path == "im2col" and calls == [(48 * kh * kw, out.shape[2] * out.shape[3])]
    want = _kernels_ref.conv_naive_forward(x.astype(np.float64), w.astype(np.float64), b, sh, sw, ph, pw)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(parallel, "_threads", 4)        # three images alone: one product each
    x3 = np.concatenate([x, -x, 2 * x])
    out3, _ = F.conv2d_forward(x3, w, b, stride=(sh, sw), padding=(ph, pw))
    assert len(calls) == 4
    for i, xi in enumerate(x3):
        want = _kernels_ref.conv_naive_forward(xi[None].astype(np.float64), w.astype(np.float64), b, sh, sw, ph, pw)
        np.testing.assert_allclose(out3[i:i + 1], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,stride", [(4, 1), (8, 2), (7, 2)])
def test_batch_1x1_conv_on_4x4_maps_takes_the_small_products(monkeypatch, size, stride, dtype):
    """A batch's 1x1 conv with 16 output positions: one kernels.matmul per
    image (forward and input gradient), the weight gradient in one product
    over the images; both directions agree with the NumPy form, and 8x8
    outputs keep BLAS."""
    from minires.functional import conv as F
    calls = _record_matmul(monkeypatch, main_thread=False)
    rng = np.random.default_rng(size)
    x = rng.standard_normal((3, 24, size, size)).astype(dtype)
    w = rng.standard_normal((40, 24, 1, 1)).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    out, cache = F.conv2d_forward(x, w, b, stride=stride)
    want, numpy_cache = F.conv2d_forward_numpy(x, w, b, stride=stride)
    assert cache.path == "pointwise" and out.shape[2:] == (4, 4) and calls == [(24, 16)] * 3
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = F.conv2d_backward(dout, cache)
    assert calls == [(24, 16)] * 3 + [(40, 16)] * 3
    for g, e in zip(got, F.conv2d_backward_numpy(dout, numpy_cache)):
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * 10)
    F.conv2d_forward(rng.standard_normal((3, 24, 8, 8)).astype(dtype), w, b)
    assert len(calls) == 6


def test_one_image_on_8x8_with_big_weights_takes_the_shared_product(monkeypatch):
    """One image, output 8x8 or smaller, weights of ALONE_WEIGHTS and up:
    im2col + kernels.matmul instead of the direct kernel; not with a batch,
    small weights or a bigger map. The outputs agree with the reference."""
    from minires import parallel
    from minires.functional import conv as F
    calls = _record_matmul(monkeypatch)
    choose = _conv_paths.choose_path
    big, small = np.zeros((256, 128, 3, 3), np.float32), np.zeros((64, 64, 3, 3), np.float32)
    monkeypatch.setattr(kernels, "matmul_shares_rows", lambda: False)         # no AVX: NumPy's matmul, one thread
    monkeypatch.setattr(kernels, "wide_forward_tiles", lambda: True)
    assert choose((1, 128, 8, 8), (3, 3, 1, 1, 1, 1), big) == "direct"
    monkeypatch.setattr(kernels, "matmul_shares_rows", lambda: True)
    monkeypatch.setattr(kernels, "wide_forward_tiles", lambda: False)         # AVX2's tiles of 24 positions
    assert choose((1, 128, 8, 8), (3, 3, 1, 1, 1, 1), big) == "direct"
    monkeypatch.setattr(kernels, "wide_forward_tiles", lambda: True)
    assert big.size >= _conv_paths.ALONE_WEIGHTS > small.size
    assert choose((1, 128, 8, 8), (3, 3, 1, 1, 1, 1), big) == "im2col"
    assert choose((1, 128, 16, 16), (3, 3, 2, 2, 1, 1), big) == "im2col"         # stride 2 to 8x8
    assert choose((2, 128, 8, 8), (3, 3, 1, 1, 1, 1), big) == "direct"
    assert choose((1, 128, 10, 10), (3, 3, 1, 1, 1, 1), big) == "direct"         # 100 positions
    assert choose((1, 64, 8, 8), (3, 3, 1, 1, 1, 1), small) == "direct"
    monkeypatch.setattr(parallel, "_threads", 1)
    assert choose((1, 128, 8, 8), (3, 3, 1, 1, 1, 1), big) == "direct"          # no thread to share with
    monkeypatch.setattr(parallel, "_threads", 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 128, 8, 8)).astype(np.float32)
    w = (rng.standard_normal(big.shape) * 0.05).astype(np.float32)
    out, cache = F.conv2d_forward(x, w, None, padding=1)
    assert cache.path == "im2col" and calls == [(128 * 9, 64)]
    want = _kernels_ref.conv_naive_forward(x.astype(np.float64), w.astype(np.float64), None, 1, 1, 1, 1)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def _product_case(draw_ints, seed, dtype=np.float32):
    m, k, n = draw_ints
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)


def _assert_product(got, a, b):
    """got equals a @ b within float32 rounding of sums of len(b) terms."""
    want = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.all(np.abs(got - want) <= 1e-6 * scale + 1e-30), np.max(np.abs(got - want) / (scale + 1e-30))


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.integers(1, 21), st.integers(1, 70), st.integers(1, 70)), st.integers(0, 2**31))
def test_matmul_matches_the_product_on_any_thread_count(shape, seed):
    """Row blocks of 4 and 8 (6 with AVX2), column blocks of 4 (2) and 32
    (16), k in vectors of 16 (8) and a scalar tail: every edge, against the
    float64 product; the bits do not depend on the threads (each output is
    one thread's)."""
    a, b = _product_case(shape, seed)
    one, two = (np.full((shape[0], shape[2]), np.nan, np.float32) for _ in range(2))
    _kernels.matmul(a, b, one, threads=1)
    _kernels.matmul(a, b, two, threads=2)
    _assert_product(one, a, b)
    np.testing.assert_array_equal(one, two)


def test_matmul_checker_fails_on_a_wrong_product():
    a, b = _product_case((9, 40, 17), 0)
    got = np.empty((9, 17), np.float32)
    _kernels.matmul(a, b, got)
    got[4, 16] *= 1.0001
    with pytest.raises(AssertionError):
        _assert_product(got, a, b)


def test_matmul_runs_its_blocks_only_in_avx_builds():
    """Without AVX (the SSE baseline) kernels.matmul is NumPy's product, bit
    for bit; with AVX or AVX-512 its own blocks, whose sums run in another
    order (so they differ from NumPy's somewhere in a product this size)."""
    a, b = _product_case((40, 300, 16), 2)
    got = np.empty((40, 16), np.float32)
    _kernels.matmul(a, b, got, threads=2)
    if _kernels.tile_sizes()["matmul_shares_rows"]:
        _assert_product(got, a, b)
        assert not np.array_equal(got, a @ b)
    else:
        np.testing.assert_array_equal(got, a @ b)


@pytest.mark.parametrize("columns", [1, 5, 16, 20])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")   # NumPy's, without AVX
def test_matmul_spreads_non_finite_values_as_numpy(columns, value):
    """An inf or NaN in a reaches its row of the product and one in b its
    column, as in NumPy's (BLAS's) product; padded columns stay out of it."""
    a, b = _product_case((12, 37, columns), 1)
    a[3, 20] = value
    b[36, columns - 1] = value
    got = np.empty((12, columns), np.float32)
    _kernels.matmul(a, b, got, threads=2)
    with np.errstate(invalid="ignore"):             # inf - inf: the NaN the test looks for
        want = a @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))


def test_matmul_other_arrays_take_numpy_and_bad_shapes_fail():
    a, b = _product_case((6, 10, 3), 2, np.float64)
    got = np.empty((6, 3))
    _kernels.matmul(a, b, got)
    np.testing.assert_array_equal(got, a @ b)          # float64: NumPy's product itself
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        _kernels.matmul(a32, b32, np.empty((6, 4), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        _kernels.matmul(a32, b32[:9], np.empty((6, 3), np.float32))


def test_convs_take_winograd_where_it_pays():
    from minires.functional._conv_paths import choose_path
    w = np.ones((32, 32, 3, 3), np.float32)
    assert choose_path((64, 32, 8, 8), (3, 3, 1, 1, 1, 1), w) == "winograd"
    assert choose_path((64, 32, 16, 10), (3, 3, 1, 1, 1, 1), w) == "winograd"
    assert choose_path((64, 32, 8, 7), (3, 3, 1, 1, 1, 1), w) == "direct"           # odd width
    assert choose_path((64, 32, 16, 16), (3, 3, 2, 2, 1, 1), w) == "direct"         # stride 2
    assert choose_path((64, 32, 8, 8), (3, 3, 1, 1, 0, 0), w) == "direct"           # no padding
    assert choose_path((64, 16, 8, 8), (3, 3, 1, 1, 1, 1), w[:, :16]) == "direct"   # 16 channels in
    assert choose_path((64, 32, 8, 8), (3, 3, 1, 1, 1, 1), w[:16]) == "direct"      # 16 channels out
    assert choose_path((16, 32, 8, 8), (3, 3, 1, 1, 1, 1), w) == "direct"           # 1024 positions: too few
    assert choose_path((8, 32, 16, 16), (3, 3, 1, 1, 1, 1), w) == "winograd"        # 2048
    assert choose_path((2, 32, 32, 32), (3, 3, 1, 1, 1, 1), w) == "winograd"
    assert choose_path((1, 32, 32, 32), (3, 3, 1, 1, 1, 1), w) == "direct"


def test_one_image_takes_winograd_only_with_kept_kernels(monkeypatch):
    """One image on a wide layer and a small map takes Winograd, on every
    thread, when its kernels are kept between calls (kept=True); without, or
    with fewer channels, a bigger map, or two images on two threads, not."""
    from minires import parallel
    from minires.functional._conv_paths import choose_path
    monkeypatch.setattr(parallel, "_threads", 2)
    w = np.ones((128, 128, 3, 3), np.float32)
    assert choose_path((1, 128, 16, 16), (3, 3, 1, 1, 1, 1), w, kept=True) == "winograd"
    assert choose_path((1, 128, 8, 8), (3, 3, 1, 1, 1, 1), w, kept=True) == "winograd"
    assert choose_path((1, 128, 16, 16), (3, 3, 1, 1, 1, 1), w) == "direct"                  # transformed each call
    assert choose_path((1, 128, 32, 32), (3, 3, 1, 1, 1, 1), w, kept=True) == "direct"        # map too big
    assert choose_path((1, 64, 16, 16), (3, 3, 1, 1, 1, 1), w[:, :64], kept=True) == "direct"  # too narrow
    assert choose_path((1, 128, 16, 16), (3, 3, 2, 2, 1, 1), w, kept=True) == "direct"        # stride 2
    assert choose_path((2, 128, 16, 16), (3, 3, 1, 1, 1, 1), w, kept=True) == "direct"        # one per thread


def _frozen(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_winograd_kernels_are_made_once_for_their_own_weights(monkeypatch, dtype):
    """conv2d_forward(kept=...) on one image: Winograd shared between the
    threads gives the reference's numbers; the transformed kernels are made
    on the first call and reused; new weights get their own; writeable
    weights (which could change between calls) or a read-only view of
    writeable ones never use them."""
    from minires import parallel
    from minires.functional import conv as F
    monkeypatch.setattr(parallel, "_threads", 2)
    transforms = []
    real = kernels.winograd_weights
    monkeypatch.setattr(kernels, "winograd_weights", lambda w: transforms.append(w) or real(w))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 128, 8, 12)).astype(dtype)
    w = _frozen((rng.standard_normal((136, 128, 3, 3)) / 34).astype(dtype))
    b = rng.standard_normal(136).astype(dtype)
    want = _kernels_ref.conv_naive_forward(x, w, b, 1, 1, 1, 1)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    kept = {}
    for _ in range(2):
        out, cache = F.conv2d_forward(x, w, b, padding=1, kept=kept)
        assert cache.path == "winograd" and len(transforms) == 1 and kept["winograd"][0] is w
        np.testing.assert_allclose(out, want, **tol)
    w2 = _frozen(-w)
    out, _ = F.conv2d_forward(x, w2, b, padding=1, kept=kept)
    assert len(transforms) == 2 and kept["winograd"][0] is w2
    np.testing.assert_allclose(out, _kernels_ref.conv_naive_forward(x, -w, b, 1, 1, 1, 1), **tol)
    view = w.copy()[:]
    view.flags.writeable = False                # its base can still change
    for weights in (w.copy(), view):
        out, cache = F.conv2d_forward(x, weights, b, padding=1, kept=kept)
        assert cache.path == "direct" and kept["winograd"][0] is w2
        np.testing.assert_allclose(out, want, **tol)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_kept_winograd_on_one_image_redoes_non_finite_input_as_the_direct_kernel(monkeypatch, value):
    """A non-finite input on the shared Winograd path: the output equals the
    direct kernel's, value for value (inf and NaN where its windows reach)."""
    from minires import parallel
    from minires.functional import conv as F
    monkeypatch.setattr(parallel, "_threads", 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 128, 8, 8)).astype(np.float32)
    x[0, 5, 3, 6] = value
    w = _frozen(np.abs(rng.standard_normal((128, 128, 3, 3))).astype(np.float32) / 34)
    got, cache = F.conv2d_forward(x, w, None, padding=1, kept={})
    want, direct = F.conv2d_forward(x, w.copy(), None, padding=1)
    assert cache.path == "winograd" and direct.path == "direct"
    assert not np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
