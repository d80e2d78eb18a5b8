"""The model families written independently in PyTorch, with the same
module names as minires, so weights copy across through state_dict.

minires.interop builds its to_torch twins here (so the module ships with
the package), and the parity tests and the benchmark use it too. torch is
passed in, never imported here, so minires itself never needs it."""
from collections import OrderedDict


def build_torch_models(torch):
    nn = torch.nn
    Fn = torch.nn.functional

    def conv3(cin, cout, s):
        return nn.Conv2d(cin, cout, 3, s, 1, bias=False)

    def proj(cin, cout, s):
        return nn.Sequential(nn.Conv2d(cin, cout, 1, s, 0, bias=False), nn.BatchNorm2d(cout))

    class ShortcutA(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.s, self.before, self.after = s, (cout - cin) // 2, cout - cin - (cout - cin) // 2

        def forward(self, x):
            return Fn.pad(x[:, :, ::self.s, ::self.s], (0, 0, 0, 0, self.before, self.after))

    class Basic(nn.Module):
        def __init__(self, cin, cout, s, option, widen=1):
            super().__init__()
            mid = cout * widen
            self.conv1, self.bn1 = conv3(cin, mid, s), nn.BatchNorm2d(mid)
            self.conv2, self.bn2 = conv3(mid, cout, 1), nn.BatchNorm2d(cout)
            if cin == cout and s == 1:
                self.shortcut = nn.Identity()
            else:
                self.shortcut = ShortcutA(cin, cout, s) if option == "A" else proj(cin, cout, s)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + self.shortcut(x))

    class Plain(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.conv1, self.bn1 = conv3(cin, cout, s), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = conv3(cout, cout, 1), nn.BatchNorm2d(cout)

        def forward(self, x):
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    class Bottle(nn.Module):
        def __init__(self, cin, f, s, div=2):
            super().__init__()
            mid = max(1, f // div)
            self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv2, self.bn2 = conv3(mid, mid, s), nn.BatchNorm2d(mid)
            self.conv3, self.bn3 = nn.Conv2d(mid, f, 1, bias=False), nn.BatchNorm2d(f)
            self.shortcut = proj(cin, f, s) if (cin != f or s != 1) else nn.Identity()

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))

    class Wide(nn.Module):
        def __init__(self, cin, cout, s, p):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3(cin, cout, s)
            self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3(cout, cout, 1)
            self.dropout = nn.Dropout(p)
            self.project = cin != cout or s != 1
            if self.project:
                self.shortcut = nn.Conv2d(cin, cout, 1, s, bias=False)

        def forward(self, x):
            o1 = torch.relu(self.bn1(x))
            y = self.conv2(self.dropout(torch.relu(self.bn2(self.conv1(o1)))))
            return y + (self.shortcut(o1) if self.project else x)

    class GAP(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    def stages(block, widths, n, cin, strides, **kw):
        out = []
        for i, (w, s) in enumerate(zip(widths, strides)):
            blocks = [block(cin, w, s, **kw)] + [block(w, w, 1, **kw) for _ in range(n - 1)]
            out.append((f"layer{i + 1}", nn.Sequential(*blocks)))
            cin = w
        return out, cin

    def resnet(n, widths, classes, option="A", widen=1):
        st, c = stages(Basic, widths, n, widths[0], (1, 2, 2), option=option, widen=widen)
        return nn.Sequential(OrderedDict(
            [("conv1", conv3(3, widths[0], 1)), ("bn1", nn.BatchNorm2d(widths[0])), ("relu", nn.ReLU())]
            + st + [("pool", GAP()), ("fc", nn.Linear(c, classes))]))

    def plain(n, widths, classes):
        st, c = stages(Plain, widths, n, widths[0], (1, 2, 2))
        return nn.Sequential(OrderedDict(
            [("conv1", conv3(3, widths[0], 1)), ("bn1", nn.BatchNorm2d(widths[0])), ("relu", nn.ReLU())]
            + st + [("pool", GAP()), ("fc", nn.Linear(c, classes))]))

    def bottleneck(n, widths, classes, div=2):
        st, c = stages(Bottle, widths, n, widths[0], (1, 2, 2), div=div)
        return nn.Sequential(OrderedDict(
            [("conv1", conv3(3, widths[0], 1)), ("bn1", nn.BatchNorm2d(widths[0])), ("relu", nn.ReLU())]
            + st + [("pool", GAP()), ("fc", nn.Linear(c, classes))]))

    def wrn(n, stem, widths, classes, p=0.0):
        st, c = stages(Wide, widths, n, stem, (1, 2, 2), p=p)
        return nn.Sequential(OrderedDict(
            [("conv1", conv3(3, stem, 1))] + st +
            [("bn", nn.BatchNorm2d(c)), ("relu", nn.ReLU()), ("pool", GAP()), ("fc", nn.Linear(c, classes))]))

    def seed_cnn(c1, c2, c3, hidden, classes, p):
        def conv(a, b):
            return nn.Conv2d(a, b, 3, padding=1)
        return nn.Sequential(OrderedDict([
            ("conv1", conv(3, c1)), ("relu1", nn.ReLU()), ("bn1", nn.BatchNorm2d(c1)), ("pool1", nn.MaxPool2d(2)),
            ("conv2", conv(c1, c2)), ("relu2", nn.ReLU()), ("bn2", nn.BatchNorm2d(c2)),
            ("conv3", conv(c2, c2)), ("relu3", nn.ReLU()), ("bn3", nn.BatchNorm2d(c2)), ("pool2", nn.MaxPool2d(2)),
            ("conv4", conv(c2, c3)), ("relu4", nn.ReLU()), ("bn4", nn.BatchNorm2d(c3)),
            ("conv5", conv(c3, c3)), ("relu5", nn.ReLU()), ("bn5", nn.BatchNorm2d(c3)), ("pool3", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(c3 * 16, hidden)), ("relu6", nn.ReLU()),
            ("dropout", nn.Dropout(p)), ("fc2", nn.Linear(hidden, classes))]))

    def imagenet18(widths, classes):
        st, c = stages(Basic, widths, 2, widths[0], (1, 2, 2, 2), option="B")
        return nn.Sequential(OrderedDict(
            [("conv1", nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)), ("bn1", nn.BatchNorm2d(widths[0])),
             ("relu", nn.ReLU()), ("maxpool", nn.MaxPool2d(3, 2, 1))] + st +
            [("pool", GAP()), ("fc", nn.Linear(c, classes))]))

    def imagenet50(stem, planes, classes):
        layers = [("conv1", nn.Conv2d(3, stem, 7, 2, 3, bias=False)), ("bn1", nn.BatchNorm2d(stem)),
                  ("relu", nn.ReLU()), ("maxpool", nn.MaxPool2d(3, 2, 1))]
        cin = stem
        for i, (p, blocks, s) in enumerate(zip(planes, (3, 4, 6, 3), (1, 2, 2, 2))):
            stage = [Bottle(cin, 4 * p, s, div=4)] + [Bottle(4 * p, 4 * p, 1, div=4) for _ in range(blocks - 1)]
            layers.append((f"layer{i + 1}", nn.Sequential(*stage)))
            cin = 4 * p
        return nn.Sequential(OrderedDict(layers + [("pool", GAP()), ("fc", nn.Linear(cin, classes))]))

    return dict(resnet=resnet, plain=plain, bottleneck=bottleneck, wrn=wrn, seed_cnn=seed_cnn,
                imagenet18=imagenet18, imagenet50=imagenet50)


def torch_twin(torch, name, options):
    """The PyTorch equivalent of models.build(name, **options) (num_classes
    among the options, 10 if absent). The name is parsed by the models'
    registry, and every setting the options leave out takes the minires
    builder's own default, so the two can never disagree."""
    import inspect

    from .models.common import blocks_per_stage, scaled
    from .models.registry import parse
    builder, arch = parse(name)
    a = {k: p.default for k, p in inspect.signature(builder).parameters.items()}
    a.update(arch, **options)
    T, classes = build_torch_models(torch), a["num_classes"]
    sc = lambda c: scaled(c, a["width_scale"])
    family = builder.__name__
    if family == "seed_cnn":
        return T["seed_cnn"](sc(16), sc(32), sc(64), sc(128), classes, a["dropout"])
    if family == "imagenet_resnet18":
        return T["imagenet18"]([sc(64), sc(128), sc(256), sc(512)], classes)
    if family == "imagenet_resnet50":
        return T["imagenet50"](sc(64), [sc(64), sc(128), sc(256), sc(512)], classes)
    cifar = [sc(16), sc(32), sc(64)]
    if family == "resnet":
        return T["resnet"](blocks_per_stage(a["depth"], 6, 2, family), cifar, classes, a["shortcut"])
    if family == "plain":
        return T["plain"](blocks_per_stage(a["depth"], 6, 2, family), cifar, classes)
    if family == "seed_wide":
        return T["resnet"](blocks_per_stage(a["depth"], 6, 2, family), cifar, classes, "A", widen=a["widen"])
    if family == "bottleneck":
        return T["bottleneck"](blocks_per_stage(a["depth"], 9, 2, family), [sc(64), sc(128), sc(256)], classes,
                               a["bottleneck_div"])
    if family == "wide_resnet":
        k = a["k"]
        return T["wrn"](blocks_per_stage(a["depth"], 6, 4, family), sc(16), [sc(16 * k), sc(32 * k), sc(64 * k)],
                        classes, a["dropout"])
    raise ValueError(f"no PyTorch twin for {name!r}")
