import os
import subprocess
import sys

import numpy as np
import pytest


TORCH_MISSING = "torch not installed (parity tests need it; CI sets MINIRES_REQUIRE_TORCH=1)"


def _import_torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("MINIRES_REQUIRE_TORCH") == "1":
            pytest.fail("MINIRES_REQUIRE_TORCH=1 but torch is not installed: parity tests cannot run")
        pytest.skip(TORCH_MISSING)
    torch.set_num_threads(1)
    return torch


@pytest.fixture
def torch():
    """PyTorch, the reference for parity tests: a skip if absent, a failure if required."""
    return _import_torch()


def pytest_terminal_summary(terminalreporter):
    """Under "N skipped": one line saying which skips were for want of torch, and how to run them."""
    n = sum(TORCH_MISSING in str(report.longrepr) for report in terminalreporter.stats.get("skipped", []))
    if n:
        terminalreporter.write_line(
            f"{n} PyTorch parity tests skipped: torch is not installed; `.venv/bin/pip install torch==2.13.0` "
            "(the CPU build) and rerun, or set MINIRES_REQUIRE_TORCH=1 (as CI does) to make a missing torch an error")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tol(dtype):
    """Tolerances for comparing minires with PyTorch in a given precision."""
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)


def run_cli(*args, cwd, code):
    """`python -m minires ARGS` in cwd; asserts the exit code, and for code 2
    (a refusal) one `minires: error:` line and no traceback. -> stdout + stderr."""
    r = subprocess.run([sys.executable, "-m", "minires", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == code, r.stdout + r.stderr
    if code == 2:
        assert "Traceback" not in r.stderr and "minires: error:" in r.stderr, r.stderr
    return r.stdout + r.stderr
