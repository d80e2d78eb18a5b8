"""Pick the kernel backend: the compiled extension, or the NumPy reference.

``MINIRES_PURE=1`` forces the reference kernels (``_kernels_ref``), which
tests use to compare both paths. Otherwise the compiled extension is
required: without it training is far too slow, so a missing build is an
error that says how to fix it, never a silent fallback.
"""
import os

from . import _kernels_ref

PURE = os.environ.get("MINIRES_PURE", "0") == "1"

_BUILD_HINT = (
    "minires: the compiled kernels (minires._kernels) are missing or broken.\n"
    "Build them with `pip install -e .` (or `make build`) from the project root,\n"
    "or set MINIRES_PURE=1 to run the slow NumPy reference kernels instead."
)

# The Cython loops (OpenMP) and NumPy's BLAS (its own pthreads) take turns on
# the same cores. OpenMP's default is to spin-wait after each loop, which
# starves BLAS threads on a 2-core machine (a conv step ran 50x slower in
# our measurements); passive waiting hands the cores over. It must be set
# before the extension loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if PURE:
    backend = _kernels_ref
    name = "reference"
else:
    try:
        from . import _kernels as backend
    except ImportError as exc:
        raise ImportError(f"{_BUILD_HINT}\n(import error: {exc})") from exc
    name = "cython"

im2col = backend.im2col
col2im = backend.col2im
conv_direct_forward = backend.conv_direct_forward
conv_direct_backward_weight = backend.conv_direct_backward_weight
max_pool_forward = backend.max_pool_forward
max_pool_backward = backend.max_pool_backward
batchnorm_forward = backend.batchnorm_forward
batchnorm_backward = backend.batchnorm_backward
relu_forward = backend.relu_forward
add_relu_forward = backend.add_relu_forward
relu_backward = backend.relu_backward


def set_num_threads(n):
    """Threads for the compiled loops and for splitting a batch (minires.parallel)."""
    from . import parallel
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    parallel.set_threads(n)
    if not PURE:
        backend.set_num_threads(n)


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates the same large arrays (im2col columns, 75 MB
    for a resnet-20 stage-1 conv) every step. By default glibc serves each
    from a fresh mmap and unmaps it when freed, so every step pays the page
    faults again: a third of a resnet-20 step in our measurements. With mmap
    off and trimming off, freed blocks are reused; the process keeps its peak
    memory. Called by training and benchmarks; a no-op off glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
