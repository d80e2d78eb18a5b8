"""The reduced-depth ResNet for CIFAR of He et al. 2016 (depth 6n+2), its
plain twin without shortcuts, and the seed article's wide variant, which
share its layout.

    conv3x3(3->16) BN-ReLU                      32x32
    stage 1: n basic blocks, 16 channels        32x32
    stage 2: n basic blocks, 32 channels        16x16 (stride 2 in the first block)
    stage 3: n basic blocks, 64 channels         8x8
    global average pool, linear
"""
from collections import OrderedDict

from .. import nn
from ..nn.init import as_generator
from .common import blocks_per_stage, check_input, conv3x3, init_like_the_papers, scaled, shortcut, stages


class BasicBlock(nn.ResidualBlock):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    BN-ReLU is one fused layer (nn.BatchNormReLU2d: the same numbers, fewer
    passes over memory).

    widen > 1 makes the first conv widen to widen * out_channels and the
    second return to out_channels (the seed article's wide block).
    """

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels, out_channels, stride=1, shortcut_option="A", widen=1, rng=None):
        super().__init__()
        mid = out_channels * widen
        self.conv1 = conv3x3(in_channels, mid, stride, rng)
        self.bn1 = nn.BatchNormReLU2d(mid)
        self.conv2 = conv3x3(mid, out_channels, 1, rng)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride, shortcut_option, rng)

    def branch_forward(self, x):
        out = nn.conv_bn(self.conv1, self.bn1, x)       # bn1(conv1(x)); one pass in inference
        y = nn.conv_bn(self.conv2, self.bn2, out)
        nn.release_input(self.conv2, self.bn1, out)     # bn1 rebuilds it for backward
        return y

    def branch_backward(self, dout):
        d = self.conv2.backward(self.bn2.backward(dout))
        return self.conv1.backward(self.bn1.backward(d))


class PlainBlock(nn.Sequential):
    """A BasicBlock without its shortcut: conv3x3-BN-ReLU-conv3x3-BN-ReLU.

    He et al. 2016's "plain" networks (their Fig. 6): the same layers and
    parameters as option A, only the identity path is gone, so the gradient
    reaches early layers through every conv of the stack.
    """

    def __init__(self, in_channels, out_channels, stride=1, widen=1, rng=None):
        mid = out_channels * widen
        super().__init__(OrderedDict([
            ("conv1", conv3x3(in_channels, mid, stride, rng)), ("bn1", nn.BatchNormReLU2d(mid)),
            ("conv2", conv3x3(mid, out_channels, 1, rng)), ("bn2", nn.BatchNormReLU2d(out_channels))]))


class CifarResNet(nn.Sequential):
    """Stem, three stages of BasicBlocks (or PlainBlocks), global average pool, linear."""

    def __init__(self, blocks_per_stage, num_classes=10, widths=(16, 32, 64),
                 shortcut_option="A", widen=1, rng=None, block=BasicBlock):
        rng = as_generator(rng)
        opts = dict(widen=widen)
        if block is BasicBlock:     # a plain block has no shortcut to choose
            opts["shortcut_option"] = shortcut_option
        stem = [("conv1", conv3x3(3, widths[0], 1, rng)), ("bn1", nn.BatchNormReLU2d(widths[0]))]
        layers, cin = stages(lambda cin, cout, stride: block(cin, cout, stride, rng=rng, **opts),
                             widths[0], widths, blocks_per_stage)
        super().__init__(OrderedDict(
            stem + layers + [("pool", nn.GlobalAvgPool2d()), ("fc", nn.Linear(cin, num_classes, rng=rng))]))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "resnet")
        return super().forward(x)


def resnet(depth=20, num_classes=10, shortcut="A", width_scale=1.0, rng=None):
    """He et al. 2016's CIFAR ResNet, depth = 6n+2 (8, 14, 20, 32, 44, 56, 110).

    shortcut 'A' (the paper's: subsample and zero-pad, no parameters) or
    'B' (1x1 conv + BN projection). Convs have no bias.
    """
    n = blocks_per_stage(depth, 6, 2, "resnet")
    widths = tuple(scaled(c, width_scale) for c in (16, 32, 64))
    return CifarResNet(n, num_classes, widths, shortcut_option=shortcut, rng=rng)


def plain(depth=20, num_classes=10, width_scale=1.0, rng=None):
    """He et al. 2016's plain network, depth = 6n+2: resnet-<depth> without
    its shortcuts (same parameter count as option A, which has none)."""
    n = blocks_per_stage(depth, 6, 2, "plain")
    widths = tuple(scaled(c, width_scale) for c in (16, 32, 64))
    return CifarResNet(n, num_classes, widths, rng=rng, block=PlainBlock)


def seed_wide(depth=20, num_classes=10, widen=4, width_scale=1.0, rng=None):
    """The seed article's wide block in the resnet-6n+2 layout.

    The first 3x3 conv widens to widen * filters, the second returns to
    filters, BN after each, then the option-A shortcut add and ReLU. The
    article's snippet puts ReLU before BN and adds a 16-channel branch to
    the 3-channel input (it cannot run); this uses the stem and the
    conv-BN-ReLU order of the ResNet paper instead.
    """
    n = blocks_per_stage(depth, 6, 2, "seed-wide")
    widths = tuple(scaled(c, width_scale) for c in (16, 32, 64))
    return CifarResNet(n, num_classes, widths, shortcut_option="A", widen=widen, rng=rng)
