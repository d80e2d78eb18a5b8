"""Training loop: exact resume, divergence, checkpoints, and the CLI end to end."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minires import models
from minires.train import TrainConfig, TrainingDiverged, run_is_finished, train

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


def _budget_for_steps(steps, cfg):
    """The budget (resnet-20 epochs) that gives cfg's model exactly `steps` steps."""
    from minires.budget import budget_images
    per_unit = budget_images(1.0, cfg.model, cfg.model_options(), 10, cfg.train_size)
    return steps * cfg.batch_size / per_unit


def test_budget_trains_exact_steps_ends_the_schedule_and_resumes_bit_exactly(tmp_path):
    from minires.budget import budget_steps
    base = TrainConfig(**TINY, schedule="linear")                  # 96 images: 3 steps of 32 per epoch
    cfg = dataclasses.replace(base, budget=_budget_for_steps(7, base))
    assert budget_steps(cfg.budget, cfg.model, cfg.model_options(), 10, 96, 32) == 7
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    log = train(cfg, straight, progress=False, verbose=False)
    # 7 steps: two whole epochs and one step of a third, logged as a fraction
    assert [r["images_seen"] for r in log] == [96, 192, 224]
    assert log[-1]["epochs_done"] == pytest.approx(224 / 96)
    assert log[-1]["lr"] == pytest.approx(0.05 / 7)                # linear: one step before zero
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["epochs"] == 3
    assert run_is_finished(straight)
    train(cfg, split, progress=False, verbose=False, stop_after=1)
    assert not run_is_finished(split)
    train(dataclasses.replace(cfg, epochs=99), split, resume=True, progress=False, verbose=False)
    a, b = _weights(straight), _weights(split)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    strip = lambda log: [{k: v for k, v in r.items() if k not in TIMING} for r in log]
    assert strip(_log(straight)) == strip(_log(split))


def test_smaller_models_get_more_steps_for_the_same_budget():
    from minires.budget import budget_steps, macs_per_image
    assert budget_steps(1.0, "resnet-20") == round(50_000 / 128)
    ratio = macs_per_image("resnet-20") / macs_per_image("seed-cnn")
    assert budget_steps(2.0, "seed-cnn") == round(2 * 50_000 * ratio / 128) and ratio > 5
    with pytest.raises(ValueError, match="budget must be > 0"):
        budget_steps(0, "resnet-20")


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
    files = {f: (tmp_path / "run" / f).read_bytes() for f in os.listdir(out)}
    # overwrite=True: even so, nothing of the old run goes before the new one has a checkpoint
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(TrainConfig(**{**TINY, "lr": 1e30}, epochs=3), out, progress=False, verbose=False, overwrite=True)
    after = _weights(out)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert {f: (tmp_path / "run" / f).read_bytes() for f in os.listdir(out)} == files
    assert sorted(os.listdir(tmp_path)) == ["run"]      # no staging folder left behind


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
    assert r.returncode == 2 and "unknown model 'vgg-16'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()     # a failed command creates no folder


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
    from minires.dev.bench import run, to_markdown
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


def test_default_weight_decay_follows_the_papers():
    """He et al. trained their plain nets exactly as their ResNets (1e-4); WRN 5e-4."""
    from minires.train import default_weight_decay
    assert default_weight_decay("plain-56") == default_weight_decay("resnet-56") == 1e-4
    assert default_weight_decay("wrn-16-4") == default_weight_decay("seed-cnn") == 5e-4
