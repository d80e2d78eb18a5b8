"""Loss objects over the functional loss (minires.functional.loss).

Two files because they are two layers, as for every op: functional/loss.py
is the maths (forward and backward as functions of arrays and a cache);
this is the stateful wrapper a training loop holds, which keeps the cache
between crit(logits, labels) and crit.backward().
"""
from . import functional as F


class CrossEntropyLoss:
    """Softmax cross-entropy, mean over the batch. loss = crit(logits, labels);
    dlogits = crit.backward()."""

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing
        self._cache = None

    def __call__(self, logits, labels):
        loss, self._cache = F.softmax_cross_entropy_forward(logits, labels, self.label_smoothing)
        return loss

    def backward(self, dout=1.0):
        """dout: d(objective)/d(loss), 1.0 when the loss is the objective -> dlogits (N, K)."""
        return F.softmax_cross_entropy_backward(dout, self._cache)
