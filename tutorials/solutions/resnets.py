"""Notebook 05: the backward pass of a whole basic block."""
from minires import functional as F


def basic_block_backward(block, dout):
    # out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); bn1 is BN and ReLU fused
    d = F.relu_backward(dout, block.post_relu_output)   # the ReLU after the add (cached by forward)
    d_branch = block.conv1.backward(block.bn1.backward(block.conv2.backward(block.bn2.backward(d))))
    return d_branch + block.shortcut.backward(d)  # the fork: both paths add up
