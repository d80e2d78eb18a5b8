"""Every distinct convolution of a model, minires against PyTorch, one layer at a time.

Where a model's step ratio hides which layers lose: each conv shape the model
runs (found with forward hooks on one batch) is timed alone, forward and
backward (dx and dw), in both libraries in this one process (every minires
layer, then every PyTorch one), median of the repeats. The last line weighs each shape by how often the model
runs it. PyTorch is required.

    python benchmarks/conv_layers.py resnet-20 --options '{"shortcut": "B"}'
    python benchmarks/conv_layers.py wrn-16-4 --batch 128 --repeats 9
"""
import argparse
import json
from collections import Counter

import numpy as np

from minires import functional as F
from minires import models, nn, runtime
from minires._kernels_ref import output_size
from minires.dev.bench import median_ms


def conv_shapes(model_name, options, batch):
    """Counter of (C, F, H, W, KH, KW, SH, SW, PH, PW): one per conv call of one forward."""
    model = models.build(model_name, rng=0, **options).train()
    seen = Counter()

    def record(conv, x, out):
        seen[(x.shape[1], conv.out_channels, *x.shape[2:], *conv.kernel_size, *conv.stride, *conv.padding)] += 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(record)
    model(np.zeros((2, 3, 32, 32), dtype=np.float32))
    return seen


def layer_arrays(shape, batch, rng):
    """Random x, w and dout for one conv shape (float32)."""
    c, f, h, w, kh, kw, sh, sw, ph, pw = shape
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((f, c, kh, kw)) * 0.1).astype(np.float32)
    oh, ow = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    return x, wt, rng.standard_normal((batch, f, oh, ow)).astype(np.float32)


def time_minires(shape, arrays, repeats):
    """-> (forward, backward) in ms."""
    x, w, dout = arrays
    stride, padding = shape[6:8], shape[8:10]
    _, cache = F.conv2d_forward(x, w, None, stride, padding)
    return (median_ms(lambda: F.conv2d_forward(x, w, None, stride, padding), repeats),
            median_ms(lambda: F.conv2d_backward(dout, cache), repeats))


def time_torch(torch, shape, arrays, repeats):
    """-> (forward, backward: dx and dw) in ms."""
    x, w, dout = (torch.tensor(a) for a in arrays)
    stride, padding = list(shape[6:8]), list(shape[8:10])
    return (median_ms(lambda: torch.nn.functional.conv2d(x, w, None, stride, padding), repeats),
            median_ms(lambda: torch.ops.aten.convolution_backward(
                dout, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, [True, True, False]), repeats))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--options", default="{}", help="the model's build options, as JSON")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=11)
    a = p.parse_args()
    import torch
    threads = runtime.setup()["threads"]
    torch.set_num_threads(threads)
    shapes = conv_shapes(a.model, json.loads(a.options), a.batch)
    rng = np.random.default_rng(0)
    arrays = {shape: layer_arrays(shape, a.batch, rng) for shape in shapes}
    # every minires layer first, then every torch one: PyTorch's OpenMP threads
    # spin for a while after each call, which would slow the minires call after it
    ours = {shape: time_minires(shape, arrays[shape], a.repeats) for shape in shapes}
    theirs = {shape: time_torch(torch, shape, arrays[shape], a.repeats) for shape in shapes}
    print(f"{a.model}, batch {a.batch}, float32, {threads} threads, {runtime.cpu_name()}; ms, median of {a.repeats}")
    print("| conv (C->F, kernel/stride, map) | count | minires fwd | torch fwd | ratio | minires bwd | torch bwd | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    totals = np.zeros(4)
    for shape, count in shapes.items():
        c, f, h, w, kh, kw, sh = shape[:7]
        t = np.array([ours[shape][0], theirs[shape][0], ours[shape][1], theirs[shape][1]])
        totals += count * t
        print(f"| {c}->{f}, {kh}x{kw}/{sh}, {h}x{w} | {count} | {t[0]:.2f} | {t[1]:.2f} | {t[0] / t[1]:.2f} | "
              f"{t[2]:.2f} | {t[3]:.2f} | {t[2] / t[3]:.2f} |")
    print(f"| all, weighted by count | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f} | "
          f"{totals[2]:.1f} | {totals[3]:.1f} | {totals[2] / totals[3]:.2f} |")


if __name__ == "__main__":
    main()
