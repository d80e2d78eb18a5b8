"""ReLU and Dropout modules."""
from .. import functional as F
from ._args import real
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
        # Any real p, NumPy scalars included, kept as a Python float.
        self.p = real(p, "p (the dropout probability)", 0, 1, open_high=True)
        self.rng = as_generator(rng)

    def forward(self, x):
        out, self._cache = F.dropout_forward(x, self.p, self.training, self.rng)
        return out

    def backward(self, dout):
        return F.dropout_backward(dout, take_cache(self))

    def extra_repr(self):
        return f"p={self.p}"
