"""Linear and Flatten."""

from .. import functional as F
from ._args import count
from .init import as_generator, uniform_fan_in
from .module import Module, Parameter, take_cache


class Linear(Module):
    """weight: (M, D), bias: (M,). x: (N, D) -> (N, M)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features = count(in_features, "in_features")
        self.out_features = count(out_features, "out_features")
        rng = as_generator(rng)
        self.weight = Parameter(uniform_fan_in(rng, (out_features, in_features), in_features))
        self.bias = Parameter(uniform_fan_in(rng, (out_features,), in_features)) if bias else None
        self._cache = None

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        out, self._cache = F.linear_forward(x, self.weight.data, b)
        return out

    def backward(self, dout):
        dx, dw, db = F.linear_backward(dout, take_cache(self))
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W); backward restores the shape."""

    def forward(self, x):
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(take_cache(self))
