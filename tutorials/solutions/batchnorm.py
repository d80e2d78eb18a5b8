"""Notebook 03: the batchnorm backward pass, training and evaluation."""
import numpy as np


def batchnorm_backward(dout, x, gamma, beta, running_mean, running_var, training, eps):
    axes = (0, 2, 3)
    g = gamma[None, :, None, None]
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = running_mean, running_var
    rstd = 1 / np.sqrt(var + eps)[None, :, None, None]
    xhat = (x - mean[None, :, None, None]) * rstd
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * g
    if not training:
        return dxhat * rstd, dgamma, dbeta
    dx = rstd * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    return dx, dgamma, dbeta
