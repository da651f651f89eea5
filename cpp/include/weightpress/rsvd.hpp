// Truncated randomized SVD (Halko, Martinsson & Tropp 2011) with fixed rank, fixed accuracy
// (blocked adaptive QB in the spirit of Yu, Gu & Li 2018, "randQB_EI") and singular value
// thresholding, for dense (C or Fortran order) and CSR input.
//
// Everything runs here, without Python: a Gaussian sketch from a counter-based generator
// (identical for every thread count), subspace iterations re-orthonormalised at every step,
// the small SVD through LAPACK. Dense products go to SciPy's BLAS; CSR products to
// wp::csr_matmat / wp::csr_matmat_t. Our own OpenMP loops (sketch, scans, CSR products) run in
// separate phases from BLAS calls.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace wp {

struct RsvdParams {
  enum Mode { kRank = 0, kTol = 1, kSvt = 2 };
  Mode mode = kRank;
  std::int64_t rank = 0;         // kRank: columns returned, 1 <= rank <= min(m, n)
  double tol = 0.0;              // kTol: target relative Frobenius error, in (0, 1)
  double lam = 0.0;              // kSvt: threshold (>= 0)
  std::int64_t max_rank = 0;     // kTol / kSvt: cap on the basis size (0: min(m, n))
  std::int64_t oversamples = 10; // kRank: extra sketch columns
  int power_iters = -1;          // subspace iterations (each = one product with A and one with
                                 // Aᵀ); < 0: automatic (kRank: 2 to 10 by convergence; QB: 2)
  std::uint64_t seed = 0;
  std::int64_t block = 0;        // kTol / kSvt: first QB block size (0: automatic)
  int orth = 0;                  // power-iteration orthonormalisation: 0 auto (Cholesky-QR in
                                 // double, Householder when ill-conditioned), 1 Householder
  int direct = -1;               // dense: -1 auto (kRank: when rank + oversamples >= min(m,n)/2;
                                 // kTol/kSvt: min(m, n) <= 32), 0 never, 1 always (exact SVD)
  bool tiled = false;            // dense: products with A as gemms of fixed row tiles on our
                                 // threads, for a caller that runs BLAS on one (DenseOp::tiled)
};

struct RsvdInfo {
  std::int64_t rank = 0;   // columns returned
  std::int64_t basis = 0;  // columns of the range basis (kTol/kSvt: after the last block)
  int n_blocks = 0;        // QB blocks (kTol / kSvt)
  int power_iters = 0;     // kRank: subspace iterations done
  double rel_err = -1.0;   // kTol: relative Frobenius error of the result (estimate or verified)
  bool verified = false;   // kTol: rel_err was computed from the residual itself
  bool direct = false;     // the full SVD path was used
  double scale = 1.0;      // power of two A was scaled by internally (range safety)
};

// Factors in the caller's orientation, row-major: U (m×k), s (k), Vt (k×n).
template <class T>
struct SvdFactors {
  std::int64_t m = 0, n = 0, k = 0;
  std::vector<T> u, s, vt;
};

// A (m×n) stored densely: row-major with row stride lda (>= n) when !fortran; when fortran, the
// buffer holds Aᵀ row-major, i.e. A in column-major order with column stride lda (>= m).
// Throws ShapeError for NaN/Inf in A or bad parameters.
template <class T>
void randomized_svd_dense(std::int64_t m, std::int64_t n, const T* a, std::int64_t lda,
                          bool fortran, const RsvdParams& p, SvdFactors<T>& out, RsvdInfo& info,
                          int n_threads);

// A (m×n) in CSR (indptr must have passed csr_check).
template <class T, class I>
void randomized_svd_csr(std::int64_t m, std::int64_t n, const I* indptr, const I* indices,
                        const T* data, const RsvdParams& p, SvdFactors<T>& out, RsvdInfo& info,
                        int n_threads);

// Fill x (rows×cols row-major, leading dimension ld) with standard normal numbers: entry
// (i, j) is a pure function of (seed, (col0 + j) * rows + i), whatever the thread count.
template <class T>
void gaussian_sketch(std::int64_t rows, std::int64_t cols, std::int64_t col0, std::uint64_t seed,
                     T* x, std::int64_t ld, int n_threads);

// Returns the free pages of the C heap to the system (glibc's malloc_trim; nothing elsewhere).
// glibc keeps pages of freed chunks mapped while a live chunk sits above them, so a run that
// builds and drops full-size candidates one after another grew resident memory well past what
// it held at any time (issue 15); the compression methods call this between candidates.
void release_free_memory();

// glibc serves a request from its heap or from a mapping of its own by a threshold that it
// raises, by default, to the size of every mapped chunk freed (up to 32 MiB): after the first
// full-size temporary is freed, later ones of up to that size come from the heap, whose freed
// chunks stay resident wherever a live one sits above them (issue 15: up to ~1x the largest
// tensor over what was live in `--method auto` and the calibrated methods). Fixes the
// threshold at `bytes` (mallopt, which also stops the raising), so requests of that size and
// more get mappings of their own, unmapped when freed. Left alone where the user chose a
// threshold (MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES) or WP_MALLOC_TUNE=0; nothing off glibc.
// Returns the threshold set, 0 if none.
std::size_t fix_mmap_threshold(std::size_t bytes);

}  // namespace wp
