"""Model names (the CLI's --model values) -> builders.

    seed-cnn                 the article's plain CNN
    resnet-<depth>           He et al. CIFAR ResNet, depth 6n+2
    plain-<depth>            the same without shortcuts (He et al.'s plain net)
    bottleneck-<depth>       slimmed bottleneck ResNet, depth 9n+2
    wrn-<depth>-<k>          Wide ResNet, depth 6n+4, width factor k
    seed-wide-<depth>        the article's wide block, depth 6n+2
    imagenet-resnet-18       torchvision's ResNet-18 on 32x32 input
    imagenet-resnet-50       torchvision's ResNet-50 on 32x32 input
"""
import re

from ..nn.init import as_generator
from .bottleneck import bottleneck
from .imagenet import imagenet_resnet18, imagenet_resnet50
from .resnet import plain, resnet, seed_wide
from .seed_cnn import seed_cnn
from .wide import wide_resnet

_PATTERNS = [
    (re.compile(r"seed-cnn"), lambda m: (seed_cnn, {})),
    (re.compile(r"resnet-(\d+)"), lambda m: (resnet, {"depth": int(m[1])})),
    (re.compile(r"plain-(\d+)"), lambda m: (plain, {"depth": int(m[1])})),
    (re.compile(r"bottleneck-(\d+)"), lambda m: (bottleneck, {"depth": int(m[1])})),
    (re.compile(r"wrn-(\d+)-(\d+)"), lambda m: (wide_resnet, {"depth": int(m[1]), "k": int(m[2])})),
    (re.compile(r"seed-wide-(\d+)"), lambda m: (seed_wide, {"depth": int(m[1])})),
    (re.compile(r"imagenet-resnet-18"), lambda m: (imagenet_resnet18, {})),
    (re.compile(r"imagenet-resnet-50"), lambda m: (imagenet_resnet50, {})),
]


def available():
    """The standard names; other depths and widths follow the patterns above."""
    return ["seed-cnn", "resnet-20", "resnet-56", "resnet-110", "plain-20", "plain-56",
            "bottleneck-29", "wrn-16-4", "wrn-28-10", "seed-wide-20", "imagenet-resnet-18",
            "imagenet-resnet-50"]


def parse(name):
    """A model name -> (builder, the architecture it names), e.g.
    "wrn-16-4" -> (wide_resnet, {"depth": 16, "k": 4}). The one parser of
    model names (torch_reference and interop use it too)."""
    for pattern, parse_match in _PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return parse_match(m)
    raise ValueError(f"unknown model {name!r}; expected one of {available()} "
                     "(or another depth/width of the same family)")


def build(name, num_classes=10, rng=None, **options):
    """Build a model by name, e.g. build("resnet-20", shortcut="B").

    options go to the family's builder (width_scale, shortcut, dropout, ...).
    The model remembers name and options, so models.save can reload it.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    builder, kwargs = parse(name)
    try:
        model = builder(num_classes=num_classes, rng=as_generator(rng), **kwargs, **options)
    except TypeError as exc:
        raise TypeError(f"bad option for model {name!r}: {exc}") from None
    model.name, model.options = name, dict(num_classes=num_classes, **options)
    return model
