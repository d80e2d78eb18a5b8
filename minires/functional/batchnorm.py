"""Batch normalisation over (N, H, W) for each channel, as torch.nn.BatchNorm2d.

Training: normalise with the batch's mean and biased variance, and move
the running statistics toward the batch's (the running variance uses the
unbiased estimate, as PyTorch does). Evaluation: normalise with the
running statistics, which makes the layer a fixed per-channel affine map.
"""
import numpy as np

from ._checks import check_float_array, check_shape


def _check_params(x, gamma, beta, running_mean, running_var):
    check_float_array(x, "x", 4, "N, C, H, W")
    c = x.shape[1]
    for name, arr in (("gamma", gamma), ("beta", beta),
                      ("running_mean", running_mean), ("running_var", running_var)):
        check_float_array(arr, name)
        check_shape(arr, name, (c,), "C")


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, training,
                        momentum=0.1, eps=1e-5):
    """x: (N, C, H, W); gamma, beta, running_mean, running_var: (C,) -> out: (N, C, H, W).

    In training mode running_mean and running_var are updated in place:
        running = (1 - momentum) * running + momentum * batch_statistic
    """
    _check_params(x, gamma, beta, running_mean, running_var)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]           # values per channel
    if training:
        if m < 2:
            raise ValueError(f"batchnorm in training mode needs more than 1 value per channel "
                             f"(N*H*W > 1), got x of shape {x.shape}")
        mean = x.mean(axis=axes)                       # (C,)
        var = x.var(axis=axes)                         # (C,), biased
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)          # (C,)
    xhat = (x - mean[:, None, None]) * rstd[:, None, None]     # (N, C, H, W)
    out = xhat * gamma[:, None, None] + beta[:, None, None]
    return out, (xhat, rstd, gamma, training)


def batchnorm2d_backward(dout, cache):
    """dout: (N, C, H, W) -> dx: (N, C, H, W), dgamma: (C,), dbeta: (C,).

    In training the mean and variance depend on x, which adds the two
    correction terms:
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    In evaluation they are constants and dx = dxhat * rstd.
    """
    xhat, rstd, gamma, training = cache
    axes = (0, 2, 3)
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * gamma[:, None, None]
    if not training:
        return dxhat * rstd[:, None, None], dgamma, dbeta
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]
    mean_dxhat = (dbeta * gamma / m)[:, None, None]            # = mean(dxhat) per channel
    mean_dxhat_xhat = (dgamma * gamma / m)[:, None, None]      # = mean(dxhat * xhat)
    dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rstd[:, None, None]
    return dx, dgamma, dbeta
