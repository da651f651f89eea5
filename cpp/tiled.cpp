// Thread-count-independent dense products: see tiled.hpp.
#include "weightpress/tiled.hpp"

#include <algorithm>
#include <cmath>

#include "weightpress/blas.hpp"
#include "weightpress/parallel.hpp"

namespace wp {

namespace {

constexpr std::int64_t kTileRows = 128;   // GEMM tiles of C: rows ...
constexpr std::int64_t kTileCols = 512;   // ... and columns
constexpr std::int64_t kCholBlock = 128;  // Cholesky: columns per block
constexpr std::int64_t kPanel = 256;      // TRSM / TRMM / trailing-update tiles
// A tile of at least ~4 M multiply-adds per thread pays for the parallel region's wake-up
// (a 128 × 512 × 64 product: ~0.1 ms of one core's BLAS)
constexpr std::int64_t kGrainProduct = std::int64_t(1) << 22;

std::int64_t n_tiles(std::int64_t n, std::int64_t t) { return (n + t - 1) / t; }

// Unblocked lower Cholesky of a b×b column-major block (right-looking: the inner loops run
// down contiguous columns). Returns 0 or the 1-based index of the failing column.
template <class T>
int chol_block(std::int64_t b, T* A, std::int64_t lda) {
  for (std::int64_t j = 0; j < b; ++j) {
    T* aj = A + j * lda;
    const T d = aj[j];
    if (!(d > T(0)) || !std::isfinite(d)) return static_cast<int>(j + 1);
    const T ljj = std::sqrt(d);
    aj[j] = ljj;
    const T inv = T(1) / ljj;
    for (std::int64_t i = j + 1; i < b; ++i) aj[i] *= inv;
    for (std::int64_t c = j + 1; c < b; ++c) {
      T* ac = A + c * lda;
      const T f = aj[c];
      for (std::int64_t i = c; i < b; ++i) ac[i] -= aj[i] * f;
    }
  }
  return 0;
}

}  // namespace

template <class T>
void tiled_gemm_rm(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* A,
                   std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
                   std::int64_t ldc, int n_threads) {
  if (m <= 0 || n <= 0) return;
  const std::int64_t tm = n_tiles(m, kTileRows), tn = n_tiles(n, kTileCols), nt_all = tm * tn;
  const int nt = static_cast<int>(std::min<std::int64_t>(threads_for(m * n * k, n_threads, kGrainProduct), nt_all));
  const blas::blas_int K = blas::to_int(k), LA = blas::to_int(lda), LB = blas::to_int(ldb),
                       LC = blas::to_int(ldc);
  FirstError fe;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (std::int64_t t = 0; t < nt_all; ++t)
    fe.run([&] {
      const std::int64_t r0 = (t / tn) * kTileRows, c0 = (t % tn) * kTileCols;
      const std::int64_t r1 = std::min(m, r0 + kTileRows), c1 = std::min(n, c0 + kTileCols);
      blas::gemm_rm<T>(false, false, blas::to_int(r1 - r0), blas::to_int(c1 - c0), K, alpha,
                       A + r0 * lda, LA, B + c0, LB, beta, C + r0 * ldc + c0, LC);
    });
  fe.rethrow();
}

template <class T>
int chol_lower(std::int64_t n, T* A, std::int64_t lda, int n_threads) {
  const blas::blas_int LD = blas::to_int(lda);
  for (std::int64_t k0 = 0; k0 < n; k0 += kCholBlock) {
    const std::int64_t b = std::min(kCholBlock, n - k0);
    T* A11 = A + k0 + k0 * lda;
    const int info = chol_block<T>(b, A11, lda);
    if (info) return static_cast<int>(k0) + info;
    const std::int64_t m2 = n - k0 - b;
    if (m2 == 0) break;
    T* A21 = A11 + b;  // m2 × b
    const blas::blas_int B_ = blas::to_int(b);
    const std::int64_t tiles = n_tiles(m2, kPanel);
    int nt = static_cast<int>(std::min<std::int64_t>(threads_for(m2 * b * b, n_threads, kGrainProduct), tiles));
    FirstError fe;
    // A21 ← A21 L11⁻ᵀ: rows are independent
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t t = 0; t < tiles; ++t)
      fe.run([&] {
        const std::int64_t r0 = t * kPanel, r1 = std::min(m2, r0 + kPanel);
        blas::trsm<T>('R', 'L', 'T', 'N', blas::to_int(r1 - r0), B_, T(1), A11, LD, A21 + r0, LD);
      });
    fe.rethrow();
    // A22 ← A22 − A21 A21ᵀ (lower triangle), a panel of columns per tile
    T* A22 = A21 + b * lda;
    nt = static_cast<int>(std::min<std::int64_t>(threads_for(m2 * m2 * b / 2, n_threads, kGrainProduct), tiles));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (std::int64_t t = 0; t < tiles; ++t)
      fe.run([&] {
        const std::int64_t j0 = t * kPanel, j1 = std::min(m2, j0 + kPanel), w = j1 - j0;
        T* D = A22 + j0 + j0 * lda;
        blas::syrk<T>('L', 'N', blas::to_int(w), B_, T(-1), A21 + j0, LD, T(1), D, LD);
        if (j1 < m2)
          blas::gemm<T>('N', 'T', blas::to_int(m2 - j1), blas::to_int(w), B_, T(-1), A21 + j1, LD,
                        A21 + j0, LD, T(1), D + w, LD);
      });
    fe.rethrow();
  }
  return 0;
}

template <class T>
void tiled_trmm_upper(char side, std::int64_t m, std::int64_t n, T alpha, const T* A,
                      std::int64_t lda, T* B, std::int64_t ldb, int n_threads) {
  if (m <= 0 || n <= 0) return;
  const bool left = side == 'L';
  const std::int64_t span = left ? n : m;  // B's columns (left) or rows (right) are independent
  const std::int64_t tiles = n_tiles(span, kPanel);
  const std::int64_t inner = left ? m : n;
  const int nt = static_cast<int>(std::min<std::int64_t>(threads_for(m * n * inner / 2, n_threads, kGrainProduct), tiles));
  const blas::blas_int LA = blas::to_int(lda), LB = blas::to_int(ldb);
  FirstError fe;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t t = 0; t < tiles; ++t)
    fe.run([&] {
      const std::int64_t s0 = t * kPanel, s1 = std::min(span, s0 + kPanel);
      if (left)
        blas::trmm<T>('L', 'U', 'N', 'N', blas::to_int(m), blas::to_int(s1 - s0), alpha, A, LA,
                      B + s0 * ldb, LB);
      else
        blas::trmm<T>('R', 'U', 'N', 'N', blas::to_int(s1 - s0), blas::to_int(n), alpha, A, LA,
                      B + s0, LB);
    });
  fe.rethrow();
}

template void tiled_gemm_rm<float>(std::int64_t, std::int64_t, std::int64_t, float, const float*,
                                   std::int64_t, const float*, std::int64_t, float, float*,
                                   std::int64_t, int);
template void tiled_gemm_rm<double>(std::int64_t, std::int64_t, std::int64_t, double,
                                    const double*, std::int64_t, const double*, std::int64_t,
                                    double, double*, std::int64_t, int);
template int chol_lower<float>(std::int64_t, float*, std::int64_t, int);
template int chol_lower<double>(std::int64_t, double*, std::int64_t, int);
template void tiled_trmm_upper<float>(char, std::int64_t, std::int64_t, float, const float*,
                                      std::int64_t, float*, std::int64_t, int);
template void tiled_trmm_upper<double>(char, std::int64_t, std::int64_t, double, const double*,
                                       std::int64_t, double*, std::int64_t, int);

}  // namespace wp
