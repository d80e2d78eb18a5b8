"""A newcomer's first hour (issue 12): compare and demo never report a run
under a recipe it was not trained with; a failed command leaves no folder;
the CLI takes every option the README names; bench without torch; plots;
file permissions; the Makefile's targets."""
import dataclasses
import inspect
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from minires import data, models
from minires.compare import compare, plan
from minires.errors import RunFolderError
from minires.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dataset="shapes", train_size=64, test_size=32, batch_size=32, width_scale=0.25, lr=0.05)
SMALL = ["--train-size", "64", "--test-size", "32", "--batch-size", "32", "--width-scale", "0.25",
         "--no-progress"]
MODELS = ["seed-cnn", "resnet-8"]


def _cli(*args, cwd, code=0):
    return run_cli(*args, cwd=cwd, code=code)


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("model/", "optim/"))}


def _compare(out, **kw):
    cfg = TrainConfig(**{**TINY, "epochs": 1, **kw})
    return compare(MODELS, cfg, str(out), progress=False, verbose=True)


# ---------------------------------------------------------------- compare and demo
def test_a_finished_run_of_the_same_recipe_is_reused_and_says_so(tmp_path, capsys):
    first = _compare(tmp_path / "cmp")
    files = _snapshot(tmp_path / "cmp" / "resnet-8")
    capsys.readouterr()
    again = _compare(tmp_path / "cmp")
    out = capsys.readouterr().out
    assert f"reusing finished run {tmp_path / 'cmp' / 'seed-cnn'} (1 epoch;" in out
    assert "epoch   1" not in out                           # nothing trained
    assert _snapshot(tmp_path / "cmp" / "resnet-8") == files
    assert [r["best_test_acc"] for r in again] == [r["best_test_acc"] for r in first]


@pytest.mark.parametrize("change,field", [({"epochs": 2}, "epochs 1 there, 2 here"),
                                          ({"lr": 0.5}, "lr 0.05 there, 0.5 here"),
                                          ({"augment": False}, "augment True there, False here")])
def test_another_recipe_is_refused_naming_the_fields_and_nothing_changes(tmp_path, change, field):
    _compare(tmp_path / "cmp")
    files = _snapshot(tmp_path / "cmp")
    with pytest.raises(RunFolderError) as err:
        _compare(tmp_path / "cmp", **change)
    msg = str(err.value)
    for name in MODELS:
        assert f"{tmp_path / 'cmp' / name} holds" in msg
    assert field in msg and "--overwrite" in msg and "another --out" in msg
    assert _snapshot(tmp_path / "cmp") == files             # report.md still the 1-epoch one


def test_overwrite_trains_the_other_recipe_and_the_report_says_what_ran(tmp_path):
    _compare(tmp_path / "cmp")
    results = compare(MODELS, TrainConfig(**{**TINY, "epochs": 2}), str(tmp_path / "cmp"), progress=False,
                      verbose=False, overwrite=True)
    assert [r["epochs"] for r in results] == [2, 2]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "Recipe (from each run's config.json): 2 epochs, batch 32, SGD momentum 0.9, lr 0.05" in report
    assert "weight decay per model: seed-cnn 0.0005, resnet-8 0.0001" in report
    saved = json.loads((tmp_path / "cmp" / "resnet-8" / "config.json").read_text())
    assert saved["epochs"] == 2 and results[1]["config"] == saved


def test_an_unfinished_run_of_the_same_recipe_is_resumed_bit_exactly(tmp_path, capsys):
    cfg = TrainConfig(**{**TINY, "model": "resnet-8", "epochs": 2})
    train(cfg, str(tmp_path / "straight"), progress=False, verbose=False)
    train(cfg, str(tmp_path / "cmp" / "resnet-8"), progress=False, verbose=False, stop_after=1)
    compare(["resnet-8"], cfg, str(tmp_path / "cmp"), progress=False)
    assert "resuming unfinished run" in capsys.readouterr().out
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "cmp" / "resnet-8")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_more_epochs_continue_a_run_only_where_that_is_exactly_the_longer_run(tmp_path, capsys):
    """Constant learning rate: 1 epoch continued to 2 == a fresh 2-epoch run.
    Cosine: the first epoch's learning rates were fitted to 1 epoch: refused."""
    const = dict(schedule="constant")
    _compare(tmp_path / "cmp", **const)
    results = _compare(tmp_path / "cmp", epochs=2, **const)
    out = capsys.readouterr().out
    assert "from 1 to 2 epochs (constant learning rate" in out
    assert [r["epochs"] for r in results] == [2, 2]
    _compare(tmp_path / "fresh", epochs=2, **const)
    for name in MODELS:
        a, b = _weights(tmp_path / "fresh" / name), _weights(tmp_path / "cmp" / name)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    _compare(tmp_path / "cos")
    with pytest.raises(RunFolderError, match=r"shorter run \(epochs 1 there, 2 here; its cosine"):
        _compare(tmp_path / "cos", epochs=2)


def test_fewer_epochs_are_refused_too(tmp_path):
    _compare(tmp_path / "cmp", epochs=2, schedule="constant")
    with pytest.raises(RunFolderError, match=r"longer run \(epochs 2 there, 1 here\)"):
        _compare(tmp_path / "cmp", schedule="constant")


def test_every_folder_is_checked_before_anything_trains(tmp_path):
    """The first model's folder is fine, the second's holds another recipe:
    nothing is trained and nothing written."""
    train(TrainConfig(**{**TINY, "model": "resnet-8", "epochs": 1, "lr": 0.01}), str(tmp_path / "cmp" / "resnet-8"),
          progress=False, verbose=False)
    with pytest.raises(RunFolderError, match="resnet-8 holds another run"):
        _compare(tmp_path / "cmp")
    assert sorted(os.listdir(tmp_path / "cmp")) == ["resnet-8"]
    assert plan(MODELS, TrainConfig(**{**TINY, "epochs": 1}), str(tmp_path / "cmp"), overwrite=True)[1].action \
        == "replace"


def test_cli_demo_with_other_epochs_is_one_error_line_then_overwrite_works(tmp_path):
    demo = ["demo", "--train-size", "64", "--test-size", "32", "--batch-size", "32", "--width-scale", "0.25",
            "--no-progress"]
    # the five demo models at this size train in seconds
    _cli(*demo, "--epochs", "1", cwd=tmp_path)
    report = (tmp_path / "demo_runs" / "report.md").read_text()
    out = _cli(*demo, "--epochs", "1", cwd=tmp_path)
    assert out.count("reusing finished run demo_runs/") == 5
    err = _cli(*demo, "--epochs", "2", cwd=tmp_path, code=2)
    assert "epochs 1 there, 2 here" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "demo_runs" / "report.md").read_text() == report
    _cli(*demo, "--epochs", "2", "--force", cwd=tmp_path)
    assert "Recipe (from each run's config.json): 2 epochs" in (tmp_path / "demo_runs" / "report.md").read_text()


def test_report_recipe_comes_from_the_configs_not_the_arguments():
    from minires.compare import report_markdown
    cfg = dataclasses.asdict(TrainConfig(**{**TINY, "model": "resnet-8", "epochs": 7, "weight_decay": 1e-4}))
    result = dict(model="resnet-8", params=1, macs=1e6, images_per_second=1.0, seconds_per_epoch=1.0, epochs=7,
                  best_test_acc=0.5, final_test_acc=0.5, config=cfg)
    text = report_markdown([result], TrainConfig(epochs=99, lr=9.0))
    assert "7 epochs" in text and "99" not in text and "lr 0.05" in text and "width x0.25" in text


# ---------------------------------------------------------------- no empty folders
def test_a_failed_cifar_run_leaves_no_run_folder_and_no_cache_folder(tmp_path, monkeypatch):
    """Offline, without --data-dir: the download fails."""
    def offline(url, dest):
        raise OSError("Name or service not known")
    monkeypatch.setattr(data, "_download", offline)
    cache = tmp_path / "home" / ".cache" / "minires"
    monkeypatch.setenv("MINIRES_DATA", str(cache))
    with pytest.raises(data.DataError, match="could not be downloaded"):
        train(TrainConfig(model="resnet-8", dataset="cifar10", epochs=1), str(tmp_path / "runs" / "r"),
              progress=False, verbose=False)
    with pytest.raises(data.DataError):
        compare(["resnet-8"], TrainConfig(dataset="cifar10", epochs=1), str(tmp_path / "cmp"), progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_cli_cifar_offline_leaves_nothing(tmp_path):
    """The real command, its download made to fail at once by an unreachable proxy."""
    env = dict(os.environ, HOME=str(tmp_path), MINIRES_DATA="", https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", MPLCONFIGDIR=str(tmp_path / ".mpl"))
    (tmp_path / "work").mkdir()
    r = subprocess.run([sys.executable, "-m", "minires", "train", "--model", "resnet-8", "--dataset", "cifar10",
                        "--epochs", "1", "--no-progress"], capture_output=True, text=True, cwd=tmp_path / "work",
                       env=env, timeout=120)
    assert r.returncode == 2 and "could not be downloaded" in r.stderr and "--data-dir" in r.stderr, r.stderr
    assert os.listdir(tmp_path / "work") == [] and not (tmp_path / ".cache").exists()


# ---------------------------------------------------------------- the CLI matches the README
def test_model_options_are_cli_options(tmp_path):
    _cli("train", "--model", "resnet-8", "--shortcut", "B", "--epochs", "1", "--out", "b", *SMALL, cwd=tmp_path)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["shortcut"] == "B"
    assert models.load(str(tmp_path / "b" / "best.npz")).options["shortcut"] == "B"
    _cli("train", "--model", "wrn-10-1", "--dropout", "0.3", "--epochs", "1", "--out", "w", *SMALL, cwd=tmp_path)
    assert json.loads((tmp_path / "w" / "config.json").read_text())["dropout"] == 0.3


@pytest.mark.parametrize("args,match", [
    (["--model", "wrn-10-1", "--shortcut", "B"], "wrn-10-1 takes no --shortcut"),
    (["--model", "resnet-8", "--dropout", "0.3"], "resnet-8 takes no --dropout"),
    (["--model", "seed-cnn", "--bottleneck-div", "4"], "seed-cnn takes no --bottleneck-div"),
])
def test_an_option_the_model_does_not_take_is_one_error_line(tmp_path, args, match):
    err = _cli("train", *args, "--epochs", "1", *SMALL, cwd=tmp_path, code=2)
    assert match in err and os.listdir(tmp_path) == []


def test_train_help_lists_the_models_and_the_options_each_takes():
    from minires.cli import MODELS_HELP
    out = subprocess.run([sys.executable, "-m", "minires", "train", "--help"], capture_output=True,
                         text=True).stdout
    assert "models (--model" in out and "--shortcut A|B" in out
    flags = {"width_scale": "--width-scale", "shortcut": "--shortcut", "dropout": "--dropout",
             "bottleneck_div": "--bottleneck-div"}
    for line in MODELS_HELP.splitlines()[1:-1]:
        name = line.split()[0].rstrip(",")
        builder, _ = models.registry.parse(name)
        takes = {flags[k] for k in flags if k in inspect.signature(builder).parameters}
        listed = set(re.findall(r"--[a-z-]+", line))
        assert listed == takes, (name, listed, takes)
    for name in models.available():     # every standard name is on some line
        family = re.sub(r"-\d+$", "", name) if not name.startswith("wrn") else "wrn"
        assert family in MODELS_HELP, name


# ---------------------------------------------------------------- bench
def test_bench_options_work_through_the_cli():
    out = subprocess.run([sys.executable, "-m", "minires", "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--quick", "--models", "--batch", "--repeats", "--threads", "--no-torch", "--json"):
        assert flag in out.stdout


@pytest.mark.parametrize("argv,names,repeats", [
    (["--quick"], ["resnet-20", "seed-cnn"], 3),
    (["--quick", "--models", "wrn-16-4"], ["wrn-16-4"], 3),
    (["--models", "seed-cnn,resnet-8", "--repeats", "2"], ["seed-cnn", "resnet-8"], 2),
    ([], ["resnet-20", "resnet-56", "plain-56", "seed-cnn", "bottleneck-29", "wrn-16-4", "imagenet-resnet-18",
          "imagenet-resnet-50"], 5),
])
def test_bench_quick_respects_models(monkeypatch, capsys, argv, names, repeats):
    from minires.dev import bench
    calls = []
    monkeypatch.setattr(bench, "run", lambda *a, **k: calls.append((a, k)) or _FAKE_RESULT)
    monkeypatch.setattr(bench, "torch_available", lambda: True)
    assert bench.main(argv) == 0
    (models_, batch, reps, threads), kw = calls[0]
    assert models_ == names and reps == repeats and kw["with_torch"]


def test_bench_without_torch_times_minires_alone_and_says_how_to_add_it(monkeypatch, capsys):
    from minires.dev import bench
    calls = []
    monkeypatch.setattr(bench, "run", lambda *a, **k: calls.append(k) or _FAKE_RESULT)
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert calls[0]["with_torch"] is False
    assert "PyTorch is not installed" in out and "pip install torch" in out
    assert "torch ms/step" not in out and "| seed-cnn | 66 | 5000 | 6400 | 2.5 |" in out


def test_bench_unknown_model_is_one_error_line(tmp_path):
    err = _cli("bench", "--models", "vgg-16", "--no-torch", cwd=tmp_path, code=2)
    assert "unknown model 'vgg-16'" in err


def test_bench_runs_minires_alone_end_to_end(tmp_path):
    """Tiny sizes; it measures, it asserts no speed."""
    out = _cli("bench", "--quick", "--models", "seed-cnn", "--batch", "4", "--repeats", "1", "--threads", "1",
               "--no-torch", "--json", "b.json", cwd=tmp_path)
    assert "| seed-cnn |" in out and "minires alone" in out and "Traceback" not in out
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["models"][0]["torch"] is None and res["repeats"] == 1


def test_paired_worker_times_both_libraries_in_one_process(torch):
    """The one-image pairs: one worker process, both libraries, a ratio per
    pair; it measures, it asserts no speed."""
    from minires.dev import bench
    res = bench._run_worker(["--what", "paired", "--model", "resnet-8", "--repeats", "3"], 1)
    assert res["pairs"] == 3 and res["minires_ms"] > 0 and res["torch_ms"] > 0
    assert 0 < res["one_image_paired"] < float("inf")


def test_bench_table_shows_the_paired_ratio_or_a_dash_for_results_without_it():
    from minires.dev import bench
    row = _FAKE_RESULT["models"][0]
    times = dict(row["minires"])
    ratios = {k: 0.5 for k in bench.TIMES}
    res = dict(_FAKE_RESULT, torch_version="2.13.0", models=[dict(row, torch=times, ratios=ratios)])
    assert "| 0.50 | 0.50 | - | 5000 |" in bench.to_markdown(res).splitlines()[4]
    res["models"][0]["ratios"] = dict(ratios, one_image_paired=0.75)
    table = bench.to_markdown(res).splitlines()
    assert "one image ratio (paired in one process)" in table[2] and "| 0.50 | 0.75 |" in table[4]


def _cifar10_folder(root, n_train=40, n_test=20):
    """A small CIFAR-10 in the official extracted layout (pickled dicts of uint8 rows)."""
    import pickle
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train // 5
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


def test_bench_epoch_end_to_end(tmp_path):
    """One tiny epoch of `minires train` against the PyTorch loop (or minires
    alone without torch): it runs and reports; it asserts no speed."""
    import importlib.util
    _cifar10_folder(tmp_path)
    with_torch = importlib.util.find_spec("torch") is not None
    out = _cli("bench", "--epoch", "--models", "seed-cnn", "--epoch-images", "40", "--data-dir", str(tmp_path),
               "--threads", "1", "--json", "e.json", *([] if with_torch else ["--no-torch"]), cwd=tmp_path)
    assert "One CIFAR-10 epoch end to end (40 training images" in out and "| seed-cnn |" in out
    res = json.loads((tmp_path / "e.json").read_text())
    (row,) = res["epochs"]
    assert row["minires"]["seconds"] > 0 and (row["torch"]["seconds"] > 0 if with_torch else row["torch"] is None)


def test_bench_epoch_without_data_is_one_error_line(tmp_path):
    err = _cli("bench", "--epoch", "--models", "seed-cnn", "--data-dir", str(tmp_path / "nowhere"), "--no-torch",
               cwd=tmp_path, code=2)
    assert "Traceback" not in err and "nowhere" in err


_FAKE_RESULT = dict(batch=128, threads=2, repeats=3, machine="x86_64", cpu_name="Some CPU", cpus=2,
                    fma_peak_gflops=300.0, torch_version=None, date="2026-01-01", single_conv_ms={"minires": 12.0},
                    models=[dict(model="seed-cnn", gflops=89.0, peak_pct=30.0, torch=None,
                                 minires=dict(step_ms=66.0, infer_ms=25.6, fused_ms=20.0, one_image_ms=2.5,
                                              peak_rss_mb=110.0, breakdown=None))])


# ---------------------------------------------------------------- plots and files
@pytest.fixture
def two_runs_of_one_model(tmp_path):
    for folder, lr in (("a", 0.05), ("b", 0.01)):
        train(TrainConfig(**{**TINY, "model": "resnet-8", "epochs": 1, "lr": lr}),
              str(tmp_path / folder / "resnet-8"), progress=False, verbose=False)
    return [str(tmp_path / "a" / "resnet-8"), str(tmp_path / "b" / "resnet-8")]


def test_plot_default_output_markers_labels_and_title(tmp_path, monkeypatch, two_runs_of_one_model):
    from minires import plots
    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or save(fig, path))
    path = plots.plot_runs(two_runs_of_one_model)
    assert path == os.path.join(two_runs_of_one_model[0], "curves.png") and os.path.getsize(path) > 1000
    fig = figures[0]
    ax_loss, ax_acc = fig.axes
    assert all(line.get_marker() == "o" for line in ax_acc.get_lines())   # a 1-epoch run is a visible dot
    assert [t.get_text() for t in ax_acc.get_legend().get_texts()] == ["a/resnet-8", "b/resnet-8"]
    title = fig._suptitle.get_text()
    assert title.startswith("shapes: 1 epoch,") and "cosine schedule" in title
    assert "lr: a/resnet-8 0.05, b/resnet-8 0.01" in title
    ticks = [t for t in ax_acc.get_xticks() if ax_acc.get_xlim()[0] <= t <= ax_acc.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_cli_plot_writes_into_the_run_folder_not_the_current_one(tmp_path, two_runs_of_one_model):
    (tmp_path / "here").mkdir()
    out = _cli("plot", *two_runs_of_one_model, cwd=tmp_path / "here")
    assert os.listdir(tmp_path / "here") == [] and out.strip() == os.path.join(two_runs_of_one_model[0],
                                                                               "curves.png")
    _cli("plot", two_runs_of_one_model[0], "--out", "c.png", cwd=tmp_path / "here")
    assert os.listdir(tmp_path / "here") == ["c.png"]
    err = _cli("plot", str(tmp_path / "here"), cwd=tmp_path, code=2)
    assert "no log.jsonl" in err


def test_run_labels_and_time_units():
    from minires.plots import run_labels, time_unit
    assert run_labels(["x/a/r", "x/b/r"]) == ["a/r", "b/r"]
    assert run_labels(["runs/resnet-20", "runs/wrn-16-4"]) == ["resnet-20", "wrn-16-4"]
    assert time_unit(73)[1] == "seconds" and time_unit(1800)[1] == "minutes" and time_unit(12 * 3600)[1] == "hours"


def test_comparison_time_axis_in_seconds_for_the_demo_and_hours_for_cifar(tmp_path, monkeypatch):
    from minires import plots
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    for seconds, unit in ((70.0, "seconds"), (40000.0, "hours")):
        log = [dict(epoch=1, test_acc=0.5, wall_seconds=seconds / 2), dict(epoch=2, test_acc=0.6, wall_seconds=seconds)]
        figures.clear()
        plots.plot_comparison([dict(model="m", params=10, best_test_acc=0.6, log=log,
                                    config=dict(dataset="cifar10"))], str(tmp_path))
        assert figures[1].axes[0].get_xlabel() == f"wall time ({unit})"
        assert "cifar10" in figures[0].axes[0].get_title()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_usual_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _compare(tmp_path / "cmp")
    finally:
        os.umask(old)
    for path in [tmp_path / "cmp" / n for n in ("results.json", "report.md", "acc_vs_epoch.png")] + \
            [tmp_path / "cmp" / "resnet-8" / n for n in ("config.json", "log.jsonl", "checkpoint.npz", "best.npz")]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# ---------------------------------------------------------------- Makefile
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_installs_notebook_tools_for_test_and_tutorials_not_demo(tmp_path):
    """`make -n` on a fresh copy (no .venv): what each target would run."""
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    (tmp_path / "minires").mkdir()
    shutil.copy(os.path.join(ROOT, "minires", "_kernels.pyx"), tmp_path / "minires")

    # Under `make test` this runs inside make: without the parent's MAKEFLAGS and
    # MAKELEVEL the child prints no "Entering directory /tmp/pytest-of-..." line.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def dry(target):
        return subprocess.run(["make", "--no-print-directory", "-n", target], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True).stdout

    demo, test, lab = dry("demo"), dry("test"), dry("tutorials")
    assert "-m venv .venv" in demo and "numpy" in demo and "minires demo" in demo
    assert not re.search(r"pytest|nbclient|ipykernel|jupyter", demo)
    assert "nbclient" in test and "ipykernel" in test and "pytest -q" in test and "jupyterlab" not in test
    assert "pip install -q jupyterlab" in lab and "cd tutorials && ../.venv/bin/jupyter lab" in lab
    assert dry("notebook") == lab


# ---------------------------------------------------------------- skipped parity tests
def test_skipped_parity_tests_say_why_and_how_to_run_them(tmp_path):
    """Without torch, one line under "N skipped" gives the cause and the fix (tests/conftest.py)."""
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path)
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch blocked by this test')\n")
    (tmp_path / "test_parity.py").write_text(
        "import pytest\n\n\n@pytest.mark.parametrize('i', range(3))\ndef test_parity(torch, i):\n    pass\n\n\n"
        "def test_other():\n    pytest.skip('another reason')\n")
    env = {k: v for k, v in os.environ.items() if k != "MINIRES_REQUIRE_TORCH"}
    env["PYTHONPATH"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_parity.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("4 skipped"), r.stdout
    assert lines[-2] == ("3 PyTorch parity tests skipped: torch is not installed; `.venv/bin/pip install "
                         "torch==2.13.0` (the CPU build) and rerun, or set MINIRES_REQUIRE_TORCH=1 (as CI does) "
                         "to make a missing torch an error"), r.stdout


def test_bench_rounds_alternate_and_report_the_median_ratio(monkeypatch):
    """Three rounds: the ratio reported is the median of the rounds' ratios,
    so one slow spell (round 2's torch) cannot decide it."""
    from minires.dev import bench
    order, torch_ms, paired = [], iter([100.0, 400.0, 110.0]), iter([0.7, 2.0, 0.8])

    def fake_worker(args, threads, package_dir=None):
        what = args[args.index("--what") + 1]
        if what == "peak":
            return dict(gflops=200.0)
        if what == "conv":
            return dict(conv_ms=1.0)
        if what == "paired":
            order.append("paired")
            return dict(one_image_paired=next(paired))
        lib = args[args.index("--library") + 1]
        order.append(lib)
        ms = 100.0 if lib == "minires" else next(torch_ms)
        return dict(step_ms=ms, infer_ms=ms, fused_ms=ms, one_image_ms=ms, peak_rss_mb=ms, macs=1e6,
                    torch_version="x", breakdown=None, conv_ms=1.0)

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    res = bench.run(["seed-cnn"], 8, 1, 2, rounds=3)
    assert order == ["minires", "torch", "paired"] * 3
    (row,) = res["models"]
    assert row["ratios"]["step_ms"] == pytest.approx(100 / 110)      # ratios 1.0, 0.25, 0.909 -> median
    assert row["ratios"]["one_image_paired"] == 0.8 and len(row["rounds"]["paired"]) == 3
    assert row["torch"]["step_ms"] == 110.0 and "| 0.91 |" in bench.to_markdown(res)


def test_bench_workers_do_not_inherit_what_setup_set(monkeypatch):
    """`minires bench` runs runtime.setup() in the parent; the OpenMP settings it
    wrote (PASSIVE slowed a one-image PyTorch forward 3x) stay out of the workers'
    environment, while a variable the user set stays in."""
    import subprocess
    from types import SimpleNamespace

    from minires import runtime
    from minires.dev import bench
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("MINIRES_USER_SETTING", "kept")
    monkeypatch.setattr(runtime, "_set_here", {"OMP_WAIT_POLICY"})
    seen = {}

    def fake_run(cmd, env, **kw):
        seen.update(env)
        return SimpleNamespace(stdout='RESULT {"ok": 1}', stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert bench._run_worker(["--what", "peak", "--library", "torch"], 2) == {"ok": 1}
    assert "OMP_WAIT_POLICY" not in seen and seen["MINIRES_USER_SETTING"] == "kept" and seen["OMP_NUM_THREADS"] == "2"
