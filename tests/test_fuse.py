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
