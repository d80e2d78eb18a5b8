"""Every op at its edges: any memory layout, NaN and inf, and a dout that
does not fit the forward. Generated with Hypothesis; each case runs the
same op on a plain C-contiguous copy (layouts), or in PyTorch (special
values), and demands the same numbers.

The reference kernels are held to the same tests: CI runs this file again
with MINIRES_PURE=1. MINIRES_FUZZ_SCALE=N runs N times as many cases.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minires.functional as F

# A longer campaign than the suite's: MINIRES_FUZZ_SCALE=20 pytest tests/test_robustness.py
_SCALE = int(os.environ.get("MINIRES_FUZZ_SCALE", "1"))

# ---------------------------------------------------------------- the ops
# Each op: make(draw) -> (arrays, params); run(arrays, params, dout_rng) ->
# (outputs, gradients), both lists of arrays; torch(arrays, params, douts)
# -> the same from PyTorch (float64), or None where PyTorch has no twin.


def _conv_case(draw):
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))      # padding >= kernel too
    h, w = draw(st.integers(max(1, kh - 2 * ph), 7)), draw(st.integers(max(1, kw - 2 * pw), 7))
    bias = draw(st.booleans())
    arrays = {"x": (n, c, h, w), "w": (f, c, kh, kw)}
    if bias:
        arrays["b"] = (f,)
    return arrays, dict(stride=(sh, sw), padding=(ph, pw))


def _conv_run(a, p, douts):
    out, cache = F.conv2d_forward(a["x"], a["w"], a.get("b"), **p)
    dx, dw, db = F.conv2d_backward(douts(out), cache)
    return [out], [dx, dw] + ([db] if "b" in a else [])


def _conv_torch(torch, t, p):
    return torch.nn.functional.conv2d(t["x"], t["w"], t.get("b"), **p)


def _image_case(draw, pool=False):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(2, 7)), draw(st.integers(2, 7))
    if not pool:
        return {"x": (n, c, h, w)}, {}
    kh, kw = draw(st.integers(1, min(3, h))), draw(st.integers(1, min(3, w)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    return {"x": (n, c, h, w)}, dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw))


def _bn_case(draw):
    arrays, _ = _image_case(draw)
    c = arrays["x"][1]
    arrays.update(gamma=(c,), beta=(c,), running_mean=(c,), running_var=(c,))
    return arrays, dict(training=draw(st.booleans()))


def _bn_run(relu):
    forward = F.batchnorm2d_relu_forward if relu else F.batchnorm2d_forward
    backward = F.batchnorm2d_relu_backward if relu else F.batchnorm2d_backward

    def run(a, p, douts):
        rm, rv = a["running_mean"].copy(), np.abs(a["running_var"]) + 0.5   # ours to update
        out, cache = forward(a["x"], a["gamma"], a["beta"], rm, rv, p["training"])
        dx, dg, db = backward(douts(out), cache)
        return [out, rm, rv], [dx, dg, db]
    return run


def _bn_torch(relu):
    def run(torch, t, p):
        rm, rv = t["running_mean"].detach().clone(), t["running_var"].detach().abs() + 0.5
        out = torch.nn.functional.batch_norm(t["x"], rm, rv, t["gamma"], t["beta"], p["training"])
        return [torch.relu(out) if relu else out, rm, rv]
    return run


def _ops():
    def unary(fwd, bwd):
        def run(a, p, douts):
            out, cache = fwd(a["x"], **p)
            return [out], [bwd(douts(out), cache)]
        return run

    def pair(fwd, bwd):
        def run(a, p, douts):
            out, cache = fwd(a["a"], a["b"])
            return [out], list(bwd(douts(out), cache))
        return run

    def pair_case(draw):
        shape = _image_case(draw)[0]["x"]
        return {"a": shape, "b": shape}, {}

    def linear_case(draw):
        n, d, m = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
        return {"x": (n, d), "w": (m, d), "b": (m,)}, {}

    def linear_run(a, p, douts):
        out, cache = F.linear_forward(a["x"], a["w"], a["b"])
        return [out], list(F.linear_backward(douts(out), cache))

    def dropout_run(a, p, douts):
        out, cache = F.dropout_forward(a["x"], 0.5, True, np.random.default_rng(7))
        return [out], [F.dropout_backward(douts(out), cache)]

    tf = "torch.nn.functional"
    return {
        "conv2d": (_conv_case, _conv_run, _conv_torch),
        "relu": (_image_case, unary(F.relu_forward, F.relu_backward), lambda torch, t, p: torch.relu(t["x"])),
        "max_pool2d": (lambda d: _image_case(d, pool=True), unary(F.max_pool2d_forward, F.max_pool2d_backward),
                       lambda torch, t, p: eval(tf).max_pool2d(t["x"], **p)),
        "avg_pool2d": (lambda d: _image_case(d, pool=True), unary(F.avg_pool2d_forward, F.avg_pool2d_backward),
                       lambda torch, t, p: eval(tf).avg_pool2d(t["x"], **p)),
        "global_avg_pool2d": (_image_case, unary(F.global_avg_pool2d_forward, F.global_avg_pool2d_backward),
                              lambda torch, t, p: t["x"].mean(dim=(2, 3))),
        "batchnorm2d": (_bn_case, _bn_run(False), _bn_torch(False)),
        "batchnorm2d_relu": (_bn_case, _bn_run(True), _bn_torch(True)),
        "add": (pair_case, pair(F.add_forward, F.add_backward), lambda torch, t, p: t["a"] + t["b"]),
        "add_relu": (pair_case, pair(F.add_relu_forward, F.add_relu_backward),
                     lambda torch, t, p: torch.relu(t["a"] + t["b"])),
        "linear": (linear_case, linear_run, lambda torch, t, p: eval(tf).linear(t["x"], t["w"], t["b"])),
        "dropout": (_image_case, dropout_run, None),
    }


OPS = _ops()

# ---------------------------------------------------------------- layouts
LAYOUTS = ["C", "fortran", "transposed", "negative_stride", "step_2", "read_only", "broadcast_to", "mmap"]


def in_layout(a, layout, tmp_path):
    """The values of a (C-contiguous) in another memory layout."""
    if layout == "C":
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "transposed":
        order = tuple(reversed(range(a.ndim)))
        return np.ascontiguousarray(a.transpose(order)).transpose(order)
    if layout == "negative_stride":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if layout == "step_2":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "read_only":
        a = a.copy()
        a.setflags(write=False)
        return a
    if layout == "broadcast_to":
        return np.broadcast_to(a, a.shape)          # a read-only view
    path = os.path.join(tmp_path, f"a{np.random.default_rng().integers(1 << 30)}.npy")
    np.save(path, a)
    return np.load(path, mmap_mode="r")


def _arrays(shapes, dtype, rng, special=None):
    """Random normal arrays of the given shapes; special = (start, step, value)
    writes value at every step-th entry from start (not into the running
    statistics, and only NaN into batchnorm's gamma and beta: with an
    infinite scale, PyTorch's x*scale + (beta - mean*scale) and our
    (x - mean)*scale + beta, chosen for float32 accuracy, differ by design)."""
    arrays = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    if special is not None:
        start, step, value = special
        for k, v in arrays.items():
            skip = k in ("running_mean", "running_var") or (k in ("gamma", "beta") and not np.isnan(value))
            if not skip and start < v.size:
                v.reshape(-1)[start::step] = value
    return arrays


def _douts(seed, dtype):
    rng = np.random.default_rng(seed)
    return lambda out: rng.standard_normal(out.shape).astype(dtype)


@settings(max_examples=120 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_every_layout_gives_the_same_numbers(tmp_path_factory, data):
    """Fortran order, transposed, reversed, strided, read-only, broadcast and
    memory-mapped inputs: the same outputs and gradients as C order, and the
    inputs are not written."""
    name = data.draw(st.sampled_from(sorted(OPS)), label="op")
    make, run, _ = OPS[name]
    shapes, params = make(data.draw)
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    layout = data.draw(st.sampled_from(LAYOUTS[1:]), label="layout")
    seed = data.draw(st.integers(0, 2**31))
    plain = _arrays(shapes, dtype, np.random.default_rng(seed))
    tmp = tmp_path_factory.mktemp("mmap")
    other = {k: (v.copy() if k in ("running_mean", "running_var") else in_layout(v, layout, tmp))
             for k, v in plain.items()}
    want_out, want_grad = run(plain, params, _douts(seed, dtype))
    got_out, got_grad = run(other, params, _douts(seed, dtype))
    for want, got in zip(want_out + want_grad, got_out + got_grad):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=f"{name} with {layout} input")
    for k in plain:
        np.testing.assert_array_equal(other[k], plain[k], err_msg=f"{name} wrote into {k}")


SPECIALS = [np.nan, np.inf, -np.inf, 0.0, 1e100]     # 1e100: huge, yet its square is finite


@pytest.mark.parametrize("value", SPECIALS)
@pytest.mark.parametrize("name", sorted(k for k, v in OPS.items() if v[2] is not None))
@settings(max_examples=12 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_nan_and_inf_propagate_as_in_pytorch(torch, name, value, data):
    """NaN, inf, zeros and huge values in inputs and in dout: outputs and
    gradients equal PyTorch's, NaN for NaN (float64)."""
    make, run, twin = OPS[name]
    shapes, params = make(data.draw)
    # step >= 2: a channel all of one huge value is where PyTorch's batchnorm
    # formula cancels (it gives -3e85 for what is exactly beta); ours is exact there
    where = (data.draw(st.integers(0, 6)), data.draw(st.integers(2, 9)))
    seed = data.draw(st.integers(0, 2**31))
    special_dout = data.draw(st.booleans(), label="special value in dout too")
    arrays = _arrays(shapes, np.float64, np.random.default_rng(seed), (*where, value))
    douts_seen = []

    def douts(out):
        d = np.random.default_rng(seed + 1).standard_normal(out.shape)
        if special_dout:
            d.reshape(-1)[where[0]::where[1]] = value
        douts_seen.append(d)
        return d

    got_out, got_grad = run(arrays, params, douts)
    t = {k: torch.tensor(v, requires_grad=k not in ("running_mean", "running_var")) for k, v in arrays.items()}
    outs = twin(torch, t, params)
    outs = outs if isinstance(outs, list) else [outs]
    outs[0].backward(torch.tensor(douts_seen[0]))
    want_out = [o.detach().numpy() for o in outs]
    grad_keys = [k for k in arrays if k not in ("running_mean", "running_var")]
    want_grad = [t[k].grad.numpy() for k in grad_keys]
    for what, got, want in zip([f"out {i}" for i in range(len(want_out))] + [f"d{k}" for k in grad_keys],
                               got_out + got_grad, want_out + want_grad):
        _assert_same_with_specials(got, want, f"{name}: {what} with {value} at {where}")


def _assert_same_with_specials(got, want, msg):
    """NaN where PyTorch has NaN, the same infinities, the rest close (relative
    to the largest finite value: a 1e100 makes the small ones round-off)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, msg
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{msg}: NaN positions differ")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{msg}: infinities differ")
    finite = np.isfinite(want)
    assert np.isfinite(got[finite]).all(), msg
    scale = np.abs(want[finite]).max(initial=1.0)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-7, atol=1e-9 * scale, err_msg=msg)


def test_the_special_value_checker_can_fail():
    with pytest.raises(AssertionError, match="NaN positions"):
        _assert_same_with_specials(np.array([0.0, 1.0]), np.array([np.nan, 1.0]), "relu")
    with pytest.raises(AssertionError, match="infinities"):
        _assert_same_with_specials(np.array([-np.inf, 1.0]), np.array([np.inf, 1.0]), "relu")


def test_a_diverged_model_stays_diverged():
    """The bug this file was written for: a ReLU written as "x if x > 0 else 0"
    turns NaN into 0, and a model with NaN weights trains on quietly."""
    x = np.array([[[[np.nan, 1.0], [-1.0, 2.0]]]], dtype=np.float32)
    assert np.isnan(F.relu_forward(x)[0][0, 0, 0, 0])
    assert np.isnan(F.max_pool2d_forward(x[:, :, ::-1], 2)[0]).all()     # NaN last in its window
    out, cache = F.batchnorm2d_relu_forward(x, np.ones(1, np.float32), np.zeros(1, np.float32),
                                            np.zeros(1, np.float32), np.ones(1, np.float32), False)
    assert np.isnan(out[0, 0, 0, 0])


# ---------------------------------------------------------------- dout that does not fit
# Run in a child process: before these checks, a wrong dout made some Cython
# kernels write past their buffers, and a segfault must fail this test, not
# kill the test run.
_DOUT_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_robustness import OPS, _arrays

    def wrong_douts(out):
        yield out[:1] if out.shape[0] > 1 else np.concatenate([out, out])    # another batch
        yield out.reshape(-1)[:-1].copy() if out.size > 1 else np.zeros(2, out.dtype)  # too few values
        yield np.zeros(out.shape + (1,), out.dtype)                          # another ndim
        yield out.astype(np.float32 if out.dtype == np.float64 else np.float64)  # another dtype
        yield np.zeros(out.shape[:-1] + (out.shape[-1] + 3,), out.dtype)     # too many values

    rng = np.random.default_rng(0)
    for name, (make, run, _) in sorted(OPS.items()):
        import hypothesis.strategies as st
        shapes, params = make(lambda s, label=None: s.example())
        arrays = _arrays(shapes, np.float64, rng)
        for k, bad in enumerate(wrong_douts(run(arrays, params, lambda o: o)[0][0])):
            def douts(out, bad=bad):
                return bad
            try:
                run(arrays, params, douts)
            except ValueError as exc:
                assert "dout" in str(exc) and str(bad.shape) in str(exc), (name, str(exc))
            else:
                raise AssertionError(f"{{name}}: a dout of shape {{bad.shape}} and dtype {{bad.dtype}} was accepted")
        print("ok", name, flush=True)
""")


def test_every_backward_refuses_a_dout_that_does_not_fit():
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _DOUT_SCRIPT.format(tests=tests)],
                          capture_output=True, text=True, timeout=600)
    checked = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert proc.returncode == 0, (f"exit code {proc.returncode} after {checked}:\n{proc.stderr[-3000:]}")
    assert sorted(checked) == sorted(OPS)


def test_dout_error_names_expected_and_actual_shape():
    x = np.zeros((2, 3, 4, 4), np.float32)
    out, cache = F.relu_forward(x)
    with pytest.raises(ValueError, match=r"dout must have .* \(2, 3, 4, 4\).* got shape \(1, 3, 4, 4\)"):
        F.relu_backward(out[:1], cache)


def test_avg_pool_of_kernel_1_runs_backward():
    """AvgPool2d(1) used to fail on every backward (a read-only broadcast went into col2im)."""
    from minires import nn
    pool = nn.AvgPool2d(1)
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(pool(x), x)
    np.testing.assert_array_equal(pool.backward(np.ones_like(x)), np.ones_like(x))
