"""ReLU: out = max(x, 0); the gradient passes where the output is positive."""
import numpy as np

from ._checks import check_float_array


def relu_forward(x):
    """x: any shape -> out: same shape. Caches only the output (its sign is the mask)."""
    check_float_array(x, "x")
    out = np.maximum(x, 0)
    return out, out


def relu_backward(dout, cache):
    """dout: same shape as x -> dx. Builds a new array: dout may be shared at a fork."""
    out = cache
    return np.where(out > 0, dout, 0).astype(dout.dtype, copy=False)
