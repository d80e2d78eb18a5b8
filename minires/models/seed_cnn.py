"""The seed article's "reduced depth" listing, exactly as written.

Despite its name in the article it has no residual connection: it is a
plain VGG-style CNN (conv+ReLU then BN, max pools, two linear layers).
"""
from collections import OrderedDict

from .. import nn
from ..nn.init import as_generator
from .common import check_input, init_like_the_papers, scaled


class SeedCNN(nn.Sequential):
    """x: (N, 3, 32, 32) -> logits (N, num_classes). Needs 32x32 input (its Linear
    expects 64 * 4 * 4 features)."""

    def __init__(self, num_classes=10, width_scale=1.0, hidden=128, dropout=0.5, rng=None):
        rng = as_generator(rng)
        c1, c2, c3 = (scaled(c, width_scale) for c in (16, 32, 64))
        hidden = scaled(hidden, width_scale)

        def conv(cin, cout):
            return nn.Conv2d(cin, cout, 3, padding=1, bias=True, rng=rng)  # "same" padding

        layers = [
            ("conv1", conv(3, c1)), ("relu1", nn.ReLU()), ("bn1", nn.BatchNorm2d(c1)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", conv(c1, c2)), ("relu2", nn.ReLU()), ("bn2", nn.BatchNorm2d(c2)),
            ("conv3", conv(c2, c2)), ("relu3", nn.ReLU()), ("bn3", nn.BatchNorm2d(c2)),
            ("pool2", nn.MaxPool2d(2)),
            ("conv4", conv(c2, c3)), ("relu4", nn.ReLU()), ("bn4", nn.BatchNorm2d(c3)),
            ("conv5", conv(c3, c3)), ("relu5", nn.ReLU()), ("bn5", nn.BatchNorm2d(c3)),
            ("pool3", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c3 * 4 * 4, hidden, rng=rng)), ("relu6", nn.ReLU()),
            ("dropout", nn.Dropout(dropout, rng=rng.spawn(1)[0])),
            ("fc2", nn.Linear(hidden, num_classes, rng=rng)),
        ]
        super().__init__(OrderedDict(layers))
        init_like_the_papers(self, rng)

    def forward(self, x):
        check_input(x, "seed-cnn", size=(32, 32))
        return super().forward(x)


def seed_cnn(num_classes=10, width_scale=1.0, dropout=0.5, rng=None):
    return SeedCNN(num_classes, width_scale, dropout=dropout, rng=rng)
