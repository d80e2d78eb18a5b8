"""Save and load models as .npz: weights, buffers, and the name and options
as JSON text, so a file rebuilds its model without code.

Loading uses allow_pickle=False: a model file from a stranger cannot run code.
"""
import json

import numpy as np

from ..atomic import atomic_write

META_KEY = "__minires_meta__"


def save(model, path):
    """Write model to path (.npz) atomically: a temp file, then a rename."""
    meta = {"name": getattr(model, "name", None), "options": getattr(model, "options", {}),
            "format": 1}
    if meta["name"] is None:
        raise ValueError("save needs a model made by minires.models.build (it records the name)")
    arrays = dict(model.state_dict())
    arrays[META_KEY] = np.array(json.dumps(meta))
    write_npz_atomic(path, arrays)


def write_npz_atomic(path, arrays):
    """np.savez that never leaves a half-written file under the final name."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def read_meta(npz):
    if META_KEY not in npz.files:
        raise ValueError("not a minires model file (no metadata entry)")
    return json.loads(str(npz[META_KEY]))


def load(path, expected_name=None):
    """Rebuild the model saved at path. expected_name: refuse a different architecture."""
    from .registry import build
    with np.load(path, allow_pickle=False) as npz:
        meta = read_meta(npz)
        if expected_name is not None and meta["name"] != expected_name:
            raise ValueError(f"{path} holds a {meta['name']!r} model, not {expected_name!r}")
        model = build(meta["name"], **meta["options"])
        state = {k: npz[k] for k in npz.files if k != META_KEY}
    load_weights(model, state, source=f"{path} ({meta['name']})")
    return model


def load_weights(model, state, source="state"):
    """load_state_dict with an error that names both architectures."""
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"cannot load {source} into {getattr(model, 'name', type(model).__name__)}: "
                         f"{exc}") from None
