"""weightpress: compress the weight matrices of trained neural networks.

Kernels (C++17 + OpenMP): thresholding, magnitude pruning to CSR, CSR products, randomized
SVD, batch OMP, basis pursuit / BPDN / LASSO. Compression of model files: ``compress_model``,
``Container``, the compressed-matrix classes, calibration statistics (``weightpress.io`` reads
and writes model files; ``weightpress.data_aware`` holds the data-aware algorithms).
"""

from __future__ import annotations

from . import _core
from ._threads import get_num_threads, set_num_threads, threads
from .recovery import ConvergenceWarning, OMPDictionary, SolverInfo, basis_pursuit, lasso, omp
from .sparse import csr_matmul, prune
from .svd import randomized_svd, svt
from .threshold import hard_threshold, soft_threshold
from .calibration import CalibrationStats  # noqa: E402  (after the kernels it uses)
from .compressed import Dense, LowRank, Sparse, SparseCoded, SparsePlusLowRank  # noqa: E402
from .compress import compress_model, open_source  # noqa: E402
from .container import Container, verify  # noqa: E402

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
