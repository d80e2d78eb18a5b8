"""Process-wide settings that make training fast, applied only when asked.

Importing minires changes nothing outside minires. The settings below are
what a training run wants, but they touch the whole process (an environment
variable read by the OpenMP runtime, glibc's allocator), so they are made
by one explicit call: ``minires.runtime.setup()``. The command line and
``minires.train.train`` call it; a script or notebook that drives the
layers itself may call it first. docs/runtime.md explains each setting and
what it bought.
"""
import os
import sys

from . import parallel


def setup(threads=None, wait_policy="PASSIVE", spin_count=10_000, keep_freed_memory=True, one_blas_thread=True):
    """Apply the settings; returns {setting: what happened} (for logs and tests).

    threads: threads for the compiled loops and for splitting a batch
        (None: keep the current count, OMP_NUM_THREADS or every core).
    wait_policy: OMP_WAIT_POLICY for the OpenMP runtime ("PASSIVE": a thread
        that finished its share of a loop sleeps instead of spinning, so the
        cores go to the Python threads that run the next op). OpenMP reads it
        once, when the compiled kernels load, so it takes effect only if no
        kernel has run yet in this process and no other library loaded the
        OpenMP runtime they share (PyTorch brings one: import it after this
        call; a RuntimeWarning says when it came first); a value the user
        already set in the environment is kept. None: leave it alone.
    spin_count: GOMP_SPINCOUNT, read the same way by GCC's OpenMP runtime
        (libgomp; other runtimes ignore it): a thread that finished a loop
        spins this many times (about 0.1-0.2 ms) before it sleeps, so that
        the next loop, a layer later, finds it awake; waking a sleeping thread
        took about 70 microseconds here, more than a small conv's work. It
        overrides PASSIVE's "never spin" in libgomp only. None: leave it alone.
    keep_freed_memory: ask glibc to keep freed memory for reuse (see
        keep_freed_memory below).
    one_blas_thread: BLAS (NumPy's matmul, yours too) on one thread from now
        on (minires.parallel.pin_blas_to_one_thread); minires's own products
        otherwise limit it around each call, which costs microseconds.
    """
    done = {}
    kernels_loaded = any(m.startswith("minires._kernels") and m != "minires._kernels_ref" for m in sys.modules)
    other = None if kernels_loaded else loaded_openmp()     # a runtime some other library loaded
    if wait_policy is not None:
        if other is not None and "OMP_WAIT_POLICY" not in os.environ:
            _warn_another_library_loaded_openmp(other)
        done["OMP_WAIT_POLICY"] = _set_before_load("OMP_WAIT_POLICY", wait_policy, kernels_loaded, other)
    if spin_count is not None:
        done["GOMP_SPINCOUNT"] = _set_before_load("GOMP_SPINCOUNT", str(spin_count), kernels_loaded, other)
    if keep_freed_memory:
        done["keep_freed_memory"] = globals()["keep_freed_memory"]()
    if one_blas_thread:
        done["one_blas_thread"] = parallel.pin_blas_to_one_thread()
    if threads is not None:
        from . import kernels
        kernels.set_num_threads(threads)
        done["threads"] = threads
    else:
        done["threads"] = parallel.get_threads()
    return done


def _set_before_load(name, value, kernels_loaded, other):
    """Set the OpenMP runtime's environment variable `name` unless the kernels
    are loaded, another library loaded the OpenMP runtime they will share (its
    path: other), or the user set it -> the value in force, with a note if it
    is not `value`."""
    current = os.environ.get(name)
    if kernels_loaded:
        return f"{current or 'the OpenMP default'} (the kernels were loaded before setup(): too late to change)"
    if current is not None and current.upper() != value.upper():
        return f"{current} (set in the environment; kept)"
    if other is not None and current is None:   # (a value set in the environment was read at that load)
        return f"the OpenMP default ({other} was loaded before setup(): too late to change)"
    os.environ[name] = value
    _set_here.add(name)
    return value


_set_here = set()


# The kernels link GCC's OpenMP runtime by its soname, libgomp.so.1. A
# library that brought its own copy under that name (PyTorch's wheel does,
# torch/lib/libgomp.so.1) and was imported first has that copy loaded, with
# the environment of that moment; the kernels then share it, and setting
# the variables afterwards changes nothing. A folded resnet-20, batch 128,
# AMD EPYC (Zen 3), one process each: 89-111 ms without torch (4), 132-152
# with torch imported first (4; setup() reported PASSIVE all the same before
# it checked), 93 and 98 with torch first but the variables set before
# Python started. (Copies that auditwheel renamed, libgomp-<hash>.so.1, are
# other runtimes: the kernels load their own.)
OPENMP_SONAME = "libgomp.so.1"


def loaded_openmp():
    """The path of the OpenMP runtime the kernels would share, when something
    already loaded it (Linux: /proc/self/maps), else None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                name = os.path.basename(path)       # the file: libgomp.so.1, or the system's libgomp.so.1.0.0
                if name == OPENMP_SONAME or name.startswith(OPENMP_SONAME + "."):
                    return path
    except OSError:
        pass
    return None


def _warn_another_library_loaded_openmp(path):
    """The RuntimeWarning for a wait policy another library's OpenMP runtime (path) keeps out."""
    import warnings
    warnings.warn("minires.runtime.setup(): another library loaded the OpenMP runtime first "
                  f"({path}), so its wait policy could not be set: its threads keep spinning "
                  "after each loop and take cores from minires's threads (a batch can take 1.5x as long). "
                  "Call minires.runtime.setup() before importing that library, or start Python with "
                  "OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000 in the environment.",
                  RuntimeWarning, stacklevel=3)


def variables_set():
    """The environment variables setup() wrote in this process (child processes
    inherit them: the benchmark's PyTorch workers must not)."""
    return frozenset(_set_here)


def keep_freed_memory(one_arena=True):
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates the same large arrays (a resnet-20 stage-1
    activation is 8 MB, its im2col columns 75 MB) every step. By default glibc
    serves each from a fresh mmap and unmaps it when freed, so every step pays
    the page faults again. With mmap off and trimming off, freed blocks are
    reused; the process keeps its peak memory. one_arena: every thread
    allocates from the one heap (M_ARENA_MAX = 1), so that a block freed by
    one thread serves the next array of another: glibc otherwise gives each
    thread that allocates its own arena, which keeps its own freed blocks
    (imagenet-resnet-50 step peak 457 -> 445 MB, AMD Zen 3; threads that
    start after this call only). False where this is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    kept = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    return kept and (not one_arena or bool(mallopt(m_arena_max, 1)))


def cpu_name():
    """The CPU's model name ('AMD EPYC 7B13') from /proc/cpuinfo on Linux, else
    platform.processor(), else 'unknown CPU': benchmarks and study logs name
    the machine that measured them."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
