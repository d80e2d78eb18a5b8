"""Loss modules over the functional loss."""
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

    def backward(self):
        return F.softmax_cross_entropy_backward(self._cache)
