"""Activations computed again in backward instead of kept: training memory.

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

The other direction trades arithmetic for memory: a BN keeps its input x
(the output of the conv before it) to normalise it again in backward. A
bottleneck block's last 1x1 conv widens the block 2x or 4x, so its output
is the block's biggest activation, and a projection shortcut's 1x1 conv
makes one as wide; their BNs let it go (release_output) and their backward
runs the conv's forward again (F.conv2d_output), from the conv's own
cache, bit for bit. imagenet-resnet-50, batch 128: 74 MB less held for
backward (58 in the bottlenecks, 16 in the projections), for 29% more
forward multiply-adds (about a tenth of a training step's).
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


class FromConv(NamedTuple):
    """Stands in a batch norm's cache for the input it let go: a conv's output."""
    conv_cache: tuple       # the ConvCache of the forward that produced the input
    conv: object            # the Conv2d that made it

    def array(self):
        """The input again, (N, C, H, W), by the conv's forward run again.

        Where the conv let its own input go too (a bottleneck's conv3, after
        bn2), that input is rebuilt here, and the conv, whose backward comes
        next, gets it in its cache rather than rebuilding it a second time;
        not if the conv has run forward again since (its cache is another)."""
        cache = restored(self.conv_cache)
        if cache is not self.conv_cache and self.conv.__dict__.get("_cache") is self.conv_cache:
            self.conv._cache = cache
        return F.conv2d_output(cache)


def release_output(bn, conv, conv_out):
    """After bn(conv_out), where conv_out is the output of conv's last forward:
    bn keeps no copy of conv_out, and its backward runs the conv again.

    Does nothing where either layer kept no cache (inference), where bn kept
    something else, or where the conv's cache would not give the output
    again (a bias or a fused ReLU: its cache does not hold the bias)."""
    from .batchnorm import BatchNorm2d
    from .conv import Conv2d
    if not (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d)):
        return
    cache, bn_cache = conv.__dict__.get("_cache"), bn.__dict__.get("_cache")
    if cache is None or bn_cache is None or bn_cache.x is not conv_out:
        return
    if cache.has_bias or cache.relu_out is not None:
        return
    bn._cache = bn_cache._replace(x=FromConv(cache, conv))


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
    """A conv's or a batch norm's cache with its input in place, rebuilt if forward released it."""
    if isinstance(cache.x, (FromBatchNorm, FromConv)):
        return cache._replace(x=cache.x.array())
    return cache
