// l1 recovery by the homotopy (LARS-lasso) method: basis pursuit, BPDN and LASSO.
//
// The solution path x(λ) of  min ½‖Ax − y‖² + λ‖x‖₁  is piecewise linear in λ. Starting from
// λ₀ = ‖Aᵀy‖∞ (x = 0) the solver follows it, one atom entering or leaving the active set per
// event, until
//   mode kLasso: λ = target (the LASSO solution),
//   mode kBPDN:  ‖Ax − y‖ = target (the BPDN solution: min ‖x‖₁ s.t. ‖Ax − y‖ <= σ),
//   mode kBP:    λ = 0 (the basis pursuit solution: min ‖x‖₁ s.t. Ax = y).
// Each event costs O(n·|S|) on cached Gram columns AᵀA[:, j]; the cache is filled in blocks
// (one BLAS gemm, or one CSR product, per block) with the atoms most likely to enter next.
// The active set's Gram matrix is kept as an up/down-dated Cholesky factor; a column that is
// numerically dependent on the active ones (duplicates, |S| = rank) is never added.
// At the end x is polished (one step of iterative refinement on the true residual) and a
// duality-gap certificate is computed from the true residual.
#pragma once
#include <cstdint>

namespace wp {

enum class L1Mode : int { kLasso = 0, kBPDN = 1, kBP = 2 };

struct L1Info {
  std::int64_t iterations = 0;   // path events (entering or leaving atoms)
  std::int64_t n_active = 0;     // support size at the end
  std::int64_t gram_columns = 0; // Gram columns computed (cache size)
  std::int64_t support_solves = 0;  // exact solves on a guessed support (LASSO, BPDN)
  double lambda = 0;             // final λ
  double resid_norm = 0;         // ‖y − Ax‖ (true residual)
  double primal = 0;             // primal objective
  double dual = 0;               // dual objective of the certificate
  double gap = 0;                // primal − dual (>= 0 up to rounding)
  double corr_max = 0;           // ‖Aᵀ(y − Ax)‖∞
  bool finished = false;         // the path reached its end (not stopped by max_iter)
};

// A dense, row-major m×n. check_finite: the columns' squared norms (which every mode needs)
// are computed first, and a non-finite one throws NonFinite (weightpress/errors.hpp): a NaN or
// Inf in A, or squares that overflow; the caller's separate pass over A is then not needed.
template <class T>
L1Info l1_homotopy_dense(std::int64_t m, std::int64_t n, const T* A, const T* y, L1Mode mode,
                         double target, std::int64_t max_iter, T* x, int n_threads,
                         bool check_finite = false);

// A in CSR (indptr validated by the caller; indices are range-checked here).
template <class T, class I>
L1Info l1_homotopy_csr(std::int64_t m, std::int64_t n, const I* indptr, const I* indices,
                       const T* data, const T* y, L1Mode mode, double target,
                       std::int64_t max_iter, T* x, int n_threads);

}  // namespace wp
