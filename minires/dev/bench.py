"""`minires bench`: training-step and inference speed against PyTorch on the CPU.

Each measurement runs in its own process (`--worker`), so the thread pools of
the two libraries never compete and each process's peak memory (RSS) is its
own. The parent collects JSON from the workers and prints a markdown table.

Inference is timed three ways in each library: the model in eval mode, the
model with batch norm folded into its convolutions (minires's
fuse_for_inference, PyTorch's torch.fx conv-BN fusion), and that folded
model on one image. "% of peak" is against the FMA throughput of the cores
(minires._kernels.fma_flops on every thread), not against a matrix product.
"""
import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

from .. import runtime

DEFAULT_MODELS = ["resnet-20", "resnet-56", "plain-56", "seed-cnn", "bottleneck-29", "wrn-16-4",
                  "imagenet-resnet-18", "imagenet-resnet-50"]
# resnet-20 is measured with option-B shortcuts, PyTorch's usual form.
MODEL_OPTIONS = {"resnet-20": {"shortcut": "B"}}


def median_ms(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2]


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ workers
def _minires_worker(model_name, batch, repeats, breakdown):
    import numpy as np

    from .. import models
    from ..losses import CrossEntropyLoss
    from ..optim import SGD
    from ..summary import totals
    runtime.setup()
    rng = np.random.default_rng(0)
    opts = MODEL_OPTIONS.get(model_name, {})
    model = models.build(model_name, rng=0, **opts)
    model.skip_input_grad()             # as train() does (PyTorch's images do not require grad either)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    opt, crit = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4), CrossEntropyLoss()

    def step():
        loss = crit(model(x), y)
        model.zero_grad()
        model.backward(crit.backward())
        opt.step()
        return loss

    model.train()
    step_ms = median_ms(step, repeats)
    step_rss_mb = _peak_rss_mb()        # before inference adds a folded copy of the weights
    parts = _breakdown(step, model, opt) if breakdown else None
    model.eval(keep_caches=False)
    fused = model.fuse_for_inference()
    return dict(step_ms=step_ms, peak_rss_mb=step_rss_mb, macs=totals(models.build(model_name, rng=0, **opts))[1],
                breakdown=parts,
                **_inference_ms(model, fused, x, repeats))


def _inference_ms(model, fused, x, repeats, no_grad=None):
    """Eval-mode and folded inference on the batch, and folded on its first image
    (more repeats: one image takes milliseconds)."""
    with no_grad() if no_grad else contextlib.nullcontext():
        return dict(infer_ms=median_ms(lambda: model(x), repeats),
                    fused_ms=median_ms(lambda: fused(x), repeats),
                    one_image_ms=median_ms(lambda: fused(x[:1]), max(repeats, 25), warmup=3))


def _breakdown(step, model, opt):
    """Time spent per op type in one step, by wrapping the functions the layers call."""
    from .. import functional as F
    from .. import kernels, parallel
    groups = {
        # the conv kernels run on several threads inside these calls: counted here
        "conv forward": [(F, "conv2d_forward")],
        "conv backward (dx and dw)": [(F, "conv2d_backward")],
        "batchnorm (and fused ReLU)": [(F, n) for n in ("batchnorm2d_forward", "batchnorm2d_backward",
                                                        "batchnorm2d_relu_forward", "batchnorm2d_relu_backward")],
        "relu": [(F, "relu_forward"), (F, "relu_backward")],
        "conv inputs rebuilt (nn.recompute)": [(F, "batchnorm2d_output")],
        "batchnorm inputs rebuilt: convs run again (nn.recompute)": [(F, "conv2d_output")],
        "pooling": [(F, n) for n in ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
                                     "avg_pool2d_backward", "global_avg_pool2d_forward",
                                     "global_avg_pool2d_backward")],
        "residual add (and fused ReLU)": [(F, n) for n in ("add_forward", "add_backward",
                                                           "add_relu_forward", "add_relu_backward")],
        "linear": [(F, "linear_forward"), (F, "linear_backward")],
        "loss": [(F, "softmax_cross_entropy_forward"), (F, "softmax_cross_entropy_backward")],
        "optimizer": [(opt, "step")],
    }
    spent = {g: 0.0 for g in groups}
    inside = {g: 0.0 for g in INSIDE_CONV}
    originals, lock, in_backward = [], threading.Lock(), [False]

    def wrap(owner, name, table, key, marks_backward=False):
        """Add the call's time to table[key] (key may be a function of the moment)."""
        fn = getattr(owner, name)
        originals.append((owner, name, fn))

        def timed(*a, **k):
            if marks_backward:
                in_backward[0] = True
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds = time.perf_counter() - t
                with lock:              # the conv kernels run on several threads at once
                    table[key() if callable(key) else key] += seconds
                if marks_backward:
                    in_backward[0] = False
        setattr(owner, name, timed)

    for group, targets in groups.items():
        for owner, name in targets:
            wrap(owner, name, spent, group, marks_backward=name == "conv2d_backward")
    for name in ("conv_direct_forward", "conv_winograd_forward"):     # in a backward pass they compute dx
        wrap(kernels, name, inside, lambda: "input gradient (dx) kernel" if in_backward[0] else "forward kernel")
    for name in ("conv_direct_backward_weight", "conv_winograd_backward_weight"):
        wrap(kernels, name, inside, "weight gradient (dw) kernel")
    for name in ("im2col", "col2im"):
        wrap(kernels, name, inside, "im2col + col2im (strided convs)")
    try:
        t = time.perf_counter()
        step()
        total = time.perf_counter() - t
    finally:
        for owner, name, fn in reversed(originals):
            setattr(owner, name, fn)
    spent["Python and the rest"] = total - sum(spent.values())
    result = {k: round(v * 1000, 1) for k, v in spent.items()}
    result["inside conv"] = {k: round(v * 1000 / parallel.get_threads(), 1) for k, v in inside.items()}
    return result


# Kernel time inside the conv calls, summed over threads and divided by their
# number: a share of the conv rows above, not more time.
INSIDE_CONV = ("forward kernel", "input gradient (dx) kernel", "weight gradient (dw) kernel",
               "im2col + col2im (strided convs)")


def _torch_worker(model_name, batch, repeats):
    import numpy as np
    import torch

    from ..torch_reference import torch_twin
    model = torch_twin(torch, model_name, MODEL_OPTIONS.get(model_name, {}))
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = torch.tensor(rng.integers(0, 10, batch))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    step_ms = median_ms(step, repeats)
    step_rss_mb = _peak_rss_mb()
    model.eval()
    from torch.fx.experimental.optimization import fuse     # folds each conv-BN pair, as ours
    return dict(step_ms=step_ms, peak_rss_mb=step_rss_mb, torch_version=torch.__version__,
                **_inference_ms(model, fuse(model), x, repeats, torch.no_grad))


# One image takes milliseconds, and this machine's speed moves by 2x over
# seconds: timed in two processes a few seconds apart, single rounds of the
# one-image ratio ranged from 0.43 to 1.48 for one model. This worker loads
# both libraries into one process and alternates single calls (each order in
# turn), so a slow spell slows both sides of a pair; the ratio is the median
# of the pairs' ratios. The libraries then share one OpenMP runtime
# (PyTorch's, loaded first) with its default settings: runtime.setup's wait
# policy and spin count are left out, so minires runs without them
# (resnet-20 on one image, AMD EPYC (Zen 3), 3 processes each: 2.8-3.4 ms
# alone, 3.3-3.9 with PyTorch's runtime loaded first). The allocator
# setting stays, and spares PyTorch too the page faults of its freed
# activations; so does the pin of NumPy's BLAS to one thread, a library
# PyTorch does not call (imagenet-resnet-18, two runs each: 0.96 and 0.95
# without the pin, 0.79 and 0.86 with it, PyTorch's time alike).
# Resnet-20, AMD EPYC (Zen 3), five runs of this worker (without the pin):
# 0.78-0.92, against 0.69-1.32 for six rounds of separate processes of 101
# calls each.
ONE_IMAGE_PAIRS = 101


def _paired_worker(model_name, pairs):
    """Folded inference on one image, minires and PyTorch in this process, calls alternating."""
    import numpy as np
    import torch
    from torch.fx.experimental.optimization import fuse

    from .. import models
    from ..torch_reference import torch_twin
    runtime.setup(wait_policy=None, spin_count=None)     # see above
    opts = MODEL_OPTIONS.get(model_name, {})
    mine = models.build(model_name, rng=0, **opts)
    mine.eval(keep_caches=False)
    mine = mine.fuse_for_inference()
    theirs = fuse(torch_twin(torch, model_name, opts).eval())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    x_torch = torch.tensor(x)
    calls = (lambda: mine(x), lambda: theirs(x_torch))
    times = np.empty((pairs, 2))
    with torch.no_grad():
        for _ in range(3):
            for call in calls:
                call()
        for i in range(pairs):
            for side in ((0, 1) if i % 2 else (1, 0)):
                t = time.perf_counter()
                calls[side]()
                times[i, side] = (time.perf_counter() - t) * 1000
    return dict(one_image_paired=float(np.median(times[:, 0] / times[:, 1])),
                minires_ms=float(np.median(times[:, 0])), torch_ms=float(np.median(times[:, 1])), pairs=pairs)


def _conv_worker(library, repeats):
    """One 3x3 conv, N=128, 16->16 channels, 32x32, forward + backward."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 16, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1
    dout = rng.standard_normal((128, 16, 32, 32)).astype(np.float32)
    if library == "minires":
        from .. import functional as F
        runtime.setup()

        def run():
            out, cache = F.conv2d_forward(x, w, None, 1, 1)
            F.conv2d_backward(dout, cache)
    else:
        import torch
        tx, tw, td = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True), torch.tensor(dout)

        def run():
            torch.nn.functional.conv2d(tx, tw, None, 1, 1).backward(td)
    return dict(conv_ms=median_ms(run, repeats))


def _fma_peak(threads, repeats=5):
    """GFLOP/s of float32 multiply-adds on `threads` threads (the best of repeats)."""
    from .. import kernels
    fma_flops = kernels.load_backend().fma_flops
    fma_flops(1_000_000, threads)           # start the threads and the clocks
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        flops = fma_flops(40_000_000, threads)      # ~0.1 s: long against thread wake-up
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def worker_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--library", choices=["minires", "torch"])
    p.add_argument("--what", choices=["model", "conv", "peak", "epoch", "paired"])
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int)
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--breakdown", action="store_true")
    a = p.parse_args(argv)
    if a.what == "epoch":
        from . import bench_epoch
        epoch = bench_epoch.minires_epoch if a.library == "minires" else bench_epoch.torch_epoch
        result = dict(seconds=epoch(a.model, a.data_dir, a.images, int(os.environ["OMP_NUM_THREADS"])))
    elif a.what == "peak":
        result = dict(gflops=_fma_peak(int(os.environ["OMP_NUM_THREADS"])))
    elif a.what == "paired":
        result = _paired_worker(a.model, a.repeats)
    elif a.what == "conv":
        result = _conv_worker(a.library, a.repeats)
    elif a.library == "minires":
        result = _minires_worker(a.model, a.batch, a.repeats, a.breakdown)
    else:
        result = _torch_worker(a.model, a.batch, a.repeats)
    result.setdefault("peak_rss_mb", _peak_rss_mb())   # the model workers report the steps' peak
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------ parent
def _run_worker(args, threads, package_dir=None):
    """Run a worker with `threads` threads; package_dir: import minires from there
    (the portable build) instead of this one."""
    # `minires bench` ran runtime.setup() in this process: its OpenMP settings
    # (PASSIVE: a one-image PyTorch forward took 3x longer) must not reach the
    # PyTorch workers; minires's workers apply them again themselves
    env = {k: v for k, v in os.environ.items() if k not in runtime.variables_set()}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if package_dir:
        env["PYTHONPATH"] = package_dir
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); from minires.dev.bench import worker_main; "
            "worker_main(sys.argv[2:])") if "torch" in args or "paired" in args else \
        "import sys; from minires.dev.bench import worker_main; worker_main(sys.argv[2:])"
    r = subprocess.run([sys.executable, "-c", code, str(threads), *args], capture_output=True, text=True, env=env,
                       cwd=package_dir)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark worker {args} failed:\n{r.stderr[-2000:]}")


def check_models(names):
    """MiniresError for an unknown model name, before any worker starts."""
    from ..errors import MiniresError
    from ..models.registry import parse
    if not names:
        raise MiniresError("no models to time: name them with --models a,b")
    for name in names:
        try:
            parse(name)
        except ValueError as exc:
            raise MiniresError(str(exc)) from None


TIMES = ("step_ms", "infer_ms", "fused_ms", "one_image_ms", "peak_rss_mb")


def _medians(results):
    """One worker result whose times are the medians over rounds (the rest from the first)."""
    return dict(results[0], **{k: statistics.median([r[k] for r in results]) for k in TIMES if k in results[0]})


def run(models_, batch, repeats, threads, with_torch=True, breakdown=True, portable_dir=None, rounds=1):
    """Each model's minires and torch workers run `rounds` times, alternating, so that a
    slow spell of a shared machine hits both; ratios are the medians of the rounds' ratios."""
    peaks = [_run_worker(["--what", "peak"], threads)["gflops"]]
    rows = []
    for name in models_:
        common = ["--what", "model", "--model", name, "--batch", str(batch), "--repeats", str(repeats)]
        mines, theirs_, paired = [], [], []
        for i in range(rounds):
            extra = ["--breakdown"] if breakdown and i == 0 else []
            mines.append(_run_worker(["--library", "minires", *common] + extra, threads))
            if with_torch:
                theirs_.append(_run_worker(["--library", "torch", *common], threads))
                paired.append(_run_worker(["--what", "paired", "--model", name, "--repeats", str(ONE_IMAGE_PAIRS)],
                                          threads))
        mine = _medians(mines)
        theirs = _medians(theirs_) if with_torch else None
        ratios = {k: statistics.median([m[k] / t[k] for m, t in zip(mines, theirs_)]) for k in TIMES} if with_torch else None
        if with_torch:
            ratios["one_image_paired"] = statistics.median(p["one_image_paired"] for p in paired)
        portable = _run_worker(["--library", "minires", *common], threads, portable_dir) if portable_dir else None
        # forward + backward ~ 3x the forward's MACs, 2 FLOPs per MAC
        gflops = 6 * mine["macs"] * batch / (mine["step_ms"] / 1000) / 1e9
        rows.append(dict(model=name, minires=mine, torch=theirs, ratios=ratios, portable=portable, gflops=gflops,
                         rounds=dict(minires=mines, torch=theirs_, paired=paired)))
    # Measured again at the end, the best of the two: on a shared machine a
    # neighbour can halve one measurement, never double it.
    peaks.append(_run_worker(["--what", "peak"], threads)["gflops"])
    peak = max(peaks)
    for r in rows:
        r["peak_pct"] = 100 * r["gflops"] / peak
    conv = {lib: _run_worker(["--library", lib, "--what", "conv", "--repeats", str(repeats)], threads)["conv_ms"]
            for lib in (["minires", "torch"] if with_torch else ["minires"])}
    from .. import kernels
    return dict(machine=platform.processor() or platform.machine(), cpu_name=runtime.cpu_name(), cpus=os.cpu_count(),
                threads=threads,
                openmp=kernels.load_backend().openmp_enabled(), kernels_module=kernels.module,
                register_tiles=kernels.load_backend().tile_sizes(),
                batch=batch, repeats=repeats, rounds=rounds, fma_peak_gflops=peak, fma_peak_measured=peaks, models=rows,
                single_conv_ms=conv,
                torch_version=rows[0]["torch"]["torch_version"] if with_torch and rows else None,
                date=time.strftime("%Y-%m-%d"))


def to_markdown(res):
    with_torch = any(r["torch"] for r in res["models"])
    portable = any(r.get("portable") for r in res["models"])
    lines = [f"Batch {res['batch']}, float32, {res['threads']} threads, median of {res['repeats']}"
             + (f", ratios the median of {res['rounds']} alternating rounds" if res.get("rounds", 1) > 1 else "")
             + "; "
             f"{res.get('cpu_name') or res['machine']}, {res['cpus']} CPUs; "
             f"FMA peak {res['fma_peak_gflops']:.0f} GFLOP/s on {res['threads']} threads; "
             + (f"torch {res['torch_version']}; " if with_torch else "minires alone (no torch); ")
             + f"{res['date']}.", ""]
    head = ["model", "minires ms/step"]
    if with_torch:
        head += ["torch ms/step", "step ratio", "inference ratio (eval)", "inference ratio (folded)",
                 "one image ratio (folded)", "RSS ratio (step)", "one image ratio (paired in one process)"]
    head += ["minires img/s (eval)", "minires img/s (folded)", "minires ms, one image", "GFLOP/s (step)",
             "% of FMA peak", "minires RSS MB"]
    if portable:
        head += ["portable build ms/step", "portable / native (step)", "portable / native (folded inference)"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in res["models"]:
        m, t, pb = r["minires"], r["torch"], r.get("portable")
        cells = [r["model"], f"{m['step_ms']:.0f}"]
        if with_torch:
            ratio = r.get("ratios") or {k: m[k] / t[k] for k in TIMES}
            paired = ratio.get("one_image_paired")      # (results written before it existed have none)
            cells += ([f"{t['step_ms']:.0f}"] + [f"{ratio[k]:.2f}" for k in TIMES]
                      + [f"{paired:.2f}" if paired is not None else "-"])
        cells += [f"{res['batch'] / m['infer_ms'] * 1000:.0f}", f"{res['batch'] / m['fused_ms'] * 1000:.0f}",
                  f"{m['one_image_ms']:.1f}", f"{r['gflops']:.1f}", f"{r['peak_pct']:.0f}%", f"{m['peak_rss_mb']:.0f}"]
        if portable:
            cells += [f"{pb['step_ms']:.0f}", f"{pb['step_ms'] / m['step_ms']:.2f}",
                      f"{pb['fused_ms'] / m['fused_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    c = res["single_conv_ms"]
    lines += ["", f"Single 3x3 conv, N=128, 16->16, 32x32, forward + backward: minires {c['minires']:.1f} ms"
              + (f", torch {c['torch']:.1f} ms, ratio {c['minires'] / c['torch']:.2f}" if "torch" in c else "")]
    for r in res["models"]:
        if r["minires"].get("breakdown"):
            parts = dict(r["minires"]["breakdown"])
            inside = parts.pop("inside conv", {})
            parts = sorted(parts.items(), key=lambda kv: -kv[1])
            lines += ["", f"Where a {r['model']} step goes (ms): " + ", ".join(f"{k} {v}" for k, v in parts)]
            if inside:
                lines += ["Inside its convs (kernel time over all threads / threads, ms): "
                          + ", ".join(f"{k} {v}" for k, v in inside.items())]
    return "\n".join(lines)


QUICK_MODELS = ["resnet-20", "seed-cnn"]
TORCH_MISSING = ("PyTorch is not installed: timing minires alone. For the PyTorch columns, install it "
                 "into this environment (`pip install torch`, or `.venv/bin/pip install torch`) and run again.")


def torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def add_arguments(p):
    """The options of `minires bench` and `python benchmarks/bench.py` (one list for both)."""
    p.add_argument("--models", default=None,
                   help=f"comma-separated (default {','.join(DEFAULT_MODELS)}; with --quick {','.join(QUICK_MODELS)})")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per measurement, median (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true",
                   help="3 repeats, and resnet-20 and seed-cnn unless --models says otherwise")
    p.add_argument("--no-torch", action="store_true", help="time minires alone")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each model's minires and torch workers this many times, alternating; "
                        "ratios are the medians of the rounds' (default 1)")
    p.add_argument("--epoch", action="store_true",
                   help="time one CIFAR-10 epoch of `minires train` (data, augmentation, steps, evaluation) "
                        "against the same loop in PyTorch with a DataLoader; needs --data-dir")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder for --epoch")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="with --epoch: train on the first N images only (default: all 50,000)")
    p.add_argument("--portable", action="store_true",
                   help="also build the extension without -march=native (MINIRES_NATIVE=0) in a temporary "
                        "folder and time it beside the native one (the build takes a minute or two)")
    p.add_argument("--json", default=None, help="also write the results here")


def run_cli(a):
    """Run the benchmark for parsed options a; prints the table. Returns the exit code."""
    names = [m.strip() for m in (a.models or ",".join(QUICK_MODELS if a.quick else DEFAULT_MODELS)).split(",")
             if m.strip()]
    repeats = a.repeats if a.repeats is not None else (3 if a.quick else 5)
    with_torch = not a.no_torch
    if with_torch and not torch_available():
        print(TORCH_MISSING, flush=True)
        with_torch = False
    check_models(names)
    if a.epoch:
        return _epoch_cli(a, names, with_torch)
    if a.portable:
        with portable_build() as package_dir:
            res = run(names, a.batch, repeats, a.threads, with_torch=with_torch, portable_dir=package_dir,
                      rounds=a.rounds)
    else:
        res = run(names, a.batch, repeats, a.threads, with_torch=with_torch, rounds=a.rounds)
    print(to_markdown(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def _epoch_cli(a, names, with_torch):
    """--epoch: one epoch per model and library, seconds and their ratio."""
    from ..data import load_dataset
    load_dataset("cifar10", a.data_dir)         # a missing or damaged data folder fails here, once
    rows = []
    for name in names:
        args = ["--what", "epoch", "--model", name, "--images", str(a.epoch_images or 50_000)]
        if a.data_dir:
            args += ["--data-dir", a.data_dir]
        mine = _run_worker(["--library", "minires", *args], a.threads)
        theirs = _run_worker(["--library", "torch", *args], a.threads) if with_torch else None
        rows.append(dict(model=name, minires=mine, torch=theirs))
    res = dict(cpu_name=runtime.cpu_name(), threads=a.threads, images=a.epoch_images or 50_000, epochs=rows,
               date=time.strftime("%Y-%m-%d"))
    print(f"One CIFAR-10 epoch end to end ({res['images']:,} training images, batch 128, crop + flip, then the "
          f"10,000 test images), {a.threads} threads; {res['cpu_name']}; {res['date']}.\n")
    print("| model | minires s | torch s | ratio |\n|---|---:|---:|---:|")
    for r in rows:
        t = r["torch"]
        print(f"| {r['model']} | {r['minires']['seconds']:.1f} | "
              + (f"{t['seconds']:.1f} | {r['minires']['seconds'] / t['seconds']:.2f} |" if t else "- | - |"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


@contextlib.contextmanager
def portable_build():
    """A temporary copy of the minires package with its extension built
    MINIRES_NATIVE=0 (no -march=native): the folder to import it from."""
    import shutil
    import tempfile
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(source, "setup.py")):
        from ..errors import MiniresError
        raise MiniresError("--portable needs the minires source tree (setup.py), not an installed wheel")
    with tempfile.TemporaryDirectory(prefix="minires-portable-") as tmp:
        shutil.copy(os.path.join(source, "setup.py"), tmp)
        shutil.copytree(os.path.join(source, "minires"), os.path.join(tmp, "minires"),
                        ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
        print("building the portable extension (MINIRES_NATIVE=0) ...", flush=True)
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp, capture_output=True,
                           text=True, env=dict(os.environ, MINIRES_NATIVE="0"))
        if r.returncode:
            raise RuntimeError(f"the portable build failed:\n{r.stderr[-2000:]}")
        yield tmp


def main(argv=None):
    p = argparse.ArgumentParser(prog="minires bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    a = p.parse_args(argv)
    from ..errors import MiniresError
    try:
        return run_cli(a)
    except MiniresError as exc:
        p.exit(2, f"minires bench: error: {exc}\n")
