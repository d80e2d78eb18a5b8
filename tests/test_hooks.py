"""Forward and backward hooks on every module, and the diagnostics built on
them: they see every layer, in order, and never change what trains."""
import json
import os

import numpy as np
import pytest

from minires import models
from minires.data import load_dataset
from minires.diagnostics import (RunDiagnostics, activation_stats, conv_gradient_norms, diagnose,
                                 fixed_batch, gradient_norms, record)
from minires.losses import CrossEntropyLoss
from minires.train import TrainConfig, train

TINY = dict(model="resnet-8", dataset="shapes", train_size=96, test_size=32, batch_size=32,
            width_scale=0.25, lr=0.05)


def _model(name="resnet-8", seed=0):
    return models.build(name, 10, rng=np.random.default_rng(seed), width_scale=0.25)


def _batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def _step(model, x, y):
    """One train-mode forward and backward; returns (logits, dx)."""
    crit = CrossEntropyLoss()
    logits = model(x)
    crit(logits, y)
    model.zero_grad()
    return logits, model.backward(crit.backward())


def _watch(model):
    """Register a forward and a backward hook on every module; returns (forward
    names, backward names, handles), the names appended as the hooks fire."""
    fwd, bwd, handles = [], [], []
    for name, m in model.named_modules():
        handles.append(m.register_forward_hook(lambda mod, x, out, name=name: fwd.append(name)))
        handles.append(m.register_backward_hook(lambda mod, dout, dx, name=name: bwd.append(name)))
    return fwd, bwd, handles


def _is_within(name, parent):
    return parent == "" or name.startswith(parent + ".")


def test_hooks_fire_for_every_module_in_order():
    model = _model()
    x, y = _batch()
    fwd, bwd, _ = _watch(model)
    _step(model, x, y)
    names = [n for n, _ in model.named_modules()]
    assert sorted(fwd) == sorted(names) and sorted(bwd) == sorted(names)   # each exactly once
    for order in (fwd, bwd):        # a parent's hook fires after all of its descendants' hooks
        for i, name in enumerate(order):
            assert not any(_is_within(later, name) and later != name for later in order[i + 1:]), name
    top = [n for n in names if n and "." not in n]          # conv1, bn1, layer1..3, pool, fc
    assert [n for n in fwd if n in top] == top
    assert [n for n in bwd if n in top] == top[::-1]
    block = ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2"]
    assert [n for n in fwd if n in block] == block
    assert [n for n in bwd if n in block] == block[::-1]
    assert fwd[-1] == bwd[-1] == ""         # the whole model last


def test_hooks_see_the_arrays_forward_and_backward_pass():
    model = _model()
    x, y = _batch()
    seen = {}
    model.fc.register_forward_hook(lambda m, inp, out: seen.update(fc_in=inp.copy(), fc_out=out.copy()))
    model.register_backward_hook(lambda m, dout, dx: seen.update(dout=dout.copy(), dx=dx.copy()))
    logits, dx = _step(model, x, y)
    np.testing.assert_array_equal(seen["fc_out"], logits)
    assert seen["fc_in"].shape == (len(x), model.fc.weight.shape[1])
    np.testing.assert_array_equal(seen["dx"], dx)
    assert seen["dout"].shape == logits.shape


def test_remove_detaches_hooks_and_restores_backward():
    model = _model()
    x, y = _batch()
    fwd, bwd, handles = _watch(model)
    for h in handles:
        h.remove()
    handles[0].remove()         # twice: no effect
    _step(model, x, y)
    assert fwd == [] and bwd == []
    assert all("backward" not in m.__dict__ for m in model.modules())    # the class's method again


def test_removing_one_hook_keeps_the_others():
    model = _model()
    calls = []
    a = model.fc.register_backward_hook(lambda *args: calls.append("a"))
    model.fc.register_backward_hook(lambda *args: calls.append("b"))
    a.remove()
    _step(model, *_batch())
    assert calls == ["b"]


def test_hooks_cannot_change_what_trains():
    x, y = _batch()
    plain, hooked = _model(), _model()

    def vandal(module, a, b):
        for arr in (a, b):
            with pytest.raises(ValueError, match="read-only"):
                arr[...] = 0
        return np.zeros(1)          # a return value is ignored

    for _, m in hooked.named_modules():
        m.register_forward_hook(vandal)
        m.register_backward_hook(vandal)
    out_a, dx_a = _step(plain, x, y)
    out_b, dx_b = _step(hooked, x, y)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(dx_a, dx_b)
    for (name, p), (_, q) in zip(plain.named_parameters(), hooked.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
    assert out_b.flags.writeable and dx_b.flags.writeable     # the caller's arrays stay writable


def test_gradient_norms_are_the_norms_of_grad():
    model = _model()
    _step(model, *_batch())
    norms = gradient_norms(model)
    assert list(norms) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(float(np.linalg.norm(p.grad)), rel=1e-12)
    convs = conv_gradient_norms(model)
    assert list(convs)[0] == "conv1" and all(norms[f"{n}.weight"] == v for n, v in convs.items())


def test_activation_stats_per_module():
    model = _model()
    x, _ = _batch()
    stats = activation_stats(model, x)
    assert set(stats) == {n for n, _ in model.named_modules() if n}
    assert stats["bn1"]["frac_zero"] > 0.2          # BN-ReLU: about half the outputs are zero
    assert abs(stats["layer1.0.bn2"]["mean"]) < 1e-3     # BN without ReLU, train mode: mean 0
    assert all("backward" not in m.__dict__ and not m._forward_hooks for m in model.modules())


def test_record_leaves_the_model_untouched():
    model = models.build("wrn-10-1", 10, rng=np.random.default_rng(0), width_scale=0.5, dropout=0.3)
    x, y = _batch(16)
    _step(model, x, y)                      # grads and caches from a step, as in training
    model.eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    rngs = [m.rng.bit_generator.state for m in model.modules() if hasattr(m, "rng")]
    r = record(model, x, y)
    assert not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[n], err_msg=n)
    assert rngs == [m.rng.bit_generator.state for m in model.modules() if hasattr(m, "rng")]
    assert set(r) == {"loss", "grad_norm", "conv_grad_norm", "activations"}
    assert all(np.isfinite(v) and v > 0 for v in r["conv_grad_norm"].values())


def _checkpoint_arrays(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("model/", "optim/"))}


@pytest.mark.parametrize("model,extra", [("resnet-8", {}), ("wrn-10-1", {"dropout": 0.3})])
def test_diagnostics_do_not_change_training(tmp_path, model, extra):
    cfg = TrainConfig(**{**TINY, "model": model, **extra}, epochs=2)
    without, with_ = str(tmp_path / "without"), str(tmp_path / "with")
    train(cfg, without, progress=False, verbose=False)
    train(TrainConfig(**{**TINY, "model": model, **extra}, epochs=2, diagnostics=True), with_,
          progress=False, verbose=False)
    a, b = _checkpoint_arrays(without), _checkpoint_arrays(with_)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not os.path.exists(os.path.join(without, "diagnostics.jsonl"))
    with open(os.path.join(with_, "diagnostics.jsonl")) as f:
        lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON")) for line in f]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert list(lines[0]["conv_grad_norm"])[0] == "conv1"


def test_resumed_diagnostics_keep_one_line_per_epoch(tmp_path):
    cfg = TrainConfig(**TINY, epochs=2, diagnostics=True)
    run = str(tmp_path / "run")
    train(cfg, run, progress=False, verbose=False, stop_after=1)
    with open(os.path.join(run, "diagnostics.jsonl"), "a") as f:      # a line the checkpoint never saw
        f.write(json.dumps({"epoch": 2, "conv_grad_norm": {}}) + "\n")
    train(cfg, run, resume=True, progress=False, verbose=False)
    with open(os.path.join(run, "diagnostics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["epoch"] for r in lines] == [0, 1, 2] and lines[2]["conv_grad_norm"]


def test_run_diagnostics_write_null_for_nan(tmp_path):
    ds = load_dataset("shapes", None, 0, train_size=8, test_size=1)
    diag = RunDiagnostics(str(tmp_path), ds)
    model = _model()
    model.fc.weight.data[0, 0] = np.nan
    diag.measure(model, 0)
    diag.write()
    with open(tmp_path / "diagnostics.jsonl") as f:
        r = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert r["loss"] is None and r["grad_norm"]["fc.weight"] is None


def test_plain_vs_residual_at_init_plot(tmp_path):
    """plain-20 vs resnet-20 at initialisation, on a batch of shapes: the plot
    is written and the norms are finite. The plain net's first-layer gradient
    is NOT smaller relative to its last layer than the residual net's: with BN
    it is larger (the gradient grows toward the input; first/last 5-16x for the
    plain net, 1.6-4.5x for the residual one, seeds 0-3 at this width; plain-56
    1,480x against resnet-56 10x at full width, seed 0). Only that direction,
    robust over those seeds, is asserted."""
    ds = load_dataset("shapes", None, 0, train_size=16, test_size=1)
    x, y = fixed_batch(ds)
    path = str(tmp_path / "norms.png")
    records = diagnose(["plain-20", "resnet-20"], x, y, path, options={"width_scale": 0.5})
    assert os.path.getsize(path) > 0
    ratio = {}
    for name, r in records.items():
        norms = list(r["conv_grad_norm"].values())
        assert len(norms) == 19 and all(np.isfinite(v) and v > 0 for v in norms)
        ratio[name] = norms[0] / norms[-1]
    assert ratio["plain-20"] > ratio["resnet-20"]


def test_diagnose_cli(tmp_path, capsys):
    from minires.cli import build_parser
    out = str(tmp_path / "d.png")
    args = build_parser().parse_args(["diagnose", "--model", "plain-8", "--model", "resnet-8",
                                      "--batch", "8", "--width-scale", "0.25", "--out", out])
    assert args.func(args) == 0
    assert os.path.getsize(out) > 0
    assert "plain-8: loss" in capsys.readouterr().out


def test_a_study_records_diagnostics_and_accepts_runs_made_without(tmp_path):
    """Turning diagnostics on in a spec never refuses a run made without them
    (old config.json without the field, or with it false), and the report
    plots what the E1 runs recorded."""
    from minires.study import run_config, run_state, run_study
    from minires.study_report import write_report
    run = {"name": "e1-plain-8", "experiments": ["E1"], "model": "plain-8", "epochs": 1, "seed": 0}
    spec = {"name": "tiny", "recipe": {"dataset": "shapes", "train_size": 32, "test_size": 16,
                                       "batch_size": 16, "width_scale": 0.25, "lr": 0.05},
            "experiments": {"E1": "degradation"}, "runs": [run]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    run_study(str(path), progress=False)        # trained without diagnostics
    run_dir = tmp_path / "tiny" / "runs" / "e1-plain-8"
    cfg_path = run_dir / "config.json"
    saved = json.loads(cfg_path.read_text())
    spec["runs"][0] = {**run, "recipe": {"diagnostics": True}}
    with_diag = run_config(spec, spec["runs"][0])
    assert run_state(str(run_dir), with_diag) == "finished"
    cfg_path.write_text(json.dumps({k: v for k, v in saved.items() if k != "diagnostics"}))   # older folder
    assert run_state(str(run_dir), with_diag) == "finished"
    os.remove(run_dir / "checkpoint.npz")       # a log without a checkpoint: restarted, not refused
    (run_dir / "log.jsonl").write_text("")
    path.write_text(json.dumps(spec))
    assert run_study(str(path), progress=False) == ["e1-plain-8"]
    assert len(open(run_dir / "diagnostics.jsonl").readlines()) == 2
    report = open(write_report(str(path))).read()
    assert "recorded by the runs e1-plain-8" in report
    assert os.path.getsize(tmp_path / "tiny" / "e1_gradient_norms.png") > 0
