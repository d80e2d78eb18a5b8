"""The seed article's ResNet of slimmed bottleneck blocks (depth 9n+2).

    conv3x3(3->64) BN ReLU                          32x32
    stage 1: n bottlenecks, 64 filters              32x32
    stage 2: n bottlenecks, 128 filters             16x16
    stage 3: n bottlenecks, 256 filters              8x8
    global average pool, linear

Each block is 1x1 conv to filters//2, 3x3 conv at filters//2, 1x1 conv
back to filters (bottleneck_div=4 narrows the middle to filters//4, the
ratio of torchvision's ResNet-50), BN after each conv, ReLU after the first two BNs and
after the add. The article's snippet applies ReLU before BN and adds a
64-channel branch to the 3-channel input, which cannot run; the stem
and the conv-BN-ReLU order here fix both.
"""
from collections import OrderedDict

from .. import nn
from ..nn.init import as_generator
from .common import (blocks_per_stage, check_input, conv1x1, conv3x3, init_like_the_papers, projection, scaled,
                     stages)


class Bottleneck(nn.ResidualBlock):
    """1x1 (in->mid) BN-ReLU, 3x3 (mid->mid, stride) BN-ReLU, 1x1 (mid->out) BN, add, ReLU.

    BN-ReLU is one fused layer, nn.BatchNormReLU2d. mid = filters // div."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels, filters, stride=1, rng=None, div=2):
        super().__init__()
        mid = max(1, filters // div)
        self.conv1 = conv1x1(in_channels, mid, 1, rng)
        self.bn1 = nn.BatchNormReLU2d(mid)
        self.conv2 = conv3x3(mid, mid, stride, rng)
        self.bn2 = nn.BatchNormReLU2d(mid)
        self.conv3 = conv1x1(mid, filters, 1, rng)
        self.bn3 = nn.BatchNorm2d(filters)
        if in_channels != filters or stride != 1:
            self.shortcut = projection(in_channels, filters, stride, rng)

    def branch_forward(self, x):
        out1 = nn.conv_bn(self.conv1, self.bn1, x)      # bn1(conv1(x)); one pass in inference
        out2 = nn.conv_bn(self.conv2, self.bn2, out1)
        # bn3 keeps none of conv3's wide output: conv3 computes it again (nn.recompute);
        # conv2 and conv3 keep no copy of their inputs: bn1 and bn2 rebuild them for backward
        out = nn.conv_bn(self.conv3, self.bn3, out2, release_output=True)
        nn.release_input(self.conv2, self.bn1, out1)
        nn.release_input(self.conv3, self.bn2, out2)
        return out

    def branch_backward(self, dout):
        d = self.conv3.backward(self.bn3.backward(dout))
        d = self.conv2.backward(self.bn2.backward(d))
        return self.conv1.backward(self.bn1.backward(d))


class BottleneckResNet(nn.Sequential):
    def __init__(self, blocks_per_stage, num_classes=10, widths=(64, 128, 256), rng=None, div=2):
        rng = as_generator(rng)
        stem = [("conv1", conv3x3(3, widths[0], 1, rng)), ("bn1", nn.BatchNormReLU2d(widths[0]))]
        layers, _ = stages(lambda cin, cout, stride: Bottleneck(cin, cout, stride, rng, div),
                           widths[0], widths, blocks_per_stage)
        super().__init__(OrderedDict(
            stem + layers +
            [("pool", nn.GlobalAvgPool2d()), ("fc", nn.Linear(widths[-1], num_classes, rng=rng))]))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "bottleneck")
        return super().forward(x)


def bottleneck(depth=29, num_classes=10, width_scale=1.0, bottleneck_div=2, rng=None):
    """Slimmed-bottleneck ResNet, depth = 9n+2 (11, 20, 29, ...); the middle
    of each block has filters // bottleneck_div channels (the article's 2)."""
    n = blocks_per_stage(depth, 9, 2, "bottleneck")
    if bottleneck_div < 1:
        raise ValueError(f"bottleneck_div must be >= 1, got {bottleneck_div}")
    widths = tuple(scaled(c, width_scale) for c in (64, 128, 256))
    return BottleneckResNet(n, num_classes, widths, rng=rng, div=bottleneck_div)
