"""`minires study`: a list of training runs in a spec file, run resumably and
reported from the run folders alone.

A spec (JSON, e.g. studies/cifar10.json):

    {"name": "...", "data": "what the data is, in words",
     "recipe": {TrainConfig fields every run shares: dataset, lr, schedule, ...},
     "experiments": {"E1": "what it shows", ...},
     "runs": [{"name": "e2-resnet-20-b2", "experiments": ["E2", "E3"],
               "model": "resnet-20", "options": {"bottleneck_div": 4, ...},
               "recipe": {overrides, e.g. "augment": false},
               "budget": 2 (resnet-20 epochs, see minires.budget) or "epochs": 8,
               "seed": 0, "framework": "minires" (default) or "torch"}, ...]}

A run with "framework": "torch" trains the model's PyTorch twin (same initial
weights, recipe and batches: minires.anchor.train_torch_twin) instead.

Runs live in studies/<spec name>/runs/<run name>/ (config.json and log.jsonl
are committed; checkpoints are not). `--scale F` multiplies every budget and
epoch count and writes to studies/<spec name>-scale<F>/, never over the real
runs. A run is finished when its log has as many epochs as its config says.
"""
import dataclasses
import json
import os
import platform
import time

from . import runtime

SPEC_RUN_KEYS = {"name", "experiments", "model", "options", "recipe", "budget", "epochs", "seed", "framework"}
FRAMEWORKS = ("minires", "torch")     # "torch": the PyTorch twin, minires.anchor.train_torch_twin
# (train, test) images when the recipe does not cut them
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "shapes": (10_000, 2_000)}


# ------------------------------------------------------------------ the spec
def load_spec(path):
    """Read and check a spec file; returns the dict (runs keep their order)."""
    from .train import TrainConfig
    with open(path) as f:
        spec = json.load(f)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    names = [r.get("name") for r in spec.get("runs", [])]
    if not names or len(set(names)) != len(names) or None in names:
        raise ValueError(f"{path}: every run needs a name, unique in the spec")
    for key in spec.get("recipe", {}):
        if key not in fields:
            raise ValueError(f"{path}: recipe field {key!r} is not a TrainConfig field")
    for run in spec["runs"]:
        where = f"{path}: run {run['name']!r}"
        if set(run) - SPEC_RUN_KEYS:
            raise ValueError(f"{where}: unknown keys {sorted(set(run) - SPEC_RUN_KEYS)}")
        if ("budget" in run) == ("epochs" in run) or "model" not in run:
            raise ValueError(f"{where}: needs a model and exactly one of budget and epochs")
        if run.get("framework", "minires") not in FRAMEWORKS:
            raise ValueError(f"{where}: framework must be one of {FRAMEWORKS}, got {run['framework']!r}")
        for key in {**run.get("options", {}), **run.get("recipe", {})}:
            if key not in fields:
                raise ValueError(f"{where}: {key!r} is not a TrainConfig field")
    return spec


def study_dir(spec_path, scale=1.0):
    """studies/cifar10.json -> studies/cifar10 (scale 1) or studies/cifar10-scale0.02."""
    base = os.path.splitext(spec_path)[0]
    return base if scale == 1.0 else f"{base}-scale{scale:g}"


def num_classes(dataset, label_mode="fine"):
    return 20 if (dataset == "cifar100" and label_mode == "coarse") else {"cifar100": 100}.get(dataset, 10)


def run_config(spec, run, scale=1.0, dataset=None):
    """The TrainConfig of one spec run. With scale != 1 an epoch count E becomes
    the budget of E * scale of the model's own epochs (same steps, fractions allowed)."""
    from .budget import macs_per_image
    from .train import TrainConfig
    fields = {**spec.get("recipe", {}), **run.get("recipe", {}), **run.get("options", {})}
    if dataset:
        fields["dataset"] = dataset
    config = TrainConfig(model=run["model"], seed=run.get("seed", 0), **fields)
    if "budget" in run:
        return dataclasses.replace(config, budget=run["budget"] * scale, epochs=1)
    if scale == 1.0:
        return dataclasses.replace(config, epochs=run["epochs"])
    k = num_classes(config.dataset, config.label_mode)
    ratio = macs_per_image(run["model"], k, config.model_options()) / macs_per_image("resnet-20", k)
    return dataclasses.replace(config, budget=run["epochs"] * scale * ratio, epochs=1)


def _planned_steps(config):
    """(train images, test images, total steps, epochs) without loading the data."""
    import math

    from .budget import budget_epochs
    train_size, test_size = DATASET_SIZES[config.dataset]
    train_size = (config.train_size or train_size) - (config.val_size or 0)
    test_size = config.test_size or test_size
    per_epoch = math.ceil(train_size / config.batch_size)
    if config.budget is None:
        return train_size, test_size, config.epochs * per_epoch, config.epochs
    steps, epochs = budget_epochs(config.budget, config.model, config.model_options(),
                                  num_classes(config.dataset, config.label_mode), train_size, config.batch_size)
    return train_size, test_size, steps, epochs


# ------------------------------------------------------------------ running
def _check_same_run(run_dir, config):
    """A run folder made from another version of the spec must not be silently continued."""
    from .train import load_run_config, recipe_mismatches
    mismatches = recipe_mismatches(load_run_config(run_dir), config)
    if mismatches:
        key, saved, wanted = mismatches[0]
        raise ValueError(f"{run_dir} was trained with {key}={saved!r} but the spec now says {wanted!r}; "
                         "delete the folder to rerun it")


def run_state(run_dir, config):
    """'new' | 'finished' | 'stopped' (a checkpoint to resume) | 'restart'
    (a log but no checkpoint, e.g. another machine: rerun from scratch, deterministically)."""
    from .train import run_is_finished
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        return "new"
    _check_same_run(run_dir, config)
    if run_is_finished(run_dir):
        return "finished"
    stopped = any(os.path.exists(os.path.join(run_dir, f)) for f in ("checkpoint.npz", "checkpoint.pt"))
    return "stopped" if stopped else "restart"


def _record_machine(run_dir, state):
    """Append this sitting's machine to runs/<name>/machine.json (the report cites it)."""
    import numpy as np
    path = os.path.join(run_dir, "machine.json")
    sittings = []
    if os.path.exists(path) and state == "stopped":
        with open(path) as f:
            sittings = json.load(f)
    sittings.append(dict(date=time.strftime("%Y-%m-%d %H:%M"), cpu=runtime.cpu_name(), cores=os.cpu_count(),
                         python=platform.python_version(), numpy=np.__version__, state=state))
    with open(path, "w") as f:
        json.dump(sittings, f, indent=1)


def select_runs(spec, only=None):
    """The spec's runs, or those named in `only` (a list; unknown names are an error)."""
    if not only:
        return spec["runs"]
    known = {r["name"] for r in spec["runs"]}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ValueError(f"no run named {unknown} in the spec")
    return [r for r in spec["runs"] if r["name"] in only]


def run_study(spec_path, only=None, scale=1.0, dataset=None, progress=True, stop_after=None, max_runs=None):
    """Train every unfinished run in spec order; returns the names trained in this call.

    stop_after: end each run after that many epochs in this call (it stays
    'stopped' and resumes next time); max_runs: train at most that many runs."""
    from .train import train
    spec = load_spec(spec_path)
    root = study_dir(spec_path, scale)
    trained = []
    for run in select_runs(spec, only):
        if max_runs is not None and len(trained) >= max_runs:
            break
        config = run_config(spec, run, scale, dataset)
        run_dir = os.path.join(root, "runs", run["name"])
        state = run_state(run_dir, config)
        if state == "finished":
            continue
        print(f"study {spec['name']}: {run['name']} ({state}) -> {run_dir}", flush=True)
        os.makedirs(run_dir, exist_ok=True)
        _record_machine(run_dir, state)
        if run.get("framework", "minires") == "torch":     # E5: the same run in PyTorch (resumes itself)
            from .anchor import train_torch_twin
            train_torch_twin(config, run_dir, progress=progress, stop_after=stop_after)
        else:
            train(config, run_dir, resume=(state == "stopped"), progress=progress, stop_after=stop_after)
        trained.append(run["name"])
    return trained


# ------------------------------------------------------------------ dry run
def measure_images_per_second(model_name, options, num_classes=10, batch_size=128, steps=2):
    """(training images/s, share of the cores this process got) of one model:
    forward, loss, backward, SGD on random 32x32 batches (1 warm-up step, then
    `steps` timed; no data loading or augmentation). A share well below 1
    means other work was running and the speed is pessimistic."""
    import numpy as np

    from . import models, parallel
    from .losses import CrossEntropyLoss
    from .optim import SGD
    runtime.setup()                     # as train() does: otherwise page faults cost a third of a step
    model = models.build(model_name, num_classes, rng=0, **options)
    model.skip_input_grad()             # as train() does
    model.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, num_classes, batch_size)
    crit, opt = CrossEntropyLoss(), SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        crit(model(x), y)
        model.zero_grad()
        model.backward(crit.backward())
        opt.step()
    step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return batch_size * steps / wall, cpu / wall / parallel.get_threads()


def _logged_images_per_second(run_dir):
    from .train import read_log
    speeds = sorted(r["images_per_second"] for r in read_log(run_dir))
    return speeds[len(speeds) // 2] if speeds else None


def dry_run(spec_path, only=None, scale=1.0, dataset=None):
    """One row per run: steps, epochs, state and estimated hours. Speed comes from
    the study's quiet measurement (`minires study speed`) if it has the model,
    else from the run's own log, else from timing a few steps (once per model).
    Hours = training images / speed + test passes (forward only, ~1/3 of a step per image)."""
    from .study_speed import read_speeds, variant_key
    spec = load_spec(spec_path)
    root = study_dir(spec_path, scale)
    quiet = read_speeds(study_dir(spec_path))[1]
    speeds, shares, rows = {}, [], []
    for run in select_runs(spec, only):
        config = run_config(spec, run, scale, dataset)
        run_dir = os.path.join(root, "runs", run["name"])
        train_size, test_size, steps, epochs = _planned_steps(config)
        measured = quiet.get(variant_key(run.get("framework", "minires"), config))
        ips, source = (measured["train_images_per_second"], "quiet") if measured else \
            (_logged_images_per_second(run_dir), "log")
        if ips is None:
            key = (config.model, json.dumps(config.model_options(), sort_keys=True))
            if key not in speeds:
                speeds[key], share = measure_images_per_second(
                    config.model, config.model_options(), num_classes(config.dataset, config.label_mode),
                    config.batch_size)
                shares.append(share)
            ips, source = speeds[key], "timed"
        images = min(steps * config.batch_size, epochs * train_size)
        hours = (images + epochs * test_size / 3) / ips / 3600
        rows.append(dict(name=run["name"], experiments=",".join(run["experiments"]), model=config.model,
                         budget=config.budget, steps=steps, epochs=images / train_size,
                         images_per_second=ips, speed_from=source, hours=hours,
                         state=run_state(run_dir, config), core_share=min(shares, default=None)))
    return rows


def format_dry_run(rows):
    lines = ["| run | experiments | model | budget (R20 epochs) | steps | epochs | img/s | hours | state |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        budget = "-" if r["budget"] is None else f"{r['budget']:g}"
        lines.append(f"| {r['name']} | {r['experiments']} | {r['model']} | {budget} | {r['steps']:,} | "
                     f"{r['epochs']:.2f} | {r['images_per_second']:.0f} ({r['speed_from']}) | "
                     f"{r['hours']:.2f} | {r['state']} |")
    todo = sum(r["hours"] for r in rows if r["state"] != "finished")
    lines.append(f"\n{len(rows)} runs, {sum(r['hours'] for r in rows):.1f} hours in all, "
                 f"{todo:.1f} hours not yet done (CPU: {runtime.cpu_name()}, {os.cpu_count()} cores)")
    share = rows[-1]["core_share"] if rows else None
    if share is not None and share < 0.8:
        lines.append(f"warning: the timing got as little as {share:.0%} of the cores (other work running): "
                     "speeds are pessimistic; time again on a quiet machine")
    return "\n".join(lines)


# ------------------------------------------------------------------ the CLI
def add_study_parser(sub):
    """Register `minires study run|report|speed` on the main parser's subparsers."""
    p = sub.add_parser("study", help="run or report a study: a list of runs in a spec file")
    actions = p.add_subparsers(dest="study_command", required=True)
    r = actions.add_parser("run", help="train the unfinished runs, resuming stopped ones")
    r.add_argument("spec", help="spec file, e.g. studies/cifar10.json")
    r.add_argument("--data-dir", default=None, help="CIFAR folder (sets $MINIRES_DATA for every run)")
    r.add_argument("--only", default=None, help="comma-separated run names")
    r.add_argument("--dry-run", action="store_true", help="list the runs with steps and estimated hours")
    r.add_argument("--scale", type=float, default=1.0, help="multiply every budget and epoch count")
    r.add_argument("--dataset", default=None, choices=["shapes", "cifar10", "cifar100"],
                   help="override the spec's dataset (e.g. shapes, for a smoke test)")
    r.add_argument("--max-runs", type=int, default=None, help="train at most N runs in this sitting")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_study_run)
    r = actions.add_parser("report", help="rebuild REPORT.md and its plots from the run folders")
    r.add_argument("spec")
    r.add_argument("--scale", type=float, default=1.0)
    r.set_defaults(func=cmd_study_report)
    r = actions.add_parser("speed", help="time every model of the spec on this (quiet) machine: the report's "
                                         "time axis (writes <study>/speed.json)")
    r.add_argument("spec")
    r.add_argument("--steps", type=int, default=3, help="timed calls per model (median), after one warm-up")
    r.set_defaults(func=cmd_study_speed)


def cmd_study_run(args):
    if args.scale <= 0:
        raise ValueError(f"--scale must be > 0, got {args.scale}")
    if args.data_dir:
        # run folders record no machine path: the data folder reaches every run
        # (and every resume) through $MINIRES_DATA, set here for this process only
        os.environ["MINIRES_DATA"] = os.path.abspath(args.data_dir)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    if args.dry_run:
        print(format_dry_run(dry_run(args.spec, only, args.scale, args.dataset)))
        return 0
    trained = run_study(args.spec, only, args.scale, args.dataset, progress=not args.no_progress,
                        max_runs=args.max_runs)
    print(f"study: trained {len(trained)} run(s) in this sitting; "
          f"report: minires study report {args.spec}" + (f" --scale {args.scale:g}" if args.scale != 1 else ""))
    return 0


def cmd_study_report(args):
    from .study_report import write_report
    print(f"wrote {write_report(args.spec, args.scale)}")
    return 0


def cmd_study_speed(args):
    from .study_speed import measure_study
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    print(f"wrote {measure_study(args.spec, args.steps)}")
    return 0
