"""The exercise checkers: every correct solution passes (two styles: the
reference solutions and tests/second_solutions.py), every known-wrong one in
tests/wrong_solutions.py fails with the message it deserves, and nothing a
learner returns makes a checker raise anything but AssertionError."""
import numpy as np
import pytest

from minires import exercises as ex
from tutorials.solutions import backprop, batchnorm, convolution, resnets, routing

import second_solutions as second
from wrong_solutions import WRONG

SOLUTIONS = {
    "check_linear_backward": backprop.linear_backward,
    "check_relu_backward": backprop.relu_backward,
    "check_softmax_cross_entropy": backprop.softmax_cross_entropy,
    "check_sgd_momentum_step": backprop.sgd_momentum_step,
    "check_conv2d_forward": convolution.conv2d_forward,
    "check_conv2d_backward": convolution.conv2d_backward,
    "check_im2col": convolution.im2col,
    "check_batchnorm_backward": batchnorm.batchnorm_backward,
    "check_max_pool_backward": routing.max_pool_backward,
    "check_dropout": routing.dropout,
    "check_residual_backward": routing.residual_backward,
    "check_basic_block_backward": resnets.basic_block_backward,
}
CHECKERS = sorted(SOLUTIONS)
BACKWARD = [c for c in CHECKERS if "backward" in c or c == "check_softmax_cross_entropy"]


def _second(checker):
    name = SOLUTIONS[checker].__name__
    return getattr(second, name)


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize("style", ["reference", "second"])
def test_correct_solution_passes(checker, style, capsys):
    fn = SOLUTIONS[checker] if style == "reference" else _second(checker)
    getattr(ex, checker)(fn)
    out = capsys.readouterr().out
    assert "all cases passed" in out


@pytest.mark.parametrize("checker", BACKWARD)
def test_backward_checkers_run_a_numerical_gradient_check(checker, capsys):
    getattr(ex, checker)(SOLUTIONS[checker])
    assert " num " in capsys.readouterr().out


def test_the_corpus_is_large_enough():
    per_checker = {c: sum(w[0] == c for w in WRONG) for c in CHECKERS}
    assert len(WRONG) >= 53 and min(per_checker.values()) >= 4, per_checker


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the overflow mistakes overflow
@pytest.mark.parametrize("checker,wrong,expected", WRONG,
                         ids=[f"{c[6:]}-{e[:24]}" for c, _, e in WRONG])
def test_known_wrong_implementation_fails_with_its_hint(checker, wrong, expected, capsys):
    with pytest.raises(AssertionError) as err:
        getattr(ex, checker)(wrong)
    assert expected in str(err.value)


def test_a_hint_is_given_only_when_the_mistake_shows(capsys):
    """A flipped 1x1 kernel is the kernel itself: a wrong answer on that case
    alone must not be blamed on flipping."""
    def wrong_only_on_1x1(x, w, b, s, p):
        out = convolution.conv2d_forward(x, w, b, s, p)
        return out + 1.0 if w.shape[2:] == (1, 1) else out
    with pytest.raises(AssertionError) as err:
        ex.check_conv2d_forward(wrong_only_on_1x1)
    msg = str(err.value)
    assert "Hint" not in msg and "w(1, 1)" in msg and "differs at" in msg and "relative error" in msg


def test_gradient_check_reports_the_worst_position(capsys):
    def off_by_one_entry(dout, x):
        dx = dout * (x > 0)
        if dx.size > 5:
            dx.reshape(-1)[5] += 1.0
        return dx
    with pytest.raises(AssertionError) as err:
        ex.check_relu_backward(off_by_one_entry)
    assert "numerical gradient check of dx" in str(err.value) and "at (0, 0, 1, 1)" in str(err.value)


def _garbage(shape_like):
    return [None, "text", 3, [1.0, 2.0], object(), np.array(["a"]), np.zeros(1, dtype=complex),
            (None, None, None), shape_like]


@pytest.mark.parametrize("checker", CHECKERS)
def test_nothing_returned_makes_a_checker_crash(checker, capsys):
    """Rule 1: whatever comes back, the checker answers with an AssertionError."""
    solution = SOLUTIONS[checker]
    cases = []
    for value in _garbage(np.full((2, 2), np.nan)):
        cases.append(lambda *a, v=value: v)

    def float32(*a):
        out = solution(*a)
        if isinstance(out, tuple):
            return tuple(np.asarray(o, dtype=np.float32) for o in out)
        return np.asarray(out, dtype=np.float32)

    def as_list(*a):
        out = solution(*a)
        return tuple(np.asarray(o).tolist() for o in out) if isinstance(out, tuple) else np.asarray(out).tolist()

    def nan_like(*a):
        out = solution(*a)
        if isinstance(out, tuple):
            return tuple(np.full_like(np.asarray(o, dtype=float), np.nan) for o in out)
        return np.full_like(np.asarray(out, dtype=float), np.nan)

    def missing_last(*a):
        out = solution(*a)
        return out[:-1] if isinstance(out, tuple) else out[..., :-1]

    def raises(*a):
        return [][1]

    for fn in cases + [float32, as_list, nan_like, missing_last, raises]:
        with pytest.raises(AssertionError) as err:
            getattr(ex, checker)(fn)
        assert "expected" in str(err.value) or "raised IndexError" in str(err.value)


@pytest.mark.parametrize("checker", CHECKERS)
def test_an_unwritten_stub_says_so(checker):
    def stub(*args):
        raise NotImplementedError("write it")
    with pytest.raises(NotImplementedError, match="not written yet"):
        getattr(ex, checker)(stub)


@pytest.mark.parametrize("checker", CHECKERS)
def test_mutating_any_array_argument_is_caught(checker, capsys):
    """Rule 3: the correct answer, but every array argument scribbled on afterwards."""
    solution = SOLUTIONS[checker]

    def scribble(*args):
        out = solution(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
        for a in args:
            if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                a.reshape(-1)[0] += 1.0
        return out
    with pytest.raises(AssertionError) as err:
        getattr(ex, checker)(scribble)
    assert "in place" in str(err.value)
