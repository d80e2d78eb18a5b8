"""Batch normalisation over (N, H, W) for each channel, as torch.nn.BatchNorm2d.

Training: normalise with the batch's mean and biased variance, and move
the running statistics toward the batch's (the running variance uses the
unbiased estimate, as PyTorch does). Evaluation: normalise with the
running statistics, which makes the layer a fixed per-channel affine map.
"""
from typing import NamedTuple

import numpy as np

from .. import kernels
from ._checks import as_input, check_channel_params, check_dout


class BatchNormCache(NamedTuple):
    x: np.ndarray           # (N, C, H, W)
    mean: np.ndarray        # (C,) float64, the statistics used (batch or running)
    rstd: np.ndarray        # (C,) float64, 1 / sqrt(var + eps)
    gamma: np.ndarray       # (C,)
    beta: np.ndarray        # (C,), only for the fused ReLU's mask
    training: bool
    relu: bool              # a fused BN + ReLU


def _check_params(x, gamma, beta, running_mean, running_var, training):
    """-> x, gamma, beta C-contiguous (the running statistics are updated in place)."""
    x = as_input(x, "x", 4, "N, C, H, W")
    check_channel_params(x.shape[1], "C", gamma, beta, running_mean, running_var)
    if training and not (running_mean.flags.writeable and running_var.flags.writeable):
        raise ValueError("running_mean and running_var must be writeable: training updates them in place")
    return x, np.ascontiguousarray(gamma), np.ascontiguousarray(beta)


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, training,
                        momentum=0.1, eps=1e-5):
    """x: (N, C, H, W); gamma, beta, running_mean, running_var: (C,) -> out: (N, C, H, W).

        xhat = (x - mean) / sqrt(var + eps),   out = gamma * xhat + beta

    with the batch's mean and biased variance in training, the running ones
    in evaluation. In training running_mean and running_var are updated in place:
        running = (1 - momentum) * running + momentum * batch_statistic
    The cache holds x, mean and rstd = 1/sqrt(var + eps); backward recomputes xhat.
    """
    return _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, relu=False)


def _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, relu):
    x, gamma, beta = _check_params(x, gamma, beta, running_mean, running_var, training)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    m = x.shape[0] * x.shape[2] * x.shape[3]           # values per channel
    if training and m < 2:
        raise ValueError(f"batchnorm in training mode needs more than 1 value per channel "
                         f"(N*H*W > 1), got x of shape {x.shape}")
    out, mean, var = kernels.batchnorm_forward(x, gamma, beta, running_mean, running_var, training, eps,
                                               relu)
    if training:
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))  # unbiased, as PyTorch
    return out, BatchNormCache(x, mean, 1.0 / np.sqrt(var + eps), gamma, beta, training, relu)


def batchnorm2d_backward(dout, cache):
    """dout: (N, C, H, W) -> dx: (N, C, H, W), dgamma: (C,), dbeta: (C,).

    dbeta = sum(dout), dgamma = sum(dout * xhat), and with M = N*H*W values
    per channel and dxhat = dout * gamma:
        training:   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        evaluation: dx = rstd * dxhat
    (so in evaluation an inf in x gives an inf dgamma but a finite dx, as in PyTorch).
    In training the mean and variance depend on x, which adds the two
    correction terms; in evaluation they are constants. (The loops are in
    _kernels.pyx; _kernels_ref.batchnorm_backward is the same in NumPy.)
    """
    x, mean, rstd, gamma, beta, training, relu = cache
    dout = check_dout(dout, x.shape, x.dtype, "N, C, H, W")
    return kernels.batchnorm_backward(dout, x, mean, rstd, gamma, beta, training, relu)


def batchnorm2d_output(cache):
    """The output of the forward that made `cache` (N, C, H, W), computed again
    from its input and statistics: bit for bit the same values (the same
    kernel, the same per-channel constants). It lets the layer after a BN keep
    no copy of its input between forward and backward (see nn.recompute)."""
    x, mean, rstd, gamma, beta, training, relu = cache
    return kernels.batchnorm_apply(x, mean, rstd, gamma, beta, relu)


# BN followed by ReLU is the most common pair in a ResNet. Each is a pass or
# two over an activation too big for the CPU's caches, so time goes to
# memory traffic, not arithmetic. Fused, the forward writes max(out, 0)
# directly, and the backward recomputes the ReLU's mask from x (which BN
# keeps anyway) instead of storing and re-reading the output: 9 array
# traversals per step (forward 3 reads + 1 write, backward 4 reads + 1 write)
# instead of 14.
def batchnorm2d_relu_forward(x, gamma, beta, running_mean, running_var, training,
                             momentum=0.1, eps=1e-5):
    """max(batchnorm2d_forward(x, ...), 0) in one pass. Shapes and arguments
    as batchnorm2d_forward; the result equals BN followed by ReLU exactly."""
    return _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, relu=True)


def batchnorm2d_relu_backward(dout, cache):
    """dout: (N, C, H, W) -> dx, dgamma, dbeta, as batchnorm2d_backward applied
    to dout masked where the fused output was 0."""
    return batchnorm2d_backward(dout, cache)
