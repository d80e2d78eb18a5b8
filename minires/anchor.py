"""The PyTorch anchor (the study's E5): the same run as minires.train.train,
trained by PyTorch instead of minires.

What is the same, by construction:
- the initial weights: minires builds the model from the run's seed, exactly
  as train() does, and minires.interop.to_torch copies it into its PyTorch twin;
- the recipe: torch.optim.SGD with the momentum, Nesterov flag and weight-decay
  groups of minires.optim.param_groups (no decay on 1-D parameters when
  decay_bn_and_bias is False), the learning rate of minires.optim.Schedule set
  before every step, the steps and epochs of minires.budget;
- the data: minires.data.minibatches with train()'s data generator, so every
  epoch has the same order, the same crops and flips, the same last batch,
  the same budget cut;
- the evaluation: eval mode, batches of 500, mean cross-entropy and accuracy.
What differs: dropout masks come from torch's generator (seeded from the
run's seed), and float32 sums run in another order, so the runs drift apart
slowly, as two PyTorch builds would.

The run folder has train()'s files and format: config.json (the TrainConfig),
log.jsonl (one line per epoch, the same fields, plus "framework": "torch" and
the torch version), best.npz (a minires model file: `minires evaluate` reads
it), and checkpoint.pt (PyTorch's own file: weights, momentum, the data
generator's and torch's generator states, the history), written through a
temporary file and os.replace after every epoch. A folder with a
checkpoint.pt resumes from it; the resumed run replays the same batches,
though PyTorch itself does not promise bit-identical results across a resume.
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

CHECKPOINT = "checkpoint.pt"
TORCH_THREADS = 2


def _torch_sgd(torch, twin, config):
    """torch.optim.SGD with minires.optim.param_groups's split (by dimension, in
    the same parameter order)."""
    params = list(twin.parameters())
    if config.decay_bn_and_bias:
        groups = [{"params": params, "weight_decay": config.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def _evaluate(torch, twin, images, labels, mean, std, batch_size=500):
    """Eval-mode mean loss and accuracy over a split, as minires.train.evaluate."""
    from .data import minibatches
    twin.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in minibatches(images, labels, batch_size, mean, std):
            logits = twin(torch.from_numpy(x))
            y = torch.from_numpy(np.asarray(y, dtype=np.int64))
            total_loss += float(torch.nn.functional.cross_entropy(logits, y)) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
    return total_loss / len(labels), correct / len(labels)


def _check_finite(torch, twin, when):
    from .train import TrainingDiverged
    for name, p in twin.named_parameters():
        if not torch.isfinite(p).all() or (p.grad is not None and not torch.isfinite(p.grad).all()):
            raise TrainingDiverged(f"training diverged: parameter {name!r} or its gradient holds NaN or inf {when}")
    for name, b in twin.named_buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            raise TrainingDiverged(f"training diverged: buffer {name!r} holds NaN or inf {when}")


def _save_checkpoint(torch, path, twin, optimizer, data_rng, meta):
    """Weights and momentum as tensors, everything else as JSON text: the file
    loads with torch.load(weights_only=True). Temp file, then os.replace."""
    state = {"model": twin.state_dict(), "optim": optimizer.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "meta": json.dumps(dict(meta, data_rng=data_rng.bit_generator.state))}
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(torch, path, twin, optimizer, data_rng):
    from .errors import RunFolderError
    try:
        state = torch.load(path, weights_only=True)
        twin.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        torch.set_rng_state(state["torch_rng"])
        meta = json.loads(state["meta"])
        data_rng.bit_generator.state = meta.pop("data_rng")
    except Exception as exc:        # a torch file can fail in many ways; each means: not this run's
        raise RunFolderError(f"cannot resume from {path}: {type(exc).__name__}: {exc}") from None
    return meta


def _folder_state(config, out_dir):
    """'new' | 'resume' | 'finished'; RunFolderError if out_dir holds another run."""
    from .errors import RunFolderError
    from .train import load_run_config, recipe_differences, run_is_finished
    saved = load_run_config(out_dir)
    if saved is None:
        return "new"
    differences = recipe_differences(saved, config)
    if differences:
        raise RunFolderError(f"{out_dir} holds another run ({differences})")
    if run_is_finished(out_dir):
        return "finished"
    return "resume" if os.path.exists(os.path.join(out_dir, CHECKPOINT)) else "new"


def train_torch_twin(config, out_dir, progress=True, verbose=True, stop_after=None):
    """Train the PyTorch twin of config.model with config's recipe into out_dir;
    returns the history (one dict per epoch, minires.train's fields).

    Resumes from out_dir/checkpoint.pt when the folder holds this run,
    unfinished; returns the logged history of a finished one; RunFolderError
    if the folder holds another run. Uses config.threads torch threads (2 if
    unset). stop_after: end this call after that many epochs."""
    from tqdm import tqdm

    from . import models
    from .budget import budget_epochs
    from .data import load_dataset
    from .interop import import_torch, from_torch, to_torch
    from .optim import Schedule
    from .train import (TrainingDiverged, check_writable, epoch_batches, write_json_atomic, check_config,
                        finite_or_none, read_log, with_default_weight_decay)
    torch = import_torch()
    out_dir = os.fspath(out_dir)
    check_config(config)
    config = with_default_weight_decay(config)
    state = _folder_state(config, out_dir)
    if state == "finished":
        return read_log(out_dir)
    check_writable(out_dir)
    torch.set_num_threads(config.threads or TORCH_THREADS)
    ds = load_dataset(config.dataset, config.data_dir, config.seed, config.train_size,
                      config.test_size, config.val_size, config.label_mode)
    # the same initial weights as minires.train.train: the same build, the same seed
    model = models.build(config.model, ds.num_classes, rng=np.random.default_rng([config.seed, 10]),
                         **config.model_options())
    twin = to_torch(model)
    optimizer = _torch_sgd(torch, twin, config)
    steps_per_epoch = math.ceil(len(ds.x_train) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.budget is not None:
        total_steps, epochs = budget_epochs(config.budget, config.model, config.model_options(),
                                            ds.num_classes, len(ds.x_train), config.batch_size)
        config = dataclasses.replace(config, epochs=epochs)
    schedule = Schedule(config.schedule, config.lr, total_steps, config.warmup * steps_per_epoch)
    data_rng = np.random.default_rng([config.seed, 11])
    torch.manual_seed(config.seed)          # dropout masks
    ckpt_path = os.path.join(out_dir, CHECKPOINT)

    history, step, best_acc = [], 0, -1.0
    if state == "resume":
        meta = _load_checkpoint(torch, ckpt_path, twin, optimizer, data_rng)
        history, step, best_acc = meta["history"], meta["step"], meta["best_acc"]
    start_epoch = len(history)
    started = time.perf_counter() - sum(h["epoch_seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(ds, config, data_rng, total_steps - step)
        step_before, loss_sum, correct, seen = step, 0.0, 0, 0
        twin.train()
        with tqdm(total=len(ds.x_train), unit="img", disable=not progress, leave=False,
                  desc=f"{config.model} (torch) epoch {epoch + 1}/{config.epochs}") as bar:
            for x, y in batches:
                x, y = torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
                logits = twin(x)
                loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                loss_value = loss.detach().item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(f"training diverged: the loss became {loss_value} at step {step}")
                optimizer.zero_grad()
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = schedule(step)
                optimizer.step()
                step += 1
                loss_sum += loss_value * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
                bar.update(len(y))
        train_seconds = time.perf_counter() - t0
        _check_finite(torch, twin, f"after epoch {epoch + 1}")
        images = min(len(ds.x_train), (step - step_before) * config.batch_size)
        done = history[-1]["images_seen"] if history else 0
        test_loss, test_acc = _evaluate(torch, twin, ds.x_test, ds.y_test, ds.mean, ds.std)
        lr = optimizer.param_groups[0]["lr"]
        record = dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                      test_loss=test_loss, test_acc=test_acc, lr=lr,
                      images_seen=done + images, epochs_done=(done + images) / len(ds.x_train),
                      images_per_second=images / train_seconds, epoch_seconds=time.perf_counter() - t0)
        if ds.x_val is not None:
            record["val_loss"], record["val_acc"] = _evaluate(torch, twin, ds.x_val, ds.y_val, ds.mean, ds.std)
        record["wall_seconds"] = time.perf_counter() - started
        if config.time_budget and record["wall_seconds"] > 60 * config.time_budget and epoch + 1 < config.epochs:
            record["stopped_by_time_budget"] = True
        record.update(framework="torch", torch_version=torch.__version__)
        history.append(finite_or_none(record))
        improved, best_acc = test_acc > best_acc, max(test_acc, best_acc)
        # the files in train()'s order: best model, checkpoint, log, config.json last
        os.makedirs(out_dir, exist_ok=True)
        if improved:
            models.save(from_torch(twin, config.model, num_classes=ds.num_classes, **config.model_options()),
                        os.path.join(out_dir, "best.npz"))
        _save_checkpoint(torch, ckpt_path, twin, optimizer, data_rng,
                         dict(history=history, step=step, best_acc=best_acc))
        write_json_atomic(os.path.join(out_dir, "log.jsonl"), history, lines=True)
        write_json_atomic(os.path.join(out_dir, "config.json"), dataclasses.asdict(config))
        if verbose:
            tqdm.write(f"{config.model} (torch) epoch {epoch + 1:>3}: train loss {record['train_loss']:.3f} "
                       f"acc {record['train_acc']:.3f} | test loss {test_loss:.3f} acc {test_acc:.3f} | "
                       f"lr {lr:.4f} | {record['images_per_second']:.0f} img/s | {record['epoch_seconds']:.1f} s")
        if record.get("stopped_by_time_budget") or (stop_after and epoch + 1 - start_epoch >= stop_after):
            break
    return history
