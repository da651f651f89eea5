"""weightpress: compress the weight matrices of trained neural networks.

Kernels (C++17 + OpenMP): thresholding, magnitude pruning to CSR, CSR products, randomized
SVD, batch OMP, basis pursuit / BPDN / LASSO. Compression of model files: ``compress_model``,
``Container``, the compressed-matrix classes, calibration statistics.

Subpackages, each importing only the ones below it: ``cli`` -> ``model`` -> ``compression`` ->
``linalg`` -> the compiled ``_core``; ``io`` (model file formats) is used by ``compression`` and
``model`` and uses none of them.
"""

from __future__ import annotations

from . import _core
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
