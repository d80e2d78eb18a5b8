"""Model families: parameter counts, whole-model gradient checks, PyTorch parity."""
import numpy as np
import pytest

from minires import models
from minires.gradcheck import check_module, randomize_batchnorm
from minires.torch_reference import torch_twin

PARAMS = [
    ("seed-cnn", {}, 10, 202_666),
    ("resnet-20", {}, 10, 269_722),
    ("resnet-20", {"shortcut": "B"}, 10, 272_474),
    ("resnet-56", {}, 10, 853_018),
    ("bottleneck-29", {}, 10, 869_706),
    ("wrn-16-4", {}, 10, 2_748_890),
    ("wrn-28-10", {}, 10, 36_479_194),
    ("seed-wide-20", {}, 10, 1_073_530),
    ("imagenet-resnet-18", {}, 10, 11_181_642),
    ("plain-20", {}, 10, 269_722),
    ("plain-56", {}, 10, 853_018),
    ("bottleneck-29", {"bottleneck_div": 4}, 10, 314_122),
    ("imagenet-resnet-50", {}, 10, 23_528_522),     # torchvision's resnet50(num_classes=10)
]


@pytest.mark.parametrize("name,options,classes,expected", PARAMS)
def test_parameter_counts(name, options, classes, expected):
    assert models.build(name, classes, rng=0, **options).num_parameters() == expected


@pytest.mark.parametrize("name,options,classes,expected", PARAMS)
def test_parameter_counts_100_classes(name, options, classes, expected):
    # 90 more classes: 90 more rows of the last Linear, weight and bias
    last_in = {"seed-cnn": 128, "resnet-20": 64, "resnet-56": 64, "bottleneck-29": 256,
               "wrn-16-4": 256, "wrn-28-10": 640, "seed-wide-20": 64, "imagenet-resnet-18": 512,
               "plain-20": 64, "plain-56": 64, "imagenet-resnet-50": 2048}[name]
    assert models.build(name, 100, rng=0, **options).num_parameters() == expected + 90 * (last_in + 1)


# tiny versions for gradient checks and parity: (name, options, image size)
TINY = [
    ("seed-cnn", dict(width_scale=0.25, dropout=0.5), 32),
    ("resnet-8", dict(width_scale=0.25), 8),
    ("resnet-8", dict(width_scale=0.25, shortcut="B"), 8),
    ("bottleneck-11", dict(width_scale=1 / 16), 8),
    ("wrn-10-1", dict(width_scale=0.25, dropout=0.3), 8),
    ("seed-wide-8", dict(width_scale=0.25), 8),
    ("imagenet-resnet-18", dict(width_scale=1 / 16), 32),
    ("plain-8", dict(width_scale=0.25), 8),
    ("bottleneck-11", dict(width_scale=1 / 8, bottleneck_div=4), 8),
    ("imagenet-resnet-50", dict(width_scale=1 / 16), 32),
]


@pytest.mark.parametrize("name,options,size", TINY)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_model_gradient_check(name, options, size, mode):
    model = models.build(name, rng=0, **options).astype(np.float64)
    randomize_batchnorm(model, np.random.default_rng(3))
    getattr(model, mode)()
    x = np.random.default_rng(1).standard_normal((3, 3, size, size))
    report = check_module(model, x, max_samples=4)
    assert report.ok(_TOLERANCE.get((name, mode), 1e-6)), report


# 50 layers in eval mode with random running statistics: activations grow
# through the depth, and the central difference's round-off on the large loss
# reaches 1.1e-6 relative for a few small BN-bias gradients (measured with the
# reference kernels; 9e-7 with the compiled ones). A wrong backward is off by
# far more (see the next test).
_TOLERANCE = {("imagenet-resnet-50", "eval"): 3e-6}


def test_whole_model_check_catches_a_broken_block(monkeypatch):
    """The fork must sum both branches: dropping the shortcut's gradient fails."""
    from minires.nn.residual import ResidualBlock
    monkeypatch.setattr(ResidualBlock, "backward",
                        lambda self, d: self.branch_backward(__import__("minires").functional.relu_backward(d, self.post_relu_output)))
    model = models.build("resnet-8", rng=0, width_scale=0.25).astype(np.float64)
    report = check_module(model, np.random.default_rng(1).standard_normal((2, 3, 8, 8)), max_samples=4)
    assert not report.ok(1e-6)


PARITY = [(n, {**o, "dropout": 0.0} if "dropout" in o else o, s) for n, o, s in TINY]
PARITY[1] = ("resnet-14", dict(width_scale=0.5), 16)   # a deeper one, both stride-2 stages
# 50 layers of batch norm over a batch of 8 amplify float32 rounding to ~1e-2 in the
# input gradient: ResNet-50 gets its own parity test in float64 below
PARITY = [p for p in PARITY if p[0] != "imagenet-resnet-50"]


def _both(torch, model, twin, mode, x):
    """model and its PyTorch twin (given model's weights) in mode on x, one
    backward of the same random dout -> (minires, torch) pairs: logits, dx,
    {name: (grad, twin grad)}, {name: (buffer, twin buffer)}."""
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    getattr(model, mode)()
    getattr(twin, mode)()
    tx = torch.tensor(x, requires_grad=True)
    logits, tlogits = model(x), twin(tx)
    dout = np.random.default_rng(3).standard_normal(logits.shape).astype(x.dtype)
    model.zero_grad()
    dx = model.backward(dout)
    tlogits.backward(torch.tensor(dout))
    tparams, tstate = dict(twin.named_parameters()), twin.state_dict()
    grads = {n: (p.grad, tparams[n].grad.numpy()) for n, p in model.named_parameters()}
    buffers = {n: (b, tstate[n].numpy()) for n, b in model.named_buffers()}
    return (logits, tlogits.detach().numpy()), (dx, tx.grad.numpy()), grads, buffers


@pytest.mark.parametrize("name,options,size", PARITY)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_parity(torch, name, options, size, mode):
    """Same weights -> same logits, same parameter gradients, same running statistics."""
    x = np.random.default_rng(2).standard_normal((8, 3, size, size)).astype(np.float32)
    logits, dx, grads, buffers = _both(torch, models.build(name, rng=0, **options), torch_twin(torch, name, options),
                                       mode, x)
    np.testing.assert_allclose(*logits, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(*dx, rtol=1e-3, atol=1e-4)
    for pname, (mine, theirs) in grads.items():
        scale = np.abs(theirs).max() + 1e-6
        np.testing.assert_allclose(mine / scale, theirs / scale, atol=2e-4, err_msg=pname)
    for bname, (mine, theirs) in buffers.items():
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5, err_msg=bname)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_parity_imagenet_resnet50_float64(torch, mode):
    model = models.build("imagenet-resnet-50", rng=0, width_scale=1 / 16).astype(np.float64)
    twin = torch_twin(torch, "imagenet-resnet-50", dict(width_scale=1 / 16)).double()
    x = np.random.default_rng(2).standard_normal((8, 3, 32, 32))
    logits, dx, grads, buffers = _both(torch, model, twin, mode, x)
    np.testing.assert_allclose(*logits, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(*dx, rtol=1e-8, atol=1e-10)
    for pname, (mine, theirs) in grads.items():
        np.testing.assert_allclose(mine, theirs, rtol=1e-8, atol=1e-10, err_msg=pname)
    for bname, (mine, theirs) in buffers.items():
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12, err_msg=bname)


@pytest.mark.parametrize("name", ["seed-cnn", "resnet-8", "bottleneck-11", "wrn-10-1", "seed-wide-8",
                                  "imagenet-resnet-18", "plain-8", "imagenet-resnet-50"])
@pytest.mark.parametrize("n", [1, 3])
def test_output_shape(name, n):
    model = models.build(name, num_classes=7, rng=0, width_scale=0.25).eval()
    out = model(np.zeros((n, 3, 32, 32), dtype=np.float32))
    assert out.shape == (n, 7) and out.dtype == np.float32


def test_input_size_rules():
    # seed-cnn's Linear expects 64*4*4 features: only 32x32 works, with a clear error otherwise
    with pytest.raises(ValueError, match=r"seed-cnn expects images of shape \(N, 3, 32, 32\)"):
        models.build("seed-cnn", rng=0).eval()(np.zeros((1, 3, 28, 28), np.float32))
    # the ResNets end in global average pooling: other sizes work
    out = models.build("resnet-8", rng=0, width_scale=0.25).eval()(np.zeros((2, 3, 24, 20), np.float32))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        models.build("resnet-8", rng=0).eval()(np.zeros((2, 1, 32, 32), np.float32))


def test_build_errors():
    with pytest.raises(ValueError, match="resnet depth must be 6n\\+2"):
        models.build("resnet-21")
    with pytest.raises(ValueError, match="unknown model 'vgg-16'"):
        models.build("vgg-16")
    with pytest.raises(TypeError, match="bad option"):
        models.build("resnet-20", colour="red")
    assert "resnet-20" in models.available()
    for name in models.available():
        if name != "wrn-28-10":
            models.build(name, rng=0)


@pytest.mark.parametrize("depth", [8, 20, 56, 110])
def test_plain_nets_are_resnets_without_shortcuts(depth):
    """He et al.'s plain net: option A's layers exactly (A adds no parameters), no residual block."""
    plain, res = models.build(f"plain-{depth}", rng=0), models.build(f"resnet-{depth}", rng=0)
    assert plain.num_parameters() == res.num_parameters()
    assert [k for k, _ in plain.named_parameters()] == [k for k, _ in res.named_parameters()]
    assert not any(isinstance(m, models.BasicBlock) for m in plain.modules())
    with pytest.raises(ValueError, match="plain depth must be 6n\\+2"):
        models.build("plain-21")


def test_bottleneck_div_narrows_the_middle():
    block = models.build("bottleneck-29", rng=0, bottleneck_div=4).layer3[1]
    assert block.conv1.weight.data.shape == (64, 256, 1, 1) and block.conv3.weight.data.shape == (256, 64, 1, 1)
    assert models.build("bottleneck-29", rng=0).layer3[1].conv2.weight.data.shape == (128, 128, 3, 3)
    with pytest.raises(ValueError, match="bottleneck_div must be >= 1"):
        models.build("bottleneck-29", bottleneck_div=0)


def test_same_seed_same_weights():
    a, b = models.build("resnet-8", rng=5), models.build("resnet-8", rng=5)
    for (_, p1), (_, p2) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p1.data, p2.data)


def test_he_init_scale():
    model = models.build("resnet-20", rng=0)
    w = model.layer3[0].conv1.weight.data          # (64, 32, 3, 3): fan-out 64*9
    assert abs(w.std() - np.sqrt(2 / (64 * 9))) < 0.005
    assert np.all(model.bn1.weight.data == 1) and np.all(model.bn1.bias.data == 0)


def test_save_and_load_round_trip(tmp_path):
    model = models.build("wrn-10-2", rng=0, width_scale=0.5, dropout=0.1)
    model.layer1[0].bn1.running_mean[:] = 3.0
    path = tmp_path / "m.npz"
    models.save(model, path)
    loaded = models.load(path)
    assert loaded.name == "wrn-10-2" and loaded.options["dropout"] == 0.1
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
    with pytest.raises(ValueError, match="'wrn-10-2' model, not 'resnet-20'"):
        models.load(path, expected_name="resnet-20")
    other = models.build("resnet-8", rng=0)
    with pytest.raises(ValueError, match="cannot load .* into resnet-8"):
        models.io.load_weights(other, model.state_dict(), source="wrn-10-2")
    assert not list(tmp_path.glob(".tmp-*"))


class _RunsCode:
    """Unpickling this executes code: what a model file must never get to do."""
    def __reduce__(self):
        return exec, ("import builtins; builtins._minires_unpickled = True",)


def test_load_never_unpickles(tmp_path):
    """A genuine model file (valid metadata, every name and shape right) whose
    first weight is an object array: only allow_pickle=False stops it."""
    import builtins
    path = tmp_path / "evil.npz"
    models.save(models.build("resnet-8", rng=0, width_scale=0.25), path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    name = next(k for k in arrays if k != models.io.META_KEY)
    evil = np.zeros(arrays[name].shape).astype(object)
    evil.flat[0] = _RunsCode()
    np.savez(path, **{**arrays, name: evil})
    with pytest.raises(ValueError, match="pickled Python objects"):
        models.load(path)
    assert not hasattr(builtins, "_minires_unpickled")
