"""torchvision's ImageNet ResNet-18 and ResNet-50, unchanged, applied to 32x32 images.

The 7x7 stride-2 stem and the stride-2 max pool shrink a 32x32 image to
8x8 before the first block, and stage 4 works on a single pixel: this is
the "just use the ImageNet ResNet" approach the seed article argues against.
"""
from collections import OrderedDict

from .. import nn
from ..nn.init import as_generator
from .common import check_input, init_like_the_papers, scaled, stages
from .bottleneck import Bottleneck
from .resnet import BasicBlock


def _stem(width, rng):
    """7x7 stride-2 conv, BN-ReLU, 3x3 stride-2 max pool: 32x32 -> 8x8."""
    return [("conv1", nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False, rng=rng)),
            ("bn1", nn.BatchNormReLU2d(width)),
            ("maxpool", nn.MaxPool2d(3, stride=2, padding=1))]


class ImageNetResNet18(nn.Sequential):
    def __init__(self, num_classes=10, width_scale=1.0, rng=None):
        rng = as_generator(rng)
        widths = [scaled(c, width_scale) for c in (64, 128, 256, 512)]
        layers = _stem(widths[0], rng)
        blocks, cin = stages(lambda cin, cout, stride: BasicBlock(cin, cout, stride, shortcut_option="B", rng=rng),
                             widths[0], widths, 2)
        layers += blocks + [("pool", nn.GlobalAvgPool2d()), ("fc", nn.Linear(cin, num_classes, rng=rng))]
        super().__init__(OrderedDict(layers))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "imagenet-resnet-18")
        return super().forward(x)


def imagenet_resnet18(num_classes=10, width_scale=1.0, rng=None):
    return ImageNetResNet18(num_classes, width_scale, rng)


class ImageNetResNet50(nn.Sequential):
    """torchvision's resnet50: the stem, then 3, 4, 6, 3 bottlenecks (1x1 to
    planes, 3x3 with the stride, 1x1 to 4 * planes: the slimmed Bottleneck
    with div=4) at planes 64, 128, 256, 512, projection shortcuts where the
    shape changes, global average pool, linear from 2048.
    (torchvision names the projection `downsample`; minires calls it `shortcut`.)"""

    def __init__(self, num_classes=10, width_scale=1.0, rng=None):
        rng = as_generator(rng)
        stem = scaled(64, width_scale)
        layers = _stem(stem, rng)
        widths = [4 * scaled(planes, width_scale) for planes in (64, 128, 256, 512)]
        blocks, cin = stages(lambda cin, cout, stride: Bottleneck(cin, cout, stride, rng, div=4),
                             stem, widths, (3, 4, 6, 3))
        layers += blocks + [("pool", nn.GlobalAvgPool2d()), ("fc", nn.Linear(cin, num_classes, rng=rng))]
        super().__init__(OrderedDict(layers))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "imagenet-resnet-50")
        return super().forward(x)


def imagenet_resnet50(num_classes=10, width_scale=1.0, rng=None):
    return ImageNetResNet50(num_classes, width_scale, rng)
