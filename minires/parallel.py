"""Split a batch across threads, one contiguous chunk of images each.

The convolutions work image by image (or a few small images at a time), on
data that stays in cache. Python threads can run the chunks side by side
because the Cython loops and NumPy's BLAS release the GIL; BLAS itself is
kept to one thread meanwhile, so the two levels of threading never fight
over the cores.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

def default_threads():
    """OMP_NUM_THREADS when set (its first number), else every core."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else max(1, os.cpu_count() or 1)


_threads = default_threads()
_pool, _pool_size = None, 0         # the executor, and how many workers it was made with
_controller = None


def get_threads():
    return _threads


def set_threads(n):
    global _threads, _pool
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _threads, _pool = n, None


def single_threaded_blas():
    """Limit BLAS to one thread for the duration (threadpoolctl).

    minires never lets BLAS start its own threads: after a multi-threaded call
    OpenBLAS keeps them spinning for a while, taking a core from whatever runs
    next (it halved the speed of the batchnorm after a 1x1 conv). Once
    pin_blas_to_one_thread has run, there is nothing left to limit."""
    controller = None if _blas_pinned else _blas_controller()
    return nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


_blas_pinned = False


def pin_blas_to_one_thread():
    """BLAS on one thread for the rest of the process (runtime.setup calls it)
    -> True, or False without threadpoolctl. Setting the limit and restoring
    it around each product costs about 10 microseconds, more than a
    one-image linear layer's product (16 us with the limit, 6 without)."""
    global _blas_pinned
    controller = _blas_controller()
    if controller is None:
        return False
    controller.limit(limits=1, user_api="blas")     # not a `with`: the limit stays
    _blas_pinned = True
    return True


def _blas_controller():
    """threadpoolctl's controller (made once), or None without threadpoolctl."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        # The controller holds only the libraries loaded when it is made: BLAS
        # comes with NumPy, and `python -m minires` runs runtime.setup() before
        # anything has imported NumPy. Made earlier, the pin held nothing, and
        # the CLI's products ran on two BLAS threads (its runs then differed in
        # the last bits from the same run started in a process that had NumPy).
        import numpy  # noqa: F401
        _controller = ThreadpoolController()
    return _controller


def map_chunks(fn, n, blas=True):
    """fn(lo, hi) over contiguous chunks of range(n), one per thread -> list of results, in order.

    blas: fn calls BLAS (NumPy's matmul), which then runs on one thread, even
    for a single chunk (see single_threaded_blas); False skips that limit
    (a few microseconds) for the compiled kernels, which call no BLAS."""
    global _pool, _pool_size
    parts = min(_threads, n)
    with single_threaded_blas() if blas else nullcontext():
        if parts <= 1:
            return [fn(0, n)]
        bounds = [n * i // parts for i in range(parts + 1)]
        if _pool is None or _pool_size != _threads:
            _pool, _pool_size = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="minires"), _threads
        futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        return [f.result() for f in futures]
