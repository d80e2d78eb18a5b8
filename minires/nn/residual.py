"""The residual block base: out = post(branch(x) + shortcut(x)).

The input x feeds two branches, so in backward its gradient is the sum of
what each branch sends back: the fork in forward is an add in backward.
"""
from .. import functional as F
from .module import Identity, Module, take_cache


class ResidualBlock(Module):
    """Subclasses build their layers, set self.shortcut (Identity by default)
    and write branch_forward(x) and branch_backward(dout) explicitly.
    post_relu says whether a ReLU follows the add (as in He et al. 2016a)."""

    post_relu = True
    # (conv, batch norm) attribute names where the BN reads the conv's output
    # alone, for fuse_for_inference; a subclass lists its own.
    conv_bn_pairs = ()

    def __init__(self):
        super().__init__()
        self.shortcut = Identity()

    def fusable_pairs(self):
        return self.conv_bn_pairs

    def branch_forward(self, x):
        raise NotImplementedError

    def branch_backward(self, dout):
        raise NotImplementedError

    def forward(self, x):
        if self.post_relu:      # add and ReLU in one pass (F.add_relu_forward)
            out, self._cache = F.add_relu_forward(self.branch_forward(x), self.shortcut(x))
        else:
            out, self._cache = F.add_forward(self.branch_forward(x), self.shortcut(x))
        return out

    @property
    def post_relu_output(self):
        """The output of the last forward (post_relu blocks): its sign is the
        final ReLU's mask, which a hand-written backward of the block needs."""
        return self.__dict__.get("_cache")

    def backward(self, dout):
        backward = F.add_relu_backward if self.post_relu else F.add_backward
        d_branch, d_shortcut = backward(dout, take_cache(self))
        # The fork: x reached the output along both paths, so its gradients add.
        return self.branch_backward(d_branch) + self.shortcut.backward(d_shortcut)
