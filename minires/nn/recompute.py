"""A conv's input computed again in backward instead of kept: training memory.

A conv keeps its input x until backward, where the weight gradient needs it.
When x is the output of the batch norm (+ ReLU) just before the conv, that
BN keeps its own input and statistics anyway, and from them
F.batchnorm2d_output computes x again, bit for bit, in one pass over memory.
So once such a pair has run forward, the conv lets x go and keeps a note of
where to get it; its backward (which runs before the BN's) rebuilds x.

Between forward and backward a model then holds one activation less for each
conv that follows a BN: a third of a basic block's activations, half of a
plain net's. The price is one elementwise pass per such conv in backward.
(PyTorch keeps both arrays.)
"""
from typing import NamedTuple

import numpy as np

from .. import functional as F


class FromBatchNorm(NamedTuple):
    """Stands in a conv's cache for the input it let go."""
    bn_cache: tuple         # the BatchNormCache of the forward that produced the input
    shape: tuple            # the shape the conv kept it in: (N, C, H, W), or (N, C, H*W) for a 1x1 conv

    def array(self):
        """The input again, in the shape the conv kept."""
        return F.batchnorm2d_output(self.bn_cache).reshape(self.shape)


def release_input(conv, bn, bn_out):
    """After conv(bn_out), where bn_out is the output of bn's last forward: conv
    keeps no copy of bn_out, and its backward gets it from bn's cache.

    Does nothing where that would not be exact or would save nothing: when
    either layer kept no cache (inference), or when the conv kept something
    other than bn_out itself or a reshaped view of it (a layer in between,
    such as an active dropout, or a strided 1x1 conv, which keeps its
    subsampled input)."""
    from .batchnorm import BatchNorm2d
    from .conv import Conv2d
    if not (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d)):
        return
    cache, bn_cache = conv.__dict__.get("_cache"), bn.__dict__.get("_cache")
    if cache is None or bn_cache is None or not isinstance(cache.x, np.ndarray):
        return
    if not (cache.x is bn_out or cache.x.base is bn_out):
        return
    conv._cache = cache._replace(x=FromBatchNorm(bn_cache, cache.x.shape))


def restored(cache):
    """A conv cache with its input in place, rebuilt if forward released it."""
    if isinstance(cache.x, FromBatchNorm):
        return cache._replace(x=cache.x.array())
    return cache
