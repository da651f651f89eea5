// Private to cpp/rsvd*.cpp: the operator abstraction the randomized SVD runs on.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "weightpress/blas.hpp"
#include "weightpress/rsvd.hpp"

namespace wp::rsvd_detail {

inline std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// A linear operator A (m×n, m >= n after orientation) with products against row-major thin
// matrices. Dense products go to BLAS (serial caller), CSR products to our OpenMP kernels.
template <class T>
struct LinOp {
  std::int64_t m = 0, n = 0;
  double fro2 = 0.0;  // ‖A‖_F² of the (scaled) operator, in double
  int n_threads = 1;
  virtual ~LinOp() = default;
  // y (m×l, ld ldy) = A x (n×l, ld ldx)
  virtual void mm(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const = 0;
  // y (n×l, ld ldy) = Aᵀ x (m×l, ld ldx)
  virtual void mm_t(std::int64_t l, const T* x, std::int64_t ldx, T* y,
                    std::int64_t ldy) const = 0;
  // ‖A − L R‖_F² in double; L (m×k row-major, ld k), R (k×n row-major, ld n).
  virtual double resid2(std::int64_t k, const T* L, const T* R) const = 0;
  // Dense operators: a column-major view of A (returns false) or of Aᵀ (returns true) with its
  // leading dimension; nullptr when the operator is not dense.
  virtual const T* colmajor(bool* is_transpose, std::int64_t* ld) const {
    *is_transpose = false;
    *ld = 0;
    return nullptr;
  }
};

// Factors in the operator's orientation: U (m×k), s (k), Vt (k×n), row-major.
template <class T>
struct OpFactors {
  std::int64_t k = 0;
  std::vector<T> u, vt;
  std::vector<double> s;
};

// The algorithm on an oriented, scanned, scaled operator.
template <class T>
void rsvd_core(const LinOp<T>& A, const RsvdParams& p, OpFactors<T>& f, RsvdInfo& info);

// Row-major (m×n) residual ‖A − L R‖² where fill(r0, r1, D) writes rows r0..r1 of A into D
// (row-major, ld n): blocked so that memory stays bounded.
template <class T, class Fill>
double resid2_rows(std::int64_t m, std::int64_t n, std::int64_t k, const T* L, const T* R,
                   Fill&& fill) {
  if (m == 0 || n == 0) return 0.0;
  const std::int64_t rb = std::max<std::int64_t>(1, std::min<std::int64_t>(m, (1 << 20) / n));
  std::vector<T> d(sz(rb * n));
  double total = 0.0;
  for (std::int64_t r0 = 0; r0 < m; r0 += rb) {
    const std::int64_t r1 = std::min(m, r0 + rb), h = r1 - r0;
    fill(r0, r1, d.data());
    if (k > 0)
      blas::gemm_rm<T>(false, false, blas::to_int(h), blas::to_int(n), blas::to_int(k), T(-1),
                       L + r0 * k, blas::to_int(k), R, blas::to_int(n), T(1), d.data(),
                       blas::to_int(n));
    double acc = 0.0;
    for (std::int64_t i = 0; i < h * n; ++i) {
      const double v = static_cast<double>(d[sz(i)]);
      acc += v * v;
    }
    total += acc;
  }
  return total;
}

}  // namespace wp::rsvd_detail
