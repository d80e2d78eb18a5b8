"""Train several models under one recipe and compare them: the command that
answers "how does ResNet perform on 32x32 images?".

A compare never reports a run under a recipe it was not trained with. Each
model's run folder out_dir/<model> is
- trained when it is empty;
- reused when it holds a finished run whose config.json is the requested
  recipe ("reusing finished run ...");
- resumed when it holds an unfinished run of that recipe, or a run that
  differs only in a smaller epoch count under a constant learning rate
  (then the longer run is exactly what a fresh one would be);
- otherwise refused, before anything is trained, with every differing
  field named: train those again with overwrite=True (--overwrite), or
  choose another out_dir.
The report's recipe is read from the runs' own config.json files.
"""
import dataclasses
import json
import os

import numpy as np

from . import models
from .errors import RunFolderError
from .models.io import read_npz
from .plots import describe_recipes, plot_comparison
from .summary import totals
from .train import (RUN_FILES, check_config, load_run_config, read_log, recipe_differences, run_is_finished,
                    train, with_default_weight_decay)

# Schedules whose learning rate at a step does not depend on the run's length:
# only under these is a run continued to more epochs the same as a fresh one.
LENGTH_FREE_SCHEDULES = ("constant",)


@dataclasses.dataclass
class PlannedRun:
    model: str
    run_dir: str
    config: object      # the requested TrainConfig
    action: str         # 'train', 'reuse', 'resume', 'extend' or 'replace'
    note: str = ""      # what is printed before it runs


def _plan_one(config, run_dir, overwrite):
    """PlannedRun for one model, or a string saying why its folder is refused."""
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f))]
    if not present:
        return PlannedRun(config.model, run_dir, config, "train")
    saved = load_run_config(run_dir)
    if saved is None:
        why = f"{run_dir} holds files of a run ({', '.join(present)}) but no config.json"
    else:
        differences = recipe_differences(saved, config)
        other = recipe_differences(dataclasses.replace(saved, epochs=config.epochs), config)
        has_ckpt = os.path.exists(os.path.join(run_dir, "checkpoint.npz"))
        if not differences:
            if run_is_finished(run_dir):
                n = len(read_log(run_dir))
                return PlannedRun(config.model, run_dir, config, "reuse", f"reusing finished run {run_dir} "
                                  f"({n} epoch{'s' * (n != 1)}; its config.json is this recipe)")
            if has_ckpt:
                return PlannedRun(config.model, run_dir, config, "resume",
                                  f"resuming unfinished run {run_dir} after epoch {len(read_log(run_dir))}")
            # a log without a checkpoint (from another machine): the same run again, replaced safely
            return PlannedRun(config.model, run_dir, config, "replace",
                              f"training {run_dir} again (its checkpoint.npz is missing)")
        if other:
            why = f"{run_dir} holds another run ({differences})"
        elif saved.epochs > config.epochs:
            why = f"{run_dir} holds a longer run ({differences})"
        elif saved.schedule not in LENGTH_FREE_SCHEDULES:
            why = (f"{run_dir} holds a shorter run ({differences}; its {saved.schedule} learning-rate "
                   f"schedule ends at epoch {saved.epochs}, so continuing it would not be a "
                   f"{config.epochs}-epoch run)")
        elif not has_ckpt:
            why = f"{run_dir} holds a shorter run ({differences}) without a checkpoint.npz to continue from"
        else:
            return PlannedRun(config.model, run_dir, config, "extend",
                              f"continuing {run_dir} from {saved.epochs} to {config.epochs} epochs "
                              f"(constant learning rate: the same as a fresh {config.epochs}-epoch run)")
    if overwrite:
        return PlannedRun(config.model, run_dir, config, "replace",
                          f"training {run_dir} again (--overwrite): {why}")
    return why


def plan(model_names, base_config, out_dir, overwrite=False):
    """What compare will do with each model's run folder (a list of PlannedRun).

    RunFolderError naming every refused folder and its differing fields,
    checked for all models before anything is trained or written."""
    if not model_names:
        raise RunFolderError("no models to compare: name them with --models a,b,c")
    if len(set(model_names)) != len(model_names):
        raise RunFolderError(f"a model is named twice in {','.join(model_names)}")
    configs = [dataclasses.replace(base_config, model=name) for name in model_names]
    for c in configs:
        check_config(c)
    planned = [_plan_one(with_default_weight_decay(c), os.path.join(out_dir, c.model), overwrite)
               for c in configs]
    refused = [p for p in planned if isinstance(p, str)]
    if refused:
        raise RunFolderError("; ".join(refused) + ": a finished run is reused only under its own recipe. "
                             "Pass --overwrite (or --force) to train these again, or choose another --out")
    return planned


def compare(model_names, base_config, out_dir, progress=True, overwrite=False, verbose=True):
    """Train, resume or reuse each model's run in out_dir/<model> (see the
    module docstring), then write results.json, report.md and three plots.
    Returns the results (one dict per model, its run's config included)."""
    out_dir = os.fspath(out_dir)
    for p in plan(model_names, base_config, out_dir, overwrite):
        if verbose and p.note:
            print(p.note, flush=True)
        if p.action in ("train", "replace"):
            train(p.config, p.run_dir, progress=progress, verbose=verbose, overwrite=p.action == "replace")
        elif p.action == "resume":
            train(p.config, p.run_dir, resume=True, progress=progress, verbose=verbose)
        elif p.action == "extend":      # the run's own config with the new epoch count
            train(dataclasses.replace(p.config, model=None), p.run_dir, resume=True, progress=progress,
                  verbose=verbose)
    results = [_result(name, os.path.join(out_dir, name)) for name in model_names]
    os.makedirs(out_dir, exist_ok=True)     # only now: a failed compare leaves no folder behind
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report_markdown(results))
    plot_comparison(results, out_dir)
    return results


def _result(name, run_dir):
    log = read_log(run_dir)
    config = dataclasses.asdict(load_run_config(run_dir))
    options = read_npz(os.path.join(run_dir, "best.npz"))[0]["options"]   # num_classes and the build options
    params, macs = totals(models.build(name, rng=0, **options))
    return dict(model=name, run_dir=run_dir, params=params, macs=macs, epochs=len(log),
                images_per_second=float(np.median([e["images_per_second"] for e in log])),
                seconds_per_epoch=float(np.median([e["epoch_seconds"] for e in log])),
                best_test_acc=max(e["test_acc"] for e in log), final_test_acc=log[-1]["test_acc"],
                wall_seconds=log[-1]["wall_seconds"], config=config, log=log)


def report_table(results):
    rows = ["| model | params | MMACs/image | train img/s | s/epoch | epochs | best test acc | final test acc |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {r['images_per_second']:.0f} | "
                    f"{r['seconds_per_epoch']:.1f} | {r['epochs']} | {r['best_test_acc']:.3f} | "
                    f"{r['final_test_acc']:.3f} |")
    return "\n".join(rows)


def recipe_text(results):
    """'4 epochs, batch 64, ...' from the runs' own configs: what all runs
    share, then what differs per model (the papers' weight decays)."""
    common, varying = describe_recipes([r["config"] for r in results], [r["model"] for r in results])
    return ", ".join(common) + "." + "".join(f" {topic} per model: {text}." for topic, text in varying)


def report_markdown(results, config=None):
    """report.md. The recipe comes from the runs' config.json files (each
    result's 'config'); config is not used (kept for old callers)."""
    datasets = sorted({r["config"]["dataset"] for r in results})
    return (f"# minires compare: {', '.join(datasets)}\n\n"
            f"Recipe (from each run's config.json): {recipe_text(results)}\n\n"
            + report_table(results) + "\n\nPlots: acc_vs_epoch.png, acc_vs_time.png, acc_vs_params.png\n")
