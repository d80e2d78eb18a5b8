"""Pooling modules."""
from .. import functional as F
from ._args import window
from .module import Module, take_cache


class _Pool2d(Module):
    """What max and average pooling share: a window (kernel, stride, padding)
    checked at construction. stride defaults to kernel_size; padding is at
    most half the kernel (as PyTorch requires)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        kernel, _, pad = window(kernel_size, kernel_size if stride is None else stride, padding)
        if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
            raise ValueError(f"padding must be at most half of kernel_size {kernel}, got {pad}")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """x: (N, C, H, W) -> (N, C, OH, OW), the maximum of each window."""

    def forward(self, x):
        out, self._cache = F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout):
        return F.max_pool2d_backward(dout, take_cache(self))


class AvgPool2d(_Pool2d):
    """x: (N, C, H, W) -> (N, C, OH, OW), the mean of each window; zero padding counts."""

    def forward(self, x):
        out, self._cache = F.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout):
        return F.avg_pool2d_backward(dout, take_cache(self))


class GlobalAvgPool2d(Module):
    """x: (N, C, H, W) -> (N, C), the mean over each channel's H*W values."""

    def forward(self, x):
        out, self._cache = F.global_avg_pool2d_forward(x)
        return out

    def backward(self, dout):
        return F.global_avg_pool2d_backward(dout, take_cache(self))
