"""Training checkpoints: one .npz holding model weights and buffers,
momentum buffers, and JSON text for everything else (epoch, step, every
rng state, history). Written atomically; read without unpickling. A file
that is not a complete checkpoint of this run raises FileFormatError
naming it, before anything is restored."""
import json

import numpy as np

from .errors import FileFormatError
from .models.io import META_KEY, read_npz, write_npz_atomic
from .nn.module import check_loadable

CHECKPOINT_KEYS = ("history", "step", "best_acc", "rng")


def generators(model):
    """name -> Generator of every module that draws random numbers (dropout)."""
    return {name: m.rng for name, m in model.named_modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)}


def save_checkpoint(path, model, optimizer, data_rng, meta):
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    meta = dict(meta, name=model.name, options=model.options,
                rng={"data": data_rng.bit_generator.state,
                     "modules": {k: g.bit_generator.state for k, g in generators(model).items()}})
    arrays[META_KEY] = np.array(json.dumps(meta))
    write_npz_atomic(path, arrays)


def load_checkpoint(path, model, optimizer, data_rng):
    """Restore everything save_checkpoint wrote, in place; returns the meta dict."""
    meta, arrays = read_npz(path, "checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in meta]
    if missing:
        raise FileFormatError(f"{path} is not a training checkpoint (its metadata lacks {missing}; "
                              "a model file such as best.npz?)")
    if meta["name"] != model.name:
        raise FileFormatError(f"{path} is a checkpoint of {meta['name']!r}, not {model.name!r}")
    momentum = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    try:
        _check_momentum(momentum, optimizer)
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        optimizer.load_state_dict(momentum)
        data_rng.bit_generator.state = meta["rng"]["data"]
        for name, g in generators(model).items():
            g.bit_generator.state = meta["rng"]["modules"][name]
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"{path} does not fit this {model.name} run: {exc}") from None
    return meta


def _check_momentum(buffers, optimizer):
    """Each 'buf.<i>' must match parameter i: SGD.load_state_dict takes arrays as they come."""
    params = [p for group in optimizer.groups for p in group["params"]]
    for key, value in buffers.items():
        index = int(key[4:]) if key.startswith("buf.") and key[4:].isdigit() else len(params)
        if index >= len(params) or value.shape != params[index].shape:
            raise ValueError(f"momentum buffer {key!r} (shape {value.shape}) matches no parameter")
        check_loadable(value, params[index].data.dtype, f"momentum buffer {key!r}")
