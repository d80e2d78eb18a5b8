"""Wide ResNet of Zagoruyko & Komodakis 2016: WRN-depth-k (depth = 6n+4).

    conv3x3(3->16)                                   32x32
    stage 1: n pre-activation blocks, 16k channels   32x32
    stage 2: n blocks, 32k channels                  16x16
    stage 3: n blocks, 64k channels                   8x8
    BN-ReLU, global average pool, linear
"""
from collections import OrderedDict

from .. import functional as F
from .. import nn
from ..nn.init import as_generator
from ..nn.module import take_cache
from .common import blocks_per_stage, check_input, conv1x1, conv3x3, init_like_the_papers, scaled, stages


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, plus the shortcut.

    Where the shape changes, the 1x1 projection reads the pre-activated
    input o1 = relu(bn1(x)), as in the authors' code, so the fork sits
    after bn1; otherwise the identity shortcut forks at x itself.
    Each BN-ReLU is one fused layer, nn.BatchNormReLU2d.
    """

    def __init__(self, in_channels, out_channels, stride=1, dropout=0.0, rng=None):
        super().__init__()
        self.bn1 = nn.BatchNormReLU2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride, rng)
        self.bn2 = nn.BatchNormReLU2d(out_channels)
        self.dropout = nn.Dropout(dropout, rng=rng.spawn(1)[0])
        self.conv2 = conv3x3(out_channels, out_channels, 1, rng)
        self.project = in_channels != out_channels or stride != 1
        if self.project:
            self.shortcut = conv1x1(in_channels, out_channels, stride, rng)

    def fusable_pairs(self):
        return (("conv1", "bn2"),)      # bn1 reads the block's input, which also feeds the shortcut

    def forward(self, x):
        o1 = self.bn1(x)
        o2 = nn.conv_bn(self.conv1, self.bn2, o1)      # bn2(conv1(o1)); one pass in inference
        y = self.conv2(self.dropout(o2))
        out, self._cache = F.add_forward(y, self.shortcut(o1) if self.project else x)
        # the convs keep no copies of bn1's and bn2's outputs: the BNs rebuild them for backward
        # (not past an active dropout, nor for a strided shortcut: release_input checks)
        for conv, bn, bn_out in ((self.conv1, self.bn1, o1), (self.conv2, self.bn2, o2)):
            nn.release_input(conv, bn, bn_out)
        if self.project:
            nn.release_input(self.shortcut, self.bn1, o1)
        return out

    def backward(self, dout):
        d_y, d_short = F.add_backward(dout, take_cache(self))
        d = self.dropout.backward(self.conv2.backward(d_y))
        d_o1 = self.conv1.backward(self.bn2.backward(d))
        if self.project:
            d_o1 = d_o1 + self.shortcut.backward(d_short)        # fork at o1
            return self.bn1.backward(d_o1)
        return self.bn1.backward(d_o1) + d_short                 # fork at x


class WideResNet(nn.Sequential):
    def __init__(self, blocks_per_stage, k, num_classes=10, dropout=0.0, width_scale=1.0, rng=None):
        rng = as_generator(rng)
        stem = scaled(16, width_scale)
        widths = [scaled(c * k, width_scale) for c in (16, 32, 64)]
        conv1 = conv3x3(3, stem, 1, rng)
        layers, cin = stages(lambda cin, cout, stride: WideBlock(cin, cout, stride, dropout, rng),
                             stem, widths, blocks_per_stage)
        super().__init__(OrderedDict(
            [("conv1", conv1)] + layers +
            [("bn", nn.BatchNormReLU2d(cin)), ("pool", nn.GlobalAvgPool2d()),
             ("fc", nn.Linear(cin, num_classes, rng=rng))]))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "wrn")
        return super().forward(x)


def wide_resnet(depth=16, k=4, num_classes=10, dropout=0.0, width_scale=1.0, rng=None):
    """WRN-depth-k; depth = 6n+4 (10, 16, 22, 28, 40); dropout inside each block."""
    n = blocks_per_stage(depth, 6, 4, "wrn")
    return WideResNet(n, k, num_classes, dropout, width_scale, rng)
