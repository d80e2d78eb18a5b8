"""Softmax followed by cross-entropy, fused: the gradient is (softmax - target) / N.

The maths as a function pair, like every op here; minires.losses wraps it in
a small stateful object (it keeps the cache between forward and backward)
for training loops, as minires.nn wraps the other ops.
"""
import numpy as np

from ._checks import check_float_array


def _check_labels(labels, n, k):
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer numpy.ndarray of shape (N,), got "
                        f"{type(labels).__name__} {getattr(labels, 'dtype', '')}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape (N,) = ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be in [0, {k}) (K = {k} classes), got values in "
                         f"[{labels.min()}, {labels.max()}]")


def softmax_cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """logits: (N, K), labels: (N,) ints in [0, K) -> (mean loss as float, cache).

    With label smoothing e the target is (1 - e) * onehot + e / K, as in
    torch.nn.functional.cross_entropy.
    """
    check_float_array(logits, "logits", 2, "N, K")
    n, k = logits.shape
    _check_labels(labels, n, k)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    shifted = logits - logits.max(axis=1, keepdims=True)          # (N, K), for stability
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full_like(logits, label_smoothing / k)            # (N, K)
    target[np.arange(n), labels] += 1 - label_smoothing
    loss = -(target * log_probs).sum() / n
    return float(loss), (np.exp(log_probs), target)


def softmax_cross_entropy_backward(dout, cache):
    """dout: a scalar, the upstream gradient d(objective)/d(loss) (1.0 when the
    loss is the objective) -> dlogits: (N, K) = dout * (softmax - target) / N.

    The loss is a scalar, so its upstream gradient is one too; like every other
    backward, this one takes it first and returns the gradient of its input.
    """
    if isinstance(dout, np.ndarray) and dout.ndim == 0:
        dout = dout[()]
    if isinstance(dout, bool) or not isinstance(dout, (int, float, np.floating, np.integer)):
        raise TypeError(f"dout must be a scalar (the loss is one number), got {type(dout).__name__}"
                        f"{' of shape ' + str(dout.shape) if isinstance(dout, np.ndarray) else ''}")
    probs, target = cache
    return probs.dtype.type(dout) * (probs - target) / probs.shape[0]
