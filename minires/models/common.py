"""Pieces shared by the model families: shortcuts, scaling, initialisation."""
import numpy as np

from .. import nn
from ..nn.init import he_normal_fan_out


def scaled(channels, width_scale):
    """Channel count times width_scale, at least 1 (tests build tiny models)."""
    return max(1, int(round(channels * width_scale)))


def conv3x3(cin, cout, stride, rng):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng)


def conv1x1(cin, cout, stride, rng):
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False, rng=rng)


class Projection(nn.Sequential):
    """Shortcut option B: 1x1 conv (with the block's stride) + BN, named 0 and 1 as
    PyTorch's Sequential. The BN keeps no copy of the conv's output: the conv
    runs again in its backward (nn.recompute; a 1x1 conv is one product)."""

    def forward(self, x):
        return nn.conv_bn(self[0], self[1], x, release_output=True)


def projection(cin, cout, stride, rng):
    return Projection(conv1x1(cin, cout, stride, rng), nn.BatchNorm2d(cout))


class ShortcutA(nn.Module):
    """Shortcut option A of He et al. 2016: no parameters.

    Subsample by the stride, then zero-pad the channels from C_in to C_out.
    x: (N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s)).
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x):
        s = self.stride
        sub = x[:, :, ::s, ::s]                                     # (N, C_in, H', W')
        self._cache = x.shape
        return np.pad(sub, ((0, 0), (self.pad_before, self.pad_after), (0, 0), (0, 0)))

    def backward(self, dout):
        shape = nn.module.take_cache(self)
        dx = np.zeros(shape, dtype=dout.dtype)
        c_in = shape[1]
        # The padded channels were constants: their gradient goes nowhere.
        dx[:, :, ::self.stride, ::self.stride] = dout[:, self.pad_before:self.pad_before + c_in]
        return dx


def shortcut(cin, cout, stride, option, rng):
    """Identity when shapes match, else option 'A' (pad) or 'B' (projection)."""
    if cin == cout and stride == 1:
        return nn.Identity()
    if option == "A":
        return ShortcutA(cin, cout, stride)
    if option == "B":
        return projection(cin, cout, stride, rng)
    raise ValueError(f"shortcut must be 'A' or 'B', got {option!r}")


def init_like_the_papers(model, rng):
    """He-normal (fan-out) conv weights, BN gamma 1 and beta 0 (BatchNorm2d's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = he_normal_fan_out(rng, m.weight.data.shape, m.weight.data.dtype)
            m.weight.grad = np.zeros_like(m.weight.data)
    return model


def check_input(x, name, size=None):
    """Models take (N, 3, H, W) float images; some need exactly 32x32."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects images of shape (N, 3, H, W), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if size is not None and x.shape[2:] != size:
        raise ValueError(f"{name} expects images of shape (N, 3, {size[0]}, {size[1]}), got {x.shape}")


def stages(make_block, cin, widths, count, first_stride=1):
    """The stages of a ResNet: [("layer1", Sequential), ...] and the last width.

    Stage i turns its input width into widths[i]: a first block that changes
    the width (stride first_stride in stage 1, 2 after it: the map halves),
    then count - 1 blocks that keep it. make_block(cin, cout, stride) builds
    one block; count (blocks per stage) is an int or one per stage.
    """
    layers = []
    for i, width in enumerate(widths):
        n = count if isinstance(count, int) else count[i]
        blocks = [make_block(cin, width, first_stride if i == 0 else 2)]
        blocks += [make_block(width, width, 1) for _ in range(n - 1)]
        layers.append((f"layer{i + 1}", nn.Sequential(*blocks)))
        cin = width
    return layers, cin


def blocks_per_stage(depth, per_block, offset, family):
    """Blocks per stage n of a depth = per_block * n + offset network (ValueError naming the family)."""
    if depth < per_block + offset or (depth - offset) % per_block:
        raise ValueError(f"{family} depth must be {per_block}n+{offset} with n >= 1, got {depth}")
    return (depth - offset) // per_block
