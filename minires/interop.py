"""minires <-> PyTorch: the same model in either library, weights and all.

    twin = to_torch(model)                   # a torch.nn.Module: same weights, buffers, mode, outputs
    model = from_torch(twin)                 # and back (the twin remembers its minires name)
    model = from_torch(state_dict, "imagenet-resnet-18")   # torch or torchvision weights

The PyTorch side is minires.torch_reference: every family written again in
PyTorch, module for module, so the state_dict names are the same in both
libraries. torchvision's ResNets name two things differently, and
from_torch maps them: a projection shortcut is `downsample` there and
`shortcut` here (`layer2.0.downsample.0.weight` -> `layer2.0.shortcut.0.weight`),
and torchvision's published ImageNet weights predate `num_batches_tracked`
(from_torch sets the missing counters to 0, as torch itself does).

torch is imported inside the functions that need it: minires imports and
trains without it.
"""
import numpy as np

from .errors import MiniresError

# torchvision's name -> minires's name, applied to every dotted part of a key
TORCHVISION_NAMES = {"downsample": "shortcut"}


class InteropError(MiniresError):
    """Weights that do not fit the model: the message names the missing,
    unexpected and mis-shaped entries."""


def import_torch():
    try:
        import torch
    except ImportError:
        raise MiniresError("minires.interop needs PyTorch (pip install torch); "
                           "the rest of minires runs without it") from None
    return torch


def _name_and_options(model):
    name, options = getattr(model, "name", None), getattr(model, "options", None)
    if not isinstance(name, str) or not isinstance(options, dict):
        raise InteropError("to_torch needs a model made by minires.models.build (it records the name "
                           f"and options); got a {type(model).__name__} without them")
    return name, dict(options)


def _final_linear_name(module_names):
    """'fc' for every family but seed-cnn, whose classifier is 'fc2'."""
    return "fc2" if "fc2" in module_names else "fc"


def torch_module_for(name, options):
    """An untrained PyTorch twin of models.build(name, **options) (num_classes among
    the options, 10 if absent), with a freshly initialised PyTorch head."""
    torch = import_torch()
    from .torch_reference import torch_twin
    options = dict(options)
    num_classes = options.pop("num_classes", 10)
    twin = torch_twin(torch, name, dict(options, num_classes=num_classes))
    twin.minires_name, twin.minires_options = name, dict(options, num_classes=num_classes)
    return twin


def to_torch(model):
    """The minires model as a torch.nn.Module: the same parameters, running
    statistics and num_batches_tracked (copied, not shared), the same dtype
    (float32 or float64) and the same train/eval mode, so it computes the same
    logits and gradients. Dropout draws its masks from torch's generator, not
    from the model's rng: with dropout on, outputs agree in distribution only.

    The result carries minires_name and minires_options, so from_torch(twin)
    rebuilds the minires model without being told what it is."""
    torch = import_torch()
    name, options = _name_and_options(model)
    twin = torch_module_for(name, options)
    state = model.state_dict()
    dtypes = {v.dtype for v in state.values() if v.dtype.kind == "f"}
    if dtypes == {np.dtype(np.float64)}:
        twin = twin.double()
    elif dtypes != {np.dtype(np.float32)}:
        raise InteropError(f"to_torch: the model's floating arrays have dtypes {sorted(map(str, dtypes))}; "
                           "expected all float32 or all float64")
    _check_fits(state, {k: tuple(v.shape) for k, v in twin.state_dict().items()},
                f"the PyTorch twin of {name}")
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    twin.train(model.training)
    return twin


def _as_numpy(value):
    if hasattr(value, "detach"):        # a torch.Tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def rename_torchvision(key):
    """A torchvision key in minires's naming: 'layer2.0.downsample.1.running_var'
    -> 'layer2.0.shortcut.1.running_var'; every other key is unchanged."""
    return ".".join(TORCHVISION_NAMES.get(part, part) for part in key.split("."))


def _normalise_keys(state):
    """name -> NumPy array, torchvision's names mapped, a DataParallel 'module.' prefix dropped."""
    keys = list(state)
    strip = len("module.") if keys and all(k.startswith("module.") for k in keys) else 0
    out = {}
    for k in keys:
        new = rename_torchvision(k[strip:])
        if new in out:
            raise InteropError(f"state dict holds both {k!r} and an entry that maps to the same "
                               f"minires name {new!r}")
        out[new] = _as_numpy(state[k])
    return out


def _check_fits(state, shapes, target, limit=8):
    """InteropError listing every missing, unexpected and mis-shaped entry (up to limit each)."""
    missing = [k for k in shapes if k not in state]              # in the model's order
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k}: {tuple(np.shape(state[k]))} given, {tuple(shapes[k])} expected"
             for k in shapes if k in state and tuple(np.shape(state[k])) != tuple(shapes[k])]

    def listed(what, names):
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return f"{len(names)} {what} ({', '.join(names[:limit])}{more})"
    problems = [listed(w, n) for w, n in (("missing", missing), ("unexpected", unexpected),
                                           ("with the wrong shape", wrong)) if n]
    if problems:
        raise InteropError(f"the weights do not fit {target}: " + "; ".join(problems) +
                           ". Check the model name and its options (width_scale, shortcut, "
                           "bottleneck_div, num_classes)")


def from_torch(source, name=None, num_classes=None, reset_head=False, rng=0, **options):
    """A minires model holding the weights of a torch module or state dict.

    source: a torch.nn.Module (a to_torch twin, a torchvision ResNet, ...) or a
    state dict (name -> tensor or NumPy array). name: the minires model name
    ('imagenet-resnet-18', 'resnet-20', ...); a to_torch twin supplies its own,
    and its options, when name is None. options: the build options
    (width_scale, shortcut, ...). num_classes: None reads it from the
    classifier's weight in source (1000 for torchvision's ImageNet weights).

    reset_head=True keeps everything but the classifier (fc, or seed-cnn's
    fc2), which is built fresh for num_classes (default 10) from rng: e.g.
    torchvision's ImageNet-pretrained resnet18 with a new 10-class head,
        from_torch(torchvision.models.resnet18(weights="DEFAULT").state_dict(),
                   "imagenet-resnet-18", num_classes=10, reset_head=True)

    The model is float64 when every floating entry of source is, else float32,
    and in training mode (a module's own mode when source is a module).
    InteropError names the missing, unexpected and mis-shaped entries when the
    weights do not fit the model."""
    from . import models
    training = True
    if hasattr(source, "state_dict") and callable(source.state_dict):      # a torch.nn.Module
        training = bool(getattr(source, "training", True))
        if name is None and hasattr(source, "minires_name"):      # a to_torch twin knows what it is
            name, saved = source.minires_name, dict(source.minires_options)
            saved_classes = saved.pop("num_classes", None)
            options = {**saved, **options}
            num_classes = saved_classes if num_classes is None else num_classes
        source = source.state_dict()
    if name is None:
        raise InteropError("from_torch needs the minires model name for a state dict, e.g. "
                           "from_torch(state_dict, 'imagenet-resnet-18')")
    state = _normalise_keys(source)
    head = _final_linear_name({k.split(".")[0] for k in state})
    if reset_head:
        state = {k: v for k, v in state.items() if k.split(".")[0] != head}
        num_classes = 10 if num_classes is None else num_classes
    elif num_classes is None:
        weight = state.get(f"{head}.weight")
        num_classes = weight.shape[0] if weight is not None and weight.ndim == 2 else 10
    try:
        model = models.build(name, num_classes, rng=rng, **options)
    except (TypeError, ValueError) as exc:
        raise InteropError(f"from_torch: cannot build {name!r}: {exc}") from None
    floats = {v.dtype for v in state.values() if v.dtype.kind == "f"}
    if floats == {np.dtype(np.float64)}:     # float64 weights stay float64 (an exact round trip)
        model.astype(np.float64)
    target = model.state_dict()
    if reset_head:                           # the fresh head, built for num_classes
        state.update({k: v for k, v in target.items() if k.split(".")[0] == head})
    for k, v in target.items():     # torchvision's published weights have no num_batches_tracked
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = np.zeros_like(v)
    _check_fits(state, {k: v.shape for k, v in target.items()}, f"{name} ({num_classes} classes)")
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:    # values that do not fit float32 (NaN, overflow, text)
        raise InteropError(f"cannot load the weights into {name}: {exc}") from None
    return model.train(training)
