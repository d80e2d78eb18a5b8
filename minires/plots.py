"""Figures: training curves, comparisons across models, confusion matrices."""
import json
import os

from .atomic import atomic_write

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_runs(run_dirs, path):
    """Loss and accuracy per epoch (train dashed, test solid) for each run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run in run_dirs:
        log = read_log(run)
        label = os.path.basename(os.path.normpath(run))
        epochs = [r["epoch"] for r in log]
        line, = ax_loss.plot(epochs, [r["test_loss"] for r in log], label=label)
        ax_loss.plot(epochs, [r["train_loss"] for r in log], "--", color=line.get_color())
        ax_acc.plot(epochs, [r["test_acc"] for r in log], color=line.get_color(), label=label)
        ax_acc.plot(epochs, [r["train_acc"] for r in log], "--", color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="loss (dashed: train)", title="loss")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set(xlabel="epoch", ylabel="accuracy (dashed: train)", title="accuracy")
    ax_acc.legend(fontsize=8)
    return _save(fig, path)


def plot_comparison(results, out_dir):
    """Test accuracy vs epoch, vs wall time, and best accuracy vs parameters.
    results: the list written to results.json. Returns the three paths."""
    fig1, ax1 = plt.subplots(figsize=(6, 4))
    fig2, ax2 = plt.subplots(figsize=(6, 4))
    fig3, ax3 = plt.subplots(figsize=(6, 4))
    for r in results:
        log = r["log"]
        ax1.plot([e["epoch"] for e in log], [e["test_acc"] for e in log], marker="o", label=r["model"])
        ax2.plot([e["wall_seconds"] / 60 for e in log], [e["test_acc"] for e in log], marker="o",
                 label=r["model"])
        ax3.scatter(r["params"], r["best_test_acc"])
        ax3.annotate(r["model"], (r["params"], r["best_test_acc"]), fontsize=8,
                     xytext=(4, 4), textcoords="offset points")
    ax1.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy vs epoch")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set(xlabel="wall time (minutes)", ylabel="test accuracy", title="test accuracy vs time")
    ax3.set(xlabel="parameters", ylabel="best test accuracy", xscale="log",
            title="best test accuracy vs parameters")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    paths = [os.path.join(out_dir, n) for n in ("acc_vs_epoch.png", "acc_vs_time.png", "acc_vs_params.png")]
    for fig, p in zip((fig1, fig2, fig3), paths):
        _save(fig, p)
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
    return _save(fig, path)


def confusion_matrix(labels, preds, k):
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def _save(fig, path):
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return path
