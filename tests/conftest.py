import os

import numpy as np
import pytest


def _import_torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("MINIRES_REQUIRE_TORCH") == "1":
            pytest.fail("MINIRES_REQUIRE_TORCH=1 but torch is not installed: parity tests cannot run")
        pytest.skip("torch not installed (parity tests need it; CI sets MINIRES_REQUIRE_TORCH=1)")
    torch.set_num_threads(1)
    return torch


@pytest.fixture
def torch():
    """PyTorch, the reference for parity tests: a skip if absent, a failure if required."""
    return _import_torch()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tol(dtype):
    """Tolerances for comparing minires with PyTorch in a given precision."""
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
