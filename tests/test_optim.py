"""SGD against torch.optim.SGD on identical gradients; schedule values."""

import numpy as np
import pytest

from minires import nn
from minires.optim import SGD, Schedule, param_groups


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 5e-4),
                                                   (0.9, True, 1e-4), (0.5, False, 0.0)])
def test_sgd_matches_torch(torch, momentum, nesterov, wd):
    rng = np.random.default_rng(0)
    params = [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(4, 3), (5,)]]
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = SGD(params, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for step in range(5):
        for p, tp in zip(params, tparams):
            g = rng.standard_normal(p.data.shape).astype(np.float32)
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.lr = topt.param_groups[0]["lr"] = 0.1 / (step + 1)
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_no_decay_for_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.BatchNorm2d(4))
    groups = param_groups(model, 5e-4, decay_bn_and_bias=False)
    assert [len(g["params"]) for g in groups] == [1, 3] and groups[1]["weight_decay"] == 0
    # with zero gradients only decay moves a weight: the 1-D ones stay put
    opt = SGD(groups, lr=1.0)
    before = [p.data.copy() for p in model.parameters()]
    opt.step()
    after = model.parameters()
    assert not np.array_equal(before[0], after[0].data)
    for b, a in zip(before[1:], after[1:]):
        np.testing.assert_array_equal(b, a.data)


def test_optimizer_state_round_trip():
    p = nn.Parameter(np.ones(3, np.float32))
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad[...] = 1
    opt.step()
    state = opt.state_dict()
    opt2 = SGD([nn.Parameter(np.ones(3, np.float32))], lr=0.1, momentum=0.9)
    opt2.load_state_dict(state)
    np.testing.assert_array_equal(opt2.buffers[0][0], opt.buffers[0][0])


def test_schedules_at_given_steps():
    cos = Schedule("cosine", 0.1, 100)
    assert cos(0) == pytest.approx(0.1) and cos(50) == pytest.approx(0.05) and cos(100) == pytest.approx(0.0)
    multi = Schedule("multistep", 0.1, 100)
    assert [multi(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = Schedule("cosine", 0.1, 100, warmup_steps=10)
    assert warm(0) == pytest.approx(0.01) and warm(9) == pytest.approx(0.1)
    assert warm(10) == pytest.approx(0.1) and warm(55) == pytest.approx(0.05)
    assert Schedule("constant", 0.3, 10)(7) == 0.3
    with pytest.raises(ValueError, match="schedule must be one of"):
        Schedule("step", 0.1, 10)
    restored = Schedule("constant", 1.0, 1)
    restored.load_state_dict(warm.state_dict())
    assert [restored(t) for t in (0, 9, 55)] == [warm(t) for t in (0, 9, 55)]


def test_linear_decays_to_exactly_zero_at_the_budget():
    lin = Schedule("linear", 0.1, 100)
    assert [lin(s) for s in (0, 25, 50, 99)] == pytest.approx([0.1, 0.075, 0.05, 0.001])
    assert lin(100) == 0.0 and lin(150) == 0.0          # spent: nothing left to learn with
    warm = Schedule("linear", 0.1, 110, warmup_steps=10)
    assert warm(4) == pytest.approx(0.05) and warm(10) == pytest.approx(0.1)
    assert warm(60) == pytest.approx(0.05) and warm(110) == 0.0
    lrs = [lin(s) for s in range(101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))     # strictly down, every step


def test_onecycle_matches_torch(torch):
    s = Schedule("onecycle", 0.1, 50)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50, cycle_momentum=False)
    for step in range(50):
        assert s(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        if step < 49:
            sched.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 1e-3), (0.9, False, 5e-4),
                                                  (0.9, True, 1e-4), (0.5, False, 0.0)])
def test_sgd_kernel_matches_the_reference(dtype, momentum, nesterov, wd):
    """The one-pass kernel against _kernels_ref.sgd_update over three steps, on
    both sides of the threading grain; a strided parameter takes the reference."""
    from minires import _kernels, _kernels_ref
    rng = np.random.default_rng(1)
    for shape in [(3, 5), (70_000,)]:
        p = rng.standard_normal(shape).astype(dtype)
        q, buf_p, buf_q = p.copy(), None, None
        for step in range(3):
            g = rng.standard_normal(shape).astype(dtype)
            buf_p = _kernels.sgd_update(p, g, buf_p, 0.1 / (step + 1), momentum, wd, nesterov)
            buf_q = _kernels_ref.sgd_update(q, g, buf_q, 0.1 / (step + 1), momentum, wd, nesterov)
            # fused multiply-adds round once: a few ulps of the operands (|p| up to ~4) apart
            tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
            np.testing.assert_allclose(p, q, **tol)
            assert (buf_p is None) == (buf_q is None) == (momentum == 0)
            if buf_p is not None:
                np.testing.assert_allclose(buf_p, buf_q, **tol)
    strided = np.zeros((4, 6), dtype)[:, ::2]
    buf = _kernels.sgd_update(strided, np.ones((4, 3), dtype), None, 0.5, 0.9, 0.0, False)
    np.testing.assert_array_equal(strided, -0.5)
    np.testing.assert_array_equal(buf, 1.0)


def test_sgd_kernel_comparison_fails_for_a_wrong_update():
    """The comparison above catches a momentum buffer that skips a step's decay."""
    from minires import _kernels, _kernels_ref
    rng = np.random.default_rng(2)
    p, g, buf = (rng.standard_normal(100).astype(np.float32) for _ in range(3))
    q = p.copy()
    _kernels.sgd_update(p, g, buf.copy(), 0.1, 0.9, 0.0, False)
    _kernels_ref.sgd_update(q, g, buf * 0.9, 0.1, 0.9, 0.0, False)         # the buffer decayed twice
    assert not np.allclose(p, q, rtol=1e-6, atol=1e-6)


def test_sgd_kernel_keeps_inf_and_nan_as_numpy_does():
    """Weight decay 0 adds nothing (0 * inf would make NaN); NaN gradients stay NaN."""
    from minires import _kernels, _kernels_ref
    for wd in (0.0, 1e-4):
        p = np.array([np.inf, 1.0, 2.0, -np.inf], np.float32)
        g = np.array([1.0, np.nan, 0.0, 0.0], np.float32)
        q = p.copy()
        _kernels.sgd_update(p, g, None, 0.1, 0.9, wd, False)
        with np.errstate(invalid="ignore"):         # inf - inf: NaN is the answer
            _kernels_ref.sgd_update(q, g, None, 0.1, 0.9, wd, False)
        np.testing.assert_array_equal(p, q)
