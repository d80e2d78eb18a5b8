"""Weight initialisation. Every draw comes from an explicit numpy Generator."""
import math

import numpy as np


def as_generator(rng):
    """None -> a fresh unseeded Generator; an int -> a seeded one; a Generator as is."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")
    return rng


def uniform_fan_in(rng, shape, fan_in, dtype=np.float32):
    """PyTorch's default for Conv2d and Linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform with a = sqrt(5) reduces to this bound.)
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def he_normal_fan_out(rng, shape, dtype=np.float32):
    """He et al. 2015, fan-out mode: N(0, 2 / (F * KH * KW)) for a conv weight (F, C, KH, KW)."""
    fan_out = shape[0] * int(np.prod(shape[2:]))
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)).astype(dtype)
