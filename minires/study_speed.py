"""`minires study speed`: the time axis of a study, measured on a quiet machine.

A run's own log times it on whatever the machine was doing meanwhile (other
runs, benchmarks, a paused process), so its hours do not compare models. This
module times every model variant of a spec once, back to back, and writes
<study dir>/speed.json; `minires study report` converts each run's images
into hours with it:

    hours = (training images / train img/s + test images evaluated / eval img/s) / 3600

Train img/s times forward, loss, backward and the SGD step on random batches
of the run's batch size (no data loading or augmentation, which train() does
in the same thread and which costs a few percent); eval img/s times the
eval-mode forward in batches of 500, as train.evaluate does. Each is the
median of at least `steps` timed calls (and of as many as fill a second)
after one warm-up call. The cores other processes kept busy meanwhile are
recorded (from /proc/stat): the measurement says whether the machine was quiet.
"""
import importlib.util
import json
import os
import platform
import statistics
import time

import numpy as np

from . import parallel, runtime
from .atomic import atomic_write
from .study import load_spec, num_classes, run_config, study_dir

SPEED_FILE = "speed.json"
EVAL_BATCH = 500            # train.evaluate's batch
QUIET_LOAD = 0.1            # other processes busier than this (cores, on average): not a quiet machine


def variant_key(framework, config):
    """What sets a run's speed: framework, model, its options, batch size, classes."""
    return json.dumps([framework, config.model, config.model_options(), config.batch_size,
                       num_classes(config.dataset, config.label_mode)], sort_keys=True)


def spec_variants(spec, scale=1.0):
    """{key: (framework, TrainConfig)} for the distinct variants of a spec, in spec order."""
    out = {}
    for run in spec["runs"]:
        config = run_config(spec, run, scale)
        framework = run.get("framework", "minires")
        out.setdefault(variant_key(framework, config), (framework, config))
    return out


def _median_seconds(call, steps, min_seconds=1.0):
    """(median wall seconds of at least `steps` calls, and of as many as fill
    min_seconds, after one warm-up call; the CPU share of the cores they used)."""
    call()
    walls = []
    c0, t0 = time.process_time(), time.perf_counter()
    while len(walls) < steps or sum(walls) < min_seconds:
        s = time.perf_counter()
        call()
        walls.append(time.perf_counter() - s)
    share = (time.process_time() - c0) / (time.perf_counter() - t0) / parallel.get_threads()
    return statistics.median(walls), share


def _busy_seconds():
    """CPU seconds every process on the machine has used (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def other_load(work):
    """Run work(); return (its result, the cores other processes kept busy
    meanwhile on average, or None where /proc/stat is missing)."""
    busy0, own0, t0 = _busy_seconds(), time.process_time(), time.perf_counter()
    result = work()
    busy1, own1, wall = _busy_seconds(), time.process_time(), time.perf_counter() - t0
    if busy0 is None or busy1 is None:
        return result, None
    return result, max(0.0, (busy1 - busy0) - (own1 - own0)) / wall


def _minires_calls(config, classes, rng):
    """(one training step, one eval forward of EVAL_BATCH images) of a minires model."""
    from . import models
    from .losses import CrossEntropyLoss
    from .optim import SGD, param_groups
    model = models.build(config.model, classes, rng=0, **config.model_options())
    model.skip_input_grad()             # as train() does
    x = rng.standard_normal((config.batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, classes, config.batch_size)
    xe = rng.standard_normal((EVAL_BATCH, 3, 32, 32)).astype(np.float32)
    crit = CrossEntropyLoss()
    opt = SGD(param_groups(model, config.weight_decay, config.decay_bn_and_bias),   # as train() builds it
              lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)

    def step():
        model.train()
        crit(model(x), y)
        model.zero_grad()
        model.backward(crit.backward())
        opt.step()

    def forward():
        model.eval(keep_caches=False)
        model(xe)
    return step, forward


def _torch_calls(config, classes, rng):
    """The same two calls for the model's PyTorch twin (minires.anchor's setup)."""
    from . import models
    from .anchor import TORCH_THREADS, _torch_sgd
    from .interop import import_torch, to_torch
    torch = import_torch()
    torch.set_num_threads(TORCH_THREADS)
    twin = to_torch(models.build(config.model, classes, rng=0, **config.model_options()))
    x = torch.from_numpy(rng.standard_normal((config.batch_size, 3, 32, 32)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, classes, config.batch_size))
    xe = torch.from_numpy(rng.standard_normal((EVAL_BATCH, 3, 32, 32)).astype(np.float32))
    opt = _torch_sgd(torch, twin, config)

    def step():
        twin.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        opt.step()

    def forward():
        twin.eval()
        with torch.no_grad():
            twin(xe)
    return step, forward


def measure_variant(framework, config, steps=3):
    """Train and eval images per second of one variant, and the core share."""
    from .train import with_default_weight_decay
    config = with_default_weight_decay(config)
    classes = num_classes(config.dataset, config.label_mode)
    rng = np.random.default_rng(0)
    step, forward = (_torch_calls if framework == "torch" else _minires_calls)(config, classes, rng)
    step_s, share_t = _median_seconds(step, steps)
    eval_s, share_e = _median_seconds(forward, steps)
    return dict(train_images_per_second=config.batch_size / step_s,
                eval_images_per_second=EVAL_BATCH / eval_s, core_share=min(share_t, share_e))


def measure_study(spec_path, steps=3, progress=print):
    """Time every variant of the spec and write <study dir>/speed.json; returns its path.
    A variant in PyTorch is skipped (and said so) where torch is not installed."""
    runtime.setup()                 # as train() does: the same allocator settings as the runs
    spec = load_spec(spec_path)
    measured = []

    def measure_all():
        for key, (framework, config) in spec_variants(spec).items():
            if framework == "torch" and importlib.util.find_spec("torch") is None:
                progress(f"skipped {config.model} ({framework}): PyTorch is not installed")
                continue
            row = dict(framework=framework, model=config.model, options=config.model_options(),
                       batch_size=config.batch_size, key=key, **measure_variant(framework, config, steps))
            progress(f"{config.model} ({framework}) {config.model_options() or ''}: "
                     f"train {row['train_images_per_second']:.0f} img/s, "
                     f"eval {row['eval_images_per_second']:.0f} img/s, core share {row['core_share']:.2f}")
            measured.append(row)
    _, load = other_load(measure_all)
    quiet = load is not None and load < QUIET_LOAD
    if load is None:
        progress("warning: cannot read /proc/stat: whether the machine was quiet is unknown")
    elif not quiet:
        progress(f"warning: other processes kept {load:.2f} cores busy meanwhile: the machine was not quiet")
    record = dict(cpu=runtime.cpu_name(), cores=os.cpu_count(), threads=parallel.get_threads(),
                  versions=_versions(), date=time.strftime("%Y-%m-%d %H:%M"), quiet=quiet, other_load=load,
                  command=f"minires study speed {spec_path} --steps {steps}", variants=measured)
    root = study_dir(spec_path)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, SPEED_FILE)
    with atomic_write(path, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    return path


def _versions():
    out = dict(python=platform.python_version(), numpy=np.__version__)
    if importlib.util.find_spec("torch") is not None:
        import torch
        out["torch"] = torch.__version__
    return out


def read_speeds(root):
    """speed.json of a study folder as (record, {variant key: row}), or (None, {})."""
    path = os.path.join(root, SPEED_FILE)
    if not os.path.exists(path):
        return None, {}
    with open(path) as f:
        record = json.load(f)
    return record, {r["key"]: r for r in record["variants"]}
