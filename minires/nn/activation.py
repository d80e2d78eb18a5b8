"""ReLU and Dropout modules."""
from .. import functional as F
from .init import as_generator
from .module import Module, take_cache


class ReLU(Module):
    """Elementwise max(x, 0). One instance per use: it caches its last output."""

    def forward(self, x):
        out, self._cache = F.relu_forward(x)
        return out

    def backward(self, dout):
        return F.relu_backward(dout, take_cache(self))


class Dropout(Module):
    """Inverted dropout with probability p, active only in training mode.

    self.rng is this layer's own Generator, so a checkpoint can save and
    restore its state and a resumed run draws the same masks.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
        self.p = p
        self.rng = as_generator(rng)

    def forward(self, x):
        out, mask = F.dropout_forward(x, self.p, self.training, self.rng)
        self._cache = (mask,)           # a tuple: the mask is None in eval mode
        return out

    def backward(self, dout):
        (mask,) = take_cache(self)
        return F.dropout_backward(dout, mask)

    def extra_repr(self):
        return f"p={self.p}"
