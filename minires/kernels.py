"""Pick the kernel backend: the compiled extension, or the NumPy reference.

``MINIRES_PURE=1`` forces the reference kernels (``_kernels_ref``), which
tests use to compare both paths. Otherwise the compiled extension is
required: without it training is far too slow, so a missing build is an
error at import that says how to fix it, never a silent fallback.

The extension is found at import but loaded at the first kernel call:
loading it starts the OpenMP runtime, which reads its settings then, so
minires.runtime.setup() can still choose them after `import minires`.

A portable build (MINIRES_NATIVE=0, see setup.py) holds the kernels
compiled for several x86-64 levels; the best one this CPU runs is loaded
(``kernels.module`` names it). A native build has one, ``minires._kernels``.
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

KERNELS = ("im2col", "col2im", "conv_direct_forward", "direct_weights", "conv_direct_backward_weight",
           "winograd_weights", "conv_winograd_forward", "conv_winograd_backward_weight",
           "max_pool_forward", "max_pool_backward", "batchnorm_forward", "batchnorm_apply", "batchnorm_backward",
           "relu", "add_relu", "relu_grad", "bias_relu", "sgd_update", "matmul", "tap_weights")


# The portable build's extra copies of the kernels, best first, and the CPU
# features (Linux /proc/cpuinfo names) each needs: GCC's x86-64-v4 and -v3.
CPU_LEVELS = [("minires._kernels_x86_64_v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
              ("minires._kernels_x86_64_v3", {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"})]


def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pick_module(flags, available):
    """The kernels module to load: the best CPU level that is built (in
    `available`) and whose features are all in `flags`; else minires._kernels."""
    for module, needs in CPU_LEVELS:
        if module in available and needs <= flags:
            return module
    return "minires._kernels"


def _find_extension():
    """-> the module name to load; fails now, with the hint, if none is built."""
    def built(module):
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError, AttributeError) as exc:   # e.g. sys.modules entry set to None
            raise ImportError(f"{_BUILD_HINT}\n(import error: {exc})") from exc
    if not built("minires._kernels"):
        raise ImportError(f"{_BUILD_HINT}\n(no module minires._kernels)")
    levels = [m for m, _ in CPU_LEVELS if built(m)]
    return pick_module(cpu_flags(), levels) if levels else "minires._kernels"


if PURE:
    backend, name, module = _kernels_ref, "reference", "minires._kernels_ref"
    globals().update({k: getattr(backend, k) for k in KERNELS})
else:
    module = _find_extension()
    backend, name = None, "cython"


def load_backend():
    """The kernels module (compiled, or the reference with MINIRES_PURE=1), loaded on first use."""
    global backend
    if backend is None:
        try:
            backend = importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{_BUILD_HINT}\n(import error: {exc})") from exc
        # bind them here, so later calls find them without __getattr__
        globals().update({k: getattr(backend, k) for k in KERNELS})
    return backend


def __getattr__(attr):
    """kernels.im2col and the rest before the first load: load the backend (PEP 562)."""
    if attr in KERNELS:
        return getattr(load_backend(), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def matmul_shares_rows():
    """Whether kernels.matmul shares a product's rows between the threads (the
    compiled blocks, AVX and AVX-512 builds); elsewhere it is NumPy's matmul
    on the calling thread."""
    return not PURE and load_backend().tile_sizes()["matmul_shares_rows"]


def wide_forward_tiles():
    """Whether the direct kernel's forward tiles span 32 positions (AVX-512
    builds), which fit the 10-wide padded rows of an 8x8 map poorly."""
    return not PURE and load_backend().tile_sizes()["PB"] >= 32


def set_num_threads(n):
    """Threads for the compiled loops and for splitting a batch (minires.parallel)."""
    from . import parallel
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    parallel.set_threads(n)
    if not PURE:
        load_backend().set_num_threads(n)
