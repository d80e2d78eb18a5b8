"""ReLU: out = max(x, 0); the gradient passes where the output is positive.

NaN follows PyTorch: relu(NaN) = NaN, and its gradient passes where the
output is NaN (the mask is "out <= 0 gives 0", which is false for NaN).
"""
from .. import kernels
from ._checks import as_input, check_dout


def relu_forward(x):
    """x: any shape -> out = max(x, 0). Caches only the output: its sign is the mask."""
    x = as_input(x, "x")
    out = kernels.relu(x)
    return out, out


def relu_backward(dout, cache):
    """dout: same shape as x -> dx = 0 where out <= 0, else dout.

    A new array: dout may be shared with the other branch of a residual fork.
    """
    out = cache
    dout = check_dout(dout, out.shape, out.dtype, "same as x")
    return kernels.relu_grad(dout, out)
