"""Diagnostics that show why residuals matter: per-layer gradient norms and
activation statistics, measured through the hooks of minires.nn.

    gradient_norms(model)           {parameter name: ||grad||_2}, after a backward
    conv_gradient_norms(model)      {conv name: ||weight.grad||_2} in depth order
    activation_stats(model, x)      {module name: mean, std, fraction zero of its output}
    record(model, x, y)             one forward + backward on a copy of the model: both of the above
    diagnose(names, x, y, path)     models at initialisation, measured and plotted

He et al. 2016 (Fig. 6) found deep plain nets train worse than shallow
ones; a residual net's identity path carries the gradient to early layers
unchanged, so its per-layer gradient norms stay level with depth, while a
plain net's must cross every conv and BN on the way down.

record() never touches the model it is given: it measures a deep copy (BN
running statistics, num_batches_tracked, dropout generators and gradients
are the copy's), so a run that records diagnostics trains exactly as one
that does not (tests/test_hooks.py checks the weights bit for bit).
"""
import copy
import math
import os

import numpy as np

from . import nn
from .models.registry import parse as parse_model_name
from .losses import CrossEntropyLoss


# ------------------------------------------------------------------ measuring
def gradient_norms(model):
    """{parameter name: L2 norm of its .grad}, as Python floats, in model order."""
    return {name: float(np.linalg.norm(p.grad)) for name, p in model.named_parameters()}


def conv_gradient_norms(model):
    """{conv module name: L2 norm of its weight's .grad}, in the order the
    modules are registered (depth order for the sequential families; a
    projection shortcut comes after its block's branch)."""
    return {name: float(np.linalg.norm(m.weight.grad)) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d)}


def _stats(out):
    """mean, std and fraction of exact zeros of an output array (float64 sums)."""
    out = np.asarray(out)
    return dict(mean=float(out.mean(dtype=np.float64)), std=float(out.std(dtype=np.float64)),
                frac_zero=float(np.count_nonzero(out == 0) / max(out.size, 1)))


def forward_with_stats(model, x):
    """(model(x), {module name: stats of its output}) for every submodule, in the
    order their forwards finished; forward hooks do the watching, then go."""
    stats, handles = {}, []

    def watch(name):
        def hook(module, x, out):
            stats[name] = _stats(out)
        return hook

    for name, m in model.named_modules():
        if name:        # the root's output is the logits: returned, not summarised
            handles.append(m.register_forward_hook(watch(name)))
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, stats


def activation_stats(model, x):
    """{module name: {"mean", "std", "frac_zero"}} of each submodule's output
    for one forward of x. It runs the model as it is (train mode updates BN
    running statistics): pass a copy to leave a model untouched, as record() does."""
    return forward_with_stats(model, x)[1]


def detached_copy(model):
    """A deep copy that shares nothing with model: without the caches the last
    forward left (a test pass can leave a lot) and without the model's hooks."""
    caches = [m.__dict__["_cache"] for m in model.modules() if m.__dict__.get("_cache") is not None]
    clone = copy.deepcopy(model, {id(c): None for c in caches})     # memo: each cache copies as None
    for m in clone.modules():
        for handle in list(m._forward_hooks) + list(m._backward_hooks):
            handle.remove()
    return clone


def record(model, x, y, label_smoothing=0.0):
    """One train-mode forward and backward of a copy of model on (x, y).

    x: (N, C, H, W) float32 images (normalised, not augmented); y: (N,) labels.
    Returns {"loss", "grad_norm": {param: norm}, "conv_grad_norm": {conv: norm},
    "activations": {module: stats}}; the model itself is left exactly as it was."""
    clone = detached_copy(model).train()
    crit = CrossEntropyLoss(label_smoothing)
    logits, activations = forward_with_stats(clone, x)
    loss = crit(logits, y)
    clone.zero_grad()
    clone.backward(crit.backward())
    return dict(loss=float(loss), grad_norm=gradient_norms(clone),
                conv_grad_norm=conv_gradient_norms(clone), activations=activations)


def fixed_batch(ds, size=128):
    """The first `size` training images of a Dataset, normalised, not augmented:
    the same batch at every measurement of a run."""
    from .data import normalize
    return normalize(ds.x_train[:size], ds.mean, ds.std), ds.y_train[:size]


class RunDiagnostics:
    """A run's diagnostics.jsonl (TrainConfig.diagnostics): one record() of the
    model on the run's fixed batch at initialisation (epoch 0) and after every
    epoch, each line {"epoch": E, "loss", "grad_norm", "conv_grad_norm",
    "activations"}, NaN and inf as null. resumed_epochs: the epochs a resumed
    run has done; the file keeps only their lines (a later line may come from
    an epoch the checkpoint never saw)."""

    def __init__(self, run_dir, ds, label_smoothing=0.0, resumed_epochs=0):
        self.path = os.path.join(run_dir, "diagnostics.jsonl")
        self.x, self.y = fixed_batch(ds)
        self.label_smoothing = label_smoothing
        self.records = [r for r in read_run_diagnostics(run_dir) if r["epoch"] <= resumed_epochs] \
            if resumed_epochs else []

    def measure(self, model, epoch):
        from .train import finite_or_none
        self.records.append(finite_or_none(dict(epoch=epoch, **record(model, self.x, self.y,
                                                                        self.label_smoothing))))

    def write(self):
        """Rewrite the whole file atomically (the run folder must exist)."""
        from .train import write_json_atomic
        write_json_atomic(self.path, self.records, lines=True)


# ------------------------------------------------------------------ plotting
def plot_gradient_norms(curves, path, title="gradient norm per layer"):
    """curves: {label: [conv weight gradient norms in depth order]} (a label
    containing "init" is drawn dashed). x: conv depth index, y: log norm."""
    from .plots import plt, save_figure
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, norms in curves.items():
        y = [v if v is not None and math.isfinite(v) and v > 0 else np.nan for v in norms]
        ax.plot(range(1, len(y) + 1), y, "--" if "init" in label else "-", marker="o", ms=3, label=label)
    ax.set(xlabel="conv layer (input side = 1)", ylabel="||dL/dW||_2 (log scale)", yscale="log", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def diagnose(model_names, x, y, path, num_classes=10, seed=0, options=None):
    """Build each model at initialisation (the same init as `minires train
    --seed seed`), record() it on (x, y), plot its conv gradient norms per
    layer into path. options: the models' options (width_scale, ...), one
    dict for all or a list of one per model. Returns {model name: record}."""
    from . import models
    per_model = options if isinstance(options, list) else [options or {}] * len(model_names)
    records, curves = {}, {}
    for name, opts in zip(model_names, per_model):
        model = models.build(name, num_classes, rng=np.random.default_rng([seed, 10]), **opts)
        records[name] = record(model, x, y)
        curves[f"{name} (init)"] = list(records[name]["conv_grad_norm"].values())
    plot_gradient_norms(curves, path, title=f"gradient norm per conv layer at initialisation "
                                            f"(one batch of {len(y)} images, seed {seed})")
    return records


def read_run_diagnostics(run_dir):
    """The records in run_dir/diagnostics.jsonl ([] if there is none)."""
    from .train import read_jsonl
    return read_jsonl(os.path.join(run_dir, "diagnostics.jsonl"))


def plot_run_diagnostics(run_dirs, labels, path):
    """Per-layer conv gradient norms of runs, at initialisation (dashed) and at
    their last recorded epoch (solid), from their diagnostics.jsonl."""
    curves = {}
    for run_dir, label in zip(run_dirs, labels):
        recs = read_run_diagnostics(run_dir)
        if recs:
            curves[f"{label} init"] = list(recs[0]["conv_grad_norm"].values())
            if len(recs) > 1:
                curves[f"{label} epoch {recs[-1]['epoch']}"] = list(recs[-1]["conv_grad_norm"].values())
    return plot_gradient_norms(curves, path, title="gradient norm per conv layer, at init and last epoch")


def study_section(root, rows):
    """Markdown lines with the gradient-norm plot of a study's E1 runs (rows:
    study_report rows), written to root/e1_gradient_norms.png. From the runs'
    diagnostics.jsonl where they have one (init and last epoch); otherwise the
    E1 models measured now at initialisation, on the first 128 training images
    of the runs' dataset (CIFAR from $MINIRES_DATA or ~/.cache/minires, never
    downloaded here)."""
    from .data import CIFAR, load_dataset, locate_cifar
    from .errors import MiniresError
    from .train import load_run_config
    path = os.path.join(root, "e1_gradient_norms.png")
    dirs = {r["name"]: os.path.join(root, "runs", r["name"]) for r in rows}
    recorded = [name for name, d in dirs.items() if read_run_diagnostics(d)]
    if recorded:
        plot_run_diagnostics([dirs[n] for n in recorded], recorded, path)
        return [f"Gradient norm of each conv layer's weight on a fixed batch (the first 128 training "
                f"images), recorded by the runs {', '.join(recorded)} (TrainConfig.diagnostics): dashed at "
                "initialisation, solid after the last recorded epoch.", "",
                "![gradient norm per layer](e1_gradient_norms.png)", ""]
    configs = [load_run_config(d) for d in dirs.values()]
    c = configs[0]
    try:
        if c.dataset in CIFAR:
            locate_cifar(c.dataset, None, download=False)
        ds = load_dataset(c.dataset, None, c.seed, c.train_size, 1, c.val_size, c.label_mode)
    except MiniresError as exc:
        return [f"No gradient-norm plot: the E1 runs recorded no diagnostics and the data is not at hand "
                f"({exc}). Set $MINIRES_DATA and rebuild the report, or run `minires diagnose --model "
                "plain-56 --model resnet-56 --dataset cifar10 --data-dir DATA --out PNG`.", ""]
    x, y = fixed_batch(ds)
    diagnose([c.model for c in configs], x, y, path, ds.num_classes, c.seed,
             [c.model_options() for c in configs])
    return [f"Gradient norm of each conv layer's weight at initialisation (seed {c.seed}), one train-mode "
            f"forward and backward on the first {len(y)} training images (`minires diagnose`); the runs "
            "recorded no diagnostics during training.", "",
            "![gradient norm per layer at initialisation](e1_gradient_norms.png)", ""]


# ------------------------------------------------------------------ the CLI
def run_cli(args):
    """`minires diagnose` (its options: minires/cli.py)."""
    from .data import load_dataset
    from .errors import MiniresError
    if args.batch < 2:
        raise MiniresError(f"--batch must be >= 2 (batch norm needs several images), got {args.batch}")
    for name in args.model:
        parse_model_name(name)         # an unknown name fails before any data is loaded
    ds = load_dataset(args.dataset, args.data_dir, args.seed,
                      train_size=args.batch if args.dataset == "shapes" else None, test_size=1)
    x, y = fixed_batch(ds, args.batch)
    options = {"width_scale": args.width_scale} if args.width_scale != 1.0 else {}
    records = diagnose(args.model, x, y, args.out, ds.num_classes, args.seed, options)
    for name, r in records.items():
        norms = list(r["conv_grad_norm"].values())
        print(f"{name}: loss {r['loss']:.3f}, conv gradient norm first {norms[0]:.3g}, "
              f"last {norms[-1]:.3g}, first/last {norms[0] / norms[-1] if norms[-1] else math.inf:.3g}")
    print(f"wrote {args.out}")
    return 0
