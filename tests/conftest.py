import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from helpers import correlated_inputs  # tests/ is on the path when conftest runs
from weightpress.compression.calibration import CalibrationStats

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tolerance of a computed result against a float64 reference, by dtype (scaled by problem size
# where cancellation matters).
EPS = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The real-architecture table (tests/test_real_models.py), when those tests ran."""
    import sys
    mod = sys.modules.get("realmodels")
    if mod is not None and mod.RESULTS:
        terminalreporter.write_sep("=", "real models: file ratio and output difference "
                                        "(relative L2) vs the original")
        terminalreporter.write_line(mod.table())


@pytest.fixture
def layer():
    """A 96x64 weight and its calibration inputs (correlated, with outlier channels)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((96, 64)) / 8
    X = correlated_inputs(rng, 1000, 64)
    return W, X, CalibrationStats.from_inputs(X)
