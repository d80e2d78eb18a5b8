"""minires.interop and minires.anchor: a minires model and its PyTorch twin
compute the same numbers, weights cross in both directions (torchvision's
names included), and the anchor trains the twin on minires's batches."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minires import models
from minires.train import TrainConfig, train

# one tiny model per family (and per option that changes the architecture)
FAMILIES = [
    ("seed-cnn", dict(width_scale=0.25, dropout=0.0)),
    ("resnet-8", dict(width_scale=0.25)),
    ("resnet-8", dict(width_scale=0.25, shortcut="B")),
    ("plain-8", dict(width_scale=0.25)),
    ("bottleneck-11", dict(width_scale=0.125)),
    ("bottleneck-11", dict(width_scale=0.125, bottleneck_div=4)),
    ("wrn-10-2", dict(width_scale=0.25)),
    ("seed-wide-8", dict(width_scale=0.25)),
    ("imagenet-resnet-18", dict(width_scale=0.125)),
    ("imagenet-resnet-50", dict(width_scale=1 / 16)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in o.items())}"
       for n, o in FAMILIES]


def _numpy(t):
    return t.detach().numpy()


def _compare(torch, model, twin, x, rtol, atol):
    """Same logits, input gradient, parameter gradients and running statistics."""
    logits = model(x)
    tx = torch.tensor(x, requires_grad=True)
    tlogits = twin(tx)
    np.testing.assert_allclose(logits, _numpy(tlogits), rtol=rtol, atol=atol)
    if not model.training:
        return
    dout = np.random.default_rng(3).standard_normal(logits.shape).astype(x.dtype)
    model.zero_grad()
    dx = model.backward(dout)
    tlogits.backward(torch.tensor(dout))
    scale = np.abs(tx.grad.numpy()).max() + 1e-12
    np.testing.assert_allclose(dx / scale, tx.grad.numpy() / scale, atol=atol * 10)
    tparams = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        scale = np.abs(tparams[name].grad.numpy()).max() + 1e-12
        np.testing.assert_allclose(p.grad / scale, tparams[name].grad.numpy() / scale, atol=atol * 10,
                                   err_msg=name)
    tstate = twin.state_dict()
    for name, b in model.named_buffers():
        np.testing.assert_allclose(b, tstate[name].numpy(), rtol=rtol, atol=atol, err_msg=name)


# imagenet-resnet-50 only in float64: 50 BN layers over a batch of 4 amplify
# float32 rounding past any useful tolerance (as in test_models' parity test).
CASES = [(name, options, dtype) for (name, options) in FAMILIES for dtype in (np.float64, np.float32)
         if not (dtype == np.float32 and name == "imagenet-resnet-50")]


@pytest.mark.parametrize("name,options,dtype", CASES,
                         ids=[f"{n}-{np.dtype(d).name}" for n, _, d in CASES])
def test_to_torch_gives_the_same_numbers(torch, name, options, dtype):
    """Train mode (logits, gradients, updated running statistics), then eval
    mode on those running statistics."""
    from minires.interop import to_torch
    model = models.build(name, rng=0, **options).astype(dtype)
    twin = to_torch(model)
    assert twin.training and next(twin.parameters()).dtype == getattr(torch, np.dtype(dtype).name)
    tight = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-3, atol=1e-4)
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(dtype)
    _compare(torch, model, twin, x, **tight)
    model.eval()
    twin.eval()
    _compare(torch, model, twin, 0.5 * x, **tight)


def test_to_torch_keeps_the_mode_the_classes_and_dropout(torch):
    from minires.interop import to_torch
    model = models.build("seed-cnn", num_classes=7, rng=0, width_scale=0.25).eval()   # dropout 0.5
    twin = to_torch(model)
    assert not twin.training and twin.fc2.out_features == 7 and twin.dropout.p == 0.5
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(model(x), _numpy(twin(torch.from_numpy(x))), rtol=1e-4, atol=1e-5)
    wide = models.build("seed-wide-8", num_classes=3, rng=0, width_scale=0.25, widen=2)
    twin = to_torch(wide.eval())
    np.testing.assert_allclose(wide(x), _numpy(twin(torch.from_numpy(x))), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,options", FAMILIES, ids=IDS)
def test_from_torch_round_trips_exactly(torch, name, options):
    from minires.interop import from_torch, to_torch
    model = models.build(name, rng=0, **options)
    model.train()
    model(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32))  # non-trivial statistics
    twin = to_torch(model)
    for back in (from_torch(twin.state_dict(), name, **options), from_torch(twin)):
        assert back.name == name and back.options == model.options
        a, b = model.state_dict(), back.state_dict()
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    as64 = from_torch(to_torch(model.astype(np.float64)))
    assert as64.state_dict()["fc.weight" if "fc.weight" in a else "fc2.weight"].dtype == np.float64


def _torchvision_names(state):
    """minires's names in torchvision's: shortcut -> downsample, and no num_batches_tracked
    (torchvision's published ImageNet weights predate it)."""
    return {k.replace(".shortcut.", ".downsample."): v for k, v in state.items()
            if not k.endswith("num_batches_tracked")}


def test_torchvision_resnets_have_minires_parameter_counts():
    """torchvision's resnet18 and resnet50 with their 1000 ImageNet classes."""
    assert models.build("imagenet-resnet-18", 1000, rng=0).num_parameters() == 11_689_512
    assert models.build("imagenet-resnet-50", 1000, rng=0).num_parameters() == 25_557_032


@pytest.mark.parametrize("name,options", [("imagenet-resnet-18", dict(width_scale=0.125)),
                                          ("imagenet-resnet-50", dict(width_scale=1 / 16))])
def test_from_torch_reads_torchvision_names(torch, name, options):
    from minires.interop import from_torch, to_torch
    source = models.build(name, 1000, rng=1, **options)
    tv = _torchvision_names(to_torch(source).state_dict())
    assert any(".downsample.0.weight" in k for k in tv) and not any("shortcut" in k for k in tv)
    model = from_torch(tv, name, **options)            # 1000 classes, read from fc.weight
    assert model.options["num_classes"] == 1000
    for k, v in model.state_dict().items():
        expected = 0 if k.endswith("num_batches_tracked") else source.state_dict()[k]
        assert np.array_equal(v, expected), k
    # a new 10-class head on the ImageNet features
    tuned = from_torch({f"module.{k}": v for k, v in tv.items()}, name, num_classes=10, reset_head=True, **options)
    assert tuned.fc.weight.shape[0] == 10
    assert np.array_equal(tuned.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"])
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert tuned.eval()(x).shape == (2, 10)


def test_from_torch_errors_name_the_keys(torch):
    from minires.interop import InteropError, from_torch, to_torch
    twin = to_torch(models.build("resnet-8", rng=0, width_scale=0.25))
    state = twin.state_dict()
    broken = dict(state)
    del broken["layer1.0.conv1.weight"]
    broken["layer9.conv.weight"] = state["conv1.weight"]
    with pytest.raises(InteropError, match=r"1 missing \(layer1.0.conv1.weight\); 1 unexpected \(layer9.conv.weight\)"):
        from_torch(broken, "resnet-8", width_scale=0.25)
    with pytest.raises(InteropError, match=r"wrong shape \(conv1.weight: \(4, 3, 3, 3\) given, \(8, 3, 3, 3\) "
                                           r"expected.*width_scale"):
        from_torch(state, "resnet-8", width_scale=0.5)
    with pytest.raises(InteropError, match="needs the minires model name"):
        from_torch(state)
    with pytest.raises(InteropError, match="cannot build 'resnet-9'"):
        from_torch(state, "resnet-9")
    nan = dict(state, **{"fc.bias": state["fc.bias"] * float("nan")})
    with pytest.raises(InteropError, match="NaN"):
        from_torch(nan, "resnet-8", width_scale=0.25)
    with pytest.raises(InteropError, match="models.build"):
        to_torch(models.resnet(8))                      # built without a name


def test_minires_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import minires.interop, minires.anchor, minires.study, minires.study_report\n"
            "from minires.interop import to_torch\n"
            "from minires import models\n"
            "try:\n    to_torch(models.build('resnet-8', rng=0, width_scale=0.25))\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "MiniresError minires.interop needs PyTorch" in r.stdout


# ------------------------------------------------------------------ the anchor
# One step per epoch (32 images, batch 32): epoch 1's train loss is the first step's loss.
TINY = dict(model="resnet-8", dataset="shapes", train_size=32, test_size=32, batch_size=32,
            width_scale=0.25, lr=0.05, epochs=3, threads=1, schedule="linear")
FIELDS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_seen",
          "epochs_done", "images_per_second", "epoch_seconds", "wall_seconds"}


def _log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_anchor_trains_the_twin_from_the_same_start(torch, tmp_path):
    from minires.anchor import train_torch_twin
    cfg = TrainConfig(**TINY)
    mine = train(cfg, tmp_path / "minires", progress=False, verbose=False)
    theirs = train_torch_twin(cfg, tmp_path / "torch", progress=False, verbose=False)
    log = _log(tmp_path / "torch")
    assert log == theirs and len(log) == 3 and all(FIELDS <= set(r) for r in log)
    assert all(r["framework"] == "torch" for r in log)
    with open(tmp_path / "torch" / "config.json") as f:
        assert TrainConfig(**json.load(f)) == dataclasses.replace(cfg, weight_decay=1e-4)
    assert models.load(tmp_path / "torch" / "best.npz").name == "resnet-8"
    # the same weights and the same first batch: the same first loss, to float32 rounding
    assert theirs[0]["train_loss"] == pytest.approx(mine[0]["train_loss"], rel=1e-5)
    for a, b in zip(mine, theirs):      # and the same schedule, data and steps after it
        assert (a["lr"], a["images_seen"], a["epochs_done"]) == (b["lr"], b["images_seen"], b["epochs_done"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


def test_anchor_resumes_and_keeps_its_folder(torch, tmp_path):
    from minires.anchor import train_torch_twin
    from minires.errors import RunFolderError
    cfg = TrainConfig(**{**TINY, "budget": 0.05})      # a budget: 2 steps (minires.budget), 2 epochs
    straight = train_torch_twin(cfg, tmp_path / "a", progress=False, verbose=False)
    train_torch_twin(cfg, tmp_path / "b", progress=False, verbose=False, stop_after=1)
    assert len(_log(tmp_path / "b")) == 1 and (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = train_torch_twin(cfg, tmp_path / "b", progress=False, verbose=False)
    assert len(resumed) == len(straight) > 1
    for a, b in zip(straight, resumed):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    assert train_torch_twin(cfg, tmp_path / "b", progress=False, verbose=False) == resumed   # finished
    with pytest.raises(RunFolderError, match="holds another run .*lr 0.05 there, 0.1 here"):
        train_torch_twin(dataclasses.replace(cfg, lr=0.1), tmp_path / "b", progress=False, verbose=False)


@pytest.mark.filterwarnings("ignore:No artists with labels")      # the E1 plot, empty here
def test_study_runs_torch_entries_and_reports_e5(torch, tmp_path):
    from minires.study import load_spec, run_study
    from minires.study_report import write_report
    spec = {"name": "tiny", "data": "shapes",
            "recipe": {"dataset": "shapes", "train_size": 32, "test_size": 32, "batch_size": 32,
                       "width_scale": 0.25, "lr": 0.05, "schedule": "linear", "threads": 1},
            "experiments": {"E5": "anchor"},
            "runs": [{"name": f"e5-{fw}-s{s}", "experiments": ["E5"], "model": "resnet-8", "budget": 0.005,
                      "seed": s, "framework": fw} for fw in ("minires", "torch") for s in (0, 1)]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    assert len(run_study(str(path), progress=False)) == 4
    assert (tmp_path / "tiny" / "runs" / "e5-torch-s1" / "checkpoint.pt").exists()
    assert not (tmp_path / "tiny" / "runs" / "e5-minires-s1" / "checkpoint.pt").exists()
    assert run_study(str(path), progress=False) == []          # all finished
    report = open(write_report(str(path))).read()
    assert "| model | budget | minires (seeds) | PyTorch (seeds) | minires - PyTorch |" in report
    assert "resnet-8 (torch)" in report and " points |" in report
    spec["runs"][0]["framework"] = "jax"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="framework must be one of"):
        load_spec(str(path))
