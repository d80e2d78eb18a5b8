"""Build the compiled kernels ``minires._kernels`` from Cython.

OpenMP is probed at build time (as scikit-learn does): if the compiler
accepts -fopenmp the prange loops run in parallel, otherwise they run
serially and stay correct. ``MINIRES_OPENMP=0`` turns the probe off.
"""
import os
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


def openmp_flags():
    """Compile and link a tiny OpenMP program; return the flags that worked, or []."""
    if os.environ.get("MINIRES_OPENMP", "1") == "0":
        print("minires: MINIRES_OPENMP=0, building without OpenMP")
        return []
    flags = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception as exc:  # any compiler failure means "no OpenMP"
            print(f"minires: OpenMP not available ({exc.__class__.__name__}); prange loops run serially")
            return []
    print(f"minires: building with OpenMP ({' '.join(flags)})")
    return flags


omp = openmp_flags()
ext = Extension(
    "minires._kernels",
    ["minires/_kernels.pyx"],
    include_dirs=[np.get_include()],
    extra_compile_args=["-O3"] + omp if sys.platform != "win32" else omp,
    extra_link_args=omp,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)
setup(ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}))
