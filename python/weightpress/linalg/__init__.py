"""The numpy-level kernels: thresholding, pruning to CSR, CSR products, randomized SVD and
singular value thresholding, batch OMP, basis pursuit / BPDN / LASSO."""

from .recovery import ConvergenceWarning, OMPDictionary, SolverInfo, basis_pursuit, lasso, omp
from .sparse import DenseFasterWarning, csr_matmul, dense_product_pays, prune
from .svd import randomized_svd, svt
from .threshold import hard_threshold, soft_threshold

__all__ = ["soft_threshold", "hard_threshold", "prune", "csr_matmul", "randomized_svd", "svt",
           "omp", "OMPDictionary", "basis_pursuit", "lasso", "SolverInfo", "ConvergenceWarning",
           "DenseFasterWarning", "dense_product_pays"]
