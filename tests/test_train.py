"""Training loop: exact resume, divergence, checkpoints, and the CLI end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minires import models
from minires.train import TrainConfig, TrainingDiverged, train

TINY = dict(model="resnet-8", dataset="shapes", train_size=96, test_size=32, batch_size=32,
            width_scale=0.25, lr=0.05)


def _weights(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("model/", "optim/"))}


def _log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


TIMING = {"images_per_second", "epoch_seconds", "wall_seconds"}


@pytest.mark.parametrize("model,extra", [("resnet-8", {}), ("wrn-10-1", {"dropout": 0.3})])
def test_resume_is_bit_identical(tmp_path, model, extra):
    cfg = TrainConfig(**{**TINY, "model": model, **extra}, epochs=2)
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train(cfg, straight, progress=False, verbose=False)
    train(cfg, split, progress=False, verbose=False, stop_after=1)   # "interrupted" after epoch 1
    assert len(_log(split)) == 1
    train(cfg, split, resume=True, progress=False, verbose=False)
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    strip = lambda log: [{k: v for k, v in r.items() if k not in TIMING} for r in log]
    assert strip(_log(straight)) == strip(_log(split)) and len(_log(split)) == 2


def test_run_folder_contents_and_best_model(tmp_path):
    out = str(tmp_path / "run")
    history = train(TrainConfig(**TINY, epochs=2), out, progress=False, verbose=False)
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "config.json", "log.jsonl"]
    assert [r["epoch"] for r in history] == [1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_second", "epoch_seconds"):
        assert key in history[0]
    best = models.load(os.path.join(out, "best.npz"))
    assert best.name == "resnet-8"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig(**TINY, epochs=1), out, progress=False, verbose=False)
    before = _weights(out)
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(TrainConfig(**{**TINY, "lr": 1e30}, epochs=3), out, progress=False, verbose=False)
    after = _weights(out)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_time_budget_stops_after_an_epoch(tmp_path):
    out = str(tmp_path / "run")
    history = train(TrainConfig(**TINY, epochs=5, time_budget=1e-6), out, progress=False, verbose=False)
    assert len(history) == 1 and history[0]["stopped_by_time_budget"]


def _cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "minires", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


SMALL = ["--train-size", "64", "--test-size", "32", "--batch-size", "32", "--width-scale", "0.25",
         "--no-progress"]


def test_cli_train_evaluate_plot(tmp_path):
    out = _cli("train", "--model", "resnet-8", "--epochs", "1", "--out", "r", *SMALL, cwd=tmp_path)
    assert "epoch   1" in out
    out = _cli("evaluate", "r", cwd=tmp_path)
    assert "accuracy" in out and "circle" in out and (tmp_path / "r" / "confusion.png").exists()
    _cli("plot", "r", "--out", "c.png", cwd=tmp_path)
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_cli_compare_writes_results_report_and_plots(tmp_path):
    out = _cli("compare", "--models", "seed-cnn,resnet-8", "--epochs", "1", "--out", "cmp", *SMALL, cwd=tmp_path)
    assert "| seed-cnn |" in out and "| resnet-8 |" in out
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [r["model"] for r in results] == ["seed-cnn", "resnet-8"]
    assert results[0]["params"] > 0 and results[0]["macs"] > 0 and 0 <= results[0]["best_test_acc"] <= 1
    for name in ("report.md", "acc_vs_epoch.png", "acc_vs_time.png", "acc_vs_params.png"):
        assert (tmp_path / "cmp" / name).exists()
    # a second call finds both runs finished and trains nothing
    again = _cli("compare", "--models", "seed-cnn,resnet-8", "--epochs", "1", "--out", "cmp", *SMALL, cwd=tmp_path)
    assert "epoch   1" not in again


def test_cli_summary_and_gradcheck(tmp_path):
    out = _cli("summary", "--model", "resnet-20", cwd=tmp_path)
    assert "269,722 parameters" in out and "40,551,040 MACs" in out
    out = _cli("gradcheck", "--model", "resnet-8", "--mode", "eval", cwd=tmp_path)
    assert "PASS" in out


def test_cli_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minires", "train", "--model", "vgg-16", "--epochs", "1", *SMALL],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "unknown model 'vgg-16'" in r.stderr and "Traceback" not in r.stderr


# One name per family (resnet-56/110 and wrn-28-10 only repeat their family's blocks
# and take minutes); seed-cnn at width 0.25: narrower, its ReLU-then-BN-then-max-pool
# order makes exact ties in pooling windows likely, where no derivative exists.
@pytest.mark.parametrize("name,width", [("seed-cnn", "0.25"), ("resnet-20", "0.125"), ("bottleneck-29", "0.125"),
                                        ("wrn-16-4", "0.125"), ("seed-wide-20", "0.125"),
                                        ("imagenet-resnet-18", "0.125")])
def test_cli_gradcheck_every_family(tmp_path, name, width):
    out = _cli("gradcheck", "--model", name, "--width-scale", width, "--samples", "2", cwd=tmp_path)
    assert out.count("PASS") == 2


def test_bench_smoke(torch, tmp_path):
    """The benchmark runs end to end (tiny sizes; it measures, it asserts no speed)."""
    from minires.bench import run, to_markdown
    res = run(["seed-cnn"], batch=4, repeats=1, threads=1)
    row = res["models"][0]
    assert row["minires"]["step_ms"] > 0 and row["torch"]["step_ms"] > 0
    assert "conv backward" in " ".join(row["minires"]["breakdown"])
    assert "| seed-cnn |" in to_markdown(res)


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    from minires.atomic import atomic_write
    target = tmp_path / "log.jsonl"
    target.write_text("complete\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "complete\n" and sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
