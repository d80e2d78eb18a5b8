"""The training loop: for each minibatch, forward, loss, backward, SGD step.

A run folder holds config.json, log.jsonl (one line per epoch),
checkpoint.npz (everything needed to resume, written atomically after
every epoch) and best.npz (the model with the best test accuracy).

What a run never does: start from epoch 0 over a run it was asked to
resume, write into a folder that holds a different run (unless told to
overwrite, and even then not before its own first checkpoint exists),
create its folder before it has something to write, or save a model that
holds NaN or inf (it stops with TrainingDiverged, keeping the last good
checkpoint).
"""
import dataclasses
import inspect
import itertools
import json
import math
import numbers
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from . import models, runtime
from .atomic import atomic_write
from .budget import budget_epochs
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_dataset, minibatches
from .errors import MiniresError, RunFolderError
from .losses import CrossEntropyLoss
from .optim import SGD, Schedule, param_groups

# The papers' weight decay: He et al. 1e-4 for their ResNets and for the
# plain nets they compare them with (trained alike), Zagoruyko & Komodakis
# 5e-4 for WRN; the seed CNN has no paper and follows WRN.
WEIGHT_DECAY = {"resnet": 1e-4, "plain": 1e-4, "bottleneck": 1e-4, "seed-wide": 1e-4, "imagenet": 1e-4,
                "wrn": 5e-4, "seed-cnn": 5e-4}


def default_weight_decay(model_name):
    for prefix, wd in WEIGHT_DECAY.items():
        if model_name.startswith(prefix):
            return wd
    return 5e-4


@dataclass
class TrainConfig:
    model: str = "resnet-20"
    dataset: str = "shapes"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = None          # None: the paper's value for the model
    decay_bn_and_bias: bool = True
    schedule: str = "cosine"
    warmup: int = 0                     # epochs of linear warm-up
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    threads: int = None
    data_dir: str = None
    train_size: int = None
    test_size: int = None
    val_size: int = 0
    label_mode: str = "fine"            # CIFAR-100: "fine" (100 classes) or "coarse" (20)
    width_scale: float = 1.0
    dropout: float = None
    shortcut: str = None
    time_budget: float = None           # minutes; stop after the epoch that passes it
    budget: float = None                # training compute in resnet-20 epochs (minires.budget);
                                        # set, it decides the steps (and epochs, the last partial)
    bottleneck_div: int = None          # bottleneck-<d>: middle width filters // div (default 2)
    diagnostics: bool = False           # diagnostics.jsonl: gradient norms and activation statistics
                                        # on a fixed batch at init and every epoch (minires.diagnostics)

    def model_options(self):
        opts = {"width_scale": self.width_scale} if self.width_scale != 1.0 else {}
        if self.dropout is not None:
            opts["dropout"] = self.dropout
        if self.shortcut is not None:
            opts["shortcut"] = self.shortcut
        if self.bottleneck_div is not None:
            opts["bottleneck_div"] = self.bottleneck_div
        return opts


class TrainingDiverged(RuntimeError):
    """NaN or inf in the loss, a parameter, a gradient or a buffer. The run
    stops; what is on disk (last good checkpoint, best model, log) stays."""


def _is_int(v, low):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _is_real(v, low, high=math.inf, open_low=False):
    """low <= v < high (low < v with open_low), v a finite real number."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        return False
    return (v > low if open_low else v >= low) and v < high


def check_config(config):
    """MiniresError naming the first setting that cannot train, before any data
    is loaded or any folder made (batch size 0 would otherwise fail mid-epoch)."""
    c = config
    rules = [
        ("epochs", _is_int(c.epochs, 1), "an integer >= 1"),
        ("batch_size", _is_int(c.batch_size, 1), "an integer >= 1"),
        ("lr", _is_real(c.lr, 0), "a finite number >= 0"),
        ("momentum", _is_real(c.momentum, 0), "a finite number >= 0"),
        ("weight_decay", c.weight_decay is None or _is_real(c.weight_decay, 0), "a finite number >= 0"),
        ("warmup", _is_int(c.warmup, 0), "an integer >= 0"),
        ("label_smoothing", _is_real(c.label_smoothing, 0, 1), "in [0, 1)"),
        ("width_scale", _is_real(c.width_scale, 0, open_low=True), "a finite number > 0"),
        ("dropout", c.dropout is None or _is_real(c.dropout, 0, 1), "in [0, 1)"),
        ("train_size", c.train_size is None or _is_int(c.train_size, 1), "an integer >= 1"),
        ("test_size", c.test_size is None or _is_int(c.test_size, 1), "an integer >= 1"),
        ("val_size", _is_int(c.val_size, 0), "an integer >= 0"),
        ("threads", c.threads is None or _is_int(c.threads, 1), "an integer >= 1"),
        ("time_budget", c.time_budget is None or _is_real(c.time_budget, 0, open_low=True), "minutes > 0"),
    ]
    for name, ok, expected in rules:
        if not ok:
            raise MiniresError(f"{name} must be {expected}, got {getattr(c, name)!r}")
    if c.model is not None:
        check_model_options(c.model, c.model_options())


def check_model_options(model_name, options):
    """MiniresError for an unknown model or an option its family does not
    take (--shortcut for a WRN), before any data is loaded."""
    builder, _ = models.registry.parse(model_name)      # ValueError naming the known models
    takes = [k for k in ("width_scale", "shortcut", "dropout", "bottleneck_div")
             if k in inspect.signature(builder).parameters]
    for key in options:
        if key not in takes and key != "num_classes":
            flags = ", ".join("--" + k.replace("_", "-") for k in takes)
            raise MiniresError(f"{model_name} takes no --{key.replace('_', '-')} (its options: {flags})")


def check_finite(model, when=""):
    """TrainingDiverged if a parameter, its gradient or a float buffer holds NaN or inf.

    The loss is checked every step; this catches what a finite loss can hide
    (an inf weight behind a ReLU that never fires, a NaN running variance that
    only eval mode reads). Run once per epoch, before anything is saved: one
    pass over the weights, cheap next to an epoch."""
    arrays = [(f"parameter {n!r}", p.data) for n, p in model.named_parameters()]
    arrays += [(f"the gradient of {n!r}", p.grad) for n, p in model.named_parameters()]
    arrays += [(f"buffer {n!r}", b) for n, b in model.named_buffers() if b.dtype.kind == "f"]
    for what, a in arrays:
        if not np.isfinite(a).all():
            raise TrainingDiverged(f"training diverged: {what} holds NaN or inf {when}".rstrip())


def evaluate(model, images, labels, mean, std, batch_size=500):
    """Eval-mode loss, accuracy and predictions over a whole split."""
    model.eval(keep_caches=False)       # inference only: free each activation once it is read
    crit, total_loss, preds = CrossEntropyLoss(), 0.0, []
    for x, y in minibatches(images, labels, batch_size, mean, std):
        logits = model(x)
        total_loss += crit(logits, y) * len(y)
        preds.append(logits.argmax(axis=1))
    preds = np.concatenate(preds)
    return total_loss / len(labels), float((preds == labels).mean()), preds


def epoch_batches(ds, config, data_rng, steps_left):
    """One epoch's normalised minibatches in data_rng's order (crops and flips
    drawn from it too, if config.augment), cut after steps_left: a budget may
    end mid-epoch. minires.anchor feeds PyTorch from this same function, so
    both libraries see the same batches."""
    batches = minibatches(ds.x_train, ds.y_train, config.batch_size, ds.mean, ds.std,
                          rng=data_rng, augment_data=config.augment)
    return itertools.islice(batches, steps_left)


def train_one_epoch(model, crit, optimizer, schedule, batches, step, bar):
    """One pass over the training set. Returns (mean loss, accuracy, next step)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)                       # forward
        loss = crit(logits, y)                  # loss
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training diverged: the loss became {loss} at step {step}")
        model.zero_grad()
        model.backward(crit.backward())         # backward
        optimizer.lr = schedule(step)
        optimizer.step()                        # SGD step
        step += 1
        loss_sum += loss * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
        seen += len(y)
        bar.update(len(y))
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimizer.lr:.4f}")
    return loss_sum / seen, correct / seen, step


def finite_or_none(obj):
    """NaN and inf (at any depth) -> None. json.dumps would write a bare NaN,
    which strict JSON readers (jq, JavaScript) reject."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json_atomic(path, obj, lines=False):
    obj = finite_or_none(obj)
    with atomic_write(path, "w") as f:
        if lines:
            f.writelines(json.dumps(o, allow_nan=False) + "\n" for o in obj)
        else:
            json.dump(obj, f, indent=2, allow_nan=False)


# ---------------------------------------------------------------- run folders
RUN_FILES = ("checkpoint.npz", "best.npz", "log.jsonl", "config.json")   # config.json last: see _replace_run
STALE_FILES = ("confusion.png", "diagnostics.jsonl")   # made from a run's models, not a run file
# how fast, from where and what is measured beside, not what is trained
NOT_RECIPE = ("threads", "time_budget", "data_dir", "diagnostics")


def with_default_weight_decay(config):
    if config.weight_decay is None:
        return dataclasses.replace(config, weight_decay=default_weight_decay(config.model))
    return config


def load_run_config(run_dir):
    """The TrainConfig saved in run_dir/config.json; None if there is none.
    RunFolderError naming the file if it cannot be read."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return TrainConfig(**json.load(f))
    except (OSError, ValueError, TypeError) as exc:     # unreadable, not JSON, unknown keys
        raise RunFolderError(f"cannot read {path}: {exc}") from None


def read_log(run_dir):
    """The epoch records in run_dir/log.jsonl ([] if there is none)."""
    return read_jsonl(os.path.join(run_dir, "log.jsonl"))


def read_jsonl(path):
    """The records of a JSON-lines file ([] if there is none); RunFolderError
    naming the file if it cannot be read."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"cannot read {path}: {exc}") from None


def recipe_mismatches(saved, config):
    """[(field, saved value, requested value)] for the settings in which two
    configs differ (model included, NOT_RECIPE excluded): the one rule by which
    train, compare and study decide whether a folder holds the same run."""
    a = dataclasses.asdict(with_default_weight_decay(saved))
    b = dataclasses.asdict(with_default_weight_decay(config))
    skip = NOT_RECIPE + (("epochs",) if b.get("budget") is not None else ())  # a budget decides the epochs
    return [(k, a.get(k), b[k]) for k in b if k not in skip and a.get(k) != b[k]]


def recipe_differences(saved, config):
    """'lr 0.1 there, 0.05 here; ...' (recipe_mismatches in words); '' when they match."""
    return "; ".join(f"{k} {there!r} there, {here!r} here" for k, there, here in recipe_mismatches(saved, config))


def run_is_finished(run_dir):
    config = load_run_config(run_dir)
    if config is None:
        return False
    log = read_log(run_dir)
    return len(log) >= config.epochs or any(r.get("stopped_by_time_budget") for r in log)


def run_state(config, run_dir):
    """'empty', 'unfinished' or 'finished' for a run of config in run_dir.

    RunFolderError if run_dir holds another run (other model or recipe) or
    run files without a readable config.json: its files are not ours to touch."""
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f))]
    if not present:
        return "empty"
    saved = load_run_config(run_dir)
    if saved is None:
        raise RunFolderError(f"{run_dir} holds files of a run ({', '.join(present)}) but no config.json")
    differences = recipe_differences(saved, config)
    if differences:
        raise RunFolderError(f"{run_dir} holds another run ({differences})")
    return "finished" if run_is_finished(run_dir) else "unfinished"


def _check_new_run_folder(config, out_dir, overwrite):
    """True if out_dir holds a run that this one will replace (overwrite=True);
    RunFolderError if it holds a run and overwrite is False."""
    if overwrite:
        return any(os.path.exists(os.path.join(out_dir, f)) for f in RUN_FILES)
    try:
        state = run_state(config, out_dir)
    except RunFolderError as exc:
        raise RunFolderError(f"{exc}: choose another --out, or pass --overwrite to replace it") from None
    if state == "finished":
        raise RunFolderError(f"{out_dir} holds this run already, finished: see {out_dir}/log.jsonl "
                             "(pass --overwrite to train it again)")
    if state == "unfinished" and not os.path.exists(os.path.join(out_dir, "checkpoint.npz")):
        return True     # nothing to resume (a log from another machine): the same run again, replaced safely
    if state == "unfinished":
        raise RunFolderError(f"{out_dir} holds this run, unfinished: continue it with --resume {out_dir} "
                             "(or pass --overwrite to start again)")
    return False


def _resumed_config(config, out_dir):
    """The run's own config, with config's epochs, time_budget, threads and
    data_dir where they are set. RunFolderError naming the missing or
    unreadable file, or if config.model is not the run's model."""
    if not os.path.isdir(out_dir):
        raise RunFolderError(f"cannot resume {out_dir}: no such run folder")
    saved = load_run_config(out_dir)
    if saved is None:
        raise RunFolderError(f"cannot resume {out_dir}: {os.path.join(out_dir, 'config.json')} is missing "
                             "(not a folder made by `minires train`?)")
    if config.model is not None and config.model != saved.model:
        raise RunFolderError(f"{out_dir} is a run of {saved.model!r}, not {config.model!r}: "
                             f"resume it without --model, or train {config.model} with another --out")
    ckpt = os.path.join(out_dir, "checkpoint.npz")
    if not os.path.exists(ckpt):
        raise RunFolderError(f"cannot resume {out_dir}: {ckpt} is missing (the run never finished an epoch)")
    overrides = {k: getattr(config, k) for k in ("epochs", "time_budget", "threads", "data_dir")
                 if getattr(config, k) is not None}
    return dataclasses.replace(saved, **overrides)


def check_writable(out_dir):
    """RunFolderError now, not after an epoch of training, if out_dir cannot be
    made or written (its nearest existing ancestor must be a writable folder)."""
    probe = os.path.abspath(out_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not (os.path.isdir(probe) and os.access(probe, os.W_OK)):
        raise RunFolderError(f"cannot write the run folder {out_dir}: {probe} is not a writable folder")


def _replace_run(staging, out_dir):
    """Move a new run's first files from staging over the old run's in out_dir.

    The old config.json goes first and the new one comes last: a crash in
    between leaves a folder without config.json, which nothing resumes by
    mistake, never an old config beside a new checkpoint."""
    for name in ("config.json",) + STALE_FILES:
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    for name in RUN_FILES:
        src, dst = os.path.join(staging, name), os.path.join(out_dir, name)
        if os.path.exists(src):
            os.replace(src, dst)
        elif os.path.exists(dst):
            os.remove(dst)


def _write_run_files(run_dir, config, model, optimizer, data_rng, meta, save_best):
    """One epoch's files into run_dir (made now, the first time there is
    something to write): best.npz if save_best, checkpoint.npz, log.jsonl,
    and config.json last, so a config.json always has a checkpoint beside it."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        if save_best:
            models.save(model, os.path.join(run_dir, "best.npz"))
        save_checkpoint(os.path.join(run_dir, "checkpoint.npz"), model, optimizer, data_rng, meta)
        write_json_atomic(os.path.join(run_dir, "log.jsonl"), meta["history"], lines=True)
        write_json_atomic(os.path.join(run_dir, "config.json"), dataclasses.asdict(config))
    except OSError as exc:
        raise RunFolderError(f"cannot write the run folder {run_dir}: {exc}") from None


def _save_epoch(out_dir, replace_old, *run_files):
    """_write_run_files into out_dir. replace_old (the first epoch of a run
    that overwrites another): write into a hidden sibling folder first and
    move the files over the old run's only once all of them are complete."""
    if not replace_old:
        return _write_run_files(out_dir, *run_files)
    parent, name = os.path.split(os.path.abspath(out_dir))
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.new-")
    try:
        _write_run_files(staging, *run_files)
        _replace_run(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train(config, out_dir, resume=False, progress=True, verbose=True, stop_after=None, overwrite=False):
    """Train config.model on config.dataset into out_dir; returns the history
    (one dict per epoch). resume=True continues from out_dir/checkpoint.npz
    and gives the same weights, bit for bit, as an uninterrupted run; it
    takes the run's own config.json, with config's epochs, time_budget,
    threads and data_dir where they are not None (config.model must be None
    or the run's). A new run refuses an out_dir that holds a run
    (RunFolderError) unless overwrite=True, and then replaces the old files
    only once its own first checkpoint is complete.
    progress: show a tqdm bar; verbose: print one line per epoch.
    stop_after: end this call after that many epochs, as if interrupted
    (the schedule still spans config.epochs)."""
    out_dir = os.fspath(out_dir)
    # A data_dir read from the run's config.json was not named in this call:
    # CIFAR's pickles are then read only from the md5-checked official archive.
    trust_data_dir = not resume or config.data_dir is not None
    if resume:
        config = _resumed_config(config, out_dir)
    check_config(config)
    config = with_default_weight_decay(config)
    replace_old = not resume and _check_new_run_folder(config, out_dir, overwrite)
    check_writable(out_dir)
    runtime.setup(threads=config.threads)      # before the first kernel call: OpenMP reads it at load
    ckpt_path = os.path.join(out_dir, "checkpoint.npz")
    ds = load_dataset(config.dataset, config.data_dir, config.seed, config.train_size,
                      config.test_size, config.val_size, config.label_mode, trust_data_dir=trust_data_dir)
    model = models.build(config.model, ds.num_classes, rng=np.random.default_rng([config.seed, 10]),
                         **config.model_options())
    model.skip_input_grad()                     # nothing uses the gradient of the images
    optimizer = SGD(param_groups(model, config.weight_decay, config.decay_bn_and_bias),
                    lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    steps_per_epoch = math.ceil(len(ds.x_train) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.budget is not None:       # the compute budget decides the steps; the schedule ends there
        total_steps, epochs = budget_epochs(config.budget, config.model, config.model_options(),
                                            ds.num_classes, len(ds.x_train), config.batch_size)
        config = dataclasses.replace(config, epochs=epochs)
    schedule = Schedule(config.schedule, config.lr, total_steps, config.warmup * steps_per_epoch)
    data_rng = np.random.default_rng([config.seed, 11])
    crit = CrossEntropyLoss(config.label_smoothing)

    history, step, start_epoch, best_acc = [], 0, 0, -1.0
    if resume:
        meta = load_checkpoint(ckpt_path, model, optimizer, data_rng)
        history, step, best_acc = meta["history"], meta["step"], meta["best_acc"]
        start_epoch = len(history)

    diagnostics = None
    if config.diagnostics:      # measures a copy of the model: the run trains exactly as without
        from .diagnostics import RunDiagnostics
        diagnostics = RunDiagnostics(out_dir, ds, config.label_smoothing, start_epoch)
        if all(r["epoch"] != start_epoch for r in diagnostics.records):
            diagnostics.measure(model, start_epoch)     # epoch 0: at init; written with the next epoch's files

    started = time.perf_counter() - sum(h["epoch_seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(ds, config, data_rng, total_steps - step)
        step_before = step
        with tqdm(total=len(ds.x_train), unit="img", disable=not progress, leave=False,
                  desc=f"{config.model} epoch {epoch + 1}/{config.epochs}") as bar:
            train_loss, train_acc, step = train_one_epoch(model, crit, optimizer, schedule,
                                                          batches, step, bar)
        train_seconds = time.perf_counter() - t0
        check_finite(model, f"after epoch {epoch + 1}")     # before anything of this epoch is saved
        # Only an epoch cut short by the budget lacks the (possibly smaller) last batch.
        images = min(len(ds.x_train), (step - step_before) * config.batch_size)
        seen = history[-1].get("images_seen", epoch * len(ds.x_train)) if history else 0
        test_loss, test_acc, _ = evaluate(model, ds.x_test, ds.y_test, ds.mean, ds.std)
        record = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc,
                      test_loss=test_loss, test_acc=test_acc, lr=optimizer.lr,
                      images_seen=seen + images, epochs_done=(seen + images) / len(ds.x_train),
                      images_per_second=images / train_seconds,
                      epoch_seconds=time.perf_counter() - t0)
        if ds.x_val is not None:
            record["val_loss"], record["val_acc"], _ = evaluate(model, ds.x_val, ds.y_val, ds.mean, ds.std)
        record["wall_seconds"] = time.perf_counter() - started
        over_budget = config.time_budget and record["wall_seconds"] > 60 * config.time_budget
        if over_budget and epoch + 1 < config.epochs:
            record["stopped_by_time_budget"] = True
        history.append(finite_or_none(record))      # an inf test loss is logged as null
        improved, best_acc = test_acc > best_acc, max(test_acc, best_acc)
        meta = dict(history=history, step=step, best_acc=best_acc, schedule=schedule.state_dict())
        _save_epoch(out_dir, replace_old, config, model, optimizer, data_rng, meta, improved)
        replace_old = False
        if diagnostics:
            diagnostics.measure(model, epoch + 1)
            diagnostics.write()
        if verbose:
            tqdm.write(f"{config.model} epoch {epoch + 1:>3}: train loss {train_loss:.3f} "
                       f"acc {train_acc:.3f} | test loss {test_loss:.3f} acc {test_acc:.3f} | "
                       f"lr {optimizer.lr:.4f} | {record['images_per_second']:.0f} img/s | "
                       f"{record['epoch_seconds']:.1f} s")
        if record.get("stopped_by_time_budget") or (stop_after and epoch + 1 - start_epoch >= stop_after):
            break
    return history
