"""Importing minires changes nothing process-wide; runtime.setup() does, when asked."""
import ctypes.util
import os
import platform
import subprocess
import sys

import numpy as np
import pytest


def _run(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**base, "MINIRES_PURE": "0", **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_changes_nothing_process_wide():
    out = _run("import os, sys; before = dict(os.environ)\n"
               "import minires, minires.functional, minires.train, minires.models, minires.cli\n"
               "print(os.environ == before, 'minires._kernels' in sys.modules)")
    assert out == "True False"      # no variable set, and the OpenMP runtime not even loaded


def test_setup_sets_the_wait_policy_before_the_kernels_load():
    out = _run("import os, sys, numpy as np\n"
               "import minires.functional as F\n"
               "from minires import runtime\n"
               "done = runtime.setup()\n"
               "F.relu_forward(np.ones(3))\n"
               "print(done['OMP_WAIT_POLICY'], os.environ['OMP_WAIT_POLICY'], done['GOMP_SPINCOUNT'],\n"
               "      os.environ['GOMP_SPINCOUNT'], 'minires._kernels' in sys.modules)")
    assert out == "PASSIVE PASSIVE 10000 10000 True"


def test_setup_says_when_it_is_too_late_and_keeps_the_users_choice():
    late = _run("import numpy as np, minires.functional as F\nfrom minires import runtime\n"
                "F.relu_forward(np.ones(3))\nprint(runtime.setup()['OMP_WAIT_POLICY'])")
    assert "too late" in late
    kept = _run("from minires import runtime\nprint(runtime.setup()['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE")
    assert kept.startswith("ACTIVE")
    kept = _run("from minires import runtime\nprint(runtime.setup()['GOMP_SPINCOUNT'])", GOMP_SPINCOUNT="5")
    assert kept.startswith("5 (set in the environment; kept)")


_PRELOAD_GOMP = ("import ctypes, warnings\n"
                 "ctypes.CDLL('libgomp.so.1')      # as importing torch first does: its runtime, loaded\n"
                 "from minires import runtime\n"
                 "with warnings.catch_warnings(record=True) as caught:\n"
                 "    warnings.simplefilter('always')\n"
                 "    done = runtime.setup()\n"
                 "print(done['OMP_WAIT_POLICY'], '|', done['GOMP_SPINCOUNT'], '|', [str(w.message) for w in caught])")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.skipif(ctypes.util.find_library("gomp") is None, reason="no GCC OpenMP runtime here to load first")
def test_setup_says_when_another_library_loaded_the_openmp_runtime_first():
    """The kernels would share that runtime, which read the environment when it
    loaded: setup() reports the defaults in force and warns, instead of
    reporting PASSIVE (a folded resnet-20 batch took 1.5x as long)."""
    policy, spin, warned = _run(_PRELOAD_GOMP).split(" | ")
    assert policy.startswith("the OpenMP default (") and "libgomp.so.1" in policy and "loaded before setup()" in policy
    assert "too late to change" in spin and "another library loaded the OpenMP runtime first" in warned
    # a value set in the environment before Python started was read at that load: in force, no warning
    policy, spin, warned = _run(_PRELOAD_GOMP, OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="10000").split(" | ")
    assert (policy, spin, warned) == ("PASSIVE", "10000", "[]")


def test_kernels_load_on_first_use_and_compute():
    import minires.functional as F
    out, _ = F.relu_forward(np.array([-1.0, 2.0]))
    np.testing.assert_array_equal(out, [0.0, 2.0])


def test_portable_build_picks_the_best_level_this_cpu_runs():
    from minires import kernels
    v4, v3 = (m for m, _ in kernels.CPU_LEVELS)
    avx512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    avx2 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}
    both = [v4, v3]
    assert kernels.pick_module(avx512 | avx2, both) == v4
    assert kernels.pick_module(avx2, both) == v3
    assert kernels.pick_module(avx2 - {"fma"}, both) == "minires._kernels"          # one feature short
    assert kernels.pick_module(avx512 | avx2, [v3]) == v3                           # v4 not built
    assert kernels.pick_module(avx512 | avx2, []) == "minires._kernels"             # a native build
    assert kernels.pick_module(set(), both) == "minires._kernels"                   # no /proc/cpuinfo


def test_blas_runs_on_one_thread_inside_every_chunk():
    """A multi-threaded BLAS call leaves its threads spinning on the cores the
    next op needs (one image's 1x1 convs took 8 ms instead of 0.09): minires's
    products run on one BLAS thread, also when the batch is a single chunk."""
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_info

    from minires import parallel

    def blas_threads(lo, hi):
        return max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1)

    assert parallel.map_chunks(blas_threads, 1) == [1]
    assert parallel.map_chunks(blas_threads, 4) == [1] * min(4, parallel.get_threads())


@pytest.mark.parametrize("numpy_first", [True, False])
def test_setup_pins_blas_to_one_thread(numpy_first):
    """After setup(), BLAS stays on one thread and the per-call limit has nothing to do;
    also when setup() runs before anything imported NumPy (and its BLAS), as
    `python -m minires` does: there the pin once held nothing, and the command
    line's products ran on two BLAS threads."""
    pytest.importorskip("threadpoolctl")
    out = _run(("import numpy as np\n" if numpy_first else "") +
               "from minires import runtime, parallel\n"
               "done = runtime.setup()\n"
               "import numpy as np\nfrom threadpoolctl import threadpool_info\n"
               "after = {l['num_threads'] for l in threadpool_info() if l['user_api'] == 'blas'}\n"
               "print(done['one_blas_thread'], sorted(after), type(parallel.single_threaded_blas()).__name__)",
               OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    assert out == "True [1] nullcontext"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")
@pytest.mark.parametrize("one_arena", [True, False])
def test_keep_freed_memory_puts_every_thread_on_one_heap(one_arena):
    """With one_arena a thread that allocates after the call takes the main
    heap (glibc's malloc_info lists one); without it, a heap of its own."""
    out = _run("import ctypes, threading, numpy as np\nfrom minires import runtime\n"
               f"print(runtime.keep_freed_memory(one_arena={one_arena}), flush=True)\n"
               "def work():\n    kept = [np.ones(20_000) for _ in range(10)]\n"
               "t = threading.Thread(target=work); t.start(); t.join()\n"
               "libc = ctypes.CDLL('libc.so.6'); libc.fdopen.restype = ctypes.c_void_p\n"
               "f = ctypes.c_void_p(libc.fdopen(1, b'w')); libc.malloc_info(0, f); libc.fflush(f)")
    kept, info = out.split("\n", 1)
    assert kept == "True"
    heaps = info.count("<heap nr=")
    assert heaps == 1 if one_arena else heaps >= 2, info[:500]
