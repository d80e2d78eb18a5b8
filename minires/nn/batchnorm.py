"""BatchNorm2d with PyTorch's parameter and buffer names, and BatchNormReLU2d,
the same layer with a ReLU fused onto its output."""
import numpy as np

from .. import functional as F
from ._args import count, real
from .module import Module, Parameter, take_cache
from .recompute import restored


class BatchNorm2d(Module):
    """weight (gamma) and bias (beta): (C,); buffers running_mean, running_var: (C,)
    and num_batches_tracked. x: (N, C, H, W) -> same shape.

    Uses batch statistics when self.training, running statistics otherwise.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        num_features = count(num_features, "num_features")
        # eps > 0 keeps 1/sqrt(var + eps) finite on a constant channel
        if real(eps, "eps", 0) == 0:
            raise ValueError("eps must be > 0, got 0")
        self.num_features, self.eps, self.momentum = num_features, eps, real(momentum, "momentum", 0, 1)
        self.weight = Parameter(np.ones(num_features, dtype=np.float32))
        self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self._cache = None

    fused_relu = False    # True in BatchNormReLU2d: max(out, 0) from the same pass

    def forward(self, x):
        forward = F.batchnorm2d_relu_forward if self.fused_relu else F.batchnorm2d_forward
        out, self._cache = forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            self.training, self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked += 1
        return out

    def backward(self, dout):
        backward = F.batchnorm2d_relu_backward if self.fused_relu else F.batchnorm2d_backward
        # restored: the input again, if forward let it go (nn.recompute)
        dx, dgamma, dbeta = backward(dout, restored(take_cache(self)))
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNormReLU2d(BatchNorm2d):
    """BatchNorm2d then ReLU, in one pass each way (F.batchnorm2d_relu_forward).

    The same numbers as BatchNorm2d followed by ReLU, and the same parameter
    and buffer names, so state_dicts match PyTorch's BatchNorm2d; ReLU has
    no parameters to name.
    """

    fused_relu = True
