"""Training checkpoints: one .npz holding model weights and buffers,
momentum buffers, and JSON text for everything else (epoch, step, every
rng state, history). Written atomically; read without unpickling."""
import json

import numpy as np

from .models.io import META_KEY, write_npz_atomic


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
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz[META_KEY]))
        if meta["name"] != model.name:
            raise ValueError(f"{path} is a checkpoint of {meta['name']!r}, not {model.name!r}")
        model.load_state_dict({k[6:]: npz[k] for k in npz.files if k.startswith("model/")})
        optimizer.load_state_dict({k[6:]: npz[k] for k in npz.files if k.startswith("optim/")})
    data_rng.bit_generator.state = meta["rng"]["data"]
    for name, g in generators(model).items():
        g.bit_generator.state = meta["rng"]["modules"][name]
    return meta
