"""Functional ops: each a pair ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> gradients``, written by hand side by side."""
from .activation import relu_backward, relu_forward
from .batchnorm import (batchnorm2d_backward, batchnorm2d_forward, batchnorm2d_output, batchnorm2d_relu_backward,
                        batchnorm2d_relu_forward)
from .conv import conv2d_backward, conv2d_batchnorm_eval, conv2d_forward, conv2d_output
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .pooling import (avg_pool2d_backward, avg_pool2d_forward, global_avg_pool2d_backward,
                      global_avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward)
from .residual import add_backward, add_forward, add_relu_backward, add_relu_forward

__all__ = [
    "linear_forward", "linear_backward",
    "conv2d_forward", "conv2d_backward", "conv2d_output", "conv2d_batchnorm_eval",
    "batchnorm2d_forward", "batchnorm2d_backward", "batchnorm2d_output",
    "batchnorm2d_relu_forward", "batchnorm2d_relu_backward",
    "relu_forward", "relu_backward",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "global_avg_pool2d_forward", "global_avg_pool2d_backward",
    "dropout_forward", "dropout_backward",
    "add_forward", "add_backward",
    "add_relu_forward", "add_relu_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
]
