"""Notebook 01: a linear layer, ReLU, softmax cross-entropy, an SGD step."""
import numpy as np


def linear_backward(dout, x, w):
    """out = x @ w.T + b; dout (N, M), x (N, D), w (M, D)."""
    dx = dout @ w          # (N, M) @ (M, D) -> (N, D)
    dw = dout.T @ x        # (M, N) @ (N, D) -> (M, D)
    db = dout.sum(axis=0)  # (M,)
    return dx, dw, db


def relu_backward(dout, x):
    return dout * (x > 0)  # a new array: dout is left alone


def softmax_cross_entropy(logits, labels):
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)            # stability
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(n), labels].mean()
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), labels] -= 1
    return loss, dlogits / n


def sgd_momentum_step(param, grad, velocity, lr, momentum, weight_decay):
    g = grad + weight_decay * param
    velocity = momentum * velocity + g
    return param - lr * velocity, velocity
