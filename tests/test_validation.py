"""Bad input: a ValueError/TypeError that names the argument and what was expected."""
import numpy as np
import pytest

import minires.functional as F

x4 = np.zeros((2, 3, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.conv2d_forward(np.zeros((3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32)),
     ValueError, r"x must have shape \(N, C, H, W\)"),
    (lambda: F.conv2d_forward(x4, np.zeros((4, 2, 3, 3), np.float32)), ValueError, "C = 3"),
    (lambda: F.conv2d_forward(x4, np.zeros((4, 3, 11, 3), np.float32)), ValueError, "larger than the padded input"),
    (lambda: F.conv2d_forward(x4.astype(np.int64), np.zeros((4, 3, 3, 3))), TypeError, "x must have dtype float32 or float64"),
    (lambda: F.conv2d_forward(x4, np.zeros((4, 3, 3, 3), np.float64)), TypeError, "w has dtype float64"),
    (lambda: F.conv2d_forward(x4, np.zeros((4, 3, 3, 3), np.float32), np.zeros(5, np.float32)), ValueError, r"b must have shape \(F\)"),
    (lambda: F.conv2d_forward(x4, np.zeros((4, 3, 3, 3), np.float32), stride=0), ValueError, "stride"),
    (lambda: F.conv2d_forward(x4, np.zeros((4, 3, 3, 3), np.float32), padding="same"), TypeError, "padding"),
    (lambda: F.linear_forward(np.zeros((2, 5)), np.zeros((3, 4))), ValueError, r"w must have shape \(M, D\) with D = 5"),
    (lambda: F.batchnorm2d_forward(x4, np.ones(2, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), np.ones(3, np.float32), True),
     ValueError, r"gamma must have shape \(C\)"),
    (lambda: F.max_pool2d_forward(x4, 9), ValueError, "larger than the padded input"),
    (lambda: F.max_pool2d_forward(x4, 2, padding=2), ValueError, "padding must be at most half"),
    (lambda: F.avg_pool2d_forward(x4[0], 2), ValueError, r"x must have shape \(N, C, H, W\)"),
    (lambda: F.dropout_forward(x4, 1.0, True, np.random.default_rng()), ValueError, r"p must be a probability in \[0, 1\)"),
    (lambda: F.dropout_forward(x4, -0.1, True, np.random.default_rng()), ValueError, "p must be"),
    (lambda: F.dropout_forward(x4, 0.5, True, 42), TypeError, "rng must be a numpy.random.Generator"),
    (lambda: F.add_forward(x4, x4[:1]), ValueError, "same shape"),
    (lambda: F.softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3])), ValueError, r"labels must be in \[0, 3\)"),
    (lambda: F.softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, "labels must be an integer"),
    (lambda: F.softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([0, 1, 2])), ValueError, r"labels must have shape \(N,\)"),
    (lambda: F.relu_forward([1.0, 2.0]), TypeError, "x must be a numpy.ndarray"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_dout_is_never_modified(rng):
    """A backward that wrote into dout would corrupt the other branch at a fork."""
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    cases = [
        (F.conv2d_forward(x, w, None, 1, 1), F.conv2d_backward),
        (F.relu_forward(x), F.relu_backward),
        (F.batchnorm2d_forward(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True), F.batchnorm2d_backward),
        (F.max_pool2d_forward(x, 2), F.max_pool2d_backward),
        (F.avg_pool2d_forward(x, 3, 1, 1), F.avg_pool2d_backward),
        (F.dropout_forward(x, 0.5, True, np.random.default_rng(0)), F.dropout_backward),
    ]
    for (out, cache), backward in cases:
        dout = rng.standard_normal(out.shape)
        before = dout.copy()
        backward(dout, cache)
        np.testing.assert_array_equal(dout, before)
