"""Train several models under one recipe and compare them: the command that
answers "how does ResNet perform on 32x32 images?"."""
import dataclasses
import json
import os

import numpy as np

from . import models
from .models.io import read_npz
from .plots import plot_comparison, read_log
from .summary import totals
from .train import check_config, run_state, train


def compare(model_names, base_config, out_dir, progress=True):
    """Train (or resume, or skip if finished) each model into out_dir/<model>,
    then write results.json, report.md and three plots. Returns the results.

    A run folder there that holds another recipe is an error (RunFolderError),
    checked for every model before any training: its results would be
    reported as this recipe's."""
    for name in model_names:
        check_config(dataclasses.replace(base_config, model=name))
    states = {name: run_state(dataclasses.replace(base_config, model=name), os.path.join(out_dir, name))
              for name in model_names}
    results = []
    for name in model_names:
        run_dir = os.path.join(out_dir, name)
        if states[name] != "finished":
            # unfinished without a checkpoint (a log from elsewhere): train() starts it again
            resume = states[name] == "unfinished" and os.path.exists(os.path.join(run_dir, "checkpoint.npz"))
            train(dataclasses.replace(base_config, model=name), run_dir, resume=resume, progress=progress)
        results.append(_result(name, run_dir))
    os.makedirs(out_dir, exist_ok=True)     # only now: a failed compare leaves no folder behind
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report_markdown(results, base_config))
    plot_comparison(results, out_dir)
    return results


def _result(name, run_dir):
    log = read_log(run_dir)
    options = read_npz(os.path.join(run_dir, "best.npz"))[0]["options"]   # num_classes and the build options
    params, macs = totals(models.build(name, rng=0, **options))
    return dict(model=name, params=params, macs=macs, epochs=len(log),
                images_per_second=float(np.median([e["images_per_second"] for e in log])),
                seconds_per_epoch=float(np.median([e["epoch_seconds"] for e in log])),
                best_test_acc=max(e["test_acc"] for e in log), final_test_acc=log[-1]["test_acc"],
                wall_seconds=log[-1]["wall_seconds"], log=log)


def report_table(results):
    rows = ["| model | params | MMACs/image | train img/s | s/epoch | epochs | best test acc | final test acc |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {r['images_per_second']:.0f} | "
                    f"{r['seconds_per_epoch']:.1f} | {r['epochs']} | {r['best_test_acc']:.3f} | "
                    f"{r['final_test_acc']:.3f} |")
    return "\n".join(rows)


def report_markdown(results, config):
    c = config
    return (f"# minires compare: {c.dataset}\n\n"
            f"Recipe: {c.epochs} epochs, batch {c.batch_size}, SGD lr {c.lr} momentum {c.momentum}"
            f"{' nesterov' if c.nesterov else ''}, {c.schedule} schedule, "
            f"weight decay {c.weight_decay if c.weight_decay is not None else 'per model'}, "
            f"augmentation {'on' if c.augment else 'off'}, seed {c.seed}.\n\n"
            + report_table(results) + "\n\nPlots: acc_vs_epoch.png, acc_vs_time.png, acc_vs_params.png\n")
