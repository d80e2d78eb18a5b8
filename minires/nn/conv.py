"""Conv2d: a thin module over functional.conv2d_forward / conv2d_backward."""

from .. import functional as F
from ._args import count, window
from .init import as_generator, uniform_fan_in
from .module import Module, Parameter, take_cache
from .recompute import restored


class Conv2d(Module):
    """weight: (F, C, KH, KW), bias: (F,) or absent. x: (N, C, H, W) -> (N, F, OH, OW)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, rng=None):
        super().__init__()
        self.in_channels = count(in_channels, "in_channels")
        self.out_channels = count(out_channels, "out_channels")
        self.kernel_size, self.stride, self.padding = window(kernel_size, stride, padding)
        rng = as_generator(rng)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(uniform_fan_in(rng, (out_channels, in_channels) + self.kernel_size, fan_in))
        self.bias = Parameter(uniform_fan_in(rng, (out_channels,), fan_in)) if bias else None
        self._cache = None

    fused_relu = False      # True after fuse_for_inference folded a BN-ReLU into this conv
    input_grad = True       # False: backward computes dw (and db) only, returns None (Sequential.skip_input_grad)
    kept = None             # after fuse_for_inference, a dict: the fixed weights' kernels (F.conv2d_forward's kept)

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        out, self._cache = F.conv2d_forward(x, self.weight.data, b, self.stride, self.padding, self.fused_relu,
                                            kept=self.kept)
        return out

    def backward(self, dout):
        # restored: the input again, if forward let it go (nn.recompute)
        dx, dw, db = F.conv2d_backward(dout, restored(take_cache(self)), input_grad=self.input_grad)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
                + (", fused_relu=True" if self.fused_relu else ""))
