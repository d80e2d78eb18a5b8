"""`minires evaluate`: accuracy, per-class accuracy and a confusion matrix."""
import dataclasses
import os

from . import models
from .data import load_dataset
from .errors import MiniresError
from .plots import confusion_matrix, plot_confusion
from .train import evaluate, load_run_config


def evaluate_path(path, dataset=None, data_dir=None, out=None):
    """path: a run folder (uses its best.npz and config) or a model .npz file.

    data_dir: named by the user, trusted. Without it, a data_dir that the
    run's config.json names is read only from the md5-checked official
    archive (see minires.data): a run folder from elsewhere cannot make this
    command unpickle files of its choosing."""
    if not os.path.exists(path):
        raise MiniresError(f"{path}: no such run folder or model file")
    if os.path.isdir(path):
        config = load_run_config(path)
        if config is None:
            raise MiniresError(f"{path} is not a run folder: {os.path.join(path, 'config.json')} is missing")
        cfg = dataclasses.asdict(config)
        model_file = os.path.join(path, "best.npz")
        out = out or os.path.join(path, "confusion.png")
    else:
        cfg, model_file = {}, path
        out = out or os.path.splitext(path)[0] + "_confusion.png"
    model = models.load(model_file)         # before the data: a bad file fails fast
    dataset = dataset or cfg.get("dataset") or "shapes"
    ds = load_dataset(dataset, data_dir or cfg.get("data_dir"), cfg.get("seed", 0),
                      cfg.get("train_size"), cfg.get("test_size"), cfg.get("val_size", 0),
                      cfg.get("label_mode", "fine"), trust_data_dir=data_dir is not None)
    if model.options["num_classes"] != ds.num_classes:
        raise MiniresError(f"{model_file} predicts {model.options['num_classes']} classes, "
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
