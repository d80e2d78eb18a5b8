"""Save and load models as .npz: weights, buffers, and the name and options
as JSON text, so a file rebuilds its model without code.

Loading uses allow_pickle=False: a model file from a stranger cannot run code.
A missing, truncated, corrupt or foreign file raises FileFormatError naming
the file; so do values that do not fit the model (see Module.load_state_dict).
"""
import json
import os
import zipfile
import zlib

import numpy as np

from ..atomic import atomic_write
from ..errors import FileFormatError, MiniresError

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


def read_meta(npz, path="file"):
    """The metadata dict of an open .npz; FileFormatError unless it is minires's."""
    if META_KEY not in npz.files:
        raise FileFormatError(f"{path} is not a minires model file or checkpoint (no metadata entry)")
    try:
        meta = json.loads(str(npz[META_KEY]))
    except ValueError as exc:           # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FileFormatError(f"{path}: its metadata entry is not valid JSON ({exc})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("name"), str)
            and isinstance(meta.get("options"), dict)):
        raise FileFormatError(f"{path}: its metadata does not name a minires model")
    return meta


def read_npz(path, what="model file"):
    """(metadata dict, {name: array}) of a minires .npz, every array read now.

    Reading everything inside one try turns each way the file can be wrong
    (missing, a folder, empty, truncated, not a zip, pickled objects, foreign)
    into one FileFormatError naming the file: np.load reads lazily, so a
    truncated member would otherwise fail later with a BadZipFile traceback.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileFormatError(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise FileFormatError(f"{path} is a folder, not a {what} (.npz)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):     # a lone .npy array
            raise FileFormatError(f"{path} is a single .npy array, not a minires {what} (.npz)")
        with loaded as npz:
            meta = read_meta(npz, path)
            arrays = {k: npz[k] for k in npz.files if k != META_KEY}
    except FileFormatError:
        raise
    except ValueError as exc:
        # NumPy's own message would suggest allow_pickle=True: the one thing never to do here.
        if "pickle" in str(exc):
            raise FileFormatError(f"{path} holds pickled Python objects, which minires never loads "
                                  f"(they can run code): not a minires {what}") from None
        raise FileFormatError(f"{path} is not a readable {what}: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise FileFormatError(f"{path} is not a readable {what} (empty, truncated or corrupt: "
                              f"{type(exc).__name__}: {exc})") from None
    return meta, arrays


def load(path, expected_name=None):
    """Rebuild the model saved at path. expected_name: refuse a different architecture."""
    from .registry import build
    meta, state = read_npz(path, "model file")
    if "step" in meta:          # minires.checkpoint's metadata: weights under model/, plus momentum
        raise FileFormatError(f"{path} is a training checkpoint, not a model file: use the run's best.npz")
    if expected_name is not None and meta["name"] != expected_name:
        raise FileFormatError(f"{path} holds a {meta['name']!r} model, not {expected_name!r}")
    try:
        model = build(meta["name"], **meta["options"])
    except (ValueError, TypeError) as exc:
        raise FileFormatError(f"{path}: cannot rebuild the model its metadata names: {exc}") from None
    load_weights(model, state, source=f"{path} ({meta['name']})")
    return model


def load_weights(model, state, source="state"):
    """load_state_dict with an error that names both architectures."""
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise MiniresError(f"cannot load {source} into {getattr(model, 'name', type(model).__name__)}: "
                           f"{exc}") from None
