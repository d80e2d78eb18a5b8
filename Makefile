# The README's commands: `make demo`, `make test` and `make tutorials`.
# Each creates .venv when it is missing and (re)builds the Cython kernels
# when their source changes. `make demo` installs only what minires needs;
# `make test` adds the test tools, `make tutorials` JupyterLab.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.minires-installed
TESTS  := $(VENV)/.minires-test-tools
LAB    := $(VENV)/.minires-jupyterlab
BUILT  := $(VENV)/.minires-built

.PHONY: demo test test-pure package-check build venv bench tutorials notebook clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=77" "Cython>=3" "numpy>=1.25" matplotlib tqdm threadpoolctl
	touch $@

# pytest, and nbclient + ipykernel to run the tutorial notebooks in the tests
$(TESTS): $(STAMP)
	$(PY) -m pip install -q pytest hypothesis pytest-xdist nbclient nbformat ipykernel
	touch $@

$(LAB): $(STAMP)
	$(PY) -m pip install -q jupyterlab ipykernel
	touch $@

build: $(BUILT)

$(BUILT): $(STAMP) setup.py minires/_kernels.pyx
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: build
	$(PY) -m minires demo

# Two pytest workers, each single-threaded: two processes that each spin up
# BLAS and OpenMP threads on 2 cores slow each other down by 10x.
test: build $(TESTS)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --durations=10

# The op and model tests again on the NumPy reference kernels, the spec the
# compiled ones are held to (CI runs this after `make test`).
PURE_TESTS := tests/test_robustness.py tests/test_gradcheck_ops.py tests/test_torch_parity_ops.py tests/test_fuse.py \
	tests/test_validation.py tests/test_nn.py tests/test_models.py tests/test_recompute.py
test-pure: build $(TESTS)
	MINIRES_PURE=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 $(PURE_TESTS)

# `pip install .` and `python -m build` (MINIRES_NATIVE=0) from a clean copy, each into
# a fresh venv in a temporary folder, and the README's short example there (CI runs it).
package-check:
	.ci/package_check.sh

bench: build
	$(PY) benchmarks/bench.py --quick

# Opens JupyterLab on tutorials/ in the browser (Ctrl-C twice here to stop it).
tutorials: build $(LAB)
	cd tutorials && ../$(VENV)/bin/jupyter lab

notebook: tutorials

clean:
	rm -rf build *.egg-info minires/_kernels.c minires/*.so $(BUILT)
