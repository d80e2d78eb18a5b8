"""Notebook 04: max-pool routing, inverted dropout, the residual fork."""
import numpy as np


def max_pool_backward(dout, x, kernel_size, stride):
    n, c, oh, ow = dout.shape
    dx = np.zeros_like(x)
    k = kernel_size
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]   # (N, C, k, k)
            flat = window.reshape(n, c, -1).argmax(axis=2)                          # winner per (n, c)
            wi, wj = np.unravel_index(flat, (k, k))
            nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
            np.add.at(dx, (nn_, cc, i * stride + wi, j * stride + wj), dout[:, :, i, j])
    return dx


def dropout(x, p, training, rng):
    if not training or p == 0:
        return x
    mask = (rng.random(x.shape) >= p) / (1 - p)
    return x * mask


def residual_backward(dout, branch_backward, shortcut_backward):
    return branch_backward(dout) + shortcut_backward(dout)
