"""Figures: training curves, comparisons across models, confusion matrices."""
import json
import os
import textwrap

from .atomic import atomic_write

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_config(run_dir):
    """run_dir/config.json as a dict; None if it is missing or unreadable."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- recipes
def recipe_parts(c):
    """A run's recipe (its config.json as a dict) as {topic: text}, in reading order."""
    parts = {
        "length": (f"{c['budget']} resnet-20 epochs of compute" if c.get("budget") is not None
                   else f"{c['epochs']} epoch{'s' * (c['epochs'] != 1)}"),
        "batch": f"batch {c['batch_size']}",
        "sgd": f"SGD momentum {c['momentum']}{' nesterov' if c['nesterov'] else ''}",
        "lr": f"lr {c['lr']}",
        "schedule": f"{c['schedule']} schedule" + (f" after {c['warmup']} warm-up epochs" if c["warmup"] else ""),
        "weight decay": f"weight decay {c['weight_decay']}" + ("" if c["decay_bn_and_bias"]
                                                                else " (none on BN and biases)"),
        "augmentation": f"augmentation {'on' if c['augment'] else 'off'}",
        "data": (f"{c['train_size'] or 'all'} training / {c['test_size'] or 'all'} test images"
                 + (f", {c['val_size']} held out for validation" if c["val_size"] else "")),
        "seed": f"seed {c['seed']}",
    }
    if c["label_smoothing"]:
        parts["label smoothing"] = f"label smoothing {c['label_smoothing']}"
    if c["dataset"] == "cifar100":
        parts["labels"] = f"{c['label_mode']} labels"
    if c["width_scale"] != 1.0:
        parts["width"] = f"width x{c['width_scale']}"
    for key in ("dropout", "shortcut", "bottleneck_div"):
        if c.get(key) is not None:
            parts[key.replace("_", " ")] = f"{key.replace('_', ' ')} {c[key]}"
    return parts


def describe_recipes(configs, names):
    """(what all runs share, what differs) from their configs (dicts): two
    lists of texts, the second as 'lr per run: a 0.1, b 0.05'."""
    per_run = [recipe_parts(c) for c in configs]
    topics = list(dict.fromkeys(t for parts in per_run for t in parts))
    common, varying = [], []
    for t in topics:
        texts = [parts.get(t, "-") for parts in per_run]
        if len(set(texts)) == 1:
            common.append(texts[0])
        else:
            varying.append((t, ", ".join(f"{n} {x.removeprefix(t + ' ')}" for n, x in zip(names, texts))))
    return common, varying


# ---------------------------------------------------------------- figures
def run_labels(run_dirs):
    """Legend labels: each run's folder name, with as many parent folders as
    it takes to tell two runs apart (a/resnet-20, b/resnet-20)."""
    parts = [os.path.abspath(r).split(os.sep) for r in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [os.path.normpath(r) for r in run_dirs]      # the same folder twice


def _title(configs, labels):
    """'cifar10, 30 epochs, batch 128, ...' (what the runs share; what differs named)."""
    known = [(c, label) for c, label in zip(configs, labels) if c is not None]
    if not known:
        return "recipe unknown (no config.json)"
    datasets = ", ".join(sorted({c["dataset"] for c, _ in known}))
    common, varying = describe_recipes([c for c, _ in known], [label for _, label in known])
    keep = [t for t in common if not t.startswith(("seed", "weight decay", "batch"))]
    text = f"{datasets}: " + ", ".join(keep)
    if varying:
        text += "; " + "; ".join(f"{t}: {values}" for t, values in varying)
    return textwrap.fill(text, 110)


def plot_runs(run_dirs, path=None):
    """Loss and accuracy per epoch (train dashed, test solid, a marker at
    every epoch) for each run; the title names the dataset and recipe read
    from the runs' config.json. path: default curves.png in the first run folder."""
    from .errors import MiniresError
    from .train import read_log
    for run in run_dirs:
        if not os.path.isfile(os.path.join(run, "log.jsonl")):
            raise MiniresError(f"{run} has no log.jsonl: not a run folder (made by `minires train`)?")
    path = path or os.path.join(run_dirs[0], "curves.png")
    labels = run_labels(run_dirs)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.4))
    for run, label in zip(run_dirs, labels):
        log = read_log(run)
        epochs = [r["epoch"] for r in log]
        line, = ax_loss.plot(epochs, [r["test_loss"] for r in log], marker="o", ms=4, label=label)
        ax_loss.plot(epochs, [r["train_loss"] for r in log], "--", marker="o", ms=3, mfc="none",
                     color=line.get_color())
        ax_acc.plot(epochs, [r["test_acc"] for r in log], marker="o", ms=4, color=line.get_color(), label=label)
        ax_acc.plot(epochs, [r["train_acc"] for r in log], "--", marker="o", ms=3, mfc="none",
                    color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="loss (dashed: train)", title="loss")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (dashed: train)", title="accuracy")
    ax_acc.legend(fontsize=8)
    fig.suptitle(_title([read_config(r) for r in run_dirs], labels), fontsize=9)
    return save_figure(fig, path)


def _epoch_axis(ax):
    """Whole epochs on the x axis. Matplotlib gives up integer ticks on a
    span under 1 (a 1-epoch run), so that span is widened to [lo - 0.5, hi + 0.5]."""
    lo, hi = ax.dataLim.x0, ax.dataLim.x1
    if hi - lo < 2:
        ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def time_unit(seconds):
    """(divisor, name) that fits a time axis whose largest value is seconds."""
    if seconds < 120:
        return 1, "seconds"
    if seconds < 2 * 3600:
        return 60, "minutes"
    return 3600, "hours"


def plot_comparison(results, out_dir):
    """Test accuracy vs epoch, vs wall time, and best accuracy vs parameters.
    results: the list written to results.json. Returns the three paths."""
    fig1, ax1 = plt.subplots(figsize=(6, 4))
    fig2, ax2 = plt.subplots(figsize=(6, 4))
    fig3, ax3 = plt.subplots(figsize=(6, 4))
    div, unit = time_unit(max((e["wall_seconds"] for r in results for e in r["log"]), default=0))
    for r in results:
        log = r["log"]
        ax1.plot([e["epoch"] for e in log], [e["test_acc"] for e in log], marker="o", label=r["model"])
        ax2.plot([e["wall_seconds"] / div for e in log], [e["test_acc"] for e in log], marker="o",
                 label=r["model"])
        ax3.scatter(r["params"], r["best_test_acc"])
        ax3.annotate(r["model"], (r["params"], r["best_test_acc"]), fontsize=8,
                     xytext=(4, 4), textcoords="offset points")
    datasets = ", ".join(sorted({r["config"]["dataset"] for r in results if r.get("config")}))
    on = f" ({datasets})" if datasets else ""
    ax1.set(xlabel="epoch", ylabel="test accuracy", title=f"test accuracy vs epoch{on}")
    _epoch_axis(ax1)
    ax2.set(xlabel=f"wall time ({unit})", ylabel="test accuracy", title=f"test accuracy vs time{on}")
    ax3.set(xlabel="parameters", ylabel="best test accuracy", xscale="log",
            title=f"best test accuracy vs parameters{on}")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    paths = [os.path.join(out_dir, n) for n in ("acc_vs_epoch.png", "acc_vs_time.png", "acc_vs_params.png")]
    for fig, p in zip((fig1, fig2, fig3), paths):
        save_figure(fig, p)
    return paths


def plot_confusion(matrix, classes, path, title="confusion matrix"):
    """matrix: (K, K) counts, rows = true class, columns = predicted class."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * k, 1 + 0.5 * k) if k <= 20 else (12, 12))
    ax.imshow(matrix, cmap="Blues")
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, path)


def confusion_matrix(labels, preds, k):
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def save_figure(fig, path):
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return path
