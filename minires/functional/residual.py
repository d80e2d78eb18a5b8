"""The residual add, out = a + b, where two branches meet, and the add
fused with the ReLU that follows it in a post-activation block."""
from typing import NamedTuple

import numpy as np

from .. import kernels
from ._checks import as_input, check_dout
from .activation import relu_backward


class AddCache(NamedTuple):
    shape: tuple            # the shape of a, b and out
    dtype: np.dtype


def _check_pair(a, b):
    a = as_input(a, "a")
    b = as_input(b, "b", dtype=a.dtype)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got a {a.shape} and b {b.shape}")
    return a, b


def add_forward(a, b):
    """a, b: the same shape (N, C, H, W) -> out: that shape."""
    a, b = _check_pair(a, b)
    return a + b, AddCache(a.shape, a.dtype)


def add_backward(dout, cache):
    """dout -> (da, db). An add copies its gradient to both inputs unchanged.

    Both are the same array: safe because no backward in minires writes
    into its dout (each branch builds new arrays).
    """
    dout = check_dout(dout, cache.shape, cache.dtype, "same as a and b")
    return dout, dout


def add_relu_forward(a, b):
    """a, b: the same shape -> out = max(a + b, 0), in one pass over memory
    instead of two. The cache is out itself: its sign is the ReLU's mask."""
    a, b = _check_pair(a, b)
    out = kernels.add_relu(a, b)
    return out, out


def add_relu_backward(dout, cache):
    """dout -> (da, db): the ReLU's gradient, copied to both inputs of the add."""
    d = relu_backward(dout, cache)
    return d, d
