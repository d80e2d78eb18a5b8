"""Fully connected layer: out = x @ w.T + b.

The products run with single-threaded BLAS (see minires.parallel): they are
small, and a multi-threaded call would leave BLAS threads spinning.
"""
from typing import NamedTuple

import numpy as np

from ..parallel import single_threaded_blas
from ._checks import as_input, check_dout, check_shape


class LinearCache(NamedTuple):
    x: np.ndarray           # (N, D)
    w: np.ndarray           # (M, D)
    has_bias: bool


def linear_forward(x, w, b=None):
    """x: (N, D), w: (M, D) as PyTorch stores it, b: (M,) or None -> out: (N, M)."""
    x = as_input(x, "x", 2, "N, D")
    w = as_input(w, "w", 2, "M, D", dtype=x.dtype)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w must have shape (M, D) with D = {x.shape[1]} (x's features), got {w.shape}")
    if b is not None:
        b = as_input(b, "b", dtype=x.dtype)
        check_shape(b, "b", (w.shape[0],), "M")
    with single_threaded_blas():
        out = x @ w.T                                 # (N, M)
    if b is not None:
        out += b
    return out, LinearCache(x, w, b is not None)


def linear_backward(dout, cache):
    """dout: (N, M) -> dx: (N, D), dw: (M, D), db: (M,) or None."""
    x, w, has_bias = cache
    dout = check_dout(dout, (x.shape[0], w.shape[0]), x.dtype, "N, M")
    with single_threaded_blas():
        dx = dout @ w                                 # (N, D)
        dw = dout.T @ x                               # (M, D)
    db = dout.sum(axis=0) if has_bias else None       # (M,)
    return dx, dw, db
