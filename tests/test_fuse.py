"""fuse_for_inference (batch norm folded into convolutions), eval mode
without backward caches, and the Module registry rules they rely on."""
import numpy as np
import pytest

from minires import models, nn
from minires.nn import fuse

# (model, width_scale, batch norms left after folding: those that read no conv
# output alone; seed-cnn's follow a ReLU, a wide block's bn1 feeds its shortcut too)
FAMILIES = [("resnet-8", 0.5, 0), ("plain-8", 0.5, 0), ("bottleneck-11", 0.25, 0), ("wrn-10-2", 0.5, 4),
            ("seed-cnn", 0.25, 5), ("imagenet-resnet-18", 0.125, 0), ("imagenet-resnet-50", 0.0625, 0)]
# batch norms that inference still runs as layers of their own: seed-cnn's
# conv, ReLU, BN stacks run in one pass too (nn.conv_relu_bn)
ONE_PASS_LEFT = {"seed-cnn": 0}


def _trained_statistics(model, rng):
    """Batch norms with running statistics and affine parameters far from their
    defaults, so that a fold that forgets any of them shows."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean[:] = rng.standard_normal(c) * 0.5
            m.running_var[:] = rng.uniform(0.3, 3.0, c)
            m.weight.data[:] = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
            m.bias.data[:] = rng.standard_normal(c) * 0.3
    return model


def _batch_norms(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name,width,left", FAMILIES)
def test_folded_model_gives_the_eval_outputs(rng, name, width, left):
    model = _trained_statistics(models.build(name, rng=0, width_scale=width), rng)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    before = model.state_dict()
    want = model.eval()(x)
    folded = model.fuse_for_inference()
    got = folded(x)
    assert _batch_norms(folded) == left <= _batch_norms(model)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the original is untouched: same weights, same outputs, still trainable
    after = model.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(model(x), want)
    model.train()


def test_fold_in_float64_matches_to_rounding(rng):
    model = _trained_statistics(models.build("resnet-8", rng=0, width_scale=0.5), rng).astype(np.float64)
    x = rng.standard_normal((2, 3, 32, 32))
    np.testing.assert_allclose(model.fuse_for_inference()(x), model.eval()(x), rtol=1e-11, atol=1e-11)


def test_a_wrong_fold_is_caught(rng, monkeypatch):
    """The check above can fail: a fold that forgets the running mean."""
    def forgets_the_mean(conv, bn):
        bn.running_mean[:] = 0
        fuse_fold(conv, bn)
    fuse_fold = fuse.fold
    monkeypatch.setattr(fuse, "fold", forgets_the_mean)
    model = _trained_statistics(models.build("resnet-8", rng=0, width_scale=0.5), rng)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = model.eval()(x)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(model.fuse_for_inference()(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_folded_model_refuses_to_train_and_names_its_parts(rng):
    model = models.build("resnet-8", rng=0, width_scale=0.5)
    folded = model.fuse_for_inference()
    with pytest.raises(RuntimeError, match="fuse_for_inference"):
        folded.train()
    state = folded.state_dict()
    assert "conv1.bias" in state and not any("bn" in k for k in state)
    assert folded.conv1.fused_relu and "fused_relu=True" in repr(folded.conv1)


def test_folded_model_is_read_only_and_its_convs_keep_their_winograd_kernels(rng, monkeypatch):
    """Every parameter of the folded copy is read-only (the original's stay
    writeable); loading a state into it is refused with a message that says
    what to do; each conv has a dict for its kernels, and one image through a
    wide conv on a small map transforms its kernels once, not per call."""
    from minires import kernels, parallel
    monkeypatch.setattr(parallel, "_threads", 2)
    model = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1, rng=0), nn.BatchNormReLU2d(128),
                          nn.Conv2d(128, 128, 3, padding=1, rng=1))
    _trained_statistics(model, rng)
    folded = model.fuse_for_inference()
    assert all(not p.data.flags.writeable for p in folded.parameters())
    assert all(p.data.flags.writeable for p in model.parameters())
    with pytest.raises(ValueError, match="read-only"):
        folded[2].weight.data[0] = 0
    with pytest.raises(ValueError, match="fuse_for_inference.*fold it again"):
        folded.load_state_dict(folded.state_dict())
    assert folded[0].kept == {} and folded[2].kept == {} and model[2].kept is None
    transforms = []
    real = kernels.winograd_weights
    monkeypatch.setattr(kernels, "winograd_weights", lambda w: transforms.append(w.shape) or real(w))
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = model.eval()(x)
    for _ in range(3):
        np.testing.assert_allclose(folded(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert transforms == [(128, 128, 3, 3)] and folded[2].kept["winograd"][0] is folded[2].weight.data


def test_sequential_folds_only_a_conv_followed_by_batch_norm():
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.BatchNormReLU2d(3), nn.ReLU(),
                        nn.Conv2d(3, 3, 1, rng=0), nn.ReLU(), nn.BatchNorm2d(3))
    assert seq.fusable_pairs() == [("0", "1")]
    folded = seq.fuse_for_inference()
    assert [type(m).__name__ for m in folded] == ["Conv2d", "Identity", "ReLU", "Conv2d", "ReLU", "BatchNorm2d"]


def test_eval_for_inference_keeps_no_caches(rng):
    model = models.build("resnet-8", rng=0, width_scale=0.5)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    dout = np.ones((2, 10), np.float32)
    model.eval(keep_caches=False)
    model(x)
    assert all(m.__dict__.get("_cache") is None for m in model.modules())
    with pytest.raises(RuntimeError, match="keep_caches=False"):
        model.backward(dout)
    model.eval()                                                   # the default keeps them
    out = model(x)
    dx = model.backward(dout)
    assert dx.shape == x.shape and out.shape == (2, 10)
    model.train()
    model(x)
    assert model.conv1.__dict__.get("_cache") is not None          # training keeps them, always


def test_a_reassigned_child_moves_last_and_a_none_attribute_does_not_shadow():
    """Reassignment keeps the order the models were built and initialised in
    (a block's shortcut replaces its Identity after the convs: it comes last)."""
    model = models.build("bottleneck-11", rng=0)
    names = [name for name, _ in model.named_parameters()]
    assert names.index("layer2.0.shortcut.0.weight") > names.index("layer2.0.bn3.bias")
    seq = nn.Sequential(nn.ReLU(), nn.ReLU(), nn.ReLU())
    setattr(seq, "1", nn.Identity())
    assert [type(m).__name__ for m in seq] == ["ReLU", "ReLU", "Identity"]
    conv = nn.Conv2d(2, 3, 3, bias=False, rng=0)
    assert conv.bias is None
    conv.bias = nn.Parameter(np.ones(3, np.float32))
    assert conv.bias is conv._parameters["bias"] and "bias" in conv.state_dict()


# ---------------------------------------------------------------- conv + BN in one pass (nn.conv_bn)
# (x shape, w shape, stride, padding, the path conv2d_forward takes): every path
# applies the batch norm in its own epilogue
PATHS = [((2, 3, 9, 7), (4, 3, 3, 3), 1, 1, "direct"),
         ((1, 3, 9, 7), (4, 3, 3, 3), 2, 1, "direct"),
         ((2, 32, 32, 32), (32, 32, 3, 3), 1, 1, "winograd"),
         ((2, 3, 9, 7), (4, 3, 3, 2), (2, 1), (0, 2), "im2col"),
         ((2, 3, 9, 7), (5, 3, 1, 1), 2, 0, "pointwise"),
         ((64, 4, 2, 2), (6, 4, 3, 3), 1, 1, "taps"),
         ((1, 8, 4, 4), (6, 8, 3, 3), 1, 1, "im2col")]


def _bn_params(rng, f, dtype):
    return (rng.uniform(0.5, 1.5, f).astype(dtype) * rng.choice([-1, 1], f).astype(dtype),   # gamma
            (rng.standard_normal(f) * 0.3).astype(dtype),                                   # beta
            (rng.standard_normal(f) * 0.5).astype(np.float32),                              # running_mean
            rng.uniform(0.3, 3.0, f).astype(np.float32))                                    # running_var


def _separate_passes(x, w, b, stride, padding, bn, eps, relu, relu_before=False):
    """The conv, (a ReLU,) the batch norm (with its ReLU), each as its own layer -> (out, the conv's path)."""
    from minires import functional as F
    y, cache = F.conv2d_forward(x, w, b, stride, padding)
    if relu_before:
        y = F.relu_forward(y)[0]
    forward = F.batchnorm2d_relu_forward if relu else F.batchnorm2d_forward
    return forward(y, *bn, training=False, eps=eps)[0], cache.path


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu,bias,relu_before", [(False, False, False), (True, False, False),
                                                   (True, True, False), (False, True, True), (True, False, True)])
def test_conv_batchnorm_eval_gives_the_separate_layers_numbers_on_every_path(rng, x_shape, w_shape, stride, padding,
                                                                              path, dtype, relu, bias, relu_before):
    from minires import functional as F
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    bn = _bn_params(rng, w_shape[0], dtype)
    want, took = _separate_passes(x, w, b, stride, padding, bn, 1e-3, relu, relu_before)
    assert took == path
    got = F.conv2d_batchnorm_eval(x, w, b, stride, padding, *bn, eps=1e-3, relu=relu, relu_before=relu_before)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if relu:
        assert (got == 0).any() and (got > 0).any()
    if relu_before:     # the ReLU changed something (the conv had negative outputs)
        without = F.conv2d_batchnorm_eval(x, w, b, stride, padding, *bn, eps=1e-3, relu=relu)
        assert not np.array_equal(got, without)


def test_a_missing_relu_before_the_batch_norm_is_caught(rng):
    """The check above can fail: the one pass without its ReLU is not the three layers."""
    from minires import functional as F
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bn = _bn_params(rng, 4, np.float32)
    want = _separate_passes(x, w, None, 1, 1, bn, 1e-5, False, relu_before=True)[0]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(F.conv2d_batchnorm_eval(x, w, None, 1, 1, *bn), want)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,path", PATHS[:3])
def test_conv_batchnorm_eval_passes_inf_and_nan_as_the_two_layers(rng, x_shape, w_shape, stride, padding, path):
    from minires import functional as F
    x = rng.standard_normal(x_shape).astype(np.float32)
    x[0, 0, 1, 2], x[-1, -1, 3, 3] = np.nan, np.inf
    w = rng.standard_normal(w_shape).astype(np.float32)
    bn = _bn_params(rng, w_shape[0], np.float32)
    for relu, relu_before in ((False, False), (True, False), (False, True)):
        want = _separate_passes(x, w, None, stride, padding, bn, 1e-5, relu, relu_before)[0]
        got = F.conv2d_batchnorm_eval(x, w, None, stride, padding, *bn, relu=relu, relu_before=relu_before)
        assert np.isnan(want).any()
        np.testing.assert_array_equal(got, want)        # NaN where the layers give NaN, inf likewise


def test_conv_batchnorm_eval_names_a_wrong_argument(rng):
    from minires import functional as F
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    gamma, beta, mean, var = _bn_params(rng, 4, np.float32)
    with pytest.raises(ValueError, match=r"gamma must have shape \(F\)"):
        F.conv2d_batchnorm_eval(x, w, None, 1, 1, gamma[:3], beta, mean, var)
    with pytest.raises(TypeError, match="running_var"):
        F.conv2d_batchnorm_eval(x, w, None, 1, 1, gamma, beta, mean, list(var))
    with pytest.raises(ValueError, match="w must have shape"):
        F.conv2d_batchnorm_eval(x, w[:, :2], None, 1, 1, gamma, beta, mean, var)


def _count_batch_norm_calls(monkeypatch):
    calls = []
    forward = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward", lambda self, x: calls.append(self) or forward(self, x))
    return calls


@pytest.mark.parametrize("name,width,left", FAMILIES)
def test_inference_runs_conv_and_batch_norm_in_one_pass_with_the_same_outputs(rng, monkeypatch, name, width, left):
    """eval(keep_caches=False) gives eval()'s outputs bit for bit, and only the
    batch norms that read no conv's output alone run on their own."""
    model = _trained_statistics(models.build(name, rng=0, width_scale=width), rng)
    calls = _count_batch_norm_calls(monkeypatch)
    for n in (1, 3):
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        want = model.eval()(x)
        calls.clear()
        got = model.eval(keep_caches=False)(x)
        np.testing.assert_array_equal(got, want)
        assert len(calls) == ONE_PASS_LEFT.get(name, left)


def test_a_wrong_one_pass_batch_norm_is_caught(rng, monkeypatch):
    """The check above can fail: an epilogue that forgets the running mean."""
    from minires import functional as F
    right = F.conv2d_batchnorm_eval

    def forgets_the_mean(x, w, b, stride, padding, gamma, beta, mean, var, eps=1e-5, relu=False, relu_before=False):
        return right(x, w, b, stride, padding, gamma, beta, np.zeros_like(mean), var, eps, relu, relu_before)
    monkeypatch.setattr(F, "conv2d_batchnorm_eval", forgets_the_mean)
    model = _trained_statistics(models.build("resnet-8", rng=0, width_scale=0.5), rng)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = model.eval()(x)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(model.eval(keep_caches=False)(x), want)


def test_one_pass_steps_aside_for_a_hook_training_and_kept_caches(rng, monkeypatch):
    model = _trained_statistics(models.build("resnet-8", rng=0, width_scale=0.5), rng)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    calls = _count_batch_norm_calls(monkeypatch)
    seen = []
    handle = model.layer1[0].conv1.register_forward_hook(lambda m, i, o: seen.append(o.copy()))
    model.eval(keep_caches=False)(x)
    assert len(seen) == 1 and model.layer1[0].bn1 in calls       # the hook saw the conv's own output
    handle.remove()
    calls.clear()
    model.eval()(x)                                                # caches kept for a backward: two passes
    assert len(calls) == _batch_norms(model)


def test_conv_relu_batch_norm_runs_in_one_pass_and_steps_aside_for_a_hook_on_the_relu(rng, monkeypatch):
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=0), nn.ReLU(), nn.BatchNorm2d(4),
                        nn.Conv2d(4, 4, 3, padding=1, rng=0), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 1, rng=0), nn.ReLU(), nn.ReLU(), nn.BatchNorm2d(4))
    assert seq._conv_bn_chains() == {"0": ("1", "2"), "3": (None, "4")}     # not "6": two ReLUs before its BN
    _trained_statistics(seq, rng)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = seq.eval()(x)
    calls = _count_batch_norm_calls(monkeypatch)
    np.testing.assert_array_equal(seq.eval(keep_caches=False)(x), want)
    assert calls == [seq[9]]
    seen = []
    handle = seq[1].register_forward_hook(lambda m, i, o: seen.append(o.copy()))
    calls.clear()
    np.testing.assert_array_equal(seq(x), want)
    assert len(seen) == 1 and (seen[0] >= 0).all() and calls == [seq[2], seq[9]]    # the ReLU ran as a layer
    handle.remove()
