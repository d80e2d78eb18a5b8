"""The training loop: for each minibatch, forward, loss, backward, SGD step.

A run folder holds config.json, log.jsonl (one line per epoch),
checkpoint.npz (everything needed to resume, written atomically after
every epoch) and best.npz (the model with the best test accuracy).
"""
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from . import kernels, models
from .atomic import atomic_write
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_dataset, minibatches
from .losses import CrossEntropyLoss
from .optim import SGD, Schedule, param_groups

# The papers' weight decay: He et al. 1e-4 for their ResNets, Zagoruyko &
# Komodakis 5e-4 for WRN; the seed CNN has no paper and follows WRN.
WEIGHT_DECAY = {"resnet": 1e-4, "bottleneck": 1e-4, "seed-wide": 1e-4, "imagenet": 1e-4,
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

    def model_options(self):
        opts = {"width_scale": self.width_scale} if self.width_scale != 1.0 else {}
        if self.dropout is not None:
            opts["dropout"] = self.dropout
        if self.shortcut is not None:
            opts["shortcut"] = self.shortcut
        return opts


class TrainingDiverged(RuntimeError):
    pass


def evaluate(model, images, labels, mean, std, batch_size=500):
    """Eval-mode loss, accuracy and predictions over a whole split."""
    model.eval()
    crit, total_loss, preds = CrossEntropyLoss(), 0.0, []
    for x, y in minibatches(images, labels, batch_size, mean, std):
        logits = model(x)
        total_loss += crit(logits, y) * len(y)
        preds.append(logits.argmax(axis=1))
    preds = np.concatenate(preds)
    return total_loss / len(labels), float((preds == labels).mean()), preds


def train_one_epoch(model, crit, optimizer, schedule, batches, step, bar):
    """One pass over the training set. Returns (mean loss, accuracy, next step)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)                       # forward
        loss = crit(logits, y)                  # loss
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step}")
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


def _write_json_atomic(path, obj, lines=False):
    with atomic_write(path, "w") as f:
        if lines:
            f.writelines(json.dumps(o) + "\n" for o in obj)
        else:
            json.dump(obj, f, indent=2)


def run_is_finished(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    cfg = os.path.join(run_dir, "config.json")
    if not (os.path.exists(path) and os.path.exists(cfg)):
        return False
    with open(cfg) as f:
        epochs = json.load(f)["epochs"]
    with open(path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    return len(log) >= epochs or any(r.get("stopped_by_time_budget") for r in log)


def train(config, out_dir, resume=False, progress=True, verbose=True, stop_after=None):
    """Train config.model on config.dataset into out_dir; returns the history
    (one dict per epoch). resume=True continues from out_dir/checkpoint.npz
    and gives the same weights, bit for bit, as an uninterrupted run.
    progress: show a tqdm bar; verbose: print one line per epoch.
    stop_after: end this call after that many epochs, as if interrupted
    (the schedule still spans config.epochs)."""
    if config.threads:
        kernels.set_num_threads(config.threads)
    kernels.keep_freed_memory()
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.npz")
    if resume:
        with open(os.path.join(out_dir, "config.json")) as f:
            saved = json.load(f)
        config = dataclasses.replace(TrainConfig(**saved), epochs=config.epochs,
                                     time_budget=config.time_budget, threads=config.threads)
    if config.weight_decay is None:
        config = dataclasses.replace(config, weight_decay=default_weight_decay(config.model))
    ds = load_dataset(config.dataset, config.data_dir, config.seed, config.train_size,
                      config.test_size, config.val_size, config.label_mode)
    model = models.build(config.model, ds.num_classes, rng=np.random.default_rng([config.seed, 10]),
                         **config.model_options())
    optimizer = SGD(param_groups(model, config.weight_decay, config.decay_bn_and_bias),
                    lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    steps_per_epoch = math.ceil(len(ds.x_train) / config.batch_size)
    schedule = Schedule(config.schedule, config.lr, config.epochs * steps_per_epoch,
                        config.warmup * steps_per_epoch)
    data_rng = np.random.default_rng([config.seed, 11])
    crit = CrossEntropyLoss(config.label_smoothing)

    history, step, start_epoch, best_acc = [], 0, 0, -1.0
    if resume and os.path.exists(ckpt_path):
        meta = load_checkpoint(ckpt_path, model, optimizer, data_rng)
        history, step, best_acc = meta["history"], meta["step"], meta["best_acc"]
        start_epoch = len(history)
    _write_json_atomic(os.path.join(out_dir, "config.json"), dataclasses.asdict(config))

    started = time.perf_counter() - sum(h["epoch_seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        batches = minibatches(ds.x_train, ds.y_train, config.batch_size, ds.mean, ds.std,
                              rng=data_rng, augment_data=config.augment)
        with tqdm(total=len(ds.x_train), unit="img", disable=not progress, leave=False,
                  desc=f"{config.model} epoch {epoch + 1}/{config.epochs}") as bar:
            train_loss, train_acc, step = train_one_epoch(model, crit, optimizer, schedule,
                                                          batches, step, bar)
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc, _ = evaluate(model, ds.x_test, ds.y_test, ds.mean, ds.std)
        record = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc,
                      test_loss=test_loss, test_acc=test_acc, lr=optimizer.lr,
                      images_per_second=len(ds.x_train) / train_seconds,
                      epoch_seconds=time.perf_counter() - t0)
        if ds.x_val is not None:
            record["val_loss"], record["val_acc"], _ = evaluate(model, ds.x_val, ds.y_val, ds.mean, ds.std)
        record["wall_seconds"] = time.perf_counter() - started
        over_budget = config.time_budget and record["wall_seconds"] > 60 * config.time_budget
        if over_budget and epoch + 1 < config.epochs:
            record["stopped_by_time_budget"] = True
        history.append(record)
        if test_acc > best_acc:
            best_acc = test_acc
            models.save(model, os.path.join(out_dir, "best.npz"))
        save_checkpoint(ckpt_path, model, optimizer, data_rng,
                        dict(history=history, step=step, best_acc=best_acc, schedule=schedule.state_dict()))
        _write_json_atomic(os.path.join(out_dir, "log.jsonl"), history, lines=True)
        if verbose:
            tqdm.write(f"{config.model} epoch {epoch + 1:>3}: train loss {train_loss:.3f} "
                       f"acc {train_acc:.3f} | test loss {test_loss:.3f} acc {test_acc:.3f} | "
                       f"lr {optimizer.lr:.4f} | {record['images_per_second']:.0f} img/s | "
                       f"{record['epoch_seconds']:.1f} s")
        if record.get("stopped_by_time_budget") or (stop_after and epoch + 1 - start_epoch >= stop_after):
            break
    return history
