"""Build the compiled kernels ``minires._kernels`` from Cython.

OpenMP is probed at build time (as scikit-learn does): if the compiler
accepts -fopenmp the prange loops run in parallel, otherwise they run
serially and stay correct. ``MINIRES_OPENMP=0`` turns the probe off.

The kernels are compiled for the building machine's CPU (-march=native),
so the convolution's inner loops use its widest vectors (AVX-512 or AVX2
FMA; about 2.5x faster than the SSE2 baseline on the direct convolution).
A build made this way may not run on an older CPU: set
``MINIRES_NATIVE=0`` to build a portable package. On x86-64 it holds the
kernels three times, for the baseline CPU, for x86-64-v3 (AVX2 + FMA) and
for x86-64-v4 (AVX-512), and minires.kernels loads the best one the CPU
runs, as NumPy dispatches its own loops.
"""
import glob
import os
import platform
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
""")


def compiler_accepts(flags, source="int main(void) { return 0; }"):
    """True if the C compiler builds and links `source` with `flags`."""
    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:  # any compiler failure means "not supported"
            return False
    return True


def native_flags():
    """-march=native when the compiler takes it and MINIRES_NATIVE is not 0.

    GCC then still prefers 256-bit vectors on AVX-512 CPUs (clock-speed
    caution for mixed workloads); the convolution tiles run 1.5x faster with
    512-bit ones, so they are asked for where the compiler knows the option.
    """
    if os.environ.get("MINIRES_NATIVE", "1") == "0" or sys.platform == "win32":
        print("minires: portable build, for any CPU of this architecture (no -march=native)")
        return []
    for flags in (["-march=native", "-mprefer-vector-width=512"], ["-march=native"]):
        if compiler_accepts(flags):
            print(f"minires: building for this machine's CPU ({' '.join(flags)}; MINIRES_NATIVE=0 for a portable build)")
            return flags
    print("minires: the compiler does not take -march=native; portable build")
    return []


def openmp_flags():
    """Compile and link a tiny OpenMP program; return the flags that worked, or []."""
    if os.environ.get("MINIRES_OPENMP", "1") == "0":
        print("minires: MINIRES_OPENMP=0, building without OpenMP")
        return []
    flags = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
    if not compiler_accepts(flags, PROBE):
        print("minires: OpenMP not available; prange loops run serially")
        return []
    print(f"minires: building with OpenMP ({' '.join(flags)})")
    return flags


# The portable build's extra copies of the kernels: (module suffix, flags).
# minires.kernels.CPU_LEVELS says which CPU features each needs.
PORTABLE_LEVELS = [("x86_64_v4", ["-march=x86-64-v4", "-mprefer-vector-width=512"]),
                   ("x86_64_v3", ["-march=x86-64-v3"])]


def kernels_extension(name, source, flags, omp):
    return Extension(
        name, [source],
        include_dirs=[np.get_include()],
        extra_compile_args=["-O3"] + flags + omp if sys.platform != "win32" else omp,
        extra_link_args=omp,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


def level_extensions(omp):
    """For a portable build on x86-64: the kernels compiled again for each
    CPU level the compiler knows, from copies of the source named after the
    level (Cython names a module after its file)."""
    if sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    exts = []
    for level, flags in PORTABLE_LEVELS:
        if not compiler_accepts(flags):
            continue
        source = os.path.join("build", "levels", "minires", f"_kernels_{level}.pyx")
        os.makedirs(os.path.dirname(source), exist_ok=True)
        shutil.copyfile(os.path.join("minires", "_kernels.pyx"), source)
        exts.append(kernels_extension(f"minires._kernels_{level}", source, flags, omp))
        print(f"minires: also building the kernels for {level} ({' '.join(flags)})")
    return exts


def remove_stale_levels():
    """A native build in place (pip install -e) after a portable one: the
    level copies left in minires/ would load instead of the fresh kernels."""
    for path in glob.glob(os.path.join("minires", "_kernels_x86_64_v*")):
        os.remove(path)


omp = openmp_flags()
native = native_flags()
extensions = [kernels_extension("minires._kernels", "minires/_kernels.pyx", native, omp)]
if native:
    remove_stale_levels()
else:
    extensions += level_extensions(omp)
# The packages are listed here, not in pyproject.toml's [tool.setuptools] table
# (beta in the setuptools 65 that a fresh Python 3.11 venv starts with).
# package_dir {"": "."} makes `pip install -e .` put the project folder on
# sys.path (a static .pth) instead of installing a meta path finder, which
# warns about "folders ... with the same name as your package": here that
# folder is the package itself.
setup(
    packages=["minires", "minires.functional", "minires.nn", "minires.models", "minires.dev"],
    package_dir={"": "."},
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
