"""nn.recompute: a conv after a BN keeps no copy of its input; the BN rebuilds
it. A BN after a bottleneck's last conv or a projection's conv keeps no copy
of its input; the conv runs again.

The rebuilt input must be the forward's, bit for bit: a model's gradients
with the release on equal those with it off exactly, and the memory held
between forward and backward shrinks by the arrays released."""
import tracemalloc

import numpy as np
import pytest

from minires import functional as F
from minires import models, nn
from minires.losses import CrossEntropyLoss
from minires.nn import recompute

# (name, options, image size, convs whose input is released in train mode,
#  batch norms whose input is released: each bottleneck's bn3 and each projection's BN)
MODELS = [
    ("resnet-8", dict(width_scale=0.25), 8, 3, 0),              # each block's conv2
    ("resnet-8", dict(width_scale=0.25, shortcut="B"), 8, 3, 2),
    ("plain-8", dict(width_scale=0.25), 8, 6, 0),               # every conv after the stem's
    ("bottleneck-11", dict(width_scale=1 / 16), 8, 6, 5),       # conv2 and conv3 (a 1x1: a reshaped view)
    ("wrn-10-1", dict(width_scale=0.25), 8, 7, 0),              # conv1, conv2, the last stride-2 shortcut
    ("wrn-10-1", dict(width_scale=0.25, dropout=0.3), 8, 4, 0),  # not conv2: a dropout mask in between
    ("seed-wide-8", dict(width_scale=0.25), 8, 3, 0),
    ("seed-cnn", dict(width_scale=0.25, dropout=0.5), 32, 2, 0),  # the convs right after a BN-ReLU
    ("imagenet-resnet-18", dict(width_scale=1 / 16), 32, 8, 3),
    ("imagenet-resnet-50", dict(width_scale=1 / 16), 32, 32, 20),
]


def _released(model):
    """(names of the convs whose input was released, of the batch norms whose input was)."""
    def held(m):
        return m.__dict__["_cache"].x
    return ([name for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and isinstance(held(m), recompute.FromBatchNorm)],
            [name for name, m in model.named_modules()
             if isinstance(m, nn.BatchNorm2d) and isinstance(held(m), recompute.FromConv)])


def _step(name, options, size, dtype=np.float32, mode="train"):
    """One forward and backward: -> (every gradient and dx, _released after forward)."""
    model = models.build(name, rng=0, **options).astype(dtype)
    getattr(model, mode)()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, size, size)).astype(dtype)
    crit = CrossEntropyLoss()
    crit(model(x), rng.integers(0, 10, 3))
    released = _released(model)
    model.zero_grad()
    dx = model.backward(crit.backward())
    return [p.grad.copy() for p in model.parameters()] + [dx], released


def _no_release(monkeypatch):
    monkeypatch.setattr(recompute, "release_input", lambda *args: None)
    monkeypatch.setattr(nn, "release_input", recompute.release_input)
    monkeypatch.setattr(nn.module, "release_input", recompute.release_input)
    monkeypatch.setattr(nn, "release_output", lambda *args: None)
    monkeypatch.setattr(recompute, "release_output", lambda *args: None)     # as nn.conv_bn calls it


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("name,options,size,convs,bns", MODELS)
@pytest.mark.parametrize("dtype,mode", [(np.float32, "train"), (np.float64, "train"), (np.float64, "eval")])
def test_gradients_equal_those_without_the_release(monkeypatch, name, options, size, convs, bns, dtype, mode):
    got, (released, released_bns) = _step(name, options, size, dtype, mode)
    if mode == "train":
        assert (len(released), len(released_bns)) == (convs, bns), (released, released_bns)
    else:
        # eval(keep_caches=True) keeps caches: a gradient check releases too
        assert len(released) >= 1 and len(released_bns) == bns
    with monkeypatch.context() as m:
        _no_release(m)
        want, none = _step(name, options, size, dtype, mode)
    assert none == ([], [])
    assert _same(got, want)


def test_the_comparison_catches_a_rebuild_one_ulp_off(monkeypatch):
    """If the BN rebuilt its output with the slightest difference, the test above fails."""
    want, _ = _step("resnet-8", dict(width_scale=0.25), 8)
    apply = F.batchnorm2d_output
    monkeypatch.setattr(F, "batchnorm2d_output", lambda cache: np.nextafter(apply(cache), np.inf))
    got, (released, _) = _step("resnet-8", dict(width_scale=0.25), 8)
    assert released and not _same(got, want)


def test_the_comparison_catches_a_conv_run_again_one_ulp_off(monkeypatch):
    """If a conv's output computed again for its BN differed in the slightest, the test above fails."""
    want, _ = _step("bottleneck-11", dict(width_scale=1 / 16), 8)
    apply = F.conv2d_output
    monkeypatch.setattr(F, "conv2d_output", lambda cache: np.nextafter(apply(cache), np.inf))
    got, (_, released_bns) = _step("bottleneck-11", dict(width_scale=1 / 16), 8)
    assert released_bns and not _same(got, want)


def _held_after_forward(name, width_scale):
    """-> (bytes the model holds after one training forward, the model)."""
    model = models.build(name, rng=0, width_scale=width_scale).train()
    x = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        model(x)
        return tracemalloc.get_traced_memory()[0] - before, model
    finally:
        tracemalloc.stop()


def test_the_release_frees_the_arrays(monkeypatch):
    """Between forward and backward the model holds the released inputs' bytes less."""
    held, model = _held_after_forward("plain-8", 0.5)
    released = [m.__dict__["_cache"].x for m in model.modules()
                if isinstance(m, nn.Conv2d) and isinstance(m.__dict__["_cache"].x, recompute.FromBatchNorm)]
    saved = sum(int(np.prod(r.shape)) * 4 for r in released)
    with monkeypatch.context() as m:
        _no_release(m)
        held_all, _ = _held_after_forward("plain-8", 0.5)
    assert saved > 0 and held_all - held >= 0.95 * saved, (held_all, held, saved)


def test_batchnorm_output_is_the_forward_output_bit_for_bit():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for shape in [(4, 3, 2, 3), (2, 5, 12, 10), (1, 2, 1, 1 + 1)]:     # column kernel, per channel, tiny
            x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
            x.flat[0] = np.nan
            c = shape[1]
            g, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
            for training in (True, False):
                for forward in (F.batchnorm2d_forward, F.batchnorm2d_relu_forward):
                    rm, rv = np.zeros(c, dtype), np.ones(c, dtype) * 0.7
                    out, cache = forward(x, g, b, rm, rv, training)
                    np.testing.assert_array_equal(F.batchnorm2d_output(cache), out)


def test_backward_out_of_order_still_rebuilds_from_the_right_forward():
    """The conv holds the BN's cache of that forward, not the layer: running the
    BN's backward first (or another forward of the BN alone) cannot change it."""
    rng = np.random.default_rng(0)
    bn, conv = nn.BatchNormReLU2d(4), nn.Conv2d(4, 3, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    out = bn(x)
    y = conv(out)
    nn.release_input(conv, bn, out)
    bn(x * 2)                                   # a new forward of the BN alone
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(dy)
    conv2 = nn.Conv2d(4, 3, 3, padding=1, rng=np.random.default_rng(0))
    conv2.weight.data[...] = conv.weight.data
    conv2.bias.data[...] = conv.bias.data
    conv2(out)
    np.testing.assert_array_equal(dx, conv2.backward(dy))
    np.testing.assert_array_equal(conv.weight.grad, conv2.weight.grad)


def test_the_output_release_frees_the_arrays(monkeypatch):
    """Between forward and backward a bottleneck model holds the released BN inputs' bytes less."""
    held, model = _held_after_forward("bottleneck-11", 0.25)
    released = [m.__dict__["_cache"].x.conv_cache.out_shape for m in model.modules()
                if isinstance(m, nn.BatchNorm2d) and isinstance(m.__dict__["_cache"].x, recompute.FromConv)]
    saved = sum(int(np.prod(shape)) * 4 for shape in released)
    with monkeypatch.context() as m:
        _no_release(m)
        held_all, _ = _held_after_forward("bottleneck-11", 0.25)
    assert len(released) == 5 and held_all - held >= 0.95 * saved, (held_all, held, saved)


CONV_OUTPUT_CASES = [      # (x shape, w shape, stride, padding, the path forward takes)
    ((3, 4, 8, 8), (5, 4, 1, 1), 1, 0, "pointwise"),
    ((3, 4, 9, 7), (5, 4, 1, 1), 2, 0, "pointwise"),       # kept: the strided input, (N, C, OH*OW)
    ((40, 4, 2, 2), (5, 4, 3, 3), 1, 1, "taps"),
    ((40, 6, 4, 4), (5, 6, 1, 1), 2, 0, "taps"),
    ((2, 3, 9, 9), (4, 3, 3, 3), 1, 1, "direct"),
    ((8, 32, 16, 16), (32, 32, 3, 3), 1, 1, "winograd"),
    ((2, 3, 9, 9), (4, 3, 3, 3), 2, 3, "im2col"),           # padding >= kernel size
]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,path", CONV_OUTPUT_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_output_is_the_forward_output_bit_for_bit(x_shape, w_shape, stride, padding, path, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    x.flat[5] = np.nan
    w = rng.standard_normal(w_shape).astype(dtype)
    out, cache = F.conv2d_forward(x, w, None, stride, padding)
    assert cache.path == path
    np.testing.assert_array_equal(F.conv2d_output(cache), out)


def test_conv_output_needs_a_conv_without_bias_or_fused_relu():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    for b, relu in ((np.zeros(4), False), (None, True)):
        _, cache = F.conv2d_forward(x, w, b, 1, 1, relu=relu)
        with pytest.raises(ValueError, match="without bias or fused ReLU"):
            F.conv2d_output(cache)


def test_no_output_release_where_the_conv_would_not_give_it_again():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    for conv in (nn.Conv2d(4, 3, 1, rng=rng), nn.Conv2d(4, 3, 1, bias=False, rng=rng)):
        bn = nn.BatchNorm2d(3)
        y = conv(x)
        if conv.bias is None:
            conv.fused_relu = True                      # as after fuse_for_inference
            y = conv(x)
        bn(y)
        nn.release_output(bn, conv, y)                  # a bias the cache does not hold, a fused ReLU
        assert isinstance(bn.__dict__["_cache"].x, np.ndarray)
    conv, bn = nn.Conv2d(4, 3, 1, bias=False, rng=rng), nn.BatchNorm2d(3)
    y = conv(x)
    bn(y + 0)                                           # the BN read something else
    nn.release_output(bn, conv, y)
    assert isinstance(bn.__dict__["_cache"].x, np.ndarray)
    bn.eval(keep_caches=False)
    bn(y)
    nn.release_output(bn, conv, y)                      # no cache: nothing to release
    assert bn.__dict__.get("_cache") is None
    bn.train()
    bn(y)
    nn.release_output(bn, conv, y)
    assert isinstance(bn.__dict__["_cache"].x, recompute.FromConv)


def test_the_bn_runs_the_conv_of_its_own_forward_again():
    """The BN holds the conv's cache of that forward: another forward of the
    conv before the BN's backward cannot change what it rebuilds."""
    rng = np.random.default_rng(0)
    conv, bn = nn.Conv2d(4, 3, 1, bias=False, rng=rng), nn.BatchNorm2d(3)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = conv(x)
    out = bn(y)
    nn.release_output(bn, conv, y)
    conv(x * 2)                                 # a new forward of the conv alone
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = bn.backward(dout)
    bn2 = nn.BatchNorm2d(3)
    bn2(y)
    np.testing.assert_array_equal(dx, bn2.backward(dout))
    np.testing.assert_array_equal(bn.weight.grad, bn2.weight.grad)


def test_no_release_in_inference_or_for_other_pairs():
    rng = np.random.default_rng(0)
    bn, conv, relu = nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1, rng=rng), nn.ReLU()
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    out = bn(x)
    conv(relu(out))                             # the conv read the ReLU's output, not the BN's
    nn.release_input(conv, bn, out)
    assert isinstance(conv.__dict__["_cache"].x, np.ndarray)
    nn.release_input(relu, bn, out)             # not a conv: nothing to do
    model = nn.Sequential(bn, conv).eval(keep_caches=False)
    model(x)
    assert conv.__dict__.get("_cache") is None


def test_a_rebuilt_input_serves_the_conv_backward_too(monkeypatch):
    """bn2 -> conv3 -> bn3 with both releases (a bottleneck's end): bn3's
    backward rebuilds conv3's input once, for itself and for conv3's
    backward, with the gradients of the chain that released nothing; not
    when conv3 has run forward again in between (its cache is another)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    dout = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)

    def chain():
        r = np.random.default_rng(1)
        return nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1, bias=False, rng=r), nn.BatchNorm2d(6)

    def run(release):
        bn2, conv3, bn3 = chain()
        a = bn2(x)
        y = conv3(a)
        bn3(y)
        if release:
            nn.release_input(conv3, bn2, a)
            nn.release_output(bn3, conv3, y)
        return bn2.backward(conv3.backward(bn3.backward(dout))), conv3.weight.grad, bn2.weight.grad

    rebuilt = []
    original = F.batchnorm2d_output
    monkeypatch.setattr(F, "batchnorm2d_output", lambda cache: rebuilt.append(1) or original(cache))
    for got, want in zip(run(True), run(False)):
        np.testing.assert_array_equal(got, want)
    assert len(rebuilt) == 1
    bn2, conv3, bn3 = chain()
    a = bn2(x)
    y = conv3(a)
    bn3(y)
    nn.release_input(conv3, bn2, a)
    nn.release_output(bn3, conv3, y)
    conv3(x)                                        # a new forward of the conv alone
    later = conv3.__dict__["_cache"]
    bn3.backward(dout)
    assert conv3.__dict__["_cache"] is later
