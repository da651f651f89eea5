"""Hand-written stub of the compiled module (private: use the weightpress package).

Checked against the built module in CI: ``python -m mypy.stubtest weightpress._core``.
"""

import enum
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__version__: str
has_openmp: bool
mmap_threshold: int  # glibc mmap threshold fixed at import (bytes; 0: left alone)
_cython_blas: ModuleType
_cython_lapack: ModuleType

class ShapeError(ValueError): ...
class NonFinite(ValueError): ...

# ---- threads, BLAS ---------------------------------------------------------------------------

def omp_max_threads() -> int: ...
def release_free_memory() -> None: ...
def blas_gemm(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.floating]: ...
def blas_selftest(prefix: str) -> dict[str, float]: ...
def dense_matvec(a: NDArray[np.floating], x: NDArray[np.floating], use_blas: bool) -> NDArray[np.floating]: ...
def read_probe(a: NDArray[Any], n_threads: int) -> int: ...
def isa_level() -> int: ...
def spmv_x_path() -> str: ...

# ---- thresholds ------------------------------------------------------------------------------

class Shrink(enum.IntEnum):
    """Soft or hard thresholding."""

    soft = 0
    hard = 1

def threshold(x: NDArray[np.floating], level: float, out: NDArray[np.floating], kind: Shrink,
              n_threads: int) -> None: ...

# ---- CSR and pruning -------------------------------------------------------------------------

def csr_check(indptr: NDArray[np.integer], indices: NDArray[np.integer], n_rows: int, n_cols: int,
              n_threads: int) -> None: ...
def csr_matmat(indptr: NDArray[np.integer], indices: NDArray[np.integer], data: NDArray[np.floating],
               n_rows: int, n_cols: int, x: NDArray[np.floating], out: NDArray[np.floating],
               transpose: bool, n_threads: int) -> None: ...

class PruneSpec:
    """What prune keeps."""

    class Mode(enum.IntEnum):
        threshold = 0
        keep = 1
        nm = 2

    mode: PruneSpec.Mode
    threshold: float
    keep: int
    n: int
    m: int
    def __init__(self) -> None: ...

def prune_row_counts(w: NDArray[np.floating], spec: PruneSpec, n_threads: int) -> NDArray[np.int64]: ...
def prune(w: NDArray[np.floating], spec: PruneSpec,
          n_threads: int) -> tuple[NDArray[np.floating], NDArray[np.integer], NDArray[np.integer]]: ...

# ---- randomized SVD --------------------------------------------------------------------------

class RsvdParams:
    """Options of rsvd_dense / rsvd_csr."""

    class Mode(enum.IntEnum):
        rank = 0
        tol = 1
        svt = 2

    mode: RsvdParams.Mode
    rank: int
    tol: float
    lam: float
    max_rank: int
    oversamples: int
    power_iters: int
    seed: int
    block: int
    orth: int
    direct: int
    tiled: bool
    def __init__(self) -> None: ...

_SvdOut = tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating], dict[str, Any]]

def rsvd_dense(a: NDArray[np.floating], fortran: bool, params: RsvdParams,
               n_threads: int) -> _SvdOut: ...
def rsvd_csr(indptr: NDArray[np.integer], indices: NDArray[np.integer], data: NDArray[np.floating],
             n_rows: int, n_cols: int, params: RsvdParams, n_threads: int) -> _SvdOut: ...
def gaussian_sketch(dtype: np.dtype[Any], rows: int, cols: int, col0: int, seed: int,
                    n_threads: int) -> NDArray[np.floating]: ...

# ---- sparse recovery -------------------------------------------------------------------------

class OmpParams:
    """Options of omp."""

    kmax: int
    tol: float
    chunk: int
    check_finite: bool
    def __init__(self) -> None: ...

def omp_gram(D: NDArray[np.floating]) -> NDArray[np.floating]: ...
def omp_lazy_path(n: int, N: int, kmax: int, have_gram: bool, chunk: int = 0) -> bool: ...
def cache_bytes(level: int) -> int: ...
def omp(D: NDArray[np.floating], Y: NDArray[np.floating], G: NDArray[np.floating] | None,
        params: OmpParams, n_threads: int
        ) -> tuple[NDArray[np.int64], NDArray[np.floating], NDArray[np.int64], NDArray[np.floating]]: ...

class L1Mode(enum.IntEnum):
    """What the l1 homotopy solves."""

    lasso = 0
    bpdn = 1
    bp = 2

def l1_dense(A: NDArray[np.floating], y: NDArray[np.floating], mode: L1Mode, target: float,
             max_iter: int, n_threads: int,
             check_finite: bool = False) -> tuple[NDArray[np.floating], dict[str, Any]]: ...
def l1_csr(indptr: NDArray[np.integer], indices: NDArray[np.integer], data: NDArray[np.floating],
           n_rows: int, n_cols: int, y: NDArray[np.floating], mode: L1Mode, target: float,
           max_iter: int, n_threads: int) -> tuple[NDArray[np.floating], dict[str, Any]]: ...

# ---- quantization ---------------------------------------------------------------------------

# quantization (bind_quant.cpp): scales are float16 bit patterns (uint16)
def quant_pack(codes: NDArray[np.uint8], bits: int, n_threads: int) -> NDArray[np.uint8]: ...
def quant_unpack(packed: NDArray[np.uint8], cols: int, bits: int, n_threads: int) -> NDArray[np.uint8]: ...
def quant_rtn(W: NDArray[np.floating], bits: int, group: int, symmetric: bool, mse: bool,
              n_threads: int, with_codes: bool = True
              ) -> tuple[NDArray[np.uint8] | None, NDArray[np.uint16], NDArray[np.uint8] | None]: ...
def quant_dequantize(packed: NDArray[np.uint8], scales: NDArray[np.uint16],
                     zeros: NDArray[np.uint8] | None, bits: int, group: int, symmetric: bool,
                     out: NDArray[np.floating], n_threads: int) -> None: ...
def quant_matmul(packed: NDArray[np.uint8], scales: NDArray[np.uint16], zeros: NDArray[np.uint8] | None,
                 rows: int, cols: int, bits: int, group: int, symmetric: bool,
                 X: NDArray[np.floating], n_threads: int) -> NDArray[np.floating]: ...
def quant_isa_level() -> int: ...
def obs_factor(H: NDArray[np.floating], damp: float, keep_lower: bool = ...,
               n_threads: int = ...) -> tuple[int, NDArray[np.uint8]]: ...
def obs_sweep(W: NDArray[np.floating], U: NDArray[np.floating], bits: int, group: int, symmetric: bool,
              mse: bool, n_prune: int, nm_n: int, nm_m: int, block: int,
              col_group: NDArray[np.int64] | None, scales: NDArray[np.uint16] | None,
              zeros: NDArray[np.uint8] | None, n_threads: int,
              row_err: NDArray[np.float64] | None = ...
              ) -> tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.uint8] | None] | None: ...
