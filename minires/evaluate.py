"""`minires evaluate`: accuracy, per-class accuracy and a confusion matrix."""
import json
import os

from . import models
from .data import load_dataset
from .plots import confusion_matrix, plot_confusion
from .train import evaluate


def evaluate_path(path, dataset=None, data_dir=None, out=None):
    """path: a run folder (uses its best.npz and config) or a model .npz file."""
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        model_file = os.path.join(path, "best.npz")
        out = out or os.path.join(path, "confusion.png")
    else:
        cfg, model_file = {}, path
        out = out or os.path.splitext(path)[0] + "_confusion.png"
    dataset = dataset or cfg.get("dataset") or "shapes"
    ds = load_dataset(dataset, data_dir or cfg.get("data_dir"), cfg.get("seed", 0),
                      cfg.get("train_size"), cfg.get("test_size"), cfg.get("val_size", 0),
                      cfg.get("label_mode", "fine"))
    model = models.load(model_file)
    if model.options["num_classes"] != ds.num_classes:
        raise ValueError(f"{model_file} predicts {model.options['num_classes']} classes, "
                         f"{dataset} has {ds.num_classes}")
    loss, acc, preds = evaluate(model, ds.x_test, ds.y_test, ds.mean, ds.std)
    matrix = confusion_matrix(ds.y_test, preds, ds.num_classes)
    print(f"{model.name} on {dataset} test ({len(ds.y_test)} images): accuracy {acc:.4f}, loss {loss:.4f}")
    print(f"{'class':<16} {'accuracy':>8} {'count':>6}")
    for k, name in enumerate(ds.classes):
        count = matrix[k].sum()
        print(f"{name:<16} {matrix[k, k] / max(count, 1):>8.3f} {count:>6}")
    print(f"confusion matrix: {plot_confusion(matrix, ds.classes, out, f'{model.name} on {dataset}')}")
    return acc, matrix
