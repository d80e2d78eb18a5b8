"""Every checker passes the reference solution and fails, with its hint,
on a known-wrong implementation."""
import numpy as np
import pytest

from minires import exercises as ex
from tutorials.solutions import backprop, batchnorm, convolution, resnets, routing

SOLUTIONS = [
    (ex.check_linear_backward, backprop.linear_backward),
    (ex.check_relu_backward, backprop.relu_backward),
    (ex.check_softmax_cross_entropy, backprop.softmax_cross_entropy),
    (ex.check_sgd_momentum_step, backprop.sgd_momentum_step),
    (ex.check_conv2d_forward, convolution.conv2d_forward),
    (ex.check_conv2d_backward, convolution.conv2d_backward),
    (ex.check_im2col, convolution.im2col),
    (ex.check_batchnorm_backward, batchnorm.batchnorm_backward),
    (ex.check_max_pool_backward, routing.max_pool_backward),
    (ex.check_dropout, routing.dropout),
    (ex.check_residual_backward, routing.residual_backward),
    (ex.check_basic_block_backward, resnets.basic_block_backward),
]


@pytest.mark.parametrize("checker,solution", SOLUTIONS, ids=[c.__name__ for c, _ in SOLUTIONS])
def test_reference_solution_passes(checker, solution, capsys):
    checker(solution)
    assert "all cases passed" in capsys.readouterr().out


def _relu_in_place(dout, x):
    dout[x <= 0] = 0
    return dout


def _sm_sum(logits, labels):
    loss, d = backprop.softmax_cross_entropy(logits, labels)
    return loss, d * logits.shape[0]


def _bn_eval_with_batch_stats(dout, x, gamma, beta, rm, rv, training, eps):
    return batchnorm.batchnorm_backward(dout, x, gamma, beta, rm, rv, True, eps)


def _bn_no_correction(dout, x, gamma, beta, rm, rv, training, eps):
    dx, dg, db = batchnorm.batchnorm_backward(dout, x, gamma, beta, rm, rv, training, eps)
    if training:
        dx = dout * gamma[None, :, None, None] / np.sqrt(x.var(axis=(0, 2, 3)) + eps)[None, :, None, None]
    return dx, dg, db


def _block_without_shortcut(block, dout):
    from minires import functional as F
    d = F.relu_backward(dout, block.post_relu_output)
    return block.conv1.backward(block.bn1.backward(block.conv2.backward(block.bn2.backward(d))))


def _pool_assign(dout, x, k, s):
    n, c, oh, ow = dout.shape
    dx = np.zeros_like(x)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, -1).argmax(2)
            wi, wj = np.unravel_index(win, (k, k))
            nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
            dx[nn_, cc, i * s + wi, j * s + wj] = dout[:, :, i, j]   # = instead of +=
    return dx


WRONG = [
    (ex.check_linear_backward, lambda d, x, w: (d @ w, x.T @ d, d.sum(0)), "transposed weights"),
    (ex.check_relu_backward, _relu_in_place, "modified in place"),
    (ex.check_softmax_cross_entropy, _sm_sum, "forgot the 1/N"),
    (ex.check_sgd_momentum_step, lambda p, g, v, lr, m, wd: (p - lr * (m * v + lr * (g + wd * p)), m * v + lr * (g + wd * p)),
     "keeps lr out of the velocity"),
    (ex.check_conv2d_forward, lambda x, w, b, s, p: convolution.conv2d_forward(x, w[:, :, ::-1, ::-1], b, s, p),
     "flipped the kernel"),
    (ex.check_conv2d_backward, lambda d, x, w, b, s, p: (lambda r: (r[0], r[1][:, :, ::-1, ::-1], r[2]))(
        convolution.conv2d_backward(d, x, w, b, s, p)), "dw is flipped"),
    (ex.check_im2col, lambda x, kh, kw, s, p: convolution.im2col(x, kh, kw, s, p).T, "transposed"),
    (ex.check_batchnorm_backward, _bn_eval_with_batch_stats, "used batch statistics"),
    (ex.check_batchnorm_backward, _bn_no_correction, "correction terms"),
    (ex.check_max_pool_backward, _pool_assign, "add (+=)"),
    (ex.check_dropout, lambda x, p, t, rng: x * (rng.random(x.shape) >= p) if t else x, "1/(1-p)"),
    (ex.check_residual_backward, lambda d, bb, sb: bb(d), "both branches"),
    (ex.check_basic_block_backward, _block_without_shortcut, "shortcut's gradient is missing"),
]


@pytest.mark.parametrize("checker,wrong,hint", WRONG, ids=[f"{c.__name__}-{h[:12]}" for c, _, h in WRONG])
def test_known_wrong_implementation_fails_with_hint(checker, wrong, hint):
    with pytest.raises(AssertionError) as err:
        checker(wrong)
    assert hint in str(err.value)
