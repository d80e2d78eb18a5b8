"""Inverted dropout: zero each unit with probability p, scale survivors by 1/(1-p)."""
import numpy as np

from ._checks import check_float_array


def dropout_forward(x, p, training, rng):
    """x: any shape -> out: same shape.

    p in [0, 1); training False (or p = 0) makes it the identity. rng is a
    numpy.random.Generator: the only source of randomness.
    """
    check_float_array(x, "x")
    if not (isinstance(p, (float, int)) and 0 <= p < 1):
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    if not training or p == 0:
        return x, None
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    # Scaling at train time keeps the expected activation equal to eval mode's.
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dout, cache):
    """dout -> dx: the same mask (and scale) applied to the gradient."""
    mask = cache
    return dout if mask is None else dout * mask
