"""fuse_for_inference: fold each batch norm into the convolution before it.

In eval mode a batch norm is a fixed affine map per channel,

    bn(z) = gamma * (z - mean) / sqrt(var + eps) + beta = s * z + t,
    s = gamma / sqrt(var + eps),   t = beta - mean * s,

and a convolution is linear, so bn(conv(x, w, b)) = conv(x, s * w, s * b + t):
one conv computes both, and a pass over the activation disappears. When the
batch norm had a ReLU fused on (BatchNormReLU2d), the conv applies it as it
writes its output (F.conv2d_forward(..., relu=True)).

A module says which of its children pair up (Module.fusable_pairs): the
batch norm must read the conv's output and nothing else may, which only the
module's own forward knows. The folded model is a copy for inference: its
state_dict has conv biases and no batch norms, and it refuses to train. Its
parameters are read-only, fixed for good, so each conv keeps what the
kernels derive from its weights (Winograd's transformed kernels, the
direct kernel's tiled weights, the path each input shape takes) between
calls (Conv2d.kept); to change them, change the original model and fold again.

conv_bn is the same pairing without the copy, for any model in inference
(eval(keep_caches=False)): the conv applies the batch norm to its output as
it writes it (F.conv2d_batchnorm_eval), which saves the pass over the
activation but not the arithmetic, and gives the two layers' numbers exactly.
conv_relu_bn does the same where a ReLU sits between the two (seed-cnn's
conv, ReLU, BN), a stack that no fold can merge: the ReLU is not linear.
"""
import copy

import numpy as np

from .. import functional as F
from .activation import ReLU
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .module import Identity, Parameter
from . import recompute


def conv_bn(conv, bn, x, release_output=False):
    """bn(conv(x)), where bn reads conv's output alone. In inference (both in
    eval mode with keep_caches=False, no forward hooks to show the conv's
    output to) one pass, F.conv2d_batchnorm_eval: the same numbers.
    release_output: when training, bn keeps no copy of conv's output
    (nn.release_output)."""
    if not _one_pass(conv, bn):
        y = conv(x)
        out = bn(y)
        if release_output:
            recompute.release_output(bn, conv, y)
        return out
    return _conv_batchnorm_eval(conv, bn, x)


def conv_relu_bn(conv, relu, bn, x):
    """bn(relu(conv(x))), where relu is a ReLU module and each layer reads the
    one before it alone: in inference one pass, as conv_bn (the conv's epilogue
    applies the ReLU, then the batch norm), with the same numbers."""
    if not (_one_pass(conv, bn) and type(relu).forward is ReLU.forward and _inference(relu)):
        return bn(relu(conv(x)))
    return _conv_batchnorm_eval(conv, bn, x, relu_before=True)


def _one_pass(conv, bn):
    """Plain Conv2d and BatchNorm2d layers, both in inference."""
    return (type(conv).forward is Conv2d.forward and type(bn).forward is BatchNorm2d.forward
            and not conv.fused_relu and _inference(conv) and _inference(bn))


def _conv_batchnorm_eval(conv, bn, x, relu_before=False):
    b = conv.bias.data if conv.bias is not None else None
    return F.conv2d_batchnorm_eval(x, conv.weight.data, b, conv.stride, conv.padding, bn.weight.data,
                                   bn.bias.data, bn.running_mean, bn.running_var, bn.eps, bn.fused_relu,
                                   relu_before)


def _inference(m):
    """Eval mode without kept caches, and no forward hook to show the layer's output to."""
    return not (m.training or m.keep_caches or m._forward_hooks)


def fuse_for_inference(model):
    """A copy of model in eval mode with every declared (Conv2d, BatchNorm2d)
    pair folded into one Conv2d; model itself is unchanged. Outputs equal the
    original's in eval mode within float32 rounding."""
    fused = copy.deepcopy(model).eval(keep_caches=False)
    for module in fused.modules():
        for conv_name, bn_name in module.fusable_pairs():
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d):
                fold(conv, bn)
                module._modules[bn_name] = Identity()    # in its place: Sequential runs children in order
    freeze(fused)
    object.__setattr__(fused, "inference_only", True)
    return fused


def fold(conv, bn):
    """Fold bn's running statistics and affine parameters into conv, in place."""
    dtype = conv.weight.data.dtype
    # float64 for the fold itself: s * w is rounded to float32 once, at the end
    s = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    t = bn.bias.data - bn.running_mean.astype(np.float64) * s
    b = conv.bias.data.astype(np.float64) if conv.bias is not None else 0.0
    conv.weight = Parameter((conv.weight.data * s[:, None, None, None]).astype(dtype))
    conv.bias = Parameter((b * s + t).astype(dtype))
    conv.fused_relu = bn.fused_relu


def freeze(model):
    """Make every parameter of model read-only, and give each conv a dict in
    which to keep what the kernels derive from its weights (F.conv2d_forward's kept)."""
    for p in model.parameters():
        p.data.flags.writeable = False
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.kept = {}
