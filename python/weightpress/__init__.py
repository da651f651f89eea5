"""weightpress: compress the weight matrices of trained neural networks.

Kernels (C++17 + OpenMP): thresholding, magnitude pruning to CSR, CSR products, randomized
SVD, batch OMP, basis pursuit / BPDN / LASSO. Compression of model files: ``compress_model``,
``Container``, the compressed-matrix classes, calibration statistics.

Subpackages, each importing only the ones below it: ``cli`` -> ``model`` -> ``compression`` ->
``linalg`` -> the compiled ``_core``; ``io`` (model file formats) is used by ``compression`` and
``model`` and uses none of them.
"""

from __future__ import annotations

import os

# libgomp's idle workers spin for about 300 000 iterations (milliseconds) after each parallel
# region, and OpenBLAS's threads spin after each BLAS call: on a 2-core AMD EPYC (Zen 4) the
# two kept taking each other's cores in randomized_svd (perf: 45 % of its samples in the two
# spin loops), 25 ms per call (768x3072 float32, k = 16) against 12-14 ms with workers that
# spin 1000 iterations before they sleep; the small kernels (SpMV 768x3072, 0.06 ms) kept
# their time, where OMP_WAIT_POLICY=passive slowed them 1.6x. libgomp reads the setting
# once, when it is loaded with the extension below; the environment is then restored, so
# that child processes and other OpenMP runtimes see the user's. A user's own
# GOMP_SPINCOUNT or OMP_WAIT_POLICY is left alone.
_SPIN = not ({"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & os.environ.keys())
if _SPIN:
    os.environ["GOMP_SPINCOUNT"] = "1000"
from . import _core  # noqa: E402  (libgomp loads here)

if _SPIN:
    os.environ.pop("GOMP_SPINCOUNT", None)
from ._threads import get_num_threads, set_num_threads, threads
from .compression import CalibrationStats, Dense, LowRank, Sparse, SparseCoded, SparsePlusLowRank
from .linalg import (ConvergenceWarning, DenseFasterWarning, OMPDictionary, SolverInfo,
                     basis_pursuit, csr_matmul, hard_threshold, lasso, omp, prune, randomized_svd, soft_threshold, svt)
from .model import Container, compress_model, open_source, verify

__version__: str = _core.__version__
has_openmp: bool = bool(_core.has_openmp)

__all__ = [
    "__version__",
    "has_openmp",
    "set_num_threads",
    "get_num_threads",
    "threads",
    "soft_threshold",
    "hard_threshold",
    "prune",
    "csr_matmul",
    "randomized_svd",
    "svt",
    "omp",
    "OMPDictionary",
    "basis_pursuit",
    "lasso",
    "SolverInfo",
    "ConvergenceWarning",
    "DenseFasterWarning",
    "compress_model",
    "open_source",
    "Container",
    "verify",
    "Dense",
    "Sparse",
    "LowRank",
    "SparsePlusLowRank",
    "SparseCoded",
    "CalibrationStats",
]
