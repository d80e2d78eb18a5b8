"""SGD with momentum, Nesterov and weight decay (update for update as
torch.optim.SGD), and learning-rate schedules as functions of the step."""
import math

import numpy as np

from . import kernels


def param_groups(model, weight_decay, decay_bn_and_bias=True):
    """Split parameters into groups; with decay_bn_and_bias=False the 1-D ones
    (BN gamma and beta, biases) get no weight decay."""
    if decay_bn_and_bias:
        return [{"params": model.parameters(), "weight_decay": weight_decay}]
    params = model.parameters()
    return [{"params": [p for p in params if p.data.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.data.ndim <= 1], "weight_decay": 0.0}]


class SGD:
    """For each parameter p with gradient g (as torch.optim.SGD, dampening 0):
        g = g + weight_decay * p
        buf = g                    (first step)
        buf = momentum * buf + g   (later steps)
        g = g + momentum * buf  if nesterov  else  buf
        p = p - lr * g
    params: a list of Parameters, or of groups {"params": [...], "weight_decay": wd}.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        params = list(params)
        if params and isinstance(params[0], dict):
            self.groups = [dict(g) for g in params]
        else:
            self.groups = [{"params": params, "weight_decay": weight_decay}]
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.buffers = [[None] * len(g["params"]) for g in self.groups]

    def step(self):
        # the update above, in place, in one pass over memory
        # (_kernels_ref.sgd_update is the same in NumPy)
        for group, buffers in zip(self.groups, self.buffers):
            for i, p in enumerate(group["params"]):
                buffers[i] = kernels.sgd_update(p.data, p.grad, buffers[i], self.lr, self.momentum,
                                                group["weight_decay"], self.nesterov)

    def state_dict(self):
        """Momentum buffers by flat index ('buf.<i>'); a missing key = no buffer yet."""
        flat = [b for bufs in self.buffers for b in bufs]
        return {f"buf.{i}": b.copy() for i, b in enumerate(flat) if b is not None}

    def load_state_dict(self, state):
        i = 0
        for bufs in self.buffers:
            for j in range(len(bufs)):
                b = state.get(f"buf.{i}")
                bufs[j] = None if b is None else np.array(b, copy=True)
                i += 1


class Schedule:
    """Learning rate as a function of the step (one step per minibatch).

    kind: 'constant' | 'multistep' (x0.1 at 50% and 75% of training) |
    'cosine' (to 0) | 'linear' (straight down to exactly 0 at total_steps:
    the budget-aware decay Li et al., ICLR 2020, found best for a fixed
    training budget) | 'onecycle' (cosine up to base_lr over 30%, then down,
    as torch's OneCycleLR). warmup_steps: a linear ramp from base_lr/warmup
    first (not used with onecycle, which has its own).
    """
    KINDS = ("constant", "multistep", "cosine", "linear", "onecycle")

    def __init__(self, kind, base_lr, total_steps, warmup_steps=0, milestones=(0.5, 0.75), gamma=0.1):
        if kind not in self.KINDS:
            raise ValueError(f"schedule must be one of {self.KINDS}, got {kind!r}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"total_steps must be >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.kind, self.base_lr, self.total = kind, base_lr, total_steps
        self.warmup, self.milestones, self.gamma = warmup_steps, milestones, gamma

    def __call__(self, step):
        if self.kind == "onecycle":
            return self._onecycle(step)
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "multistep":
            passed = sum(step >= m * self.total for m in self.milestones)
            return self.base_lr * self.gamma ** passed
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "linear":
            return self.base_lr * (1.0 - min(t, 1.0))
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def state_dict(self):
        """The schedule is a pure function of the step; its state is its definition
        (the step itself lives with the training loop's checkpoint)."""
        return dict(kind=self.kind, base_lr=self.base_lr, total_steps=self.total,
                    warmup_steps=self.warmup, milestones=list(self.milestones), gamma=self.gamma)

    def load_state_dict(self, state):
        self.__init__(state["kind"], state["base_lr"], state["total_steps"], state["warmup_steps"],
                      tuple(state["milestones"]), state["gamma"])

    def _onecycle(self, step, pct=0.3, div=25.0, final_div=1e4):
        top, start, end = self.base_lr, self.base_lr / div, self.base_lr / div / final_div
        up = pct * self.total - 1
        if step <= up:
            a, b, t = start, top, step / up
        else:
            a, b, t = top, end, (step - up) / (self.total - 1 - up)
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
