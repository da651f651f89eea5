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
#include <limits>
#include <numeric>
#include <vector>

#include "weightpress/blas.hpp"
#include "weightpress/csr.hpp"
#include "weightpress/errors.hpp"
#include "weightpress/parallel.hpp"

namespace wp {
namespace {

template <class T>
struct Op {
  std::int64_t m = 0, n = 0;
  int n_threads = 1;
  virtual ~Op() = default;
  virtual void matvec(const T* x, T* out) const = 0;   // out(m) = A x
  virtual void rmatvec(const T* r, T* out) const = 0;  // out(n) = Aᵀ r
  // out (n×b, column-major, ld n) = Aᵀ A[:, cols]
  virtual void gram(const std::int64_t* cols, std::int64_t b, T* out) const = 0;
};

template <class T>
struct DenseOp final : Op<T> {
  const T* A = nullptr;
  mutable std::vector<T> buf;
  // Products this small run in our own loops: a BLAS call would wake its threads, which on a
  // busy machine costs far more than the product itself.
  bool small() const { return this->m * this->n <= (std::int64_t(1) << 18); }
  void matvec(const T* x, T* out) const override {
    if (this->m == 0) return;
    if (this->n == 0) {
      std::fill(out, out + this->m, T(0));
      return;
    }
    if (small()) {  // row dots, four partial sums in a fixed order
      for (std::int64_t i = 0; i < this->m; ++i) {
        const T* a = A + i * this->n;
        T s[4] = {T(0), T(0), T(0), T(0)};
        std::int64_t j = 0;
        for (; j + 4 <= this->n; j += 4)
          for (int l = 0; l < 4; ++l) s[l] += a[j + l] * x[j + l];
        for (; j < this->n; ++j) s[0] += a[j] * x[j];
        out[i] = (s[0] + s[1]) + (s[2] + s[3]);
      }
      return;
    }
    // Row-major A (m×n) is the column-major n×m matrix Aᵀ: A x = (Aᵀ)ᵀ x.
    blas::gemv<T>('T', blas::to_int(this->n), blas::to_int(this->m), T(1), A,
                  blas::to_int(this->n), x, 1, T(0), out, 1);
  }
  void rmatvec(const T* r, T* out) const override {
    if (this->n == 0) return;
    if (this->m == 0) {
      std::fill(out, out + this->n, T(0));
      return;
    }
    if (small()) {  // row axpys
      std::fill(out, out + this->n, T(0));
      for (std::int64_t i = 0; i < this->m; ++i) {
        const T* a = A + i * this->n;
        const T ri = r[i];
        for (std::int64_t j = 0; j < this->n; ++j) out[j] += a[j] * ri;
      }
      return;
    }
    blas::gemv<T>('N', blas::to_int(this->n), blas::to_int(this->m), T(1), A,
                  blas::to_int(this->n), r, 1, T(0), out, 1);
  }
  void gram(const std::int64_t* cols, std::int64_t b, T* out) const override {
    const std::int64_t rows = this->m, n_ = this->n;
    if (rows == 0) {
      std::fill(out, out + n_ * b, T(0));
      return;
    }
    buf.resize(static_cast<std::size_t>(rows * b));
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t t = 0; t < b; ++t)
        buf[static_cast<std::size_t>(i + t * rows)] = A[i * n_ + cols[t]];
    blas::gemm<T>('N', 'N', blas::to_int(n_), blas::to_int(b), blas::to_int(rows), T(1), A,
                  blas::to_int(n_), buf.data(), blas::to_int(rows), T(0), out, blas::to_int(n_));
  }
};

template <class T, class I>
struct CsrOp final : Op<T> {
  const I* p = nullptr;
  const I* j = nullptr;
  const T* v = nullptr;
  mutable std::vector<T> buf, tmp;
  mutable std::vector<std::int64_t> pos;
  void check(std::int64_t bad) const {
    if (bad >= 0)
      throw ShapeError("malformed CSR: column index " + std::to_string(j[bad]) + " at position " +
                       std::to_string(bad) + " is out of range for " + std::to_string(this->n) +
                       " columns");
  }
  void matvec(const T* x, T* out) const override {
    check(csr_matmat<T, I>(this->m, this->n, p, j, v, 1, x, 1, out, 1, this->n_threads));
  }
  void rmatvec(const T* r, T* out) const override {
    check(csr_matmat_t<T, I>(this->m, this->n, p, j, v, 1, r, 1, out, 1, this->n_threads));
  }
  void gram(const std::int64_t* cols, std::int64_t b, T* out) const override {
    const std::int64_t rows = this->m, n_ = this->n;
    pos.assign(static_cast<std::size_t>(n_), -1);
    for (std::int64_t t = 0; t < b; ++t) pos[static_cast<std::size_t>(cols[t])] = t;
    buf.assign(static_cast<std::size_t>(rows * b), T(0));  // A[:, cols], row-major m×b
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t q = p[i]; q < static_cast<std::int64_t>(p[i + 1]); ++q) {
        const std::int64_t t = pos[static_cast<std::size_t>(j[q])];
        if (t >= 0) buf[static_cast<std::size_t>(i * b + t)] += v[q];
      }
    tmp.resize(static_cast<std::size_t>(n_ * b));
    check(csr_matmat_t<T, I>(rows, n_, p, j, v, b, buf.data(), b, tmp.data(), b, this->n_threads));
    for (std::int64_t r = 0; r < n_; ++r)
      for (std::int64_t t = 0; t < b; ++t) out[r + t * n_] = tmp[static_cast<std::size_t>(r * b + t)];
  }
};

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
  // Rᵀ t = b (forward), in place.
  void solve_t(double* b) {
    for (std::int64_t i = 0; i < k; ++i) {
      double s = b[i];
      for (std::int64_t l = 0; l < i; ++l) s -= at(l, i) * b[l];
      b[i] = s / at(i, i);
    }
  }
  // R w = t (backward), in place.
  void solve(double* b) {
    for (std::int64_t i = k - 1; i >= 0; --i) {
      double s = b[i];
      for (std::int64_t l = i + 1; l < k; ++l) s -= at(i, l) * b[l];
      b[i] = s / at(i, i);
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

template <class T>
class Homotopy {
 public:
  Homotopy(const Op<T>& A, int n_threads) : A_(A), nt_(n_threads) {}

  L1Info run(const T* y, L1Mode mode, double target, std::int64_t max_iter, T* x_out);

 private:
  const Op<T>& A_;
  int nt_;
  std::vector<T> cache_;                // Gram columns, n each
  std::vector<std::int64_t> slot_;      // atom -> cache column, or -1
  std::int64_t ncache_ = 0;
  std::vector<double> c_;               // correlations Aᵀr
  std::vector<char> state_;             // 0 inactive, 1 active, 2 excluded (dependent)
  std::vector<double> dj_;              // each inactive atom's entering step on this segment

  const T* col(std::int64_t j) const {
    return cache_.data() + slot_[static_cast<std::size_t>(j)] * A_.n;
  }
  void ensure_cached(std::int64_t j);
  void combine(const std::vector<std::int64_t>& S, const std::vector<double>& w,
               std::vector<double>& out, const double* base, double sign);
};

// Caches the Gram column of j together with the (block − 1) uncached, inactive atoms that
// would enter soonest on the current segment (the likeliest to enter next), in one product.
template <class T>
void Homotopy<T>::ensure_cached(std::int64_t j) {
  if (slot_[static_cast<std::size_t>(j)] >= 0) return;
  const std::int64_t n = A_.n;
  // Blocks of 32 columns; small problems take 128 at a time, so that they make few BLAS calls
  // (each may wake BLAS threads, which costs more than such a product on a busy machine).
  const std::int64_t want = std::min<std::int64_t>(n, A_.m * n <= (std::int64_t(1) << 18) ? 128 : 32);
  std::vector<std::int64_t> cand;
  cand.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    if (i != j && slot_[static_cast<std::size_t>(i)] < 0 && state_[static_cast<std::size_t>(i)] == 0)
      cand.push_back(i);
  const std::int64_t take = std::min<std::int64_t>(want - 1, static_cast<std::int64_t>(cand.size()));
  auto by_corr = [&](std::int64_t p, std::int64_t q) {
    const double cp = dj_[static_cast<std::size_t>(p)], cq = dj_[static_cast<std::size_t>(q)];
    return cp < cq || (cp == cq && p < q);
  };
  if (take > 0 && take < static_cast<std::int64_t>(cand.size()))
    std::nth_element(cand.begin(), cand.begin() + take, cand.end(), by_corr);
  cand.resize(static_cast<std::size_t>(std::max<std::int64_t>(take, 0)));
  cand.insert(cand.begin(), j);
  const auto b = static_cast<std::int64_t>(cand.size());
  cache_.resize(static_cast<std::size_t>((ncache_ + b) * n));
  A_.gram(cand.data(), b, cache_.data() + ncache_ * n);
  for (std::int64_t t = 0; t < b; ++t) slot_[static_cast<std::size_t>(cand[static_cast<std::size_t>(t)])] = ncache_ + t;
  ncache_ += b;
}

// out = base + sign · Σ_p w_p G[:, S_p]  (base may be null: zero). Rows in fixed blocks, each
// summed by one thread in the order of S: independent of the thread count.
template <class T>
void Homotopy<T>::combine(const std::vector<std::int64_t>& S, const std::vector<double>& w,
                          std::vector<double>& out, const double* base, double sign) {
  const std::int64_t n = A_.n, k = static_cast<std::int64_t>(S.size());
  constexpr std::int64_t B = 1024;
  const std::int64_t nb = (n + B - 1) / B;
  std::vector<const T*> cols(static_cast<std::size_t>(k));
  for (std::int64_t p = 0; p < k; ++p) cols[static_cast<std::size_t>(p)] = col(S[static_cast<std::size_t>(p)]);
  // One call is O(n·|S|), often well under a millisecond: a parallel region per event only pays
  // for large supports (and on a busy machine a descheduled worker stalls the barrier).
  const int nt = threads_for(n * k, nt_, std::int64_t(1) << 21);
  double* o = out.data();
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t r0 = b * B, r1 = std::min(n, r0 + B);
    for (std::int64_t r = r0; r < r1; ++r) o[r] = 0.0;
    for (std::int64_t p = 0; p < k; ++p) {
      const T* g = cols[static_cast<std::size_t>(p)];
      const double wp = w[static_cast<std::size_t>(p)];
      for (std::int64_t r = r0; r < r1; ++r) o[r] += wp * static_cast<double>(g[r]);
    }
    if (base)
      for (std::int64_t r = r0; r < r1; ++r) o[r] = base[r] + sign * o[r];
    else if (sign != 1.0)
      for (std::int64_t r = r0; r < r1; ++r) o[r] *= sign;
  }
}

template <class T>
L1Info Homotopy<T>::run(const T* y, L1Mode mode, double target, std::int64_t max_iter, T* x_out) {
  const std::int64_t m = A_.m, n = A_.n;
  L1Info info;
  std::fill(x_out, x_out + n, T(0));
  std::vector<T> tn(static_cast<std::size_t>(n)), tm(static_cast<std::size_t>(m));
  double y2 = 0;
  for (std::int64_t i = 0; i < m; ++i) y2 += static_cast<double>(y[i]) * static_cast<double>(y[i]);
  const double eps_piv = std::is_same<T, float>::value ? 1e-5 : 1e-10;

  std::vector<double> c0(static_cast<std::size_t>(n)), a(static_cast<std::size_t>(n));
  if (n > 0) A_.rmatvec(y, tn.data());
  double lam = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    c0[static_cast<std::size_t>(j)] = static_cast<double>(tn[static_cast<std::size_t>(j)]);
    lam = std::max(lam, std::fabs(c0[static_cast<std::size_t>(j)]));
  }
  c_ = c0;
  dj_.resize(static_cast<std::size_t>(n));
  for (std::int64_t j = 0; j < n; ++j) dj_[static_cast<std::size_t>(j)] = lam - std::fabs(c0[static_cast<std::size_t>(j)]);
  slot_.assign(static_cast<std::size_t>(n), -1);
  state_.assign(static_cast<std::size_t>(n), 0);

  std::vector<std::int64_t> S;
  std::vector<double> sg, xs, w, rhs;
  Chol R;
  double R2 = y2;  // ‖r‖² tracked along the path
  std::int64_t last_dropped = -1, entering = -1;
  std::vector<std::int64_t> banned;  // dependent on the active set when they tried to enter
  bool done = false;
  // Immediate ends: x = 0 is optimal.
  if (lam <= 0 || (mode == L1Mode::kLasso && lam <= target) ||
      (mode == L1Mode::kBPDN && std::sqrt(y2) <= target)) {
    done = true;
    if (mode == L1Mode::kLasso) lam = std::max(target, lam);
  } else {
    entering = 0;
    for (std::int64_t j = 1; j < n; ++j)
      if (std::fabs(c_[static_cast<std::size_t>(j)]) > std::fabs(c_[static_cast<std::size_t>(entering)])) entering = j;
  }
  std::int64_t it = 0;
  const double lam0 = lam;
  const double inf = std::numeric_limits<double>::infinity();
  while (!done && it < max_iter) {
    if (entering >= 0) {
      ensure_cached(entering);
      const T* g = col(entering);
      rhs.resize(S.size());
      for (std::size_t p = 0; p < S.size(); ++p) rhs[p] = static_cast<double>(g[S[p]]);
      if (R.add(rhs, static_cast<double>(g[entering]), eps_piv)) {
        S.push_back(entering);
        sg.push_back(c_[static_cast<std::size_t>(entering)] > 0 ? 1.0 : -1.0);
        xs.push_back(0.0);
        state_[static_cast<std::size_t>(entering)] = 1;
      } else {
        state_[static_cast<std::size_t>(entering)] = 2;  // dependent on the active atoms
        banned.push_back(entering);
      }
      entering = -1;
    }
    if (S.empty()) break;
    // Direction: w = G_SS⁻¹ s, a = G[:, S] w, q = sᵀw.
    w = sg;
    R.solve_t(w.data());
    R.solve(w.data());
    combine(S, w, a, nullptr, 1.0);
    double q = 0;
    for (std::size_t p = 0; p < S.size(); ++p) q += sg[p] * w[p];
    // Step to the next event.
    double d_end = lam;  // kBP: λ reaches 0
    if (mode == L1Mode::kLasso) d_end = lam - target;
    if (mode == L1Mode::kBPDN) {
      const double t2 = target * target;
      if (R2 <= t2) {
        d_end = 0;
      } else if (q > 0) {
        const double disc = lam * lam - (R2 - t2) / q;
        d_end = disc >= 0 ? lam - std::sqrt(disc) : lam;
      }
    }
    double d_in = inf, d_out = inf;
    std::int64_t j_in = -1, p_out = -1;
    for (std::int64_t j = 0; j < n; ++j) {
      double dmin = inf;
      if (state_[static_cast<std::size_t>(j)] == 0) {
        // The atom that just left sits on the boundary: its rounding-level root is spurious,
        // but it may genuinely come back later on the segment.
        const double dlo = j == last_dropped ? 1e-9 * lam : 0.0;
        const double cj = c_[static_cast<std::size_t>(j)], aj = a[static_cast<std::size_t>(j)];
        if (1.0 - aj > 0) {
          const double d = (lam - cj) / (1.0 - aj);
          if (d > dlo) dmin = d;
        }
        if (1.0 + aj > 0) {
          const double d = (lam + cj) / (1.0 + aj);
          if (d > dlo && d < dmin) dmin = d;
        }
        // Already on the boundary (ties, e.g. equal correlations at the start) and moving
        // out: enters now.
        if (j != last_dropped && std::fabs(cj) >= lam * (1 - 1e-12) &&
            ((cj > 0 && aj < 1.0) || (cj < 0 && aj > -1.0)))
          dmin = 0;
        if (dmin < d_in || (dmin == 0 && j_in < 0)) { d_in = dmin; j_in = j; }
      }
      dj_[static_cast<std::size_t>(j)] = dmin;
    }
    for (std::size_t p = 0; p < S.size(); ++p) {
      if (w[p] * xs[p] < 0) {
        const double d = -xs[p] / w[p];
        if (d > 0 && d < d_out) { d_out = d; p_out = static_cast<std::int64_t>(p); }
      } else if (xs[p] == 0 && w[p] * sg[p] < 0 && d_out > 0) {
        d_out = 0;  // joined on a tie but would move against its sign: leaves at once
        p_out = static_cast<std::int64_t>(p);
      }
    }
    // An atom that would enter within a relative 1e-8 of the path's end is a rounding tie
    // with the end (on a recovered support, c_j = λ a_j for every inactive j, so the entering
    // step equals λ exactly): the end wins, and the certificate vouches for it.
    if (d_in >= d_end - 1e-8 * lam) d_in = inf;
    if (d_out >= d_end - 1e-8 * lam) d_out = inf;
    double d = std::min(d_end, std::min(d_in, d_out));
    d = std::max(0.0, std::min(d, lam));
    for (std::size_t p = 0; p < S.size(); ++p) xs[p] += d * w[p];
    for (std::int64_t j = 0; j < n; ++j) c_[static_cast<std::size_t>(j)] -= d * a[static_cast<std::size_t>(j)];
    R2 = std::max(0.0, R2 - 2 * d * lam * q + d * d * q);
    lam -= d;
    ++it;
    // The end, or so close to it (λ within 1e-11·λ₀ of its final value) that correlations
    // are rounding noise: the polish below solves the last piece exactly.
    const double floor = 1e-11 * lam0;
    if (d == d_end || lam <= floor || (mode == L1Mode::kLasso && lam - target <= floor)) {
      done = true;
      if (mode == L1Mode::kLasso) lam = target;
      if (mode != L1Mode::kLasso && lam <= floor) lam = 0;
      break;
    }
    if (d == d_out) {
      const auto p = static_cast<std::size_t>(p_out);
      state_[static_cast<std::size_t>(S[p])] = 0;
      last_dropped = S[p];
      R.remove(p_out);
      for (std::int64_t b : banned) state_[static_cast<std::size_t>(b)] = 0;  // may fit now
      banned.clear();
      S.erase(S.begin() + p_out);
      sg.erase(sg.begin() + p_out);
      xs.erase(xs.begin() + p_out);
    } else {
      entering = j_in;
      last_dropped = -1;
    }
    if (it % 64 == 0) {  // resynchronise c with x: c = Aᵀy − G[:, S] x_S
      combine(S, xs, c_, c0.data(), -1.0);
      double r2 = y2;  // ‖r‖² = ‖y‖² − 2 x·(Aᵀy)_S + x_Sᵀ G_SS x_S
      for (std::size_t p = 0; p < S.size(); ++p) {
        const double cp = c0[static_cast<std::size_t>(S[p])];
        r2 -= xs[p] * (cp + c_[static_cast<std::size_t>(S[p])]);
      }
      R2 = std::max(0.0, r2);
    }
  }
  info.finished = done;
  info.iterations = it;
  info.n_active = static_cast<std::int64_t>(S.size());
  info.gram_columns = ncache_;

  // Atoms that joined on the way and whose coefficient came back to rounding level at λ = 0
  // (on a recovered support every other atom does) are dropped before the polish.
  const std::vector<std::int64_t> S_cert = S;  // the set w belongs to (for the certificate)
  if (done && lam <= 0 && R.k == static_cast<std::int64_t>(S.size())) {
    double xmax = 0;
    for (double v : xs) xmax = std::max(xmax, std::fabs(v));
    for (std::int64_t p = static_cast<std::int64_t>(S.size()) - 1; p >= 0; --p)
      if (std::fabs(xs[static_cast<std::size_t>(p)]) <= 1e-11 * xmax) {
        state_[static_cast<std::size_t>(S[static_cast<std::size_t>(p)])] = 0;
        R.remove(p);
        S.erase(S.begin() + p);
        sg.erase(sg.begin() + p);
        xs.erase(xs.begin() + p);
      }
    info.n_active = static_cast<std::int64_t>(S.size());
  }
  // Polish on the true residual: x_S += G_SS⁻¹ (A_Sᵀ r − λ s), kept if no sign flips.
  std::vector<double> r(static_cast<std::size_t>(m)), cc(static_cast<std::size_t>(n));
  auto residual = [&](const std::vector<double>& xv) {
    std::fill(tn.begin(), tn.end(), T(0));
    for (std::size_t p = 0; p < S.size(); ++p) tn[static_cast<std::size_t>(S[p])] = static_cast<T>(xv[p]);
    if (m > 0) A_.matvec(tn.data(), tm.data());
    for (std::int64_t i = 0; i < m; ++i)
      r[static_cast<std::size_t>(i)] = static_cast<double>(y[i]) - static_cast<double>(tm[static_cast<std::size_t>(i)]);
    for (std::int64_t i = 0; i < m; ++i) tm[static_cast<std::size_t>(i)] = static_cast<T>(r[static_cast<std::size_t>(i)]);
    if (n > 0) A_.rmatvec(tm.data(), tn.data());
    for (std::int64_t j = 0; j < n; ++j) cc[static_cast<std::size_t>(j)] = static_cast<double>(tn[static_cast<std::size_t>(j)]);
  };
  residual(xs);
  // BPDN end, exactly: on the last piece r(λ) = r_LS + λ A_S w with r_LS ⟂ A_S w, so
  // ‖r(λ)‖² = ‖r_LS‖² + λ²q. The tracked ‖r‖² loses digits when sigma ≪ ‖y‖; this does not.
  if (mode == L1Mode::kBPDN && done && lam > 0 && !S.empty() &&
      R.k == static_cast<std::int64_t>(S.size()) && w.size() == S.size()) {
    std::vector<double> xl(xs);
    for (std::size_t p = 0; p < S.size(); ++p) xl[p] += lam * w[p];
    for (int rep = 0; rep < 2; ++rep) {  // least squares on S, refined on the true residual
      residual(xl);
      std::vector<double> dx(S.size());
      for (std::size_t p = 0; p < S.size(); ++p) dx[p] = cc[static_cast<std::size_t>(S[p])];
      R.solve_t(dx.data());
      R.solve(dx.data());
      for (std::size_t p = 0; p < S.size(); ++p) xl[p] += dx[p];
    }
    residual(xl);
    double rl2 = 0, q = 0;
    for (double v : r) rl2 += v * v;
    for (std::size_t p = 0; p < S.size(); ++p) q += sg[p] * w[p];
    const double lam_new = q > 0 ? std::sqrt(std::max(0.0, target * target - rl2) / q) : 0.0;
    bool ok = true;
    for (std::size_t p = 0; p < S.size(); ++p)
      if ((xl[p] - lam_new * w[p]) * sg[p] < 0) ok = false;
    if (ok) {
      for (std::size_t p = 0; p < S.size(); ++p) xs[p] = xl[p] - lam_new * w[p];
      lam = lam_new;
    }
    residual(xs);
  }
  if (!S.empty() && R.k == static_cast<std::int64_t>(S.size())) {
    std::vector<double> dx(S.size());
    for (std::size_t p = 0; p < S.size(); ++p) dx[p] = cc[static_cast<std::size_t>(S[p])] - lam * sg[p];
    R.solve_t(dx.data());
    R.solve(dx.data());
    std::vector<double> xn(xs);
    bool ok = true;
    for (std::size_t p = 0; p < S.size(); ++p) {
      xn[p] += dx[p];
      if (xn[p] * sg[p] < 0) ok = false;
    }
    if (ok) {
      xs.swap(xn);
      residual(xs);
    }
  }
  for (std::size_t p = 0; p < S.size(); ++p) x_out[S[p]] = static_cast<T>(xs[p]);

  // Certificate.
  double rn2 = 0, l1 = 0, cmax = 0, yr = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    rn2 += r[static_cast<std::size_t>(i)] * r[static_cast<std::size_t>(i)];
    yr += static_cast<double>(y[i]) * r[static_cast<std::size_t>(i)];
  }
  for (double v : xs) l1 += std::fabs(v);
  for (double v : cc) cmax = std::max(cmax, std::fabs(v));
  info.resid_norm = std::sqrt(rn2);
  info.corr_max = cmax;
  info.lambda = lam;
  // Dual value of z = t·A_S G_SS⁻¹ s (the BP certificate), t as large as ‖Aᵀz‖∞ <= 1 allows;
  // minus sigma‖z‖ for BPDN.
  auto equiangular_dual = [&](double sigma) {
    if (S_cert.empty()) return 0.0;
    std::fill(tn.begin(), tn.end(), T(0));
    for (std::size_t p = 0; p < S_cert.size(); ++p)
      tn[static_cast<std::size_t>(S_cert[p])] = static_cast<T>(w[p]);
    A_.matvec(tn.data(), tm.data());
    A_.rmatvec(tm.data(), tn.data());
    double zmax = 0, yz = 0, zn = 0;
    for (std::int64_t j = 0; j < n; ++j)
      zmax = std::max(zmax, std::fabs(static_cast<double>(tn[static_cast<std::size_t>(j)])));
    for (std::int64_t i = 0; i < m; ++i) {
      const double zi = static_cast<double>(tm[static_cast<std::size_t>(i)]);
      yz += static_cast<double>(y[i]) * zi;
      zn += zi * zi;
    }
    const double v = yz - sigma * std::sqrt(zn);
    return zmax > 0 ? std::max(0.0, v / zmax) : 0.0;
  };
  if (mode == L1Mode::kLasso) {
    info.primal = 0.5 * rn2 + target * l1;
    const double sc = cmax > target ? target / cmax : 1.0;  // θ = sc · r is dual feasible
    info.dual = sc * yr - 0.5 * sc * sc * rn2;
  } else if (mode == L1Mode::kBPDN) {
    info.primal = l1;
    if (S.empty() && std::sqrt(y2) <= target) {
      info.dual = 0;  // z = 0
    } else {
      // z = r / ‖Aᵀr‖∞, or the equiangular point when the residual is at rounding level.
      const double sc = cmax > 0 ? 1.0 / cmax : 0.0;
      info.dual = std::max(sc * yr - target * sc * std::sqrt(rn2), equiangular_dual(target));
    }
  } else {
    info.primal = l1;
    info.dual = equiangular_dual(0.0);
  }
  info.gap = info.primal - info.dual;
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
                         double target, std::int64_t max_iter, T* x, int n_threads) {
  check_args<T>(m, n, mode, target, max_iter);
  DenseOp<T> op;
  op.m = m;
  op.n = n;
  op.n_threads = n_threads;
  op.A = A;
  return Homotopy<T>(op, n_threads).run(y, mode, target, max_iter, x);
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
  op.p = indptr;
  op.j = indices;
  op.v = data;
  return Homotopy<T>(op, n_threads).run(y, mode, target, max_iter, x);
}

#define WP_INST(T)                                                                                \
  template L1Info l1_homotopy_dense<T>(std::int64_t, std::int64_t, const T*, const T*, L1Mode,    \
                                       double, std::int64_t, T*, int);                            \
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
