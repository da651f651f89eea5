// Homotopy (LARS-lasso) solver for basis pursuit, BPDN and LASSO. See basis_pursuit.hpp.
//
// Path parametrised by λ: on an active set S with signs s, x_S(λ) solves
//   A_Sᵀ(y − A_S x_S) = λ s,   so as λ decreases by δ:  x_S += δ w,  c −= δ a,
// with w = G_SS⁻¹ s, a = G[:, S] w, c = Aᵀ(y − Ax). Events: an inactive j reaches |c_j| = λ
// (enters with sign c_j), an active x_p reaches 0 (leaves). ‖r‖² along the segment is
// ‖r‖² − 2δλq + δ²q with q = sᵀw (no product with A needed), which gives the BPDN stop.
#include "weightpress/basis_pursuit.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "weightpress/blas.hpp"
#include "weightpress/errors.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/linop.hpp"
#include "weightpress/parallel.hpp"
#include "weightpress/scratch.hpp"

namespace wp {
namespace {

// Upper-triangular Cholesky factor R (RᵀR = G_SS) of the active set's Gram matrix, column-major
// with a growing leading dimension.
struct Chol {
  std::int64_t k = 0, cap = 0;
  std::vector<double> R;
  double& at(std::int64_t i, std::int64_t j) { return R[static_cast<std::size_t>(i + j * cap)]; }
  void reserve(std::int64_t want) {
    if (want <= cap) return;
    std::int64_t nc = std::max<std::int64_t>(want, std::max<std::int64_t>(16, 2 * cap));
    std::vector<double> nr(static_cast<std::size_t>(nc * nc), 0.0);
    for (std::int64_t j = 0; j < k; ++j)
      for (std::int64_t i = 0; i <= j; ++i) nr[static_cast<std::size_t>(i + j * nc)] = at(i, j);
    R.swap(nr);
    cap = nc;
  }
  // Rᵀ t = b (forward), in place. Each t_i is a dot product with column i of R (contiguous),
  // summed in eight fixed lanes: the single running sum was a latency-bound chain, and with
  // solve() a tenth of a BPDN solve (k² per event at |S| ≈ 400).
  // Rows from i0 on (b[0:i0] already solved).
  void solve_t(double* b, std::int64_t i0 = 0) {
    for (std::int64_t i = i0; i < k; ++i) {
      const double* __restrict ci = R.data() + i * cap;
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::int64_t l = 0;
      for (; l + 8 <= i; l += 8)
        for (int u = 0; u < 8; ++u) acc[u] += ci[l + u] * b[l + u];
      double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; l < i; ++l) s += ci[l] * b[l];
      b[i] = (b[i] - s) / ci[i];
    }
  }
  // R w = t (backward), in place, by columns: once w_i is known, column i of R (contiguous)
  // is subtracted from the entries above it.
  void solve(double* b) {
    for (std::int64_t i = k - 1; i >= 0; --i) {
      const double* __restrict ci = R.data() + i * cap;
      const double wi = b[i] / ci[i];
      b[i] = wi;
      for (std::int64_t l = 0; l < i; ++l) b[l] -= ci[l] * wi;
    }
  }
  // Append a column with G_S,new = v (length k) and G_new,new = d. False if dependent.
  bool add(std::vector<double>& v, double d, double eps) {
    reserve(k + 1);
    solve_t(v.data());
    double s2 = 0;
    for (std::int64_t i = 0; i < k; ++i) s2 += v[static_cast<std::size_t>(i)] * v[static_cast<std::size_t>(i)];
    const double piv = d - s2;
    if (!(piv > eps * d)) return false;
    for (std::int64_t i = 0; i < k; ++i) at(i, k) = v[static_cast<std::size_t>(i)];
    at(k, k) = std::sqrt(piv);
    ++k;
    return true;
  }
  // Delete column p and restore triangularity with Givens rotations.
  void remove(std::int64_t p) {
    for (std::int64_t j = p; j + 1 < k; ++j)
      for (std::int64_t i = 0; i <= j + 1; ++i) at(i, j) = at(i, j + 1);
    for (std::int64_t j = p; j + 1 < k; ++j) {
      const double a = at(j, j), b = at(j + 1, j);
      const double r = std::hypot(a, b);
      if (r == 0) continue;
      const double cs = a / r, sn = b / r;
      for (std::int64_t l = j; l + 1 < k; ++l) {
        const double t1 = at(j, l), t2 = at(j + 1, l);
        at(j, l) = cs * t1 + sn * t2;
        at(j + 1, l) = -sn * t1 + cs * t2;
      }
      at(j + 1, j) = 0;
    }
    --k;
    for (std::int64_t i = 0; i <= k; ++i) at(i, k) = 0;
  }
};

// o[r − r0] += Σ_p w_p g_p[r] for r in [r0, r1), columns in order, four at a time (o is
// loaded and stored once per four columns; it stays in L1 while the columns stream).
// Elementwise and without FP contraction, so every ISA variant gives the same bits. S = double
// (the exact solves; columns of T widened): measured BPDN 1024×4096 (454 events, one thread)
// 440 -> 335 ms, the scalar SSE2 loop, one column at a time, was 40% of the solve. S = float
// (the float32 support guess: weights and sums in float): sixteen lanes instead of eight and no
// conversions, measured 1.4x faster per column (4096 rows, 100-400 columns, one thread); its
// sums carry rounding errors of the size the float Gram columns already carry.
template <class T, class S>
WP_INLINE void accumulate_impl(std::int64_t r0, std::int64_t r1, std::int64_t k,
                               const T* const* cols, const S* w, S* __restrict o) {
  std::int64_t p = 0;
  for (; p + 4 <= k; p += 4) {
    const T* __restrict g0 = cols[p];
    const T* __restrict g1 = cols[p + 1];
    const T* __restrict g2 = cols[p + 2];
    const T* __restrict g3 = cols[p + 3];
    const S w0 = w[p], w1 = w[p + 1], w2 = w[p + 2], w3 = w[p + 3];
    for (std::int64_t r = r0; r < r1; ++r)
      o[r - r0] += (w0 * static_cast<S>(g0[r]) + w1 * static_cast<S>(g1[r])) +
                   (w2 * static_cast<S>(g2[r]) + w3 * static_cast<S>(g3[r]));
  }
  for (; p < k; ++p) {
    const T* __restrict g = cols[p];
    const S wp = w[p];
    for (std::int64_t r = r0; r < r1; ++r) o[r - r0] += wp * static_cast<S>(g[r]);
  }
}

#ifdef WP_X86_DISPATCH
template <class T, class S>
WP_TARGET_V4 void accumulate_v4(std::int64_t r0, std::int64_t r1, std::int64_t k,
                                const T* const* cols, const S* w, S* __restrict o) {
  accumulate_impl<T, S>(r0, r1, k, cols, w, o);
}
template <class T, class S>
WP_TARGET_V3 void accumulate_v3(std::int64_t r0, std::int64_t r1, std::int64_t k,
                                const T* const* cols, const S* w, S* __restrict o) {
  accumulate_impl<T, S>(r0, r1, k, cols, w, o);
}
#endif

// o points at row r0 of the sums (o[r − r0]).
template <class T, class S>
void accumulate(std::int64_t r0, std::int64_t r1, std::int64_t k, const T* const* cols,
                const S* w, S* __restrict o) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return accumulate_v4<T, S>(r0, r1, k, cols, w, o);
    case Isa::kV3: return accumulate_v3<T, S>(r0, r1, k, cols, w, o);
    case Isa::kBase: break;
  }
#endif
  accumulate_impl<T, S>(r0, r1, k, cols, w, o);
}

// Each inactive atom's entering step on the current segment (λ − δ: c_j − δa_j = ±(λ − δ)),
// stored in dj (inf for atoms whose state is not 0: active, excluded, or set aside by the
// caller); returns the least step, ties with the path's end removed, and its first index in
// *jmin (-1 if none). An atom already on the boundary and moving out enters at once (step 0,
// ties at the start). A step within a relative 1e-8 of the end, relative to the column's
// correlation scale colw_j, is a rounding tie with the end: on a recovered support c_j = λa_j
// for every inactive j, so the entering step equals λ exactly; the end wins, and the
// certificate vouches for it. Branch-free, so that it vectorises (it replaces a branchy scalar
// loop with two divisions per atom); the same expressions as that loop, so the same path
// (454 events at 1024×4096, the same solution) and the same bits on every ISA.
WP_INLINE double entering_steps_impl(std::int64_t n, double lam, double d_end,
                                     const double* __restrict c, const double* __restrict a,
                                     const char* __restrict state,
                                     const double* __restrict colw, double* __restrict dj,
                                     double* __restrict vv, std::int64_t* jmin) {
  const double inf = std::numeric_limits<double>::infinity();
  const double lam_b = lam * (1 - 1e-12), tie = 1e-8 * lam;
  // Non-short-circuit logic and the state read as a double: GCC vectorises this loop only so
  // (with && and a char compare it stayed scalar, 6% of the BPDN guess at 1024×4096).
  for (std::int64_t j = 0; j < n; ++j) {
    const double cj = c[j], aj = a[j];
    const double den1 = 1.0 - aj, den2 = 1.0 + aj;
    const double q1 = (lam - cj) / den1, q2 = (lam + cj) / den2;
    const double d1 = (den1 > 0) & (q1 > 0) ? q1 : inf;
    const double d2 = (den2 > 0) & (q2 > 0) ? q2 : inf;
    double d = d2 < d1 ? d2 : d1;
    const bool out = ((cj > 0) & (aj < 1.0)) | ((cj < 0) & (aj > -1.0));
    d = (std::fabs(cj) >= lam_b) & out ? 0.0 : d;
    d = static_cast<double>(static_cast<unsigned char>(state[j])) == 0.0 ? d : inf;
    dj[j] = d;
    vv[j] = (d <= d_end) & (d >= d_end - tie * colw[j]) ? inf : d;
  }
  constexpr int L = 8;
  double acc[L];
  for (int l = 0; l < L; ++l) acc[l] = inf;
  std::int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) {
      const double v = vv[j + l];
      acc[l] = v < acc[l] ? v : acc[l];
    }
  double mn = inf;
  for (; j < n; ++j) mn = vv[j] < mn ? vv[j] : mn;
  for (int l = 0; l < L; ++l) mn = acc[l] < mn ? acc[l] : mn;
  *jmin = -1;
  if (!(mn < inf)) return inf;
  for (j = 0; j < n; ++j)
    if (vv[j] == mn) {
      *jmin = j;
      break;
    }
  return mn;
}

#ifdef WP_X86_DISPATCH
WP_TARGET_V4 double entering_steps_v4(std::int64_t n, double lam, double d_end, const double* c,
                                      const double* a, const char* state, const double* colw,
                                      double* dj, double* vv, std::int64_t* jmin) {
  return entering_steps_impl(n, lam, d_end, c, a, state, colw, dj, vv, jmin);
}
WP_TARGET_V3 double entering_steps_v3(std::int64_t n, double lam, double d_end, const double* c,
                                      const double* a, const char* state, const double* colw,
                                      double* dj, double* vv, std::int64_t* jmin) {
  return entering_steps_impl(n, lam, d_end, c, a, state, colw, dj, vv, jmin);
}
#endif

double entering_steps(std::int64_t n, double lam, double d_end, const double* c, const double* a,
                      const char* state, const double* colw, double* dj, double* vv,
                      std::int64_t* jmin) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return entering_steps_v4(n, lam, d_end, c, a, state, colw, dj, vv, jmin);
    case Isa::kV3: return entering_steps_v3(n, lam, d_end, c, a, state, colw, dj, vv, jmin);
    case Isa::kBase: break;
  }
#endif
  return entering_steps_impl(n, lam, d_end, c, a, state, colw, dj, vv, jmin);
}

// The solver's largest temporaries, kept by the calling thread from one solve to the next
// (weightpress/scratch.hpp, Lent): the blocks of columns, the Gram caches, the support's
// columns.
template <class T>
struct L1Keep {
  HugeVec<T> own, cache, gwork, cols, gram, rows, as;
};
template <class T>
L1Keep<T>& l1_keep() {
  thread_local L1Keep<T> keep;
  return keep;
}

// Column scale. Every tie and rounding threshold below is relative to the atom's own
// correlation scale ‖a_j‖·λ₀ₙ (λ₀ₙ = max_k |a_kᵀy| / ‖a_k‖, the path's start in column-
// normalised coordinates), not to λ itself: an atom whose column is 1e10 times shorter than
// another's enters at a λ 1e10 times smaller, and that is not a tie with the path's end.
template <class T>
class Homotopy {
 public:
  Homotopy(const LinOp<T>& A, int n_threads) : A_(A), nt_(n_threads), m_(A.m), n_(A.n) {}

  L1Info run(const T* y, L1Mode mode, double target, std::int64_t max_iter, T* x_out);
  // The path only, without the polish and the certificate (each a few products with A): the
  // active set at the end (ascending) and its signs, for a caller that solves on it exactly.
  // False when the path did not reach its end.
  // col_sumsq: the columns' squared norms when the caller has them (else computed).
  bool path(const T* y, L1Mode mode, double target, std::int64_t max_iter,
            const std::vector<double>* col_sumsq, std::vector<std::int64_t>* S,
            std::vector<double>* signs, std::int64_t* events, std::int64_t* gram_columns);

 private:
  struct Event {
    double d = 0, d_end = 0, d_in = 0, d_out = 0;
    std::int64_t j_in = -1, p_out = -1;
  };
  const LinOp<T>& A_;
  int nt_;
  std::int64_t m_, n_;
  const T* y_ = nullptr;
  L1Mode mode_ = L1Mode::kBP;
  double target_ = 0;
  std::vector<T> tn_, tm_;              // scratch vectors (n, m) in T for the operator
  Lent<HugeVec<T>> cache_lent_{l1_keep<T>().cache}, gwork_lent_{l1_keep<T>().gwork};
  HugeVec<T>& cache_ = cache_lent_.v;  // Gram columns, n each
  HugeVec<T>& gwork_ = gwork_lent_.v;
  std::vector<T> gwork_op_;            // LinOp::gram's workspace
  std::vector<std::int64_t> slot_;      // atom -> cache column, or -1
  std::int64_t ncache_ = 0;
  std::vector<double> c0_, c_, a_;      // Aᵀy; correlations Aᵀr; direction G[:, S] w
  std::vector<double> colw_;            // ‖a_j‖·λ₀ₙ/λ₀: atom j's correlation scale, relative
  std::vector<char> state_;             // 0 inactive, 1 active, 2 excluded (dependent)
  std::vector<double> dj_, vv_;         // each inactive atom's entering step on this segment;
                                        // the same with ties with the end removed
  std::vector<std::int64_t> S_, banned_;
  std::vector<double> sg_, xs_, w_;
  std::vector<double> t_;               // R⁻ᵀ s, valid in its first tv_ rows
  std::int64_t tv_ = 0;
  void forget_t(std::int64_t p) {       // atom p left: rows from p on are stale
    tv_ = std::min(tv_, p);
    if (p < static_cast<std::int64_t>(t_.size())) t_.erase(t_.begin() + p);
  }
  std::vector<double> r_, cc_;          // true residual and Aᵀr (after the path)
  Chol R_;
  double y2_ = 0, R2_ = 0, lam_ = 0, lam0_ = 0, q_ = 0, floor_ = 0, cnorm_max_ = 0;
  std::int64_t last_dropped_ = -1, entering_ = -1, it_ = 0;
  bool lean_ = false;  // path(): float directions (T = float), Gram cache reserved up front
  const std::vector<double>* sumsq_ = nullptr;  // path(): the columns' ‖a_j‖², when given

  const T* col(std::int64_t j) const {
    return cache_.data() + slot_[static_cast<std::size_t>(j)] * n_;
  }
  bool start();
  bool follow(const T* y, L1Mode mode, double target, std::int64_t max_iter);
  void ensure_cached(std::int64_t j);
  void gram_block(const std::int64_t* cols, std::int64_t b, T* out);
  void combine(const std::vector<std::int64_t>& S, const std::vector<double>& w,
               std::vector<double>& out, const double* base, double sign);
  void enter();
  void direction();
  Event next_event();
  bool advance(const Event& e);
  void leave(std::int64_t p);
  void resync();
  void drop_rounding_atoms();
  void residual(const std::vector<double>& xv);
  void polish_bpdn();
  void polish();
  double equiangular_dual(const std::vector<std::int64_t>& S_cert, double sigma);
  void certificate(const std::vector<std::int64_t>& S_cert, L1Info& info);
};

// Correlations, λ₀ and the column scales. True when x = 0 is the answer.
template <class T>
bool Homotopy<T>::start() {
  const std::int64_t m = m_, n = n_;
  const auto N = static_cast<std::size_t>(n);
  tn_.assign(N, T(0));
  tm_.assign(static_cast<std::size_t>(m), T(0));
  y2_ = 0;
  for (std::int64_t i = 0; i < m; ++i) y2_ += static_cast<double>(y_[i]) * static_cast<double>(y_[i]);
  c0_.assign(N, 0.0);
  a_.assign(N, 0.0);
  if (n > 0) A_.rmatvec(y_, tn_.data());
  std::vector<double> cn(N, 0.0);
  if (sumsq_ != nullptr) cn = *sumsq_;
  else if (n > 0) A_.col_sumsq(cn.data());
  double lam = 0, lam0n = 0;
  // x = 0 is optimal iff ‖Aᵀy‖∞ <= λ. Each aⱼᵀy carries a rounding error of at most
  // m·u·‖aⱼ‖‖y‖ however it is summed, so any two computations of λ_max (ours, the caller's
  // NumPy one) differ by at most m·eps·‖aⱼ‖‖y‖: within that the answer is 0 on every CPU.
  const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
  const double ynorm = std::sqrt(y2_);
  double lam_sure = 0;  // the largest |aⱼᵀy| minus its rounding bound
  for (std::int64_t j = 0; j < n; ++j) {
    const auto J = static_cast<std::size_t>(j);
    c0_[J] = static_cast<double>(tn_[J]);
    cn[J] = std::sqrt(cn[J]);
    cnorm_max_ = std::max(cnorm_max_, cn[J]);
    const double cj = std::fabs(c0_[J]);
    lam = std::max(lam, cj);
    if (cn[J] > 0) lam0n = std::max(lam0n, cj / cn[J]);
    lam_sure = std::max(lam_sure, cj - static_cast<double>(m) * eps * cn[J] * ynorm);
  }
  c_ = c0_;
  lam_ = lam0_ = lam;
  colw_.assign(N, 0.0);
  double colw_min = 1.0;
  for (std::size_t j = 0; j < N; ++j) {
    colw_[j] = lam > 0 ? cn[j] * lam0n / lam : 0.0;
    if (cn[j] > 0) colw_min = std::min(colw_min, colw_[j]);
  }
  // The path ends once λ is rounding noise (1e-11·λ₀) for every column, the shortest one
  // included: lowered by the smallest column scale when scales differ by more than 4× (within
  // that, following the path further into the noise only adds rounding-level events).
  floor_ = 1e-11 * lam0_ * std::min(1.0, 4.0 * std::max(colw_min, 1e-13));
  dj_.resize(N);
  vv_.resize(N);
  for (std::size_t j = 0; j < N; ++j) dj_[j] = lam - std::fabs(c0_[j]);
  slot_.assign(N, -1);
  state_.assign(N, 0);
  R2_ = y2_;
  if (lam <= 0 || (mode_ == L1Mode::kBPDN && ynorm <= target_)) return true;
  if (mode_ == L1Mode::kLasso && (lam <= target_ || lam_sure <= target_)) {
    lam_ = target_;
    return true;
  }
  entering_ = 0;
  for (std::int64_t j = 1; j < n; ++j)
    if (std::fabs(c_[static_cast<std::size_t>(j)]) > std::fabs(c_[static_cast<std::size_t>(entering_)]))
      entering_ = j;
  return false;
}

// out (n×b, column-major) = Aᵀ A[:, cols]. A dense row-major A is Aᵀ stored column-major
// (n×m): one gemm with it as the left, untransposed operand. OpenBLAS packs the left operand
// with its contiguous copy here, measured 2.2× faster at b = 32 (1024×4096, one thread) than
// LinOp::gram's Xᵀ·A layout, whose transposed packing of all of A dominated the solve.
template <class T>
void Homotopy<T>::gram_block(const std::int64_t* cols, std::int64_t b, T* out) {
  bool tr = false;
  std::int64_t ld = 0;
  const T* at = A_.colmajor(&tr, &ld);
  if (!at || m_ == 0) {
    A_.gram(cols, b, out, gwork_op_);
    return;
  }
  const std::int64_t m = m_, n = n_;
  gwork_.resize(static_cast<std::size_t>(m * b));
  T* x = gwork_.data();  // A[:, cols], column-major m×b
  if (!tr) {  // column-major A: contiguous columns, out = Aᵀ·X
    for (std::int64_t t = 0; t < b; ++t) std::copy(at + cols[t] * ld, at + cols[t] * ld + m, x + t * m);
    blas::gemm<T>('T', 'N', blas::to_int(n, "n"), blas::to_int(b, "b"), blas::to_int(m, "m"), T(1),
                  at, blas::to_int(ld, "ld"), x, blas::to_int(m, "m"), T(0), out,
                  blas::to_int(n, "n"));
    return;
  }
  for (std::int64_t i = 0; i < m; ++i) {  // row by row: one row of A at a time
    const T* src = at + i * ld;
    for (std::int64_t t = 0; t < b; ++t) x[t * m + i] = src[cols[t]];
  }
  blas::gemm<T>('N', 'N', blas::to_int(n, "n"), blas::to_int(b, "b"), blas::to_int(m, "m"), T(1),
                at, blas::to_int(ld, "ld"), x, blas::to_int(m, "m"), T(0), out,
                blas::to_int(n, "n"));
}

// Caches the Gram column of j together with the (block − 1) uncached, inactive atoms that
// would enter soonest on the current segment (the likeliest to enter next), in one product.
template <class T>
void Homotopy<T>::ensure_cached(std::int64_t j) {
  if (slot_[static_cast<std::size_t>(j)] >= 0) return;
  const std::int64_t n = n_;
  // Blocks of 32 columns; small problems take 128 at a time, so that they make few BLAS calls
  // (each may wake BLAS threads, which costs more than such a product on a busy machine).
  // float32 takes 64: OpenBLAS's sgemm packs all of A for every call, at three times the cost
  // of its kernel with 32 columns (BPDN guess at 1024×4096: sgemm 1.46× the time of the
  // accumulations with 32, 1.16× with 64, 1.19× with 128; perf, one thread).
  const std::int64_t big = std::is_same<T, float>::value ? 64 : 32;
  const std::int64_t want = std::min<std::int64_t>(n, m_ * n <= blas::kSmallProduct ? 128 : big);
  std::vector<std::int64_t> cand;
  cand.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    if (i != j && slot_[static_cast<std::size_t>(i)] < 0 && state_[static_cast<std::size_t>(i)] == 0)
      cand.push_back(i);
  const std::int64_t take = std::min<std::int64_t>(want - 1, static_cast<std::int64_t>(cand.size()));
  auto by_step = [&](std::int64_t p, std::int64_t q) {
    const double cp = dj_[static_cast<std::size_t>(p)], cq = dj_[static_cast<std::size_t>(q)];
    return cp < cq || (cp == cq && p < q);
  };
  if (take > 0 && take < static_cast<std::int64_t>(cand.size()))
    std::nth_element(cand.begin(), cand.begin() + take, cand.end(), by_step);
  cand.resize(static_cast<std::size_t>(std::max<std::int64_t>(take, 0)));
  cand.insert(cand.begin(), j);
  const auto b = static_cast<std::int64_t>(cand.size());
  cache_.resize(static_cast<std::size_t>((ncache_ + b) * n));
  gram_block(cand.data(), b, cache_.data() + ncache_ * n);
  for (std::int64_t t = 0; t < b; ++t)
    slot_[static_cast<std::size_t>(cand[static_cast<std::size_t>(t)])] = ncache_ + t;
  ncache_ += b;
}

// out = base + sign · Σ_p w_p G[:, S_p]  (base may be null: zero). Rows in fixed blocks, each
// summed by one thread in the order of S: independent of the thread count.
template <class T>
void Homotopy<T>::combine(const std::vector<std::int64_t>& S, const std::vector<double>& w,
                          std::vector<double>& out, const double* base, double sign) {
  const std::int64_t n = n_, k = static_cast<std::int64_t>(S.size());
  constexpr std::int64_t B = 1024;
  const std::int64_t nb = (n + B - 1) / B;
  std::vector<const T*> cols(static_cast<std::size_t>(k));
  for (std::int64_t p = 0; p < k; ++p) cols[static_cast<std::size_t>(p)] = col(S[static_cast<std::size_t>(p)]);
  // One call is O(n·|S|), often well under a millisecond: a parallel region per event only pays
  // for large supports (and on a busy machine a descheduled worker stalls the barrier).
  const int nt = threads_for(n * k, nt_, std::int64_t(1) << 19);
  double* o = out.data();
  if constexpr (std::is_same<T, float>::value) {
    if (lean_) {  // float sums (the support guess), then o as below
      std::vector<float> wf(w.size());
      for (std::size_t p = 0; p < w.size(); ++p) wf[p] = static_cast<float>(w[p]);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (std::int64_t b = 0; b < nb; ++b) {
        const std::int64_t r0 = b * B, r1 = std::min(n, r0 + B);
        float of[B];
        for (std::int64_t r = 0; r < r1 - r0; ++r) of[r] = 0.0f;
        accumulate<float, float>(r0, r1, k, cols.data(), wf.data(), of);
        if (base)
          for (std::int64_t r = r0; r < r1; ++r) o[r] = base[r] + sign * static_cast<double>(of[r - r0]);
        else
          for (std::int64_t r = r0; r < r1; ++r) o[r] = sign * static_cast<double>(of[r - r0]);
      }
      return;
    }
  }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t r0 = b * B, r1 = std::min(n, r0 + B);
    for (std::int64_t r = r0; r < r1; ++r) o[r] = 0.0;
    accumulate<T, double>(r0, r1, k, cols.data(), w.data(), o + r0);
    if (base)
      for (std::int64_t r = r0; r < r1; ++r) o[r] = base[r] + sign * o[r];
    else if (sign != 1.0)
      for (std::int64_t r = r0; r < r1; ++r) o[r] *= sign;
  }
}

// The pending atom joins the active set (Cholesky update), or is excluded when dependent.
template <class T>
void Homotopy<T>::enter() {
  const double eps_piv = std::is_same<T, float>::value ? 1e-5 : 1e-10;
  const std::int64_t j = entering_;
  entering_ = -1;
  ensure_cached(j);
  const T* g = col(j);
  std::vector<double> rhs(S_.size());
  for (std::size_t p = 0; p < S_.size(); ++p) rhs[p] = static_cast<double>(g[S_[p]]);
  if (R_.add(rhs, static_cast<double>(g[j]), eps_piv)) {
    S_.push_back(j);
    sg_.push_back(c_[static_cast<std::size_t>(j)] > 0 ? 1.0 : -1.0);
    xs_.push_back(0.0);
    state_[static_cast<std::size_t>(j)] = 1;
  } else {
    state_[static_cast<std::size_t>(j)] = 2;  // dependent on the active atoms
    banned_.push_back(j);
  }
}

// w = G_SS⁻¹ s, a = G[:, S] w, q = sᵀw. The forward half t = R⁻ᵀs is kept between events:
// its first rows depend only on the first rows of R and s, which an atom joining at the end
// does not touch and one leaving at p keeps before p. So only rows from tv_ on are solved, by
// the same expressions (the same bits as a full solve); the path's events are mostly joins,
// and this was one of three k² triangular solves per event, each bound by add latency.
template <class T>
void Homotopy<T>::direction() {
  const std::int64_t k = static_cast<std::int64_t>(S_.size());
  t_.resize(S_.size());
  for (std::int64_t i = tv_; i < k; ++i) t_[static_cast<std::size_t>(i)] = sg_[static_cast<std::size_t>(i)];
  R_.solve_t(t_.data(), tv_);
  tv_ = k;
  w_ = t_;
  R_.solve(w_.data());
  combine(S_, w_, a_, nullptr, 1.0);
  q_ = 0;
  for (std::size_t p = 0; p < S_.size(); ++p) q_ += sg_[p] * w_[p];
}

// The step to the next event on this segment: the end, an atom entering, an atom leaving.
template <class T>
typename Homotopy<T>::Event Homotopy<T>::next_event() {
  const double inf = std::numeric_limits<double>::infinity();
  const double lam = lam_;
  Event e;
  e.d_end = lam;  // kBP: λ reaches 0
  if (mode_ == L1Mode::kLasso) e.d_end = lam - target_;
  if (mode_ == L1Mode::kBPDN) {
    const double t2 = target_ * target_;
    if (R2_ <= t2) {
      e.d_end = 0;
    } else if (q_ > 0) {
      const double disc = lam * lam - (R2_ - t2) / q_;
      e.d_end = disc >= 0 ? lam - std::sqrt(disc) : lam;
    }
  }
  e.d_in = inf;
  e.d_out = inf;
  const std::int64_t jd = last_dropped_;
  std::int64_t jin = -1;
  const bool jd_free = jd >= 0 && state_[static_cast<std::size_t>(jd)] == 0;
  if (jd_free) state_[static_cast<std::size_t>(jd)] = 3;  // set aside: handled below
  const double din = entering_steps(n_, lam, e.d_end, c_.data(), a_.data(), state_.data(),
                                    colw_.data(), dj_.data(), vv_.data(), &jin);
  if (din < inf) {
    e.d_in = din;
    e.j_in = jin;
  }
  if (jd_free) {
    state_[static_cast<std::size_t>(jd)] = 0;
    // The atom that just left sits on the boundary: its rounding-level root is spurious,
    // but it may genuinely come back later on the segment.
    const auto J = static_cast<std::size_t>(jd);
    const double dlo = 1e-9 * lam, cj = c_[J], aj = a_[J];
    double dmin = inf;
    if (1.0 - aj > 0) {
      const double d = (lam - cj) / (1.0 - aj);
      if (d > dlo) dmin = d;
    }
    if (1.0 + aj > 0) {
      const double d = (lam + cj) / (1.0 + aj);
      if (d > dlo && d < dmin) dmin = d;
    }
    dj_[J] = dmin;
    if (dmin <= e.d_end && dmin >= e.d_end - 1e-8 * lam * colw_[J]) dmin = inf;
    if (dmin < e.d_in || (dmin == e.d_in && dmin < inf && jd < e.j_in)) {
      e.d_in = dmin;
      e.j_in = jd;
    }
  }
  for (std::size_t p = 0; p < S_.size(); ++p) {
    if (w_[p] * xs_[p] < 0) {
      const double d = -xs_[p] / w_[p];
      if (d > 0 && d < e.d_out) {
        e.d_out = d;
        e.p_out = static_cast<std::int64_t>(p);
      }
    } else if (xs_[p] == 0 && w_[p] * sg_[p] < 0 && e.d_out > 0) {
      e.d_out = 0;  // joined on a tie but would move against its sign: leaves at once
      e.p_out = static_cast<std::int64_t>(p);
    }
  }
  if (e.d_out >= e.d_end - 1e-8 * lam) e.d_out = inf;  // a rounding tie with the end
  e.d = std::max(0.0, std::min({e.d_end, e.d_in, e.d_out, lam}));
  return e;
}

// Moves along the segment by e.d. True at the path's end.
template <class T>
bool Homotopy<T>::advance(const Event& e) {
  const double d = e.d;
  for (std::size_t p = 0; p < S_.size(); ++p) xs_[p] += d * w_[p];
  for (std::int64_t j = 0; j < n_; ++j) c_[static_cast<std::size_t>(j)] -= d * a_[static_cast<std::size_t>(j)];
  R2_ = std::max(0.0, R2_ - 2 * d * lam_ * q_ + d * d * q_);
  lam_ -= d;
  ++it_;
  // The end, or so close to it that correlations are rounding noise for every column: the
  // polish below solves the last piece exactly.
  if (d == e.d_end || lam_ <= floor_ || (mode_ == L1Mode::kLasso && lam_ - target_ <= floor_)) {
    if (mode_ == L1Mode::kLasso) lam_ = target_;
    if (mode_ != L1Mode::kLasso && lam_ <= floor_) lam_ = 0;
    return true;
  }
  return false;
}

template <class T>
void Homotopy<T>::leave(std::int64_t p_out) {
  const auto p = static_cast<std::size_t>(p_out);
  state_[static_cast<std::size_t>(S_[p])] = 0;
  last_dropped_ = S_[p];
  R_.remove(p_out);
  forget_t(p_out);
  for (std::int64_t b : banned_) state_[static_cast<std::size_t>(b)] = 0;  // may fit now
  banned_.clear();
  S_.erase(S_.begin() + p_out);
  sg_.erase(sg_.begin() + p_out);
  xs_.erase(xs_.begin() + p_out);
}

// Resynchronises c with x: c = Aᵀy − G[:, S] x_S, and ‖r‖² = ‖y‖² − 2 x·(Aᵀy)_S + x_Sᵀ G_SS x_S.
template <class T>
void Homotopy<T>::resync() {
  combine(S_, xs_, c_, c0_.data(), -1.0);
  double r2 = y2_;
  for (std::size_t p = 0; p < S_.size(); ++p) {
    const double cp = c0_[static_cast<std::size_t>(S_[p])];
    r2 -= xs_[p] * (cp + c_[static_cast<std::size_t>(S_[p])]);
  }
  R2_ = std::max(0.0, r2);
}

// Atoms that joined on the way and whose coefficient came back to rounding level at λ = 0
// (on a recovered support every other atom does) are dropped before the polish. "Rounding
// level" compares |x_p|·‖a_p‖, the atom's share of Ax, not |x_p|: columns may differ in scale.
template <class T>
void Homotopy<T>::drop_rounding_atoms() {
  if (R_.k != static_cast<std::int64_t>(S_.size())) return;
  auto share = [&](std::size_t p) {
    return std::fabs(xs_[p]) * colw_[static_cast<std::size_t>(S_[p])];
  };
  double smax = 0;
  for (std::size_t p = 0; p < S_.size(); ++p) smax = std::max(smax, share(p));
  for (std::int64_t p = static_cast<std::int64_t>(S_.size()) - 1; p >= 0; --p)
    if (share(static_cast<std::size_t>(p)) <= 1e-11 * smax) {
      state_[static_cast<std::size_t>(S_[static_cast<std::size_t>(p)])] = 0;
      R_.remove(p);
      forget_t(p);
      S_.erase(S_.begin() + p);
      sg_.erase(sg_.begin() + p);
      xs_.erase(xs_.begin() + p);
    }
}

// The true residual r = y − A x_S and cc = Aᵀr, from the operator (not tracked).
template <class T>
void Homotopy<T>::residual(const std::vector<double>& xv) {
  const std::int64_t m = m_, n = n_;
  r_.resize(static_cast<std::size_t>(m));
  cc_.resize(static_cast<std::size_t>(n));
  std::fill(tn_.begin(), tn_.end(), T(0));
  for (std::size_t p = 0; p < S_.size(); ++p) tn_[static_cast<std::size_t>(S_[p])] = static_cast<T>(xv[p]);
  if (m > 0) A_.matvec(tn_.data(), tm_.data());
  for (std::int64_t i = 0; i < m; ++i)
    r_[static_cast<std::size_t>(i)] = static_cast<double>(y_[i]) - static_cast<double>(tm_[static_cast<std::size_t>(i)]);
  for (std::int64_t i = 0; i < m; ++i) tm_[static_cast<std::size_t>(i)] = static_cast<T>(r_[static_cast<std::size_t>(i)]);
  if (n > 0) A_.rmatvec(tm_.data(), tn_.data());
  for (std::int64_t j = 0; j < n; ++j) cc_[static_cast<std::size_t>(j)] = static_cast<double>(tn_[static_cast<std::size_t>(j)]);
}

// BPDN end, exactly: on the last piece r(λ) = r_LS + λ A_S w with r_LS ⟂ A_S w, so
// ‖r(λ)‖² = ‖r_LS‖² + λ²q. The tracked ‖r‖² loses digits when sigma ≪ ‖y‖; this does not.
template <class T>
void Homotopy<T>::polish_bpdn() {
  const std::size_t k = S_.size();
  std::vector<double> xl(xs_);
  for (std::size_t p = 0; p < k; ++p) xl[p] += lam_ * w_[p];
  for (int rep = 0; rep < 2; ++rep) {  // least squares on S, refined on the true residual
    residual(xl);
    std::vector<double> dx(k);
    for (std::size_t p = 0; p < k; ++p) dx[p] = cc_[static_cast<std::size_t>(S_[p])];
    R_.solve_t(dx.data());
    R_.solve(dx.data());
    for (std::size_t p = 0; p < k; ++p) xl[p] += dx[p];
  }
  residual(xl);
  double rl2 = 0, q = 0;
  for (double v : r_) rl2 += v * v;
  for (std::size_t p = 0; p < k; ++p) q += sg_[p] * w_[p];
  const double lam_new = q > 0 ? std::sqrt(std::max(0.0, target_ * target_ - rl2) / q) : 0.0;
  bool ok = true;
  for (std::size_t p = 0; p < k; ++p)
    if ((xl[p] - lam_new * w_[p]) * sg_[p] < 0) ok = false;
  if (ok) {
    for (std::size_t p = 0; p < k; ++p) xs_[p] = xl[p] - lam_new * w_[p];
    lam_ = lam_new;
  }
  residual(xs_);
}

// Polish on the true residual: x_S += G_SS⁻¹ (A_Sᵀ r − λ s), kept if no sign flips.
template <class T>
void Homotopy<T>::polish() {
  const std::size_t k = S_.size();
  std::vector<double> dx(k);
  for (std::size_t p = 0; p < k; ++p) dx[p] = cc_[static_cast<std::size_t>(S_[p])] - lam_ * sg_[p];
  R_.solve_t(dx.data());
  R_.solve(dx.data());
  std::vector<double> xn(xs_);
  for (std::size_t p = 0; p < k; ++p) {
    xn[p] += dx[p];
    if (xn[p] * sg_[p] < 0) return;
  }
  xs_.swap(xn);
  residual(xs_);
}

// Dual value of z = t·A_S G_SS⁻¹ s (the BP certificate), t as large as ‖Aᵀz‖∞ <= 1 allows;
// minus sigma‖z‖ for BPDN. w_ belongs to S_cert (the set of the last direction).
template <class T>
double Homotopy<T>::equiangular_dual(const std::vector<std::int64_t>& S_cert, double sigma) {
  if (S_cert.empty()) return 0.0;
  std::fill(tn_.begin(), tn_.end(), T(0));
  for (std::size_t p = 0; p < S_cert.size(); ++p)
    tn_[static_cast<std::size_t>(S_cert[p])] = static_cast<T>(w_[p]);
  A_.matvec(tn_.data(), tm_.data());
  A_.rmatvec(tm_.data(), tn_.data());
  double zmax = 0, yz = 0, zn = 0;
  for (std::int64_t j = 0; j < n_; ++j)
    zmax = std::max(zmax, std::fabs(static_cast<double>(tn_[static_cast<std::size_t>(j)])));
  for (std::int64_t i = 0; i < m_; ++i) {
    const double zi = static_cast<double>(tm_[static_cast<std::size_t>(i)]);
    yz += static_cast<double>(y_[i]) * zi;
    zn += zi * zi;
  }
  const double v = yz - sigma * std::sqrt(zn);
  return zmax > 0 ? std::max(0.0, v / zmax) : 0.0;
}

template <class T>
void Homotopy<T>::certificate(const std::vector<std::int64_t>& S_cert, L1Info& info) {
  double rn2 = 0, l1 = 0, cmax = 0, yr = 0;
  for (std::int64_t i = 0; i < m_; ++i) {
    rn2 += r_[static_cast<std::size_t>(i)] * r_[static_cast<std::size_t>(i)];
    yr += static_cast<double>(y_[i]) * r_[static_cast<std::size_t>(i)];
  }
  for (double v : xs_) l1 += std::fabs(v);
  for (double v : cc_) cmax = std::max(cmax, std::fabs(v));
  info.resid_norm = std::sqrt(rn2);
  info.corr_max = cmax;
  info.lambda = lam_;
  if (mode_ == L1Mode::kLasso) {
    info.primal = 0.5 * rn2 + target_ * l1;
    // θ = sc·r is dual feasible for sc = min(1, λ/‖Aᵀr‖∞). Aᵀr carries rounding errors of
    // about m·eps·‖a_j‖(‖y‖ + ‖r‖) even at the exact solution, so at λ = 0 (least squares, where
    // Aᵀr = 0 exactly) or when the violation is at that level, θ = r itself is the dual point.
    const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
    const double cround = static_cast<double>(std::max<std::int64_t>(m_, 1)) * eps * cnorm_max_ *
                          (std::sqrt(y2_) + std::sqrt(rn2));
    const double sc = cmax > target_ + cround ? target_ / cmax : 1.0;
    info.dual = sc * yr - 0.5 * sc * sc * rn2;
  } else if (mode_ == L1Mode::kBPDN) {
    info.primal = l1;
    if (S_.empty() && std::sqrt(y2_) <= target_) {
      info.dual = 0;  // z = 0
    } else {
      // z = r / ‖Aᵀr‖∞, or the equiangular point when the residual is at rounding level.
      const double sc = cmax > 0 ? 1.0 / cmax : 0.0;
      info.dual = std::max(sc * yr - target_ * sc * std::sqrt(rn2), equiangular_dual(S_cert, target_));
    }
  } else {
    info.primal = l1;
    info.dual = equiangular_dual(S_cert, 0.0);
  }
  info.gap = info.primal - info.dual;
}

// Follows the path from λ₀ to its end (or max_iter events). True at the end.
template <class T>
bool Homotopy<T>::follow(const T* y, L1Mode mode, double target, std::int64_t max_iter) {
  y_ = y;
  mode_ = mode;
  target_ = target;
  bool done = start();
  while (!done && it_ < max_iter) {
    if (entering_ >= 0) enter();
    if (S_.empty()) break;
    direction();
    const Event e = next_event();
    done = advance(e);
    if (done) break;
    if (e.d == e.d_out) {
      leave(e.p_out);
    } else {
      entering_ = e.j_in;
      last_dropped_ = -1;
    }
    if (it_ % 64 == 0) resync();
  }
  return done;
}

template <class T>
bool Homotopy<T>::path(const T* y, L1Mode mode, double target, std::int64_t max_iter,
                       const std::vector<double>* col_sumsq, std::vector<std::int64_t>* S,
                       std::vector<double>* signs, std::int64_t* events,
                       std::int64_t* gram_columns) {
  sumsq_ = col_sumsq;
  // Reserved for min(n, m + 128) columns (the atoms that enter, and those fetched with them,
  // rarely outnumber that): the cache is then not copied as it grows, and only the pages
  // written are touched. At most the size of the operator's own copy plus 128 columns.
  lean_ = true;
  cache_.reserve(static_cast<std::size_t>(n_ * std::min(n_, m_ + 128)));
  const bool done = follow(y, mode, target, max_iter);
  *events = it_;
  *gram_columns = ncache_;
  std::vector<std::size_t> order(S_.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::sort(order.begin(), order.end(), [&](std::size_t p, std::size_t q) { return S_[p] < S_[q]; });
  S->clear();
  signs->clear();
  for (std::size_t p : order) {
    S->push_back(S_[p]);
    signs->push_back(sg_[p]);
  }
  return done;
}

template <class T>
L1Info Homotopy<T>::run(const T* y, L1Mode mode, double target, std::int64_t max_iter, T* x_out) {
  std::fill(x_out, x_out + n_, T(0));
  const bool done = follow(y, mode, target, max_iter);
  L1Info info;
  info.finished = done;
  info.iterations = it_;
  info.gram_columns = ncache_;
  const std::vector<std::int64_t> S_cert = S_;  // the set w belongs to (for the certificate)
  if (done && lam_ <= 0) drop_rounding_atoms();
  info.n_active = static_cast<std::int64_t>(S_.size());
  residual(xs_);
  const bool factored = !S_.empty() && R_.k == static_cast<std::int64_t>(S_.size());
  if (mode == L1Mode::kBPDN && done && lam_ > 0 && factored && w_.size() == S_.size()) polish_bpdn();
  if (factored) polish();
  for (std::size_t p = 0; p < S_.size(); ++p) x_out[S_[p]] = static_cast<T>(xs_[p]);
  certificate(S_cert, info);
  return info;
}

// BPDN's support, guessed by solving the problem in float32 first: for a dense, row-major,
// well-scaled double A the homotopy on a float copy costs about two thirds of the double one
// (its Gram columns and the streams over them are half as wide) and ends on the same support
// and signs (12 of 12 Gaussian problems 512×2048 and 1024×4096, 1% noise; a near miss, an
// atom at the edge of entering, in others). The double solve takes it from there
// (on_support): exact on the support, checked on all of A, revised, or redone by the
// double homotopy. Returns the support (ascending) and its signs, or nothing when the guess
// does not apply.
template <class T>
std::vector<std::int64_t> float_support_guess(const LinOp<T>& A, const T* y, double target,
                                              std::int64_t max_iter, int n_threads,
                                              const std::vector<double>& cn,
                                              std::vector<double>* signs, std::int64_t* events,
                                              std::int64_t* gram_columns) {
  std::vector<std::int64_t> supp;
  if constexpr (std::is_same<T, double>::value) {
    const std::int64_t m = A.m, n = A.n;
    bool tr = false;
    std::int64_t ld = 0;
    const T* a = A.colmajor(&tr, &ld);
    // Worth it for large problems only (below this the double path takes a few ms).
    if (!a || !tr || m * n < (std::int64_t(1) << 20) || n < 2 * m) return supp;
    double lo = std::numeric_limits<double>::infinity(), hi = 0, y2 = 0;
    for (double v : cn)
      if (v > 0) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    for (std::int64_t i = 0; i < m; ++i) y2 += y[i] * y[i];
    // Float32 keeps the path only for comparable column scales and magnitudes well inside
    // its range; elsewhere the double homotopy is the method (it is scale-robust).
    if (!(hi > 0) || hi > 1e8 * lo || hi > 1e30 || lo < 1e-30 || !(y2 > 1e-30 && y2 < 1e30))
      return supp;
    // The copy is column-major (each column contiguous): a block of Gram columns then
    // gathers its columns as contiguous copies and takes one gemm Aᵀ·X ('T','N'), measured
    // 1.3x faster per column than 'N','N' on the row-major copy (1024×4096, b = 64, one
    // thread), whose gather of b scattered entries per row was as costly as the product.
    DenseOp<float> f;
    f.m = m;
    f.n = n;
    f.n_threads = n_threads;
    // Not value-initialised (every entry is written below). Transposed eight columns at a
    // time: for each row, eight contiguous doubles go to eight columns' write streams, which
    // advance together (64×64 tiles read down the columns at a stride of a row).
    Scratch<float> own = scratch<float>(static_cast<std::size_t>(m * n));  // huge pages
    float* o = own.get();
    constexpr std::int64_t W = 8;
    std::int64_t j0 = 0;
    for (; j0 + W <= n; j0 += W)
      for (std::int64_t i = 0; i < m; ++i) {
        const double* __restrict src = a + i * ld + j0;
        float* __restrict dst = o + j0 * m + i;
        for (std::int64_t u = 0; u < W; ++u) dst[u * m] = static_cast<float>(src[u]);
      }
    for (; j0 < n; ++j0)
      for (std::int64_t i = 0; i < m; ++i) o[j0 * m + i] = static_cast<float>(a[i * ld + j0]);
    f.a = o;
    f.ld = m;
    f.col = true;
    std::vector<float> yf(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < m; ++i) yf[static_cast<std::size_t>(i)] = static_cast<float>(y[i]);
    // The double columns' norms (at hand) stand in for the copy's: they only set the scale of
    // the rounding ties.
    if (!Homotopy<float>(f, n_threads).path(yf.data(), L1Mode::kBPDN, target, max_iter, &cn,
                                            &supp, signs, events, gram_columns)) {
      supp.clear();
      signs->clear();
    }
  } else {
    (void)A, (void)y, (void)target, (void)max_iter, (void)n_threads, (void)cn, (void)signs,
        (void)events, (void)gram_columns;
  }
  return supp;
}

// The columns of A that on_support has solved on, gathered once (column-major, each
// contiguous), with their Gram matrix. A revision changes the support by a few atoms, and
// gathering A[:, S] afresh from a row-major A read most of A every time: with the syrk, 20% of
// a LASSO solve at 1024×4096 (five revisions, one thread).
template <class T>
struct SupportCache {
  std::int64_t m = 0, count = 0, cap = 0;
  Lent<HugeVec<T>> cols_lent{l1_keep<T>().cols}, gram_lent{l1_keep<T>().gram};
  HugeVec<T>& cols = cols_lent.v;  // m × count, column-major
  HugeVec<T>& gram = gram_lent.v;  // cap × cap, column-major; its leading count × count filled
  std::vector<std::int64_t> slot;   // atom -> column, or -1

  void add(const LinOp<T>& A, const std::vector<std::int64_t>& S) {
    m = A.m;
    if (slot.empty()) slot.assign(static_cast<std::size_t>(A.n), -1);
    std::vector<std::int64_t> fresh;
    for (std::int64_t j : S)
      if (slot[static_cast<std::size_t>(j)] < 0) fresh.push_back(j);
    const auto b = static_cast<std::int64_t>(fresh.size());
    if (b == 0) return;
    Lent<HugeVec<T>> rows(l1_keep<T>().rows);
    HugeVec<T>& rm = rows.v;  // row-major m×b
    rm.resize(static_cast<std::size_t>(m * b));
    A.columns(fresh.data(), b, rm.data());
    cols.resize(static_cast<std::size_t>((count + b) * m));
    T* dst = cols.data() + count * m;
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t t = 0; t < b; ++t) dst[t * m + i] = rm[static_cast<std::size_t>(i * b + t)];
    const std::int64_t total = count + b;
    if (total > cap) {  // a larger leading dimension: columns moved in place, the last first
      const std::int64_t nc = std::max(total, 2 * cap);
      gram.resize(static_cast<std::size_t>(nc * nc));
      for (std::int64_t q = count - 1; q > 0; --q)
        std::copy_backward(gram.begin() + q * cap, gram.begin() + q * cap + count, gram.begin() + q * nc + count);
      cap = nc;
    }
    // Every cached column against the fresh ones, then mirrored.
    blas::gemm<T>('T', 'N', blas::to_int(total, "k"), blas::to_int(b, "k"), blas::to_int(m, "m"),
                  T(1), cols.data(), blas::to_int(m, "m"), dst, blas::to_int(m, "m"), T(0),
                  gram.data() + count * cap, blas::to_int(cap, "k"));
    for (std::int64_t t = 0; t < b; ++t)
      for (std::int64_t p = 0; p < count; ++p)
        gram[static_cast<std::size_t>(p * cap + count + t)] = gram[static_cast<std::size_t>((count + t) * cap + p)];
    for (std::int64_t t = 0; t < b; ++t) slot[static_cast<std::size_t>(fresh[static_cast<std::size_t>(t)])] = count + t;
    count = total;
  }
};

// The LASSO on S with the signs th, in Gram form: x̂ = G_SS⁻¹(A_Sᵀy − λ·th); the atoms whose
// x̂ disagrees with their sign leave S and the rest is solved again, until every sign holds
// (x̂ is then optimal on the final S). No product with A: one Cholesky factorisation of the
// cached Gram block per pass, and S only shrinks. A wrong drop comes back as a violator of the
// whole problem. Measured against feature-sign search (a line search to the first sign
// change, one atom leaving per step: descent guaranteed), over 21 problems from 128×512 to
// 1024×4096, λ from 0.003 to 0.05·λmax, one thread: 0.78 s against 1.49 s in all, its many
// steps each paying a factorisation. aty: Aᵀy over all columns; x gets x̂. False if G_SS is
// singular.
template <class T>
bool solve_signs_on(const SupportCache<T>& cache, const std::vector<double>& aty, double lam,
                    std::vector<std::int64_t>& S, std::vector<double>& th, std::vector<double>& x) {
  std::vector<double> G;
  for (;;) {
    const std::size_t k = S.size();
    if (k == 0) return true;
    G.resize(k * k);
    x.resize(k);
    for (std::size_t p = 0; p < k; ++p) {
      const auto sp = cache.slot[static_cast<std::size_t>(S[p])];
      for (std::size_t q = 0; q < k; ++q)
        G[p * k + q] = static_cast<double>(cache.gram[static_cast<std::size_t>(sp * cache.cap + cache.slot[static_cast<std::size_t>(S[q])])]);
      x[p] = aty[static_cast<std::size_t>(S[p])] - lam * th[p];
    }
    const auto bk = blas::to_int(static_cast<std::int64_t>(k), "k");
    if (blas::potrf<double>('U', bk, G.data(), bk) != 0) return false;
    blas::potrs<double>('U', bk, 1, G.data(), bk, x.data(), bk);
    std::size_t o = 0;
    for (std::size_t p = 0; p < k; ++p) {
      if (!(x[p] * th[p] > 0)) continue;
      S[o] = S[p];
      th[o] = th[p];
      x[o] = x[p];
      ++o;
    }
    if (o == k) return true;
    S.resize(o);
    th.resize(o);
    x.resize(o);
  }
}

// LASSO or BPDN on a given support S with signs s, exactly. LASSO (aty given): solve_signs_on
// (S may shrink), then x_S refined twice on the true residual. BPDN: on S the solution is x(λ) = x_LS − λw (x_LS the least-squares fit,
// w = G_SS⁻¹s) and ‖r(λ)‖² = ‖r_LS‖² + λ²q (q = sᵀw), so the λ with ‖r‖ = sigma is explicit;
// x_LS is refined twice. Then the optimality conditions of the whole problem from one product
// c = Aᵀr: signs of x_S as s, c_S = λs, |c_j| <= λ off S. kOptimal (x_out, info filled, with
// the certificate of Homotopy::certificate) when they hold; otherwise S and sg are revised as
// an active-set step (kRevised: atoms whose coefficient crossed zero leave (BPDN); the
// violators with the largest correlations join with its sign, at most max(32, |S|/4) of them)
// or the fit is off (kFailed); kTooLarge: S has more atoms than the method is worth (nothing
// done). cn: the columns' squared norms. BPDN: about 10 ms at 1024×4096
// with |S| = 408, against ~40 for the block homotopy on S.
enum class OnSupport { kOptimal, kRevised, kFailed, kTooLarge };

template <class T>
OnSupport on_support(const LinOp<T>& A, const T* y, L1Mode mode, double target,
                     std::vector<std::int64_t>& S, std::vector<double>& sg,
                     const std::vector<double>& aty, const std::vector<double>& cn,
                     SupportCache<T>& cache, T* x_out, L1Info& info) {
  const std::int64_t m = A.m, n = A.n;
  const bool bpdn = mode == L1Mode::kBPDN;
  // LASSO: past 0.6m atoms, revisions seldom settle (supports of 0.85-0.97m took all eight
  // and lost to the blocks: 400×3000, 256×4096, 160×900 at λ <= 0.01·λmax).
  const std::int64_t most_k = bpdn ? m : m * 3 / 5;
  if (static_cast<std::int64_t>(S.size()) > most_k) return OnSupport::kTooLarge;
  if (S.empty() || (bpdn && !(target > 0)) ||
      mode == L1Mode::kBP || (!bpdn && aty.empty()))
    return OnSupport::kFailed;
  cache.add(A, S);
  std::vector<double> xv;
  if (!bpdn && (!solve_signs_on(cache, aty, target, S, sg, xv) || S.empty())) return OnSupport::kFailed;
  const std::int64_t k = static_cast<std::int64_t>(S.size());
  const auto K = static_cast<std::size_t>(k), M = static_cast<std::size_t>(m);
  Lent<HugeVec<T>> lent_as(l1_keep<T>().as);
  HugeVec<T>& as = lent_as.v;  // A[:, S] column-major m×k
  as.resize(M * K);
  std::vector<T> G(K * K);         // G_SS
  for (std::size_t p = 0; p < K; ++p) {
    const auto sp = cache.slot[static_cast<std::size_t>(S[p])];
    std::copy(cache.cols.begin() + sp * m, cache.cols.begin() + (sp + 1) * m, as.begin() + static_cast<std::ptrdiff_t>(p * M));
    for (std::size_t q = 0; q < K; ++q)
      G[p * K + q] = cache.gram[static_cast<std::size_t>(sp * cache.cap + cache.slot[static_cast<std::size_t>(S[q])])];
  }
  const auto bk = blas::to_int(k, "k"), bm = blas::to_int(m, "m");
  if (blas::potrf<T>('U', bk, G.data(), bk) != 0) return OnSupport::kFailed;
  std::vector<T> rhs(2 * K), ax(M), r(M), d(K);
  auto resid = [&](const T* xq) {  // r = y − A_S x, ‖r‖²
    blas::gemv<T>('N', bm, bk, T(1), as.data(), bm, xq, 1, T(0), ax.data(), 1);
    double s2 = 0;
    for (std::size_t i = 0; i < M; ++i) {
      r[i] = y[i] - ax[i];
      s2 += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    }
    return s2;
  };
  // Two refinements on the true residual: x += G_SS⁻¹(A_Sᵀr − shift), shift = λs (LASSO) or 0
  // (the least-squares fit of BPDN).
  auto refine = [&](T* xq, double shift) {
    for (int rep = 0; rep < 2; ++rep) {
      resid(xq);
      blas::gemv<T>('T', bm, bk, T(1), as.data(), bm, r.data(), 1, T(0), d.data(), 1);
      for (std::size_t p = 0; p < K; ++p) d[p] = static_cast<T>(static_cast<double>(d[p]) - shift * sg[p]);
      blas::potrs<T>('U', bk, 1, G.data(), bk, d.data(), bk);
      for (std::size_t p = 0; p < K; ++p) xq[p] += d[p];
    }
  };
  double lam = target;
  std::vector<T> xs(K);
  std::vector<char> drop(K, 0);
  double l1 = 0;
  bool flips = false;
  if (bpdn) {
    blas::gemv<T>('T', bm, bk, T(1), as.data(), bm, y, 1, T(0), rhs.data(), 1);  // A_Sᵀy
    for (std::size_t p = 0; p < K; ++p) rhs[K + p] = static_cast<T>(sg[p]);
    blas::potrs<T>('U', bk, 2, G.data(), bk, rhs.data(), bk);
    T* xl = rhs.data();
    const T* w = rhs.data() + K;
    refine(xl, 0.0);
    const double rl2 = resid(xl);
    double q = 0;
    for (std::size_t p = 0; p < K; ++p) q += sg[p] * static_cast<double>(w[p]);
    const double t2 = target * target;
    if (!(q > 0) || !(t2 > rl2)) return OnSupport::kFailed;
    lam = std::sqrt((t2 - rl2) / q);
    for (std::size_t p = 0; p < K; ++p)
      xs[p] = static_cast<T>(static_cast<double>(xl[p]) - lam * static_cast<double>(w[p]));
  } else {
    for (std::size_t p = 0; p < K; ++p) xs[p] = static_cast<T>(xv[p]);
    refine(xs.data(), lam);
  }
  for (std::size_t p = 0; p < K; ++p) {
    if (!(static_cast<double>(xs[p]) * sg[p] > 0)) drop[p] = flips = true;
    l1 += std::fabs(static_cast<double>(xs[p]));
  }
  if (flips && !bpdn) return OnSupport::kFailed;  // the refinement moved a sign
  const double rn2 = resid(xs.data());
  std::vector<T> c(static_cast<std::size_t>(n));
  A.rmatvec(r.data(), c.data());
  double y2 = 0, yr = 0, cmax = 0;
  for (std::size_t i = 0; i < M; ++i) {
    y2 += static_cast<double>(y[i]) * static_cast<double>(y[i]);
    yr += static_cast<double>(y[i]) * static_cast<double>(r[i]);
  }
  const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
  const double rnd = static_cast<double>(m) * eps * (std::sqrt(y2) + std::sqrt(rn2));
  std::vector<char> inS(static_cast<std::size_t>(n), 0);
  for (std::size_t p = 0; p < K; ++p) {
    const auto J = static_cast<std::size_t>(S[p]);
    inS[J] = 1;
    if (std::fabs(static_cast<double>(c[J]) - lam * sg[p]) > 1e-9 * lam + rnd * std::sqrt(cn[J]))
      return OnSupport::kFailed;  // the fit itself is off: not this method's problem
  }
  std::vector<std::int64_t> join;
  double cnmax = 0;
  for (std::size_t j = 0; j < static_cast<std::size_t>(n); ++j) {
    const double cj = std::fabs(static_cast<double>(c[j]));
    cmax = std::max(cmax, cj);
    cnmax = std::max(cnmax, cn[j]);
    if (!inS[j] && cj > lam * (1 + 1e-9) + rnd * std::sqrt(cn[j]))
      join.push_back(static_cast<std::int64_t>(j));
  }
  const auto most = static_cast<std::size_t>(std::max<std::int64_t>(32, k / 4));
  if (join.size() > most) {
    auto larger = [&](std::int64_t p, std::int64_t q2) {
      const double cp = std::fabs(static_cast<double>(c[static_cast<std::size_t>(p)]));
      const double cq = std::fabs(static_cast<double>(c[static_cast<std::size_t>(q2)]));
      return cp > cq || (cp == cq && p < q2);
    };
    std::nth_element(join.begin(), join.begin() + static_cast<std::ptrdiff_t>(most), join.end(), larger);
    join.resize(most);
  }
  if (flips || !join.empty()) {
    // Revise the support as an active-set step would: coefficients that crossed zero leave,
    // violators join with the sign of their correlation.
    std::vector<std::pair<std::int64_t, double>> ns;
    for (std::size_t p = 0; p < K; ++p)
      if (!drop[p]) ns.emplace_back(S[p], sg[p]);
    for (std::int64_t j : join) ns.emplace_back(j, c[static_cast<std::size_t>(j)] > 0 ? 1.0 : -1.0);
    std::sort(ns.begin(), ns.end());
    S.clear();
    sg.clear();
    for (const auto& e : ns) {
      S.push_back(e.first);
      sg.push_back(e.second);
    }
    return OnSupport::kRevised;
  }
  std::fill(x_out, x_out + n, T(0));
  for (std::size_t p = 0; p < K; ++p) x_out[S[p]] = xs[p];
  info.finished = true;
  info.n_active = k;
  info.gram_columns = k;
  info.lambda = lam;
  info.resid_norm = std::sqrt(rn2);
  info.corr_max = cmax;
  if (bpdn) {
    info.primal = l1;
    const double sc = cmax > 0 ? 1.0 / cmax : 0.0;
    info.dual = std::max(0.0, sc * yr - target * sc * std::sqrt(rn2));
  } else {  // the dual point of Homotopy::certificate
    info.primal = 0.5 * rn2 + lam * l1;
    const double cround = rnd * std::sqrt(cnmax);
    const double sc = cmax > lam + cround ? lam / cmax : 1.0;
    info.dual = sc * yr - 0.5 * sc * sc * rn2;
  }
  info.gap = info.primal - info.dual;
  return OnSupport::kOptimal;
}

// Up to `rounds` exact solves on S, revised between them (on_support). True, with x_out and
// info filled, when one is optimal. WP_L1_REVISIONS (an integer >= 0) sets `rounds` instead,
// for comparisons (0: the homotopy alone). info.support_solves counts the solves.
template <class T>
bool solve_on_support(const LinOp<T>& A, const T* y, L1Mode mode, double target,
                      std::vector<std::int64_t>& S, std::vector<double>& sg,
                      const std::vector<double>& aty, const std::vector<double>& cn2, int rounds,
                      T* x_out, L1Info& info) {
  if (const char* e = std::getenv("WP_L1_REVISIONS")) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    if (end != e && *end == '\0' && v >= 0 && v <= 1000) rounds = static_cast<int>(v);
  }
  SupportCache<T> cache;
  std::int64_t solves = 0;
  for (int round = 0; round < rounds && !S.empty(); ++round) {
    const OnSupport st = on_support<T>(A, y, mode, target, S, sg, aty, cn2, cache, x_out, info);
    if (st == OnSupport::kTooLarge) break;
    info.support_solves = ++solves;
    if (st == OnSupport::kOptimal) return true;
    if (st == OnSupport::kFailed) break;
  }
  info.support_solves = solves;
  return false;
}

// Working sets (LASSO and BPDN). The homotopy pays for Gram columns over all n atoms (m·n
// each) because it tracks every correlation along the path. Off the path only the answer
// matters, so: solve the problem exactly on a working set W of columns (the homotopy on the
// m×|W| block, whose Gram columns cost m·|W|), then check the optimality conditions of the
// whole problem with one product, c = Aᵀr: x_W with multiplier λ (LASSO: the target; BPDN: the
// λ where the residual reached sigma) is optimal for A iff |c_j| <= λ for every j outside W.
// W starts as the atoms most correlated with y per unit norm. After the first block, its
// support with its signs and the largest violators (a quarter as many) are solved on exactly
// and revised as an active-set method (solve_on_support, at most 8 solves, each one product
// with A): at 1024×4096 that replaced 2-3 more blocks of 120-150 events each (41 -> 30 ms at
// lam = 0.05·λmax, 129 -> 45 ms at 0.01, one thread; 512×2048 26 -> 8 ms at 0.01). Otherwise
// violators and the last revised support join W (the violators at most doubling it) and the
// block is solved again; a working set that grows past min(n/2, 3m/4) falls back to the
// homotopy on A itself. Every answer is exact and certified on the whole problem.
template <class T>
L1Info l1_solve(const LinOp<T>& A, const T* y, L1Mode mode, double target,
                std::int64_t max_iter, T* x_out, int n_threads) {
  const std::int64_t m = A.m, n = A.n;
  const std::int64_t w0 = std::max<std::int64_t>(64, m / 4);
  // BPDN starts from the support of the float32 solution when there is one (see
  // float_support_guess); otherwise it stays on the homotopy: at sigma = noise level its λ lies
  // deep in the path, the support nears m, and working sets grown from the correlations with y
  // took thousands of events (measured: 3-30× slower at 512×2048 and 1024×4096).
  if (mode == L1Mode::kBPDN && m > 0 && n > 0) {
    std::int64_t guess_events = 0, guess_cols = 0;
    std::vector<std::int64_t> guess;
    std::vector<double> cn2(static_cast<std::size_t>(n)), sg;
    A.col_sumsq(cn2.data());
    guess = float_support_guess<T>(A, y, target, max_iter, n_threads, cn2, &sg, &guess_events,
                                   &guess_cols);
    // A near miss (an atom at the edge of entering or leaving) is revised a few times; past
    // that, or when the fit fails, the double homotopy decides (working sets grown from a
    // wrong guess measured slower than the path itself).
    const bool guessed = !guess.empty();
    L1Info gi;
    if (guessed && solve_on_support<T>(A, y, mode, target, guess, sg, {}, cn2, 4, x_out, gi)) {
      gi.iterations = guess_events;
      gi.gram_columns = guess_cols;
      return gi;
    }
    if (guessed) {
      L1Info info = Homotopy<T>(A, n_threads).run(y, mode, target, max_iter, x_out);
      info.iterations += guess_events;
      info.gram_columns += guess_cols;
      info.support_solves = gi.support_solves;
      return info;
    }
  }
  if (mode != L1Mode::kLasso || n < 4 * w0 || m == 0)
    return Homotopy<T>(A, n_threads).run(y, mode, target, max_iter, x_out);
  const auto N = static_cast<std::size_t>(n), M = static_cast<std::size_t>(m);
  std::vector<T> tn(N), tm(M);
  std::vector<double> cn(N);
  A.rmatvec(y, tn.data());
  A.col_sumsq(cn.data());
  const std::vector<double> cn2 = cn;                     // squared, for on_support
  const std::vector<double> aty(tn.begin(), tn.end());  // Aᵀy, for solve_signs_on
  double y2 = 0, cnmax = 0;
  for (std::int64_t i = 0; i < m; ++i) y2 += static_cast<double>(y[i]) * static_cast<double>(y[i]);
  for (std::size_t j = 0; j < N; ++j) {
    cn[j] = std::sqrt(cn[j]);
    cnmax = std::max(cnmax, cn[j]);
  }
  std::vector<double> score(N);
  for (std::size_t j = 0; j < N; ++j)
    score[j] = cn[j] > 0 ? std::fabs(static_cast<double>(tn[j])) / cn[j] : -1.0;
  std::vector<std::int64_t> order(N);
  std::iota(order.begin(), order.end(), std::int64_t(0));
  auto by_score = [&](std::int64_t p, std::int64_t q) {
    const double sp = score[static_cast<std::size_t>(p)], sq = score[static_cast<std::size_t>(q)];
    return sp > sq || (sp == sq && p < q);
  };
  std::partial_sort(order.begin(), order.begin() + w0, order.end(), by_score);
  std::vector<std::int64_t> W(order.begin(), order.begin() + w0);
  std::vector<char> inW(N, 0);
  for (std::int64_t j : W) inW[static_cast<std::size_t>(j)] = 1;
  const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
  std::int64_t events = 0, gram_cols = 0;
  bool revised = false;  // the block support has been revised once (on_support)
  std::int64_t solves = 0;
  Lent<HugeVec<T>> own(l1_keep<T>().own);  // the block's columns
  std::vector<T> xw;
  std::vector<double> r(M);
  for (;;) {
    std::sort(W.begin(), W.end());
    const auto k = static_cast<std::int64_t>(W.size());
    // Block problems near square (|W| ≈ m) have long paths: past 3m/4 (or n/2) columns the
    // homotopy on A is cheaper.
    if (2 * k > n || 4 * k > 3 * m) break;
    DenseOp<T> sub;
    sub.m = m;
    sub.n = k;
    sub.n_threads = n_threads;
    own.v.resize(static_cast<std::size_t>(m * k));
    A.columns(W.data(), k, own.v.data());
    sub.a = own.v.data();
    sub.ld = k;
    xw.assign(static_cast<std::size_t>(k), T(0));
    L1Info info = Homotopy<T>(sub, n_threads).run(y, mode, target, max_iter, xw.data());
    events += info.iterations;
    gram_cols += info.gram_columns;
    if (!info.finished) break;  // the homotopy on A reports it properly
    // r = y − A_W x_W, c = Aᵀ r over all columns.
    sub.matvec(xw.data(), tm.data());
    double rn2 = 0, yr = 0;
    for (std::size_t i = 0; i < M; ++i) {
      r[i] = static_cast<double>(y[i]) - static_cast<double>(tm[i]);
      rn2 += r[i] * r[i];
      yr += static_cast<double>(y[i]) * r[i];
      tm[i] = static_cast<T>(r[i]);
    }
    A.rmatvec(tm.data(), tn.data());
    const double lam = mode == L1Mode::kLasso ? target : info.lambda;
    const double rnd = static_cast<double>(m) * eps * (std::sqrt(y2) + std::sqrt(rn2));
    std::vector<std::int64_t> viol;
    double cmax = 0;
    for (std::size_t j = 0; j < N; ++j) {
      const double cj = std::fabs(static_cast<double>(tn[j]));
      cmax = std::max(cmax, cj);
      if (!inW[j] && cj > lam * (1 + 1e-9) + rnd * cn[j]) viol.push_back(static_cast<std::int64_t>(j));
    }
    if (viol.empty()) {
      std::fill(x_out, x_out + n, T(0));
      std::int64_t nnz = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        x_out[W[static_cast<std::size_t>(t)]] = xw[static_cast<std::size_t>(t)];
        nnz += xw[static_cast<std::size_t>(t)] != T(0);
      }
      info.iterations = events;
      info.gram_columns = gram_cols;
      info.support_solves = solves;
      info.n_active = nnz;
      info.corr_max = cmax;
      // The dual points of Homotopy::certificate, with ‖Aᵀr‖∞ over all of A.
      if (mode == L1Mode::kLasso) {
        const double cround = static_cast<double>(m) * eps * cnmax * (std::sqrt(y2) + std::sqrt(rn2));
        const double sc = cmax > target + cround ? target / cmax : 1.0;
        info.dual = sc * yr - 0.5 * sc * sc * rn2;
      } else {
        const double sc = cmax > 0 ? 1.0 / cmax : 0.0;
        info.dual = std::max(0.0, sc * yr - target * sc * std::sqrt(rn2));
      }
      info.gap = info.primal - info.dual;
      return info;
    }
    for (std::int64_t j : viol) score[static_cast<std::size_t>(j)] = std::fabs(static_cast<double>(tn[static_cast<std::size_t>(j)]));
    const auto add = std::min<std::int64_t>(static_cast<std::int64_t>(viol.size()), std::max<std::int64_t>(32, k));
    std::partial_sort(viol.begin(), viol.begin() + add, viol.end(), by_score);
    if (!revised) {
      // Once, after the first block: its support and the largest violators, revised.
      revised = true;
      std::vector<std::pair<std::int64_t, double>> ns;  // atom, sign
      for (std::int64_t t = 0; t < k; ++t) {
        const T v = xw[static_cast<std::size_t>(t)];
        if (v != T(0)) ns.emplace_back(W[static_cast<std::size_t>(t)], v > T(0) ? 1.0 : -1.0);
      }
      const std::int64_t add0 = std::min<std::int64_t>(add, std::max<std::int64_t>(32, static_cast<std::int64_t>(ns.size()) / 4));
      for (std::int64_t t = 0; t < add0; ++t) {
        const auto j = static_cast<std::size_t>(viol[static_cast<std::size_t>(t)]);
        ns.emplace_back(static_cast<std::int64_t>(j), tn[j] > T(0) ? 1.0 : -1.0);
      }
      std::sort(ns.begin(), ns.end());
      std::vector<std::int64_t> S;
      std::vector<double> sg;
      for (const auto& e : ns) {
        S.push_back(e.first);
        sg.push_back(e.second);
      }
      L1Info si;
      const bool done = solve_on_support<T>(A, y, mode, target, S, sg, aty, cn2, 8, x_out, si);
      solves = si.support_solves;
      if (done) {
        si.iterations = events;
        si.gram_columns = gram_cols + si.gram_columns;
        return si;
      }
      // The revisions' last support joins the next block (it is nearer the answer than the
      // first block's), whatever the violators of the first block add to it.
      for (std::int64_t j : S)
        if (!inW[static_cast<std::size_t>(j)]) {
          W.push_back(j);
          inW[static_cast<std::size_t>(j)] = 1;
        }
    }
    for (std::int64_t t = 0; t < add; ++t) {
      if (inW[static_cast<std::size_t>(viol[static_cast<std::size_t>(t)])]) continue;
      W.push_back(viol[static_cast<std::size_t>(t)]);
      inW[static_cast<std::size_t>(viol[static_cast<std::size_t>(t)])] = 1;
    }
  }
  L1Info info = Homotopy<T>(A, n_threads).run(y, mode, target, max_iter, x_out);
  info.iterations += events;
  info.gram_columns += gram_cols;
  info.support_solves = solves;
  return info;
}

template <class T>
void check_args(std::int64_t m, std::int64_t n, L1Mode mode, double target, std::int64_t max_iter) {
  if (m < 0 || n < 0) throw ShapeError("l1_homotopy: negative dimensions");
  if (!(target >= 0) || !std::isfinite(target))
    throw ShapeError("l1_homotopy: target (lam or sigma) must be finite and >= 0");
  if (max_iter < 0) throw ShapeError("l1_homotopy: max_iter must be >= 0");
  if (static_cast<int>(mode) < 0 || static_cast<int>(mode) > 2) throw ShapeError("l1_homotopy: bad mode");
}

}  // namespace

template <class T>
L1Info l1_homotopy_dense(std::int64_t m, std::int64_t n, const T* A, const T* y, L1Mode mode,
                         double target, std::int64_t max_iter, T* x, int n_threads,
                         bool check_finite) {
  check_args<T>(m, n, mode, target, max_iter);
  DenseOp<T> op;
  op.m = m;
  op.n = n;
  op.n_threads = n_threads;
  op.a = A;
  op.ld = n;
  std::vector<double> norms;
  if (check_finite && m > 0 && n > 0) {
    // One pass over A for the norms the solve needs anyway (the separate NumPy isfinite pass
    // over A was 5% of a LASSO solve at 1024×4096, one thread).
    norms.resize(static_cast<std::size_t>(n));
    op.col_sumsq(norms.data());
    double acc = 0.0;  // 0·v is 0 for finite v, NaN for NaN or Inf
    for (double v : norms) acc += 0.0 * v;
    if (acc != 0.0) throw NonFinite("l1: a column of A has a non-finite squared norm");
    op.sumsq = norms.data();
  }
  return l1_solve<T>(op, y, mode, target, max_iter, x, n_threads);
}

template <class T, class I>
L1Info l1_homotopy_csr(std::int64_t m, std::int64_t n, const I* indptr, const I* indices,
                       const T* data, const T* y, L1Mode mode, double target,
                       std::int64_t max_iter, T* x, int n_threads) {
  check_args<T>(m, n, mode, target, max_iter);
  CsrOp<T, I> op;
  op.m = m;
  op.n = n;
  op.n_threads = n_threads;
  op.rs = m;
  op.cs = n;
  op.indptr = indptr;
  op.indices = indices;
  op.data = data;
  return l1_solve<T>(op, y, mode, target, max_iter, x, n_threads);
}

#define WP_INST(T)                                                                                \
  template L1Info l1_homotopy_dense<T>(std::int64_t, std::int64_t, const T*, const T*, L1Mode,    \
                                       double, std::int64_t, T*, int, bool);                      \
  template L1Info l1_homotopy_csr<T, std::int32_t>(std::int64_t, std::int64_t,                   \
                                                   const std::int32_t*, const std::int32_t*,      \
                                                   const T*, const T*, L1Mode, double,            \
                                                   std::int64_t, T*, int);                        \
  template L1Info l1_homotopy_csr<T, std::int64_t>(std::int64_t, std::int64_t,                   \
                                                   const std::int64_t*, const std::int64_t*,      \
                                                   const T*, const T*, L1Mode, double,            \
                                                   std::int64_t, T*, int);
WP_INST(float)
WP_INST(double)
#undef WP_INST

}  // namespace wp
