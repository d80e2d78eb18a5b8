"""Pick the kernel backend: the compiled extension, or the NumPy reference.

``MINIRES_PURE=1`` forces the reference kernels (``_kernels_ref``), which
tests use to compare both paths. Otherwise the compiled extension is
required: without it training is far too slow, so a missing build is an
error at import that says how to fix it, never a silent fallback.

The extension is found at import but loaded at the first kernel call:
loading it starts the OpenMP runtime, which reads its settings then, so
minires.runtime.setup() can still choose them after `import minires`.
"""
import importlib
import importlib.util
import os

from . import _kernels_ref

PURE = os.environ.get("MINIRES_PURE", "0") == "1"

_BUILD_HINT = (
    "minires: the compiled kernels (minires._kernels) are missing or broken.\n"
    "Build them with `pip install -e .` (or `make build`) from the project root,\n"
    "or set MINIRES_PURE=1 to run the slow NumPy reference kernels instead."
)

KERNELS = ("im2col", "col2im", "conv_direct_forward", "conv_direct_backward_weight",
           "max_pool_forward", "max_pool_backward", "batchnorm_forward", "batchnorm_backward",
           "relu", "add_relu", "relu_grad", "bias_relu")


def _find_extension():
    """Fail now, with the hint, if the compiled module cannot be found."""
    try:
        found = importlib.util.find_spec("minires._kernels") is not None
    except (ImportError, ValueError, AttributeError) as exc:   # e.g. sys.modules entry set to None
        raise ImportError(f"{_BUILD_HINT}\n(import error: {exc})") from exc
    if not found:
        raise ImportError(f"{_BUILD_HINT}\n(no module minires._kernels)")


if PURE:
    backend, name = _kernels_ref, "reference"
    globals().update({k: getattr(backend, k) for k in KERNELS})
else:
    _find_extension()
    backend, name = None, "cython"


def _backend():
    global backend
    if backend is None:
        try:
            backend = importlib.import_module("minires._kernels")
        except ImportError as exc:
            raise ImportError(f"{_BUILD_HINT}\n(import error: {exc})") from exc
        # bind them here, so later calls find them without __getattr__
        globals().update({k: getattr(backend, k) for k in KERNELS})
    return backend


def __getattr__(attr):
    """kernels.im2col and the rest before the first load: load the backend (PEP 562)."""
    if attr in KERNELS:
        return getattr(_backend(), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def set_num_threads(n):
    """Threads for the compiled loops and for splitting a batch (minires.parallel)."""
    from . import parallel
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    parallel.set_threads(n)
    if not PURE:
        _backend().set_num_threads(n)
