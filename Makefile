# The README's two commands: `make demo` and `make test`.
# Each creates .venv when it is missing and (re)builds the Cython kernels
# when their source changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.minires-installed
BUILT  := $(VENV)/.minires-built

.PHONY: demo test test-pure build venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=64" wheel "Cython>=3" "numpy>=1.25" matplotlib tqdm threadpoolctl \
		pytest hypothesis pytest-xdist nbclient nbformat ipykernel
	touch $@

build: $(BUILT)

$(BUILT): $(STAMP) setup.py minires/_kernels.pyx
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: build
	$(PY) -m minires demo

# Two pytest workers, each single-threaded: two processes that each spin up
# BLAS and OpenMP threads on 2 cores slow each other down by 10x.
test: build
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --durations=10

# The op and model tests again on the NumPy reference kernels, the spec the
# compiled ones are held to (CI runs this after `make test`).
PURE_TESTS := tests/test_robustness.py tests/test_gradcheck_ops.py tests/test_torch_parity_ops.py \
	tests/test_validation.py tests/test_nn.py tests/test_models.py
test-pure: build
	MINIRES_PURE=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 $(PURE_TESTS)

bench: build
	$(PY) benchmarks/bench.py --quick

clean:
	rm -rf build *.egg-info minires/_kernels.c minires/*.so $(BUILT)
