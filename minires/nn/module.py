"""Parameter, Module and Sequential: the containers every layer is built on.

There is no autograd tape. Each module caches what its backward needs
during forward; a composite module runs its children's backward in
reverse order. Parameter gradients accumulate (+=) until zero_grad().

Hooks let a learner watch any module without editing it (PyTorch's names):
register_forward_hook(fn) calls fn(module, x, out) after each forward and
register_backward_hook(fn) calls fn(module, dout, dx) after each backward;
each returns a handle whose remove() detaches the hook. The arrays a hook
sees are read-only views: a hook can look, never change what trains.
"""
from collections import OrderedDict

import numpy as np

from .recompute import release_input


class Parameter:
    """A trainable array and its accumulated gradient (same shape and dtype)."""

    def __init__(self, data):
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class. Subclasses define forward(x) and backward(dout) -> dx.

    Assigning a Parameter or a Module to an attribute registers it, so
    names follow the attribute path exactly as in PyTorch
    (e.g. ``layer1.0.bn1.running_mean``).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "keep_caches", True)      # in eval mode; see eval()
        object.__setattr__(self, "_forward_hooks", {})      # HookHandle -> fn
        object.__setattr__(self, "_backward_hooks", {})

    def __setattr__(self, name, value):
        d = self.__dict__
        if name in d and not isinstance(value, (Parameter, Module)):
            d[name] = value     # a plain attribute again (every layer's cache, every call): no registry holds it
            return
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if name in self._buffers and isinstance(value, np.ndarray):
            self._buffers[name] = value  # e.g. `self.num_batches_tracked += 1`
            return
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)   # e.g. `self.bias = None` set earlier would shadow it
            self._parameters[name] = value
        elif isinstance(value, Module):
            # A reassigned child moves to the end of the registry: the order the
            # models' initialisation draws its random numbers in (a block's
            # shortcut replaces its Identity after the convs) and state_dict's.
            self.__dict__.pop(name, None)
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries.
        for registry in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(registry)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name, array):
        """A non-trainable array saved in state_dict (e.g. running statistics)."""
        self.__dict__.pop(name, None)       # a plain attribute of that name would shadow it
        self._buffers[name] = array

    # ---------------------------------------------------------- computation
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x):
        out = self.forward(x)
        if not self.training and not self.keep_caches and self.__dict__.get("_cache") is not None:
            self._cache = None      # inference: let the activations behind the cache go now
        if self._forward_hooks:         # no list, no views on the hook-free path of every layer call
            for hook in list(self._forward_hooks.values()):
                hook(self, read_only(x), read_only(out))
        return out

    # ---------------------------------------------------------- hooks
    def register_forward_hook(self, fn):
        """fn(module, x, out) after every forward run as module(x) (every parent
        calls its children so). Returns a HookHandle; fn's return value is ignored."""
        handle = HookHandle(self, self._forward_hooks)
        self._forward_hooks[handle] = fn
        return handle

    def register_backward_hook(self, fn):
        """fn(module, dout, dx) after every backward of this module. Returns a HookHandle.

        Parents call child.backward(dout) directly (there is no tape to hook
        into), so this shadows the method on this one instance with
        _backward_then_hooks, which runs the class's own backward, then the
        hooks; the last handle removed takes the shadow away. Subclasses keep
        writing plain backward methods."""
        handle = HookHandle(self, self._backward_hooks)
        self._backward_hooks[handle] = fn
        object.__setattr__(self, "backward", self._backward_then_hooks)
        return handle

    def _backward_then_hooks(self, dout):
        dx = type(self).backward(self, dout)
        for hook in list(self._backward_hooks.values()):
            hook(self, read_only(dout), read_only(dx))
        return dx

    # ---------------------------------------------------------- traversal
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self):
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b

    def num_parameters(self):
        return sum(p.data.size for p in self.parameters())

    # ---------------------------------------------------------- state
    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode=True):
        """Set training mode on this module and every descendant."""
        if mode and self.__dict__.get("inference_only"):
            raise RuntimeError(f"this {type(self).__name__} was made by fuse_for_inference(): its batch norms "
                               "are folded into its convolutions, so it cannot train; train the original model")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self, keep_caches=True):
        """Evaluation mode on this module and every descendant: batch norm uses
        its running statistics, dropout passes everything.

        Layers keep their backward caches, so a gradient check (or a saliency
        map) can backpropagate in eval mode. For inference alone pass
        keep_caches=False (as torch.no_grad()): each activation is then freed
        as soon as the next layer has read it, backward is refused, and a batch
        norm after a conv runs inside it (nn.conv_bn: the same outputs)."""
        for m in self.modules():
            object.__setattr__(m, "keep_caches", bool(keep_caches))
        return self.train(False)

    def fuse_for_inference(self):
        """A copy of this model for inference, with each batch norm folded into
        the convolution before it (see minires.nn.fuse). This model is unchanged."""
        from .fuse import fuse_for_inference
        return fuse_for_inference(self)

    def fusable_pairs(self):
        """(conv name, batch norm name) pairs of children where the batch norm
        reads the conv's output and nothing else does; none unless a subclass says."""
        return ()

    def astype(self, dtype):
        """Cast every floating parameter and buffer (e.g. to float64 for gradient checks)."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = np.zeros_like(p.data)
            for name, b in m._buffers.items():
                if np.issubdtype(b.dtype, np.floating):
                    m._buffers[name] = b.astype(dtype)
        return self

    def state_dict(self):
        """name -> copy of the array, for every parameter and buffer, in PyTorch's order."""
        state = OrderedDict()
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in module._parameters.items():
                state[dot + name] = p.data.copy()
            for name, b in module._buffers.items():
                state[dot + name] = b.copy()
        return state

    def load_state_dict(self, state):
        """Copy arrays into this module's parameters and buffers, in place.

        Names and shapes must match exactly: a partial or mismatched load
        is an error, never a silent half-load. Values must fit the target's
        dtype (checked before anything is copied): see check_loadable.
        """
        targets = dict(self.named_parameters())
        targets.update(self.named_buffers())
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise KeyError(f"state_dict does not match {type(self).__name__}: "
                           f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        arrays = {name: t.data if isinstance(t, Parameter) else t for name, t in targets.items()}
        values = {name: np.asarray(state[name]) for name in targets}
        for name, array in arrays.items():
            if not array.flags.writeable:
                raise ValueError(f"state_dict[{name!r}]: the {type(self).__name__}'s array is read-only (a model "
                                 "made by fuse_for_inference() is fixed: load the state into the original model "
                                 "and fold it again)")
            if values[name].shape != array.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {values[name].shape}, "
                                 f"the module expects {array.shape}")
            check_loadable(values[name], array.dtype, f"state_dict[{name!r}]")
        for name, array in arrays.items():
            np.copyto(array, values[name], casting="unsafe")

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + ("\n)" if self._modules else ")")


class Sequential(Module):
    """Children run in order; backward runs them in reverse.

    Sequential(a, b, c) names them "0", "1", "2"; Sequential(OrderedDict)
    uses the dict's names, as PyTorch does.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            named = list(modules[0].items())
        else:
            named = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in named:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential child {name!r} must be a Module, got {type(m).__name__}")
            setattr(self, name, m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def forward(self, x):
        if not (self.training or self.keep_caches):     # inference: no caches, nothing to release
            return self._inference_forward(x)
        before = None
        for m in self:
            out = m(x)
            # a conv right after a BN keeps no copy of its input (nn.recompute)
            release_input(_first_layer(m), _last_layer(before), x)
            before, x = m, out
        return x

    def _inference_forward(self, x):
        """The children in order; a conv and the batch norm after it, directly
        (fusable_pairs()) or through a ReLU, in one pass (nn.conv_bn, nn.conv_relu_bn)."""
        from .fuse import conv_bn, conv_relu_bn
        chains = self._conv_bn_chains()
        inside = {name for chain in chains.values() for name in chain if name is not None}
        mods = self._modules
        for name, m in mods.items():
            if name in chains:
                relu, bn = chains[name]
                x = conv_bn(m, mods[bn], x) if relu is None else conv_relu_bn(m, mods[relu], mods[bn], x)
            elif name not in inside:
                x = m(x)
        return x

    def _conv_bn_chains(self):
        """{conv's name: (None, the BN's name)} for each of fusable_pairs(), and
        {conv's name: (the ReLU's name, the BN's name)} for each Conv2d, ReLU,
        BatchNorm2d run of children."""
        from .activation import ReLU
        from .batchnorm import BatchNorm2d
        from .conv import Conv2d
        chains = {conv: (None, bn) for conv, bn in self.fusable_pairs()}
        named = list(self._modules.items())
        for (a, conv), (r, relu), (b, bn) in zip(named, named[1:], named[2:]):
            if isinstance(conv, Conv2d) and isinstance(relu, ReLU) and isinstance(bn, BatchNorm2d):
                chains[a] = (r, b)
        return chains

    def fusable_pairs(self):
        """Children run in order, so a Conv2d followed by a BatchNorm2d is a pair."""
        from .batchnorm import BatchNorm2d
        from .conv import Conv2d
        named = list(self._modules.items())
        return [(a, b) for (a, m), (b, n) in zip(named, named[1:])
                if isinstance(m, Conv2d) and isinstance(n, BatchNorm2d)]

    def backward(self, dout):
        for m in reversed(list(self)):
            dout = m.backward(dout)
        return dout

    def skip_input_grad(self, skip=True):
        """Nothing will use the gradient of this model's input (a training
        loop's images, as in PyTorch, where they do not require grad): the
        first layer, when it is a Conv2d, computes its weight gradient alone,
        and backward returns None. A stem conv's input gradient is a whole
        conv of work (imagenet-resnet-18's 7x7 stride-2 stem: its step, batch
        128, 186 -> 155 ms in one run). -> that conv, or None (nothing to skip)."""
        from .conv import Conv2d
        first = _first_layer(self)
        if not isinstance(first, Conv2d):
            return None
        first.input_grad = not skip
        return first


def _first_layer(m):
    """The layer that reads a module's input first (inside nested Sequentials)."""
    while isinstance(m, Sequential) and len(m):
        m = m[0]
    return m


def _last_layer(m):
    """The layer whose output a module returns (inside nested Sequentials)."""
    while isinstance(m, Sequential) and len(m):
        m = m[-1]
    return m


class Identity(Module):
    """Returns its input; its gradient passes unchanged."""

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


class HookHandle:
    """What register_*_hook returns; remove() detaches that hook (again: no effect)."""

    def __init__(self, module, hooks):
        self.module, self.hooks = module, hooks

    def remove(self):
        self.hooks.pop(self, None)
        if not self.module._backward_hooks:             # the class's own backward again
            self.module.__dict__.pop("backward", None)


def read_only(a):
    """A read-only view of an array (what hooks see); anything else as it is."""
    if not isinstance(a, np.ndarray):
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def check_loadable(value, dtype, name):
    """ValueError unless every number in value survives a cast to dtype unchanged in kind.

    np.copyto(casting="unsafe") would only warn: complex numbers would lose
    their imaginary part, 1e39 would become inf in float32, NaN would become
    an arbitrary integer. A model that loads must be the model that was saved.
    """
    if value.dtype.kind not in "biuf":     # complex, strings, dates, structured records
        raise ValueError(f"{name} has dtype {value.dtype}, not a real number type")
    if np.issubdtype(dtype, np.floating):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{name} holds NaN or inf")
        with np.errstate(over="ignore"):            # the overflow is what we test for
            fits = np.isfinite(value.astype(dtype)).all()
        if not fits:
            raise ValueError(f"{name} holds values too large for {np.dtype(dtype)} (they overflow to inf)")
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if value.dtype.kind == "f" and not (np.isfinite(value).all() and (value == np.round(value)).all()):
            raise ValueError(f"{name} must hold whole numbers for {np.dtype(dtype)}")
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise ValueError(f"{name} holds values outside the range of {np.dtype(dtype)}")


def take_cache(module):
    """Pop the cache saved by the last forward; a clear error if there is none."""
    cache = module.__dict__.get("_cache")
    if cache is None:
        if not module.training and not module.keep_caches:
            raise RuntimeError(f"{type(module).__name__}.backward after eval(keep_caches=False), which keeps "
                               "no caches for backward; call model.eval() (keep_caches=True) to backpropagate")
        raise RuntimeError(f"{type(module).__name__}.backward called without a forward "
                           "(or twice for one forward)")
    module._cache = None
    return cache
