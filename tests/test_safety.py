"""Data loss and safety: divergence, resume, run folders, bad files, bad data,
and the CLI's refusals (one `minires: error: ...` line, exit code 2)."""
import builtins
import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import run_cli

from minires import data, models
from minires.checkpoint import load_checkpoint
from minires.errors import FileFormatError, MiniresError, RunFolderError
from minires.evaluate import evaluate_path
from minires.train import TrainConfig, TrainingDiverged, finite_or_none, train

TINY = dict(model="resnet-8", dataset="shapes", train_size=64, test_size=32, batch_size=32,
            width_scale=0.25, lr=0.05)
SMALL = ["--train-size", "64", "--test-size", "32", "--batch-size", "32", "--width-scale", "0.25",
         "--no-progress"]


def _train(out, **kw):
    return train(TrainConfig(**{**TINY, "epochs": 1, **kw}), str(out), progress=False, verbose=False)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _strict_json(line):
    """json.loads that fails on the bare NaN / Infinity Python's json accepts."""
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def _cli(*args, cwd, code=2):
    return run_cli(*args, cwd=cwd, code=code)


@pytest.fixture
def run(tmp_path):
    """A finished one-epoch run folder and a snapshot of its files."""
    out = tmp_path / "run"
    _train(out)
    return out, _snapshot(out)


# ---------------------------------------------------------------- divergence
def test_nan_weight_after_an_epoch_stops_the_run_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    """A NaN in a weight with a finite loss (injected at the end of epoch 2): the
    per-epoch check stops the run before epoch 2 is saved anywhere."""
    import minires.train as T
    out = tmp_path / "run"
    calls = []

    def poisoned(model, *args):
        result = real(model, *args)
        calls.append(1)
        if len(calls) == 2:
            model.parameters()[0].data.flat[0] = np.nan
        return result
    real = T.train_one_epoch
    monkeypatch.setattr(T, "train_one_epoch", poisoned)
    cfg = TrainConfig(**TINY, epochs=3)
    train(cfg, str(out), progress=False, verbose=False, stop_after=1)
    before = _snapshot(out)
    with pytest.raises(TrainingDiverged, match=r"parameter 'conv1.weight' holds NaN or inf after epoch 2"):
        train(cfg, str(out), resume=True, progress=False, verbose=False)
    assert _snapshot(out) == before                        # checkpoint, best.npz, log: epoch 1's
    best = models.load(out / "best.npz")
    assert all(np.isfinite(p.data).all() for p in best.parameters())
    assert [_strict_json(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]


def test_log_never_holds_bare_nan(tmp_path):
    from minires.train import write_json_atomic
    record = dict(epoch=1, test_loss=float("inf"), train_loss=float("nan"), nested=[float("-inf"), 1.5])
    assert finite_or_none(record) == dict(epoch=1, test_loss=None, train_loss=None, nested=[None, 1.5])
    write_json_atomic(tmp_path / "log.jsonl", [record], lines=True)
    assert _strict_json((tmp_path / "log.jsonl").read_text())["test_loss"] is None


def test_cli_divergence_is_one_error_line(tmp_path):
    out = _cli("train", "--model", "resnet-8", "--epochs", "2", "--lr", "1e30", "--out", "r", *SMALL,
               cwd=tmp_path)
    assert "training diverged" in out and "lower --lr" in out
    assert not (tmp_path / "r").exists()                   # diverged in epoch 1: nothing to keep


# ---------------------------------------------------------------- resume
def test_resume_refuses_what_it_cannot_resume_and_names_the_file(tmp_path, run):
    out, files = run
    cfg = TrainConfig(**TINY, epochs=2)
    with pytest.raises(RunFolderError, match="no such run folder"):
        train(cfg, str(tmp_path / "typo"), resume=True)
    (out / "checkpoint.npz").rename(tmp_path / "ckpt.npz")
    with pytest.raises(RunFolderError, match=r"checkpoint\.npz is missing"):
        train(cfg, str(out), resume=True)
    (tmp_path / "ckpt.npz").rename(out / "checkpoint.npz")
    (out / "checkpoint.npz").write_bytes(files["checkpoint.npz"][:1000])         # truncated
    with pytest.raises(FileFormatError, match=r"checkpoint\.npz is not a readable checkpoint"):
        train(cfg, str(out), resume=True)
    (out / "checkpoint.npz").write_bytes(files["checkpoint.npz"])
    (out / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match=r"cannot read .*config\.json"):
        train(cfg, str(out), resume=True)
    (out / "config.json").unlink()
    with pytest.raises(RunFolderError, match=r"config\.json is missing"):
        train(cfg, str(out), resume=True)
    files.pop("config.json")
    assert _snapshot(out) == files                          # log and best model untouched
    assert not (tmp_path / "typo").exists()


def test_resume_with_another_model_says_so(tmp_path, run):
    out, files = run
    msg = _cli("train", "--resume", str(out), "--model", "seed-cnn", "--no-progress", cwd=tmp_path)
    assert "is a run of 'resnet-8', not 'seed-cnn'" in msg
    assert _snapshot(out) == files


def test_cli_resume_needs_no_model_and_keeps_the_runs_recipe(tmp_path):
    _cli("train", "--model", "resnet-8", "--epochs", "2", "--lr", "0.02", "--out", "r", *SMALL, cwd=tmp_path,
         code=0)
    (tmp_path / "r" / "log.jsonl").write_text((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0] + "\n")
    _cli("train", "--resume", "r", "--no-progress", cwd=tmp_path, code=0)   # --epochs left out: the run's 2
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["epochs"] == 2 and config["lr"] == 0.02 and config["train_size"] == 64


# ---------------------------------------------------------------- --out over another run
def test_out_folder_of_another_run_is_refused_then_replaced_safely(tmp_path, run):
    out, files = run
    with pytest.raises(RunFolderError, match=r"holds another run \(lr 0\.05 there, 0\.01 here\).*--overwrite"):
        _train(out, lr=0.01)
    with pytest.raises(RunFolderError, match="holds another run .*model 'resnet-8' there, 'seed-cnn' here"):
        _train(out, model="seed-cnn")
    assert _snapshot(out) == files
    with pytest.raises(RunFolderError, match="finished"):
        _train(out)
    (out / "confusion.png").write_bytes(b"old")            # evaluate's output for the old model
    (out / "notes.txt").write_text("mine")                  # not a run file: left alone
    train(TrainConfig(**{**TINY, "lr": 0.01}, epochs=1), str(out), overwrite=True, progress=False, verbose=False)
    assert json.loads((out / "config.json").read_text())["lr"] == 0.01
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "config.json", "log.jsonl", "notes.txt"]
    assert sorted(os.listdir(out.parent)) == ["run"]         # the staging folder is gone


def test_same_unfinished_run_points_to_resume(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(**TINY, epochs=2)
    train(cfg, str(out), progress=False, verbose=False, stop_after=1)
    with pytest.raises(RunFolderError, match=f"unfinished: continue it with --resume {out}"):
        train(cfg, str(out), progress=False, verbose=False)


def test_compare_refuses_a_folder_of_another_recipe(tmp_path):
    """Its results would otherwise be reported as this recipe's."""
    from minires.compare import compare
    out = tmp_path / "cmp" / "resnet-8"
    _train(out)
    files = _snapshot(out)
    with pytest.raises(RunFolderError, match=r"resnet-8 holds another run \(lr 0.05 there, 0.5 here\)"):
        compare(["seed-cnn", "resnet-8"], TrainConfig(**{**TINY, "lr": 0.5}, epochs=1), str(tmp_path / "cmp"),
                progress=False)
    assert _snapshot(out) == files and sorted(os.listdir(tmp_path / "cmp")) == ["resnet-8"]


# ---------------------------------------------------------------- bad files
def _bad_files(tmp_path, good):
    """name -> path of a file that is not a usable minires .npz."""
    raw = good.read_bytes()
    files = {"empty": b"", "truncated": raw[: len(raw) // 2], "text": b"hello, not a model\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.npz"
        paths[name].write_bytes(content)
    paths["npy"] = tmp_path / "array.npy"
    np.save(paths["npy"], np.zeros(3))
    paths["pickle"] = tmp_path / "pickled.npy"
    np.save(paths["pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    paths["foreign zip"] = tmp_path / "foreign.npz"
    np.savez(paths["foreign zip"], weights=np.zeros(3))
    paths["zip, not npz"] = tmp_path / "other.npz"
    with zipfile.ZipFile(paths["zip, not npz"], "w") as z:
        z.writestr("readme.txt", "hi")
    paths["bad metadata"] = tmp_path / "meta.npz"
    np.savez(paths["bad metadata"], __minires_meta__=np.array("{oops"))
    paths["folder"] = tmp_path / "a_folder.npz"
    paths["folder"].mkdir()
    paths["missing"] = tmp_path / "mistyped.npz"
    return paths


BAD = ["empty", "truncated", "text", "npy", "pickle", "foreign zip", "zip, not npz", "bad metadata",
       "folder", "missing"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_model_and_checkpoint_files_give_one_clear_error(tmp_path, run, kind):
    out, _ = run
    path = _bad_files(tmp_path, out / "checkpoint.npz")[kind]
    model = models.build("resnet-8", rng=0, width_scale=0.25)
    from minires.optim import SGD
    for load in (lambda: models.load(path),
                 lambda: load_checkpoint(path, model, SGD(model.parameters(), lr=0.1), np.random.default_rng())):
        with pytest.raises(FileFormatError) as err:
            load()
        assert str(path) in str(err.value) and "allow_pickle" not in str(err.value)


def test_checkpoint_and_model_file_are_not_interchangeable(run):
    out, _ = run
    model = models.build("resnet-8", rng=0, width_scale=0.25)
    from minires.optim import SGD
    with pytest.raises(FileFormatError, match="not a training checkpoint"):
        load_checkpoint(out / "best.npz", model, SGD(model.parameters(), lr=0.1), np.random.default_rng())


def test_model_file_with_overflowing_values_is_refused(tmp_path, run):
    """A float64 weight of 1e39 is inf in float32: refused, not loaded with a warning."""
    out, _ = run
    with np.load(out / "best.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["fc.weight"] = arrays["fc.weight"].astype(np.float64) * 1e40
    np.savez(tmp_path / "big.npz", **arrays)
    with pytest.raises(MiniresError, match=r"big\.npz .*too large for float32"):
        models.load(tmp_path / "big.npz")


def test_cli_evaluate_bad_paths(tmp_path, run):
    out, _ = run
    assert "truncated.npz is not a readable model file" in _cli(
        "evaluate", str(_bad_files(tmp_path, out / "best.npz")["truncated"]), cwd=tmp_path)
    assert "nope: no such run folder or model file" in _cli("evaluate", "nope", cwd=tmp_path)
    (tmp_path / "empty_run").mkdir()
    assert "config.json is missing" in _cli("evaluate", "empty_run", cwd=tmp_path)
    (out / "config.json").write_text("[1, 2]")
    assert "cannot read" in _cli("evaluate", str(out), cwd=tmp_path)


# ---------------------------------------------------------------- bad arguments, no folders
@pytest.mark.parametrize("args,match", [
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--epochs", "-1"], "epochs must be an integer >= 1, got -1"),
    (["--width-scale", "0"], "width_scale must be a finite number > 0"),
    (["--label-smoothing", "1"], r"label_smoothing must be in \[0, 1\)"),
])
def test_cli_bad_recipe_is_refused_before_anything_is_made(tmp_path, args, match):
    import re
    base = ["--train-size", "64", "--test-size", "32", "--no-progress"]
    msg = _cli("train", "--model", "resnet-8", "--out", "runs/r", *base, *args, cwd=tmp_path)
    assert re.search(match, msg), msg
    assert os.listdir(tmp_path) == []


def test_cli_unwritable_run_folder_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    msg = _cli("train", "--model", "resnet-8", "--out", "file/run", "--epochs", "1", *SMALL, cwd=tmp_path)
    assert "cannot write the run folder file/run" in msg and "epoch" not in msg.replace("--epochs", "")


def test_cli_train_needs_a_model_or_resume(tmp_path):
    assert "train needs --model" in _cli("train", "--epochs", "1", cwd=tmp_path)


# ---------------------------------------------------------------- CIFAR data
def _archive(tmp_path, batch=None, folder_too=None):
    """A CIFAR-10 archive in the official layout (every batch the same), and its md5."""
    import hashlib
    spec = data.CIFAR["cifar10"]
    rng = np.random.default_rng(0)
    good = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for fname, obj in [(f, batch or good) for f in spec["train"] + spec["test"]] + \
                          [("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})]:
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{spec['folder']}/{fname}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / spec["archive"]).write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


@pytest.mark.parametrize("batch,match", [
    ({b"data": np.full((4, 3072), 0.5), b"labels": [0, 1, 2, 3]}, "must be a uint8 array"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"label 10 is outside \[0, 10\)"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0.5] * 4}, "integer labels"),
    ({b"data": np.zeros((4, 3072), np.uint8)}, "is not a CIFAR batch"),
    (["not", "a", "dict"], "is not a CIFAR batch"),
])
def test_malformed_cifar_batches_are_refused(tmp_path, monkeypatch, batch, match):
    md5 = _archive(tmp_path, batch)
    monkeypatch.setitem(data.CIFAR, "cifar10", dict(data.CIFAR["cifar10"], md5=md5))
    with pytest.raises(data.DataError, match=match):
        data.load_dataset("cifar10", str(tmp_path))


class _RunsCode:
    def __reduce__(self):
        return exec, ("import builtins; builtins._minires_cifar_unpickled = True",)


def test_a_run_folder_cannot_make_evaluate_unpickle_its_files(tmp_path, monkeypatch, run):
    """config.json names a data folder holding a crafted 'extracted CIFAR' pickle:
    evaluate reads only the md5-checked official archive there, never the folder."""
    out, _ = run
    evil = tmp_path / "evil"
    (evil / "cifar-10-batches-py").mkdir(parents=True)
    for fname in data.CIFAR["cifar10"]["train"] + ["test_batch", "batches.meta"]:
        (evil / "cifar-10-batches-py" / fname).write_bytes(pickle.dumps(_RunsCode()))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, dataset="cifar10", data_dir=str(evil))))
    with pytest.raises(data.DataError, match=f"pass --data-dir {evil}"):
        evaluate_path(str(out))
    assert not hasattr(builtins, "_minires_cifar_unpickled")
    # with the official archive beside it (its md5 is checked), the archive is what is read
    md5 = _archive(evil)
    monkeypatch.setitem(data.CIFAR, "cifar10", dict(data.CIFAR["cifar10"], md5=md5))
    acc, _ = evaluate_path(str(out), out=str(tmp_path / "c.png"))
    assert 0 <= acc <= 1 and not hasattr(builtins, "_minires_cifar_unpickled")
    # an archive that is not the official one is refused, not read
    monkeypatch.setitem(data.CIFAR, "cifar10", dict(data.CIFAR["cifar10"], md5="0" * 32))
    with pytest.raises(data.DataError, match="checksum mismatch"):
        evaluate_path(str(out))
    # the folder is trusted only when the user names it in this call
    with pytest.raises(data.DataError, match="is not a CIFAR batch"):
        try:
            evaluate_path(str(out), data_dir=str(evil))
        finally:
            assert getattr(builtins, "_minires_cifar_unpickled", False)
            del builtins._minires_cifar_unpickled


def test_a_checkpoint_is_not_a_model_file(run):
    out, _ = run
    with pytest.raises(FileFormatError, match="is a training checkpoint, not a model file"):
        models.load(out / "checkpoint.npz")
