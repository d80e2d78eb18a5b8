"""ReLU: out = max(x, 0); the gradient passes where the output is positive."""
from .. import kernels
from ._checks import check_float_array


def relu_forward(x):
    """x: any shape -> out = max(x, 0). Caches only the output: its sign is the mask."""
    check_float_array(x, "x")
    out = kernels.relu_forward(x)
    return out, out


def relu_backward(dout, cache):
    """dout: same shape as x -> dx = dout where out > 0, else 0.

    A new array: dout may be shared with the other branch of a residual fork.
    """
    return kernels.relu_backward(dout, cache)
