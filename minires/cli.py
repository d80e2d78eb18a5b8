"""The `minires` command (also `python -m minires`)."""
import argparse
import os
import sys

DEMO_MODELS = "seed-cnn,resnet-20,bottleneck-11,wrn-10-2,imagenet-resnet-18"

# `minires train --help` ends with this (tests/test_newcomer.py checks it against the builders).
MODELS_HELP = """\
models (--model; other depths and widths of each family work too):
  seed-cnn                  the seed article's plain CNN           --width-scale, --dropout (default 0.5)
  resnet-20, -56, -110      He et al.'s CIFAR ResNet, depth 6n+2   --width-scale, --shortcut A|B
  plain-20, -56             resnet-<d> without its shortcuts       --width-scale
  bottleneck-29             slimmed bottleneck blocks, depth 9n+2  --width-scale, --bottleneck-div
  wrn-16-4, wrn-28-10       Wide ResNet, depth 6n+4, widening k    --width-scale, --dropout (default 0)
  seed-wide-20              the seed article's 4x wide block       --width-scale
  imagenet-resnet-18, -50   torchvision's ImageNet ResNets as is   --width-scale
An option a model does not take is an error. `minires summary --model NAME` shows its layers."""

OVERWRITE_HELP = ("train again the runs in --out whose config.json is another recipe (a finished run of "
                  "this recipe is reused, an unfinished one resumed)")


def _add_recipe(p):
    """Options shared by train and compare; defaults give the papers' CIFAR recipe."""
    p.add_argument("--dataset", default="shapes", choices=["shapes", "cifar10", "cifar100"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: the paper's value per model (1e-4 ResNets and plain nets, 5e-4 WRN and seed-cnn)")
    p.add_argument("--no-decay-bn-bias", action="store_true", help="no weight decay on BN parameters and biases")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "multistep", "onecycle", "constant"])
    p.add_argument("--warmup", type=int, default=0, help="epochs of linear learning-rate warm-up")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="threads for BLAS and the Cython kernels")
    p.add_argument("--data-dir", default=None, help="CIFAR folder or cache (default $MINIRES_DATA or ~/.cache/minires)")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-size", type=int, default=None, help="use only the first N test images")
    p.add_argument("--val-size", type=int, default=0, help="carve a validation split of N images")
    p.add_argument("--label-mode", default="fine", choices=["fine", "coarse"],
                   help="CIFAR-100: 100 fine or 20 coarse classes")
    p.add_argument("--width-scale", type=float, default=1.0, help="multiply every model width")
    p.add_argument("--shortcut", default=None, choices=["A", "B"],
                   help="resnet-<6n+2>: A zero-padded identity (default), B 1x1 conv + BN projection")
    p.add_argument("--dropout", type=float, default=None,
                   help="wrn-<d>-<k> (default 0) and seed-cnn (default 0.5): dropout rate")
    p.add_argument("--time-budget", type=float, default=None, help="minutes per model; stops after that epoch")
    p.add_argument("--budget", type=float, default=None, metavar="R20_EPOCHS",
                   help="training compute in resnet-20 epochs (replaces --epochs; see minires.budget)")
    p.add_argument("--bottleneck-div", type=int, default=None, help="bottleneck-<d>: middle width filters // DIV")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args, model):
    from .train import TrainConfig
    return TrainConfig(model=model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                       weight_decay=args.weight_decay, decay_bn_and_bias=not args.no_decay_bn_bias,
                       schedule=args.schedule, warmup=args.warmup, label_smoothing=args.label_smoothing,
                       augment=not args.no_augment, seed=args.seed, threads=args.threads,
                       data_dir=args.data_dir, train_size=args.train_size, test_size=args.test_size,
                       val_size=args.val_size, label_mode=args.label_mode, width_scale=args.width_scale,
                       time_budget=args.time_budget, budget=args.budget, bottleneck_div=args.bottleneck_div,
                       shortcut=args.shortcut, dropout=args.dropout)


def cmd_train(args):
    from .errors import MiniresError
    from .train import TrainConfig, TrainingDiverged, train
    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise MiniresError("--resume RUN_DIR names the run folder: leave out --out")
        out = args.resume
        print(f"resuming {out}")
    else:
        if not args.model:
            raise MiniresError("train needs --model (or --resume RUN_DIR)")
        args.epochs = TrainConfig.epochs if args.epochs is None else args.epochs
        out = args.out or os.path.join("runs", args.model)
        print(f"training {args.model} on {args.dataset} -> {out}")
    try:
        # With --resume, an option left out (None) keeps the run's own value.
        train(_config(args, args.model), out, resume=bool(args.resume), overwrite=args.overwrite,
              progress=not args.no_progress)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}. {out} keeps the last good checkpoint and best model "
                               "(if an epoch finished); try a lower --lr or some --warmup") from None
    print(f"done: {out}/log.jsonl, {out}/best.npz")


def cmd_compare(args):
    from .compare import compare, report_table
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    results = compare(names, _config(args, names[0]), args.out, progress=not args.no_progress,
                      overwrite=args.overwrite)
    print(report_table(results))
    print(f"\nresults: {args.out}/results.json, {args.out}/report.md")
    print(f"plots:   {args.out}/acc_vs_epoch.png, {args.out}/acc_vs_time.png, {args.out}/acc_vs_params.png")


def cmd_demo(args):
    args.models, args.out = DEMO_MODELS, args.out
    cmd_compare(args)


def cmd_evaluate(args):
    from .evaluate import evaluate_path
    evaluate_path(args.path, args.dataset, args.data_dir, args.out)


def cmd_plot(args):
    from .plots import plot_runs
    print(plot_runs(args.runs, args.out))


def cmd_summary(args):
    from . import models
    from .summary import format_summary
    print(format_summary(models.build(args.model, args.num_classes, rng=0)))


def cmd_gradcheck(args):
    import numpy as np

    from . import models
    from .gradcheck import check_module, randomize_batchnorm
    model = models.build(args.model, rng=args.seed, width_scale=args.width_scale).astype(np.float64)
    randomize_batchnorm(model, np.random.default_rng(args.seed))
    x = np.random.default_rng(args.seed + 1).standard_normal((args.batch, 3, 32, 32))
    ok = True
    for mode in (["train", "eval"] if args.mode == "both" else [args.mode]):
        getattr(model, mode)()
        report = check_module(model, x, max_samples=args.samples, tol=args.tol)
        print(f"\n{args.model} (width x{args.width_scale}), {mode} mode, float64, batch {args.batch}:")
        print(report)
        ok &= report.ok()
    return 0 if ok else 1


def cmd_diagnose(args):
    from .diagnostics import run_cli
    return run_cli(args)


def cmd_bench(args):
    from .dev.bench import run_cli
    return run_cli(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="minires", description="ResNets for 32x32 images, from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model", epilog=MODELS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="e.g. resnet-20, wrn-16-4, seed-cnn (with --resume: the run's)")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a stopped run with its own recipe (--epochs, --time-budget, --threads "
                        "and --data-dir may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (only once the new run has its first checkpoint)")
    _add_recipe(p)
    p.set_defaults(epochs=None)     # None: 10 for a new run, the run's own with --resume
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several models under one recipe and compare them")
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", "--force", action="store_true", help=OVERWRITE_HELP)
    _add_recipe(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="compare five small models on the shapes dataset (about 2 minutes on 2 cores)")
    p.add_argument("--out", default="demo_runs")
    p.add_argument("--overwrite", "--force", action="store_true", help=OVERWRITE_HELP)
    _add_recipe(p)
    # Sized for about 5 minutes on 2 cores: half-width models, 3,000 images, no
    # augmentation (it pays off only in longer runs).
    p.set_defaults(func=cmd_demo, epochs=4, train_size=3000, test_size=1000, width_scale=0.5,
                   batch_size=64, lr=0.05, no_augment=True)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and a confusion matrix")
    p.add_argument("path", metavar="RUN_DIR_OR_FILE")
    p.add_argument("--dataset", default=None, help="default: the run's dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="confusion matrix PNG")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="loss and accuracy curves of runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="PNG file (default: curves.png in the first RUN_DIR)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("summary", help="per-layer table: output shape, params, MACs")
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("gradcheck", help="float64 gradient check of a whole model")
    p.add_argument("--model", required=True)
    p.add_argument("--width-scale", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=8, help="images; batchnorm over a 1x1 map needs several")
    p.add_argument("--samples", type=int, default=3, help="positions checked per array")
    p.add_argument("--mode", default="both", choices=["train", "eval", "both"])
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_gradcheck)

    from .study import add_study_parser
    add_study_parser(sub)

    p = sub.add_parser("diagnose", help="per-layer gradient norms of models at initialisation, plotted")
    p.add_argument("--model", action="append", required=True,
                   help="a model name; repeat to compare (e.g. --model plain-56 --model resnet-56)")
    p.add_argument("--dataset", default="shapes", choices=["shapes", "cifar10", "cifar100"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch", type=int, default=128, help="measure on the first N training images")
    p.add_argument("--seed", type=int, default=0, help="the models' initialisation (as `train --seed`)")
    p.add_argument("--width-scale", type=float, default=1.0)
    p.add_argument("--out", default="gradient_norms.png", help="PNG file")
    p.set_defaults(func=cmd_diagnose)

    from .dev.bench import add_arguments as add_bench_arguments
    p = sub.add_parser("bench", help="speed against PyTorch (same as benchmarks/bench.py)")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def _limit_threads(n):
    # Must happen before numpy loads BLAS: thread pools read these at start-up.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        _limit_threads(args.threads)
    from . import runtime
    runtime.setup()         # the process-wide settings of docs/runtime.md, before any kernel runs
    from .train import TrainingDiverged
    try:
        return args.func(args) or 0
    # What a user can fix: MiniresError (files, folders, arguments; DataError is one),
    # a diverged run, ValueErrors of bad options (models.build), OSErrors (paths).
    except (TrainingDiverged, ValueError, OSError) as exc:
        print(f"minires: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nminires: interrupted; every checkpoint on disk is complete (resume with --resume RUN_DIR)",
              file=sys.stderr)
        return 130
