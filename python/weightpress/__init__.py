"""weightpress: compress the weight matrices of trained neural networks.

Kernels (C++17 + OpenMP): thresholding, magnitude pruning to CSR, CSR products.
"""

from __future__ import annotations

from . import _core
from ._threads import get_num_threads, set_num_threads, threads
from .recovery import ConvergenceWarning, OMPDictionary, SolverInfo, basis_pursuit, lasso, omp
from .sparse import csr_matmul, prune
from .svd import randomized_svd, svt
from .threshold import hard_threshold, soft_threshold

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
]
