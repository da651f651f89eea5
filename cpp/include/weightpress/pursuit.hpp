// Orthogonal matching pursuit, batch form (Rubinstein, Zibulevsky and Elad 2008).
// D is row-major m×n (columns are atoms), Y row-major m×N (columns are signals).
// The Gram matrix G = DᵀD and the correlations DᵀY come from one BLAS call each (serial);
// the per-signal pursuit is OpenMP over signals with per-thread workspaces and small loops.
// Each signal is processed by one thread in a fixed order: results do not depend on n_threads.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "weightpress/errors.hpp"

namespace wp {

// G(n×n, row-major = column-major, symmetric) = DᵀD. One BLAS syrk, then a mirror copy.
template <class T>
void omp_gram(std::int64_t m, std::int64_t n, const T* D, T* G);

// C(N×n, row-major: row s is Dᵀy_s) = (DᵀY)ᵀ for the row-major m×N block Y with row stride
// ldy (>= N). One BLAS gemm; up to 8 signals, one pass over D on n_threads.
template <class T>
void omp_correlate(std::int64_t m, std::int64_t n, std::int64_t N, const T* D, const T* Y,
                   std::int64_t ldy, T* C, int n_threads = 1);

// Squared column norms of the row-major m×N block Y, row stride ldy (fixed summation order).
template <class T>
void col_sqnorms(std::int64_t m, std::int64_t N, const T* Y, std::int64_t ldy, T* out,
                 int n_threads);

// The pursuit proper. For signal s: alpha0 = C[s, :] (= Dᵀy_s), ynorm2[s] = ‖y_s‖².
// Selects at most kmax atoms by the OMP rule argmax_j |d_jᵀr| / ‖d_j‖, stopping early when
// ‖r‖² <= tol (tol < 0: no tolerance), when every correlation vanishes, or when the next atom
// is numerically dependent on the chosen ones (Cholesky pivot test). Outputs per signal, row
// s of the N×kmax arrays: supp (atom indices, ascending), coef, and count[s] entries used;
// resid2[s] = ‖y_s − D x_s‖² as tracked by the pursuit.
template <class T>
void omp_batch(std::int64_t n, std::int64_t N, const T* G, const T* C, const T* ynorm2,
               std::int64_t kmax, double tol, std::int64_t* supp, T* coef, std::int64_t* count,
               T* resid2, int n_threads);

// The same pursuit without the full Gram matrix, for few signals (N·kmax small against n):
// all signals advance in lockstep, one atom per round, and the Gram columns of the atoms
// chosen in a round that are not yet known come from one gemm, DᵀD[:, new]. Same outputs.
// sqnorms: ‖d_j‖² (n values, rows summed in order), or nullptr to compute them here.
template <class T>
void omp_lazy(std::int64_t m, std::int64_t n, std::int64_t N, const T* D, const T* C,
              const T* ynorm2, std::int64_t kmax, double tol, std::int64_t* supp, T* coef,
              std::int64_t* count, T* resid2, int n_threads, const T* sqnorms = nullptr);

// Options of a batch encode.
struct OmpParams {
  std::int64_t kmax = 1;   // most atoms per signal, 1 <= kmax <= n
  double tol = -1.0;       // stop at ‖r‖² <= tol (< 0: no residual criterion)
  std::int64_t chunk = 0;  // signals per chunk (0: automatic, DᵀY within ~256 MiB; tests set it)
  // Check DᵀY and ‖y‖² for NaN/Inf (throw NonFinite) in place of a pass over D by the caller:
  // in IEEE arithmetic a NaN or Inf anywhere in column j of D, or in Y, makes (DᵀY)[j, ·] or
  // ‖y‖² non-finite (0·Inf is NaN), and a finite D and Y give non-finite values only by
  // overflow. Honoured for batches of at most kSmallBlock signals (DᵀY by our own loop, which
  // skips no zeros); larger batches are checked by the caller, where that pass is amortised.
  bool check_finite = false;
};

// Whether omp_encode takes its lazy path (Gram columns on demand, no n×n Gram matrix) for N
// signals of n atoms: few signals, and no Gram matrix given.
bool omp_lazy_path(std::int64_t n, std::int64_t N, std::int64_t kmax, bool have_gram,
                   std::int64_t chunk = 0);

// omp_encode throws NonFinite (weightpress/errors.hpp) when OmpParams::check_finite finds a
// non-finite correlation.

// The whole batch for the columns of Y (row-major m×N, row stride ldy): signals in chunks,
// each chunk's correlations DᵀY_chunk, then the pursuit with the Gram matrix G (n×n, given;
// or nullptr: built here once, or, for few signals, Gram columns on demand by omp_lazy).
// With G, a chunk's correlations are gemms of 256 signals on weightpress's threads, for a
// caller that runs BLAS on one thread (as weightpress.omp does). Outputs as omp_batch, N rows
// each.
template <class T>
void omp_encode(std::int64_t m, std::int64_t n, std::int64_t N, const T* D, const T* Y,
                std::int64_t ldy, const T* G, const OmpParams& p, std::int64_t* supp, T* coef,
                std::int64_t* count, T* resid2, int n_threads);

}  // namespace wp
