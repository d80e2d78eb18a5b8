"""Winograd F(2x2, 3x3) against the direct kernels, layer by layer: the
evidence behind functional/_conv_paths.py's WINOGRAD_CHANNELS.

For stride-1, padding-1 3x3 convs of the CIFAR ResNets' shapes, batch 128,
on all threads:
1. Error: each float32 kernel against the float64 direct convolution, as a
   fraction of the largest float64 value (forward output and weight
   gradient); the parity tests allow 1e-4 relative.
2. Time: the forward (the input gradient is the same kernel on dout) and
   the weight gradient, Winograd / direct, median of the repeats.

    python benchmarks/winograd_layers.py [--repeats 7]
"""
import argparse

import numpy as np

from minires import kernels, parallel, runtime
from minires.functional import _conv_paths
from minires.dev.bench import median_ms

# (C, F, H=W, where it runs)
LAYERS = [(16, 16, 32, "resnet-20 stage 1"), (32, 32, 16, "resnet-20 stage 2"), (64, 64, 8, "resnet-20 stage 3"),
          (32, 32, 32, "seed-wide-20 stage 1"), (64, 64, 32, "wrn-16-4 stage 1"),
          (128, 128, 16, "wrn-16-4 stage 2"), (256, 256, 8, "wrn-16-4 stage 3")]


GEOMETRY = (3, 3, 1, 1, 1, 1)       # KH, KW, SH, SW, PH, PW


def direct_forward(x, w):
    return _conv_paths._direct_forward(x, w, GEOMETRY, None, False)


def winograd_forward(x, w):
    return _conv_paths._winograd_forward(x, w, GEOMETRY, None, False)


def direct_weight(x, dout):
    return sum(parallel.map_chunks(
        lambda lo, hi: kernels.conv_direct_backward_weight(x[lo:hi], dout[lo:hi], *GEOMETRY), len(x)))


def winograd_weight(x, dout):
    return sum(parallel.map_chunks(lambda lo, hi: kernels.conv_winograd_backward_weight(x[lo:hi], dout[lo:hi]),
                                   len(x)))


def relative_error(got, exact):
    return float(np.abs(got - exact).max() / np.abs(exact).max())


def measure(c, f, hw, batch, repeats, rng):
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    dout = rng.standard_normal((batch, f, hw, hw)).astype(np.float32)
    x64, w64, d64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    out64, dw64 = direct_forward(x64, w64), direct_weight(x64, d64)
    row = {"error direct": relative_error(direct_forward(x, w), out64),
           "error Winograd": relative_error(winograd_forward(x, w), out64),
           "dw error direct": relative_error(direct_weight(x, dout), dw64),
           "dw error Winograd": relative_error(winograd_weight(x, dout), dw64)}
    for name, fn, args in [("forward direct", direct_forward, (x, w)), ("forward Winograd", winograd_forward, (x, w)),
                           ("dw direct", direct_weight, (x, dout)), ("dw Winograd", winograd_weight, (x, dout))]:
        row[name] = median_ms(lambda: fn(*args), repeats)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    runtime.setup()
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, float32, {parallel.get_threads()} threads; errors relative to the largest "
          f"float64 value; ms, median of {args.repeats}")
    print("| layer (C->F, HxW) | error direct / Winograd | dw error direct / Winograd | forward direct ms | "
          "forward Winograd ms | ratio | dw direct ms | dw Winograd ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, f, hw, where in LAYERS:
        r = measure(c, f, hw, args.batch, args.repeats, rng)
        print(f"| {c}->{f}, {hw}x{hw} ({where}) | {r['error direct']:.1e} / {r['error Winograd']:.1e} | "
              f"{r['dw error direct']:.1e} / {r['dw error Winograd']:.1e} | {r['forward direct']:.2f} | "
              f"{r['forward Winograd']:.2f} | {r['forward Winograd'] / r['forward direct']:.2f} | "
              f"{r['dw direct']:.2f} | {r['dw Winograd']:.2f} | {r['dw Winograd'] / r['dw direct']:.2f} |")


if __name__ == "__main__":
    main()
