// Dense products whose bits do not depend on any thread count: the output is cut into tiles
// of a fixed shape (a function of the problem's size only), each tile is one BLAS call, and
// the tiles run on our OpenMP threads. OpenBLAS's own threading splits a product by its thread
// count, and its kernels round differently at the split's edges (measured: potrf of 384 and
// 1536, and dgemm / dsyrk of some shapes, differ in the last bits between 1 and 2 threads), so
// the Python layer pins BLAS to one thread around these kernels (linalg/quant.py); each tile
// is then computed the same way however many of our threads share the tiles.
#pragma once
#include <cstdint>

namespace wp {

// Row-major C(m×n) = alpha A(m×k) B(k×n) + beta C, tiles of kTileRows × kTileCols of C.
template <class T>
void tiled_gemm_rm(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* A,
                   std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
                   std::int64_t ldc, int n_threads);

// Column-major lower Cholesky A = L Lᵀ in place (the strictly upper triangle is not touched):
// blocks of 128 columns, the diagonal block by our own loop, the panel by TRSM and the
// trailing update by SYRK / GEMM tiles. Returns 0, or j + 1 when the leading minor of order
// j + 1 is not positive definite (as LAPACK's potrf).
template <class T>
int chol_lower(std::int64_t n, T* A, std::int64_t lda, int n_threads);

// Column-major B(m×n) = alpha op(A) B (side 'L', A m×m upper, no transpose, non-unit) or
// alpha B A (side 'R', A n×n): TRMM by tiles of B's columns ('L') or rows ('R').
template <class T>
void tiled_trmm_upper(char side, std::int64_t m, std::int64_t n, T alpha, const T* A,
                      std::int64_t lda, T* B, std::int64_t ldb, int n_threads);

}  // namespace wp
