"""Inverted dropout: zero each unit with probability p, scale survivors by 1/(1-p)."""
import numbers
from typing import NamedTuple, Optional

import numpy as np

from ._checks import as_input, check_dout


class DropoutCache(NamedTuple):
    mask: Optional[np.ndarray]      # same shape as x, 0 or 1/(1-p); None when dropout is the identity
    shape: tuple                    # x's shape
    dtype: np.dtype                 # x's dtype


def check_probability(p):
    """p: any real number in [0, 1), Python or NumPy (not a bool, not NaN)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    return float(p)


def dropout_forward(x, p, training, rng):
    """x: any shape -> out: same shape.

    p in [0, 1); training False (or p = 0) makes it the identity. rng is a
    numpy.random.Generator: the only source of randomness.
    """
    x = as_input(x, "x")
    p = check_probability(p)
    if not training or p == 0:
        return x, DropoutCache(None, x.shape, x.dtype)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    # Scaling at train time keeps the expected activation equal to eval mode's.
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, DropoutCache(mask, x.shape, x.dtype)


def dropout_backward(dout, cache):
    """dout: same shape as x -> dx: the same mask (and scale) applied to the gradient."""
    dout = check_dout(dout, cache.shape, cache.dtype, "same as x")
    return dout if cache.mask is None else dout * cache.mask
