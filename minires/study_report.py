"""`minires study report`: REPORT.md and its plots, rebuilt from the run
folders alone (each run's config.json and log.jsonl; no checkpoint needed).

Accuracies are final test accuracies (the schedule ends at the budget, so
the last epoch is the trained model; the best epoch would select on the
test set). A verdict compares numbers against MARGIN: one seed per run, so a
difference below one point is not read as an effect.
"""
import dataclasses
import json
import os
import time

from .study import DATASET_SIZES, load_spec, num_classes, study_dir
from .study_speed import read_speeds, variant_key

MARGIN = 0.01           # accuracy (1 point): smaller differences settle nothing with one seed
PUBLISHED = ("Published anchors (their full schedules, official CIFAR-10 files; not ours): "
             "ResNet-20 91.25% and ResNet-56 93.03% test accuracy after 64k iterations "
             "(He et al. 2016, about 180 epochs), WRN-16-4 94.98% after 200 epochs "
             "(Zagoruyko & Komodakis 2016).")


# ------------------------------------------------------------------ the numbers
def _model_cost(model, options, classes, _cache={}):
    """(parameters, forward MACs per 32x32 image), built once per model."""
    from .budget import macs_per_image
    key = (model, json.dumps(options, sort_keys=True), classes)
    if key not in _cache:
        from . import models
        params = models.build(model, classes, rng=0, **options).num_parameters()
        _cache[key] = params, macs_per_image(model, classes, options)
    return _cache[key]


def read_run(spec_run, run_dir):
    """One row of numbers for a run folder, or None when it has no logged epoch yet."""
    from .budget import macs_per_image
    from .train import read_log
    from .train import TrainConfig
    if not os.path.exists(os.path.join(run_dir, "log.jsonl")):
        return None
    log = read_log(run_dir)
    if not log:
        return None
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in saved.items() if k in fields})
    classes = num_classes(config.dataset, config.label_mode)
    params, macs = _model_cost(config.model, config.model_options(), classes)
    last = log[-1]
    framework = spec_run.get("framework", "minires")
    train_size = last["images_seen"] / last["epochs_done"]
    test_size = config.test_size or DATASET_SIZES[config.dataset][1]
    per_epoch = [r["images_seen"] - p for r, p in zip(log, [0] + [r["images_seen"] for r in log[:-1]])]
    train_seconds = sum(n / r["images_per_second"] for n, r in zip(per_epoch, log))
    return dict(name=spec_run["name"], experiments=spec_run["experiments"], model=config.model,
                options=spec_run.get("options", {}), recipe=spec_run.get("recipe", {}),
                spec_budget=spec_run.get("budget"), spec_epochs=spec_run.get("epochs"),
                framework=framework, seed=spec_run.get("seed", 0), key=variant_key(framework, config),
                images_seen=last["images_seen"], test_images=len(log) * test_size,
                params=params, macs=macs, epochs=last["epochs_done"],
                compute=last["images_seen"] * macs / (train_size * macs_per_image("resnet-20", classes)),
                best=max(r["test_acc"] for r in log), final=last["test_acc"], train=last["train_acc"],
                gap=last["train_acc"] - last["test_acc"],
                images_per_second=last["images_seen"] / train_seconds,
                hours=sum(r["epoch_seconds"] for r in log) / 3600, quiet_ips=None, quiet_hours=None,
                finished=len(log) >= saved["epochs"], log=log)


def read_study(spec, root, speeds=None):
    """The rows of the runs that have logged an epoch; with speeds (study_speed.read_speeds),
    each row whose variant was timed gets its quiet-machine img/s and hours."""
    rows = []
    for run in spec["runs"]:
        row = read_run(run, os.path.join(root, "runs", run["name"]))
        if row:
            add_quiet_hours(row, (speeds or {}).get(row["key"]))
            rows.append(row)
    return rows


def add_quiet_hours(row, speed):
    """Training hours at the quiet machine's speed: training images at its training
    img/s plus the test images the run evaluated at its eval img/s."""
    if speed:
        row["quiet_ips"] = speed["train_images_per_second"]
        row["quiet_hours"] = (row["images_seen"] / speed["train_images_per_second"]
                              + row["test_images"] / speed["eval_images_per_second"]) / 3600


def _label(row):
    """model plus what sets it apart: 'bottleneck-29 //4', 'seed-cnn no dropout', 'resnet-20 no aug',
    'plain-20 wd 0.0005' (a weight decay other than the model's default)."""
    extra = []
    if "bottleneck_div" in row["options"]:
        extra.append(f"//{row['options']['bottleneck_div']}")
    if row["options"].get("dropout") == 0:
        extra.append("no dropout")
    if row["recipe"].get("augment") is False:
        extra.append("no aug")
    if "weight_decay" in row["recipe"]:
        extra.append(f"wd {row['recipe']['weight_decay']:g}")
    if row.get("framework", "minires") != "minires":
        extra.append(f"({row['framework']})")
    return " ".join([row["model"]] + extra)


# ------------------------------------------------------------------ tables
def experiment_table(rows):
    lines = ["| run | model | params | MMACs/img | budget (R20 epochs) | epochs | best test | final test | "
             "final train | train-test gap | img/s (quiet) | hours (quiet) | hours (logged) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        status = "" if r["finished"] else " (unfinished)"
        quiet = (f"{r['quiet_ips']:.0f} | {r['quiet_hours']:.2f}" if r["quiet_hours"] is not None else "- | -")
        lines.append(f"| {r['name']}{status} | {_label(r)} | {r['params']:,} | {r['macs'] / 1e6:.1f} | "
                     f"{r['compute']:.2f} | {r['epochs']:.2f} | {r['best']:.3f} | {r['final']:.3f} | "
                     f"{r['train']:.3f} | {r['gap']:+.3f} | {quiet} | {r['hours']:.2f} |")
    return "\n".join(lines)


def anchor_table(rows):
    """E5: per model (and budget), the mean final test accuracy of the finished
    runs in each library over their seeds, and minires minus PyTorch."""
    groups = {}
    for r in rows:
        if r["finished"]:
            key = (r["model"], r["spec_budget"], r["spec_epochs"])
            groups.setdefault(key, {}).setdefault(r["framework"], []).append(r)
    lines = ["Mean final test accuracy over seeds, each library trained from the same initial weights "
             "with the same recipe, data order and augmentation (minires.anchor):", "",
             "| model | budget | minires (seeds) | PyTorch (seeds) | minires - PyTorch |", "|---|---|---:|---:|---:|"]

    def cell(runs):
        if not runs:
            return "-", None
        mean = sum(r["final"] for r in runs) / len(runs)
        seeds = ", ".join(f"{r['seed']}: {_pct(r['final'])}" for r in sorted(runs, key=lambda r: r["seed"]))
        return f"{_pct(mean)} ({seeds})", mean
    for (model, budget, epochs), by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        (mine, a), (theirs, b) = cell(by.get("minires", [])), cell(by.get("torch", []))
        diff = "-" if a is None or b is None else f"{100 * (a - b):+.1f} points"
        size = f"{budget:g} R20 epochs" if budget is not None else f"{epochs} epochs"
        lines.append(f"| {model} | {size} | {mine} | {theirs} | {diff} |")
    if not groups:
        lines.append("| (no finished run yet) | | | | |")
    return lines + [""]


# ------------------------------------------------------------------ verdicts
RECORDING_ONLY = {"diagnostics"}    # recipe keys that record, not change, the training (E1 runs set it)


def _training_recipe(recipe):
    return {k: v for k, v in recipe.items() if k not in RECORDING_ONLY}


def _find(rows, model, budget=None, epochs=None, options=None, recipe=None):
    """The finished minires run of model with exactly these spec settings (its
    recipe compared without the keys that only record), else None."""
    for r in rows:
        if (r["finished"] and r["framework"] == "minires" and r["model"] == model
                and r["spec_budget"] == budget and r["spec_epochs"] == epochs
                and r["options"] == (options or {}) and _training_recipe(r["recipe"]) == (recipe or {})):
            return r
    return None


def _pct(x):
    return f"{100 * x:.1f}%"


def _directional(diffs):
    """diffs: the claim predicts each > 0. All beyond +MARGIN: supported; all
    beyond -MARGIN: not supported; anything else: not settled."""
    if all(d > MARGIN for d in diffs):
        return "supported"
    if all(d < -MARGIN for d in diffs):
        return "not supported"
    return "not settled at this budget"


def _comparable(diffs):
    """diffs: cheaper minus dearer. 'Comparable' holds when none loses more than MARGIN."""
    if all(d >= -MARGIN for d in diffs):
        return "supported"
    if any(d < -2 * MARGIN for d in diffs):
        return "not supported"
    return "not settled at this budget"


def _missing(what):
    return "not yet run", f"needs the finished runs of {what}"


def _short_runs(runs):
    """'. Caution: X trained for only 0.48 epochs ...' for runs under one epoch
    (a comparison at equal compute then says how far each got, not where it ends)."""
    short = sorted({(r["spec_budget"] or 0, r["model"], r["epochs"]) for r in runs if r and r["epochs"] < 1})
    if not short:
        return ""
    return (". Caution: " + ", ".join(f"{m} trained for only {e:.2f} epochs" + (f" at {b:g} R20 epochs" if b else "")
                                      for b, m, e in short)
            + ", so those comparisons are of early training, not of trained models")


def verdicts(rows, budgets, e1_epochs=8):
    """claim -> (verdict, the numbers behind it). budgets: the E2 budgets, ascending;
    e1_epochs: the epoch count of the E1 runs."""
    out = {}
    # C1: the ImageNet ResNet-50 as is, against the CIFAR ResNets at equal compute
    parts, diffs = [], []
    for b in budgets:
        r50, cifar = _find(rows, "imagenet-resnet-50", b), [_find(rows, m, b) for m in ("resnet-20", "resnet-56")]
        if r50 and all(cifar):
            best = max(cifar, key=lambda r: r["final"])
            diffs.append(best["final"] - r50["final"])
            r18 = _find(rows, "imagenet-resnet-18", b)
            parts.append(f"at {b:g} R20 epochs imagenet-resnet-50 {_pct(r50['final'])} vs {best['model']} "
                         f"{_pct(best['final'])}" + (f" (imagenet-resnet-18 {_pct(r18['final'])})" if r18 else ""))
    used = [_find(rows, m, b) for b in budgets for m in ("imagenet-resnet-50", "resnet-20", "resnet-56")]
    out["C1"] = ((_directional(diffs), "; ".join(parts) + _short_runs(used)) if diffs
                 else _missing("imagenet-resnet-50, resnet-20/56 (E2)"))
    # C2: shallow vs deep: equal epochs (E1), and equal compute (E2) for context
    r20, r56 = _find(rows, "resnet-20", epochs=e1_epochs), _find(rows, "resnet-56", epochs=e1_epochs)
    if r20 and r56:
        text = (f"at {e1_epochs} epochs resnet-20 {_pct(r20['final'])} vs resnet-56 {_pct(r56['final'])} "
                f"for {r56['macs'] / r20['macs']:.1f}x fewer MACs per image")
        for b in budgets:
            a, c = _find(rows, "resnet-20", b), _find(rows, "resnet-56", b)
            if a and c:
                text += f"; at {b:g} R20 epochs (equal compute) {_pct(a['final'])} vs {_pct(c['final'])}"
        if r20["final"] > r56["final"]:
            text += ("; the papers' full schedules rank them the other way (He et al. 2016: resnet-20 91.25%, "
                     "resnet-56 93.03%), so a shorter net winning here says how far short training gets")
        out["C2"] = (_comparable([r20["final"] - r56["final"]]), text + _short_runs([r20, r56]))
    else:
        out["C2"] = _missing("resnet-20 and resnet-56 (E1)")
    # C3: train-test gap against parameters, at equal compute
    parts, rhos, overfit = [], [], False
    for b in budgets:
        group = [r for r in rows if "E2" in r["experiments"] and r["spec_budget"] == b and r["finished"]]
        if len(group) >= 4:
            rho = _spearman([r["params"] for r in group], [r["gap"] for r in group])
            rhos.append(rho)
            overfit = overfit or any(r["gap"] > MARGIN for r in group)
            parts.append(f"at {b:g} R20 epochs rank correlation of parameters and gap {rho:+.2f} over {len(group)} "
                         f"models (largest gap {max(r['gap'] for r in group):+.3f})")
    if rhos:
        # Overfitting shows as a positive train-test gap; while no model has one,
        # the models are still underfitting and the claim cannot be tested.
        verdict = ("not settled at this budget" if not overfit else
                   "supported" if all(r >= 0.5 for r in rhos) else
                   "not supported" if all(r <= 0 for r in rhos) else "not settled at this budget")
        note = "" if overfit else "; no model has a train-test gap above +1 point yet: none has begun to overfit"
        out["C3"] = (verdict, "; ".join(parts) + note + " (supported needs >= +0.5 at every budget)")
    else:
        out["C3"] = _missing("at least 4 E2 models at a budget")
    # C4: a narrower bottleneck middle (//4 against the article's //2) at equal compute
    parts, diffs = [], []
    for b in budgets:
        half, quarter = _find(rows, "bottleneck-29", b), _find(rows, "bottleneck-29", b, options={"bottleneck_div": 4})
        if half and quarter:
            diffs.append(quarter["final"] - half["final"])
            parts.append(f"at {b:g} R20 epochs //2 {_pct(half['final'])} ({half['params']:,} params) vs //4 "
                         f"{_pct(quarter['final'])} ({quarter['params']:,} params, "
                         f"{1 - quarter['params'] / half['params']:.0%} fewer)")
    used = [_find(rows, "bottleneck-29", b, options=o) for b in budgets for o in (None, {"bottleneck_div": 4})]
    out["C4"] = ((_comparable(diffs), "; ".join(parts) + _short_runs(used)) if diffs
                 else _missing("bottleneck-29 //2 and //4 (E4)"))
    # C5: widening, at equal compute
    parts, diffs = [], []
    for b in budgets:
        base, wide = _find(rows, "resnet-20", b), [_find(rows, m, b) for m in ("wrn-16-4", "seed-wide-20")]
        if base and any(wide):
            best = max((w for w in wide if w), key=lambda r: r["final"])
            diffs.append(best["final"] - base["final"])
            parts.append(f"at {b:g} R20 epochs {best['model']} {_pct(best['final'])} vs resnet-20 {_pct(base['final'])}")
    used = [_find(rows, m, b) for b in budgets for m in ("resnet-20", "wrn-16-4", "seed-wide-20")]
    out["C5"] = ((_directional(diffs), "; ".join(parts) + _short_runs(used)) if diffs
                 else _missing("wrn-16-4 or seed-wide-20, resnet-20 (E2)"))
    # C6: dropout (seed-cnn) and augmentation (resnet-20), E3
    parts, verdict_parts = [], []
    for b in budgets:
        with_d, without_d = _find(rows, "seed-cnn", b), _find(rows, "seed-cnn", b, options={"dropout": 0.0})
        if with_d and without_d:
            d = with_d["final"] - without_d["final"]
            verdict_parts.append(f"dropout vital: {_directional([d])}")
            parts.append(f"at {b:g} R20 epochs seed-cnn with dropout {_pct(with_d['final'])}, without "
                         f"{_pct(without_d['final'])} (train-test gap {with_d['gap']:+.3f} vs {without_d['gap']:+.3f})")
        aug, noaug = _find(rows, "resnet-20", b), _find(rows, "resnet-20", b, recipe={"augment": False})
        if aug and noaug:
            verdict_parts.append(f"augmentation helps: {_directional([aug['final'] - noaug['final']])}")
            parts.append(f"at {b:g} R20 epochs resnet-20 with crop+flip {_pct(aug['final'])}, without "
                         f"{_pct(noaug['final'])} (gap {aug['gap']:+.3f} vs {noaug['gap']:+.3f})")
    out["C6"] = ("; ".join(verdict_parts), "; ".join(parts)) if parts else _missing("the E3 pairs")
    # He et al. Fig. 6: the deeper plain net trains worse, the deeper ResNet does not
    runs = {m: _find(rows, m, epochs=e1_epochs) for m in ("plain-20", "plain-56", "resnet-20", "resnet-56")}
    if all(runs.values()):
        err = {m: 1 - r["train"] for m, r in runs.items()}
        plain = _directional([err["plain-56"] - err["plain-20"]])
        res = _directional([err["resnet-20"] - err["resnet-56"]])
        out["Degradation"] = (f"plain-56 trains worse than plain-20: {plain}; resnet-56 trains at least as well "
                              f"as resnet-20: {res}",
                              "final training error (last epoch, augmented batches): " +
                              ", ".join(f"{m} {_pct(e)}" for m, e in err.items()) +
                              f"; from 20 to 56 layers the training error rises by "
                              f"{100 * (err['plain-56'] - err['plain-20']):+.1f} points without shortcuts and "
                              f"{100 * (err['resnet-56'] - err['resnet-20']):+.1f} with them")
    else:
        out["Degradation"] = _missing("plain-20/56 and resnet-20/56 (E1)")
    return out


def _spearman(x, y):
    """Rank correlation (no ties expected: parameter counts and gaps differ)."""
    import numpy as np
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


CLAIMS = {
    "C1": "an ImageNet ResNet (ResNet-50) applied directly to 32x32 images performs suboptimally",
    "C2": "shallower ResNets give comparable accuracy at a much lower computational cost",
    "C3": "more parameters relative to the data lead to overfitting on 32x32 datasets",
    "C4": "halving the filters inside bottleneck blocks cuts parameters without losing much "
          "(tested here: halving again, //2 to //4)",
    "C5": "widening a ResNet can improve accuracy on 32x32 images",
    "C6": "dropout is vital for small images and data; augmentation is recommended",
    "Degradation": "He et al. 2016 Fig. 6: a plain net gets worse as it gets deeper, a residual one does not",
}


# ------------------------------------------------------------------ plots
def pareto_front(points):
    """The (cost, accuracy) points no other point beats on both: cheaper or equal
    and at least as accurate. Sorted by cost; accuracy rises along them."""
    front = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def plot_compute(rows, path, hours_label="training hours at quiet-machine speed"):
    """Final test accuracy against training compute (R20 epochs) and against
    training hours, one line per model variant across its budgets (E2-E4), with
    the Pareto front of all of them (grey steps). Hours are the quiet-machine
    hours where every run has them (minires study speed), else the logged ones."""
    from .plots import plt, save_figure
    fig, (ax_c, ax_h) = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = {}
    for r in rows:
        if r["spec_budget"] is not None and r["finished"]:
            groups.setdefault(_label(r), []).append(r)
    plotted = [r for g in groups.values() for r in g]
    quiet = bool(plotted) and all(r["quiet_hours"] is not None for r in plotted)
    hours = (lambda r: r["quiet_hours"]) if quiet else (lambda r: r["hours"])
    # 13+ variants: tab10 alone repeats colours; tab20's ten dark shades first, then its light ones
    colors, markers = plt.get_cmap("tab20").colors, "os^Dv<>P"
    shades = list(range(0, 20, 2)) + list(range(1, 20, 2))
    for i, (label, group) in enumerate(sorted(groups.items())):
        group.sort(key=lambda r: r["compute"])
        style = dict(color=colors[shades[i % 20]], marker=markers[i % len(markers)])
        ax_c.plot([r["compute"] for r in group], [r["final"] for r in group], label=label, **style)
        ax_h.plot([hours(r) for r in group], [r["final"] for r in group], **style)
    for ax, cost in ((ax_c, lambda r: r["compute"]), (ax_h, hours)):
        front = pareto_front([(cost(r), r["final"]) for r in plotted])
        if front:
            ax.step(*zip(*front), where="post", color="grey", lw=1, ls=":", label="Pareto front")
    ax_c.set(xlabel="training compute (resnet-20 epochs)", ylabel="final test accuracy", xscale="log",
             title="accuracy against compute")
    budgets = sorted({r["spec_budget"] for r in plotted})
    if budgets:     # the budgets as ticks: a log axis over a narrow range would label it 1.498e0, 1.5e0, ...
        ax_c.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax_c.minorticks_off()
        ax_c.set_xlim(budgets[0] / 1.5, budgets[-1] * 1.5)
    ax_h.set(xlabel=hours_label if quiet else "training hours (logged by the runs)",
             ylabel="final test accuracy", xscale="log", title="accuracy against time")
    ax_c.legend(fontsize=7)
    return save_figure(fig, path)


def plot_degradation(rows, path):
    """E1: training (dashed) and test (solid) error per epoch, and training loss."""
    from .plots import plt, save_figure
    fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        if "E1" not in r["experiments"]:
            continue
        x = [e["epochs_done"] for e in r["log"]]
        line, = ax_e.plot(x, [1 - e["test_acc"] for e in r["log"]], marker="o", label=_label(r))
        ax_e.plot(x, [1 - e["train_acc"] for e in r["log"]], "--", color=line.get_color())
        ax_l.plot(x, [e["train_loss"] for e in r["log"]], marker="o", color=line.get_color(), label=_label(r))
    ax_e.set(xlabel="epoch", ylabel="error (dashed: training)", title="E1: error per epoch")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="E1: training loss")
    ax_e.legend(fontsize=8)
    return save_figure(fig, path)


def plot_gap(rows, path):
    """Train-test gap against parameters over every run."""
    from .plots import plt, save_figure
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        ax.scatter(r["params"], r["gap"])
        ax.annotate(f"{_label(r)} ({r['compute']:.1f})", (r["params"], r["gap"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="parameters", ylabel="final train acc - final test acc", xscale="log",
           title="train-test gap against parameters (label: R20 epochs)")
    return save_figure(fig, path)


# ------------------------------------------------------------------ the report
def _setup(spec, spec_path, rows, root, scale, speed):
    machines, versions = set(), set()
    for r in rows:
        path = os.path.join(root, "runs", r["name"], "machine.json")
        if os.path.exists(path):
            with open(path) as f:
                for s in json.load(f):
                    machines.add(f"{s['cpu']}, {s['cores']} cores")
                    versions.add(f"Python {s['python']}, NumPy {s['numpy']}")
    recipe = ", ".join(f"{k} {v}" for k, v in spec.get("recipe", {}).items())
    scale_note = f" --scale {scale:g}" if scale != 1 else ""
    lines = [f"# {spec.get('question', spec['name'])}", "",
             f"Generated by `minires study report {spec_path}{scale_note}` on {time.strftime('%Y-%m-%d')} "
             f"from the run folders in `{os.path.join(root, 'runs')}`; the runs were made with "
             f"`minires study run {spec_path}{scale_note} --data-dir DATA`.", "",
             "## Setup", "",
             f"- Data: {spec.get('data', spec.get('recipe', {}).get('dataset', '?'))}.",
             f"- Recipe (every run, unless its table says otherwise): {recipe}; weight decay per model "
             "(1e-4 for the ResNets and plain nets, 5e-4 for WRN and seed-cnn); one seed per run.",
             "- Budgets: training compute in resnet-20 epochs (R20 epochs): a model with M MACs per image "
             "sees budget x 50,000 x 40.55M / M images (minires.budget); the learning rate decays "
             "linearly to zero exactly when the budget is spent. E1 runs count epochs instead."
             + (f" Everything here is scaled by {scale:g}." if scale != 1 else ""),
             f"- Machines: {'; '.join(sorted(machines)) or 'not recorded'}; {'; '.join(sorted(versions)) or ''}.",
             "- Final train accuracy is the running mean over the last epoch's augmented batches "
             "(dropout on), not an evaluation pass; the gap is final train minus final test accuracy.",
             _speed_note(speed),
             f"- {PUBLISHED} Our budgets are a few epochs, far from those schedules: compare rankings, "
             "not these absolute numbers.", ""]
    return lines


def _speed_note(speed):
    """Where the hours come from: the quiet measurement (speed.json) and the logs."""
    logged = ("'hours (logged)' is each run's own wall clock (with augmentation, and any time the machine "
              "spent on other work or the run sat paused): it does not compare models or libraries")
    if speed is None:
        return (f"- Speed: no quiet measurement yet (`minires study speed SPEC` writes it); {logged}. "
                "The time plot uses the logged hours.")
    load = speed.get("other_load")
    quiet = "" if speed["quiet"] else (" (warning: the machine was NOT quiet: other processes kept "
                                       f"{load:.2f} cores busy)" if load is not None else " (quiet: unknown)")
    return (f"- Speed: 'img/s (quiet)' and 'hours (quiet)' come from `{speed['command']}` on "
            f"{speed['cpu']}, {speed['cores']} cores, {speed['threads']} threads, {speed['date']}{quiet}: "
            "each model's training step (forward, loss, backward, SGD; no data loading or augmentation) and "
            "eval forward timed back to back; hours = training images / train img/s + test images evaluated / "
            f"eval img/s. The time plot uses them. {logged}.")


def write_report(spec_path, scale=1.0):
    """Rebuild <study dir>/REPORT.md and its plots; returns the report's path."""
    spec = load_spec(spec_path)
    root = study_dir(spec_path, scale)
    os.makedirs(root, exist_ok=True)
    speed, speeds = read_speeds(study_dir(spec_path))    # one quiet measurement serves every scale
    rows = read_study(spec, root, speeds)
    budgets = sorted({r["budget"] for r in spec["runs"] if "E2" in r["experiments"] and "budget" in r})
    e1_epochs = next((r["epochs"] for r in spec["runs"] if "E1" in r["experiments"] and "epochs" in r), None)
    lines = _setup(spec, spec_path, rows, root, scale, speed)
    for exp, title in spec.get("experiments", {}).items():
        lines += [f"## {exp}: {title}", ""]
        exp_rows = [r for r in rows if exp in r["experiments"]]
        planned = sum(exp in r["experiments"] for r in spec["runs"])
        if not planned:
            lines += ["No runs in this spec yet.", ""]
            continue
        lines += [experiment_table(exp_rows) if exp_rows else "No run has logged an epoch yet.", "",
                  f"{sum(r['finished'] for r in exp_rows)} of {planned} runs finished.", ""]
        if exp == "E1" and exp_rows:
            from .diagnostics import study_section
            lines += ["![E1 error curves](e1_curves.png)", ""] + study_section(root, exp_rows)
        if exp == "E5" and exp_rows:
            lines += anchor_table(exp_rows)
    if rows:
        plot_compute(rows, os.path.join(root, "accuracy_vs_compute.png"),
                     f"training hours at quiet-machine speed ({speed['cpu']})" if speed else None)
        plot_degradation(rows, os.path.join(root, "e1_curves.png"))
        plot_gap(rows, os.path.join(root, "gap_vs_params.png"))
        lines += ["## Accuracy against training compute and time", "",
                  "![accuracy against compute](accuracy_vs_compute.png)", "",
                  "![train-test gap against parameters](gap_vs_params.png)", ""]
    lines += ["## Verdicts", "",
              f"Computed from the finished runs' final test accuracy; a difference under "
              f"{100 * MARGIN:.0f} point settles nothing (one seed per run). Each holds for the budgets named.", ""]
    for claim, (verdict, numbers) in verdicts(rows, budgets, e1_epochs).items():
        lines.append(f"- **{claim}** ({CLAIMS[claim]}): **{verdict}**. {numbers}.")
    path = os.path.join(root, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
