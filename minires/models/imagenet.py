"""torchvision's ImageNet ResNet-18, unchanged, applied to 32x32 images.

The 7x7 stride-2 stem and the stride-2 max pool shrink a 32x32 image to
8x8 before the first block, and stage 4 works on a single pixel: this is
the "just use the ImageNet ResNet" approach the seed article argues against.
"""
from collections import OrderedDict

from .. import nn
from ..nn.init import as_generator
from .common import check_input, init_like_the_papers, scaled
from .resnet import BasicBlock


class ImageNetResNet18(nn.Sequential):
    def __init__(self, num_classes=10, width_scale=1.0, rng=None):
        rng = as_generator(rng)
        widths = [scaled(c, width_scale) for c in (64, 128, 256, 512)]
        layers = [("conv1", nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False, rng=rng)),
                  ("bn1", nn.BatchNormReLU2d(widths[0])),
                  ("maxpool", nn.MaxPool2d(3, stride=2, padding=1))]
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append((f"layer{i + 1}", nn.Sequential(
                BasicBlock(cin, w, stride, shortcut_option="B", rng=rng),
                BasicBlock(w, w, 1, shortcut_option="B", rng=rng))))
            cin = w
        layers += [("pool", nn.GlobalAvgPool2d()), ("fc", nn.Linear(cin, num_classes, rng=rng))]
        super().__init__(OrderedDict(layers))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "imagenet-resnet-18")
        return super().forward(x)


def imagenet_resnet18(num_classes=10, width_scale=1.0, rng=None):
    return ImageNetResNet18(num_classes, width_scale, rng)
