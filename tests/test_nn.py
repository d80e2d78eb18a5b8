"""Modules: registration and names, state, accumulation, and a gradient
check of every layer class."""
import numpy as np
import pytest

from minires import nn
from minires.gradcheck import check_module


def _f64(m):
    return m.astype(np.float64)


LAYERS = [
    (lambda r: nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=r), (2, 3, 7, 6)),
    (lambda r: nn.Conv2d(2, 3, (1, 3), padding=(0, 1), bias=False, rng=r), (1, 2, 5, 4)),
    (lambda r: nn.BatchNorm2d(3), (4, 3, 3, 5)),
    (lambda r: nn.BatchNormReLU2d(3), (4, 3, 3, 5)),
    (lambda r: nn.ReLU(), (2, 3, 4, 4)),
    (lambda r: nn.MaxPool2d(2), (2, 2, 6, 6)),
    (lambda r: nn.AvgPool2d(3, 2, 1), (1, 2, 7, 5)),
    (lambda r: nn.GlobalAvgPool2d(), (2, 3, 3, 3)),
    (lambda r: nn.Dropout(0.4, rng=r), (3, 10)),
    (lambda r: nn.Linear(6, 4, rng=r), (5, 6)),
    (lambda r: nn.Flatten(), (2, 3, 2, 2)),
    # no conv bias before BN: its gradient is exactly 0 in training, nothing to check
    (lambda r: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False, rng=r), nn.BatchNorm2d(3), nn.ReLU(),
                             nn.GlobalAvgPool2d(), nn.Linear(3, 2, rng=r)), (2, 2, 5, 5)),
]


class TinyBlock(nn.ResidualBlock):
    def __init__(self, r):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False, rng=r)
        self.bn = nn.BatchNorm2d(2)

    def branch_forward(self, x):
        return self.bn(self.conv(x))

    def branch_backward(self, d):
        return self.conv.backward(self.bn.backward(d))


@pytest.mark.parametrize("make,shape", LAYERS + [(TinyBlock, (2, 2, 4, 4))])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_gradient_check(rng, make, shape, mode):
    module = getattr(_f64(make(np.random.default_rng(0))), mode)()
    x = rng.standard_normal(shape)
    report = check_module(module, x)
    assert report.ok(1e-6), report


def test_names_follow_attributes_like_pytorch():
    block = TinyBlock(np.random.default_rng(0))
    net = nn.Sequential(nn.Conv2d(3, 2, 1, rng=0), nn.Sequential(block))
    names = list(net.state_dict())
    assert names == ["0.weight", "0.bias", "1.0.conv.weight", "1.0.bn.weight", "1.0.bn.bias",
                     "1.0.bn.running_mean", "1.0.bn.running_var", "1.0.bn.num_batches_tracked"]
    assert [n for n, _ in net.named_parameters()] == [n for n in names if "running" not in n
                                                      and "tracked" not in n]


def test_attributes_move_between_plain_parameter_module_and_buffer():
    """A name is in one place at a time: a plain attribute replaced by a
    Parameter, a Module or a buffer (and back) is found there, and
    state_dict names it only while it is a parameter or a buffer."""
    m = nn.Module()
    m.a = 1
    m.a = 2                                         # plain again: the fast path
    assert m.a == 2 and "a" not in m.state_dict()
    m.a = nn.Parameter(np.ones(2))
    assert list(m.state_dict()) == ["a"] and isinstance(m.a, nn.Parameter)
    m.a = 3
    assert m.a == 3 and list(m.state_dict()) == []
    m.a = nn.ReLU()
    assert isinstance(m.a, nn.ReLU) and list(m.children()) == [m.a]
    m.a = None
    assert m.a is None and list(m.children()) == []
    m.b = 5
    m.register_buffer("b", np.zeros(2))
    m.b = np.ones(2)                                # the buffer, not a shadowing plain attribute
    np.testing.assert_array_equal(m.state_dict()["b"], np.ones(2))
    np.testing.assert_array_equal(m.b, np.ones(2))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fused_batchnorm_relu_equals_batchnorm_then_relu(rng, mode):
    fused, bn = nn.BatchNormReLU2d(3), nn.BatchNorm2d(3)
    for m in (fused, bn):
        m.weight.data[:] = [1.5, -0.5, 1.0]
        m.bias.data[:] = [0.1, 0.2, -0.3]
        m.running_mean[:] = [0.2, -0.1, 0.0]
        getattr(m, mode)()
    relu = nn.ReLU()
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out = fused(x)
    np.testing.assert_array_equal(out, relu(bn(x)))
    np.testing.assert_allclose(fused.backward(dout), bn.backward(relu.backward(dout)), rtol=1e-5, atol=1e-6)
    for a, b in zip(fused.parameters(), bn.parameters()):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    assert list(fused.state_dict()) == list(bn.state_dict())
    np.testing.assert_array_equal(fused.running_var, bn.running_var)


def test_gradients_accumulate_until_zero_grad(rng):
    lin = _f64(nn.Linear(3, 2, rng=0))
    x, dout = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    lin(x); lin.backward(dout)
    once = lin.weight.grad.copy()
    lin(x); lin.backward(dout)
    np.testing.assert_allclose(lin.weight.grad, 2 * once)
    lin.zero_grad()
    assert not lin.weight.grad.any()


def test_train_eval_is_recursive():
    net = nn.Sequential(nn.Sequential(nn.BatchNorm2d(2), nn.Dropout(0.5)), nn.ReLU())
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_batchnorm_counts_batches_and_uses_running_stats_in_eval(rng):
    bn = nn.BatchNorm2d(2)
    x = rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 3 + 2
    bn(x); bn(x)
    assert int(bn.num_batches_tracked) == 2 and "num_batches_tracked" in bn.state_dict()
    bn.eval()
    frozen = bn.running_mean.copy()
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, frozen)


def test_load_state_dict_checks_names_and_shapes():
    a = nn.Sequential(nn.Linear(3, 2, rng=0))
    state = a.state_dict()
    b = nn.Sequential(nn.Linear(3, 2, rng=1))
    b.load_state_dict(state)
    np.testing.assert_array_equal(b[0].weight.data, a[0].weight.data)
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"0.weight": state["0.weight"]})
    with pytest.raises(ValueError, match="shape"):
        nn.Sequential(nn.Linear(4, 2, rng=0)).load_state_dict(state)


def test_backward_without_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="without a forward"):
        nn.ReLU().backward(np.zeros(3))


def test_default_init_matches_pytorch_bounds():
    conv = nn.Conv2d(4, 8, 3, rng=0)
    bound = 1 / np.sqrt(4 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    assert conv.weight.data.std() > 0.5 * bound / np.sqrt(3)
    assert conv.weight.data.dtype == np.float32


def test_residual_fork_sums_both_branches(rng):
    block = _f64(TinyBlock(np.random.default_rng(0)))
    x = rng.standard_normal((2, 2, 4, 4))
    out = block(x)
    dout = rng.standard_normal(out.shape)
    dx = block.backward(dout)
    d_post = dout * (out > 0)
    block.branch_forward(x)
    np.testing.assert_allclose(dx, block.branch_backward(d_post) + d_post)


def test_one_and_two_threads_give_the_same_results(rng):
    """Set explicitly to 1, then 2 threads: `make test` runs with OMP_NUM_THREADS=1,
    so a test that left the count alone would compare one thread with itself."""
    from minires import kernels, parallel
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=0), nn.BatchNormReLU2d(8),
                        nn.Conv2d(8, 4, 3, stride=2, padding=1, rng=1), nn.MaxPool2d(2))
    x = rng.standard_normal((6, 3, 12, 10)).astype(np.float32)
    dout = rng.standard_normal((6, 4, 3, 2)).astype(np.float32)
    before, results = parallel.get_threads(), {}
    try:
        for n in (1, 2):
            kernels.set_num_threads(n)
            assert parallel.get_threads() == n
            net.zero_grad()
            out = net(x)
            results[n] = [out, net.backward(dout)] + [p.grad.copy() for p in net.parameters()]
    finally:
        kernels.set_num_threads(before)
    one, two = results[1], results[2]
    if kernels.PURE:    # the reference kernels multiply a chunk at once: BLAS blocks it by size
        np.testing.assert_allclose(one[0], two[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one[1], two[1], rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_array_equal(one[0], two[0])      # each image on its own: the same bits
        np.testing.assert_array_equal(one[1], two[1])
    for a, b in zip(one[2:], two[2:]):                     # weight gradients sum per-thread parts
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make,match", [
    (lambda: nn.Conv2d(0, 4, 3), "in_channels must be >= 1"),
    (lambda: nn.Conv2d(3, 0, 3), "out_channels must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 0), "kernel_size must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 3, stride=(1, 0)), "stride must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), "padding must be >= 0"),
    (lambda: nn.Linear(0, 4), "in_features must be >= 1"),
    (lambda: nn.Linear(3, -2), "out_features must be >= 1"),
    (lambda: nn.BatchNorm2d(0), "num_features must be >= 1"),
    (lambda: nn.BatchNorm2d(3, eps=0), "eps must be > 0"),
    (lambda: nn.BatchNorm2d(3, momentum=1.5), "momentum must be in"),
    (lambda: nn.MaxPool2d(0), "kernel_size must be >= 1"),
    (lambda: nn.MaxPool2d(2, stride=0), "stride must be >= 1"),
    (lambda: nn.AvgPool2d(3, padding=2), "padding must be at most half"),
    (lambda: nn.Dropout(1.0), r"p \(the dropout probability\) must be in \[0, 1\)"),
    (lambda: nn.Dropout(-0.1), "must be in"),
    (lambda: nn.Dropout(float("nan")), "must be in"),
])
def test_constructors_refuse_bad_arguments_by_name(make, match):
    """At construction, not at the first forward deep inside a model."""
    with pytest.raises(ValueError, match=match):
        make()


def test_constructors_refuse_wrong_types():
    with pytest.raises(TypeError, match="in_channels must be an int"):
        nn.Conv2d(3.0, 4, 3)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        nn.Conv2d(3, 4, "3")
    with pytest.raises(TypeError, match="must be a real number"):
        nn.Dropout(True)


@pytest.mark.parametrize("p", [np.float32(0.25), np.float64(0.25), 0.25, 0])
def test_dropout_takes_any_real_probability(p):
    """NumPy scalars too (np.float32 is not a Python float): kept as a float, and it runs."""
    drop = nn.Dropout(p, rng=0)
    assert type(drop.p) is float and drop.p == float(p)
    x = np.ones((4, 100), np.float32)
    out = drop(x)
    assert out.shape == x.shape and drop.backward(np.ones_like(out)).shape == x.shape


@pytest.mark.parametrize("value,match", [
    (np.full((2, 3), 1e39), "too large for float32"),            # finite in float64, inf in float32
    (np.full((2, 3), 1 + 2j), "complex128, not a real number"),
    (np.full((2, 3), "1.0"), "not a real number"),
    (np.full((2, 3), np.nan, np.float32), "NaN or inf"),
])
def test_load_state_dict_refuses_values_that_do_not_fit(value, match):
    """np.copyto(casting="unsafe") would only warn; nothing is copied on refusal."""
    lin = nn.Linear(3, 2, rng=0)
    before = lin.weight.data.copy()
    state = dict(lin.state_dict(), weight=value)
    with pytest.raises(ValueError, match=match):
        lin.load_state_dict(state)
    np.testing.assert_array_equal(lin.weight.data, before)


def test_load_state_dict_integer_buffers_take_whole_numbers_only():
    bn = nn.BatchNorm2d(2)
    with pytest.raises(ValueError, match="whole numbers"):
        bn.load_state_dict(dict(bn.state_dict(), num_batches_tracked=np.array(2.5)))
    with pytest.raises(ValueError, match="outside the range of int64"):
        bn.load_state_dict(dict(bn.state_dict(), num_batches_tracked=np.array(2 ** 64 - 1, np.uint64)))
    bn.load_state_dict(dict(bn.state_dict(), num_batches_tracked=np.array(7.0)))
    assert int(bn.num_batches_tracked) == 7


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, path", [
    ((2, 3, 8, 8), (5, 3, 1, 1), 1, 0, "pointwise"), ((2, 3, 8, 8), (5, 3, 1, 1), 2, 0, "pointwise"),
    ((8, 3, 4, 4), (5, 3, 3, 3), 1, 1, "taps"), ((2, 3, 9, 7), (5, 3, 3, 3), 1, 1, "direct"),
    ((32, 32, 8, 8), (32, 32, 3, 3), 1, 1, "winograd"),
    ((2, 3, 9, 7), (5, 3, 3, 3), 2, 1, "direct")])       # strided: backward through im2col
def test_conv_backward_without_input_gradient(rng, x_shape, w_shape, stride, padding, path):
    """input_grad=False: no dx, and dw and db bit for bit those of the full backward, on every path."""
    from minires import functional as F
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    out, cache = F.conv2d_forward(x, w, b, stride, padding)
    assert cache.path == path
    dout = rng.standard_normal(out.shape)
    dx, dw, db = F.conv2d_backward(dout, cache)
    none, dw2, db2 = F.conv2d_backward(dout, cache, input_grad=False)
    assert dx is not None and none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("name", ["resnet-20", "imagenet-resnet-18", "bottleneck-29"])
def test_skip_input_grad_keeps_every_parameter_gradient(rng, name):
    """A model told that nothing uses its input's gradient returns None from
    backward, and every parameter gradient is unchanged, bit for bit."""
    from minires import models
    from minires.losses import CrossEntropyLoss
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 2])
    grads, returned = [], []
    for skip in (False, True):
        model, crit = models.build(name, rng=0), CrossEntropyLoss()
        if skip:
            assert model.skip_input_grad() is model.conv1 and model.conv1.input_grad is False
        crit(model(x), y)
        returned.append(model.backward(crit.backward()))
        grads.append([p.grad.copy() for p in model.parameters()])
    assert returned[0].shape == x.shape and returned[1] is None
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_skip_input_grad_needs_a_conv_first():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3))
    assert model.skip_input_grad() is None and model[1].input_grad is True
