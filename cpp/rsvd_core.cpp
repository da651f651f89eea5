// The randomized SVD algorithm proper, on an abstract operator (linop.hpp): sketch,
// orthonormalisation, subspace iteration, adaptive QB, the small SVD, verification.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "rsvd_detail.hpp"
#include "weightpress/blas.hpp"
#include "weightpress/errors.hpp"
#include "weightpress/parallel.hpp"
#include "weightpress/rsvd.hpp"

namespace wp {

namespace {

inline std::uint64_t splitmix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

template <class T>
void gaussian_sketch(std::int64_t rows, std::int64_t cols, std::int64_t col0, std::uint64_t seed,
                     T* x, std::int64_t ld, int n_threads) {
  // Box-Muller on pairs of counters: normals 2p and 2p+1 share two hashed uniforms.
  const std::uint64_t key = splitmix(seed ^ 0x5851f42d4c957f2dULL);
  const int nt = static_cast<int>(std::min<std::int64_t>(threads_for(rows * cols * 20, n_threads, 1 << 16), std::max<std::int64_t>(cols, 1)));
  constexpr double two_pi = 6.283185307179586476925286766559;
  constexpr double inv53 = 1.0 / 9007199254740992.0;  // 2^-53
  auto pair = [key](std::uint64_t pr, double* z0, double* z1) {
    const std::uint64_t h1 = splitmix(key + 2 * pr * 0x9e3779b97f4a7c15ULL);
    const std::uint64_t h2 = splitmix(key + (2 * pr + 1) * 0x9e3779b97f4a7c15ULL);
    const double u1 = (static_cast<double>(h1 >> 11) + 0.5) * inv53;  // (0, 1)
    const double u2 = static_cast<double>(h2 >> 11) * inv53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    *z0 = r * std::cos(two_pi * u2);
    *z1 = r * std::sin(two_pi * u2);
  };
  // column by column: counters (col0 + j) * rows + i are consecutive in i, so both normals of
  // a Box-Muller pair are used
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t j = 0; j < cols; ++j) {
    const auto base = static_cast<std::uint64_t>((col0 + j) * rows);
    std::int64_t i = 0;
    double z0 = 0.0, z1 = 0.0;
    if (base & 1) {  // odd start: the second half of a pair
      pair(base >> 1, &z0, &z1);
      x[j] = static_cast<T>(z1);
      i = 1;
    }
    for (; i + 1 < rows; i += 2) {
      pair((base + static_cast<std::uint64_t>(i)) >> 1, &z0, &z1);
      x[i * ld + j] = static_cast<T>(z0);
      x[(i + 1) * ld + j] = static_cast<T>(z1);
    }
    if (i < rows) {
      pair((base + static_cast<std::uint64_t>(i)) >> 1, &z0, &z1);
      x[i * ld + j] = static_cast<T>(z0);
    }
  }
}

namespace rsvd_detail {
namespace {

using blas::to_int;

// One Cholesky-QR pass on a row-major r×c double matrix y (ld): G = yᵀy = RᵀR, y ← y R⁻¹, R
// left in g (c×c, column-major, upper; lower part zero). False (y untouched) when R is
// singular or too ill-conditioned for the pass to be accurate.
template <class U>
bool chol_qr_pass_t(std::int64_t r, std::int64_t c, U* y, std::int64_t ld, std::vector<U>& g,
                    double* cond_est, double min_ratio) {
  const auto ci = to_int(c), ri = to_int(r), ldi = to_int(ld);
  g.assign(sz(c * c), U(0));
  // row-major y (r×c) is column-major yᵀ (c×r): G = yᵀ·y = (yᵀ)(yᵀ)ᵀ
  blas::syrk<U>('U', 'N', ci, ri, U(1), y, ldi, U(0), g.data(), ci);
  if (blas::potrf<U>('U', ci, g.data(), ci) != 0) return false;
  double dmax = 0.0, dmin = std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < c; ++j) {
    const double d = std::abs(static_cast<double>(g[sz(j * c + j)]));
    dmax = std::max(dmax, d);
    dmin = std::min(dmin, d);
  }
  if (!(dmin > min_ratio * dmax)) return false;  // also catches NaN
  blas::trsm<U>('L', 'U', 'T', 'N', ci, ri, U(1), g.data(), ci, y, ldi);  // yᵀ ← R⁻ᵀ yᵀ
  if (cond_est) *cond_est = dmax / dmin;
  return true;
}

bool chol_qr_pass(std::int64_t r, std::int64_t c, double* y, std::int64_t ld,
                  std::vector<double>& g, double* cond_est = nullptr) {
  return chol_qr_pass_t<double>(r, c, y, ld, g, cond_est, 1e-6);
}

// Orthonormalises the columns of a row-major r×c matrix (ld >= c) in place, r >= c. Works in
// double whatever T is (a float32 Gram matrix would square away half the digits).
// Cholesky-QR: G = YᵀY (syrk), G = RᵀR (potrf), Y ← Y R⁻¹ (trsm); Householder QR when the
// Cholesky factor is singular or too ill-conditioned (rank-deficient sketches).
template <class T>
class Orth {
 public:
  void run(std::int64_t r, std::int64_t c, T* y, std::int64_t ld, bool final, int method) {
    if (c == 0 || r == 0) return;
    last_float_ = false;
    if constexpr (std::is_same_v<T, float>) {
      // Well-conditioned float32 bases: Cholesky-QR in float32 itself (κ <= 256 keeps
      // ‖QᵀQ − I‖ <= eps₃₂κ² < 1e-2 and the span exact to ~eps₃₂κ); the rest in double.
      if (method == 0 && chol_pass_f(r, c, y, ld) && (!final || chol_pass_f(r, c, y, ld))) return;
    }
    if constexpr (std::is_same_v<T, double>) {
      run_d(r, c, y, ld, final, method);
    } else {
      yd_.resize(sz(r * c));
      for (std::int64_t i = 0; i < r; ++i)
        for (std::int64_t j = 0; j < c; ++j)
          yd_[sz(i * c + j)] = static_cast<double>(y[i * ld + j]);
      run_d(r, c, yd_.data(), c, final, method);
      for (std::int64_t i = 0; i < r; ++i)
        for (std::int64_t j = 0; j < c; ++j) y[i * ld + j] = static_cast<T>(yd_[sz(i * c + j)]);
    }
  }
  int householder_count = 0;

  // Frees the work buffers (a block of double rows each): they are sized again on next use.
  void release() {
    for (auto* v : {&yd_, &h_, &tau_, &work_}) std::vector<double>().swap(*v);
  }

  // One more Cholesky-QR pass on y (r×c), and the same triangular factor applied to z (nz×c):
  // z ← z R⁻¹. Returns false when y had to be re-orthonormalised by Householder instead (z is
  // then stale).
  bool polish(std::int64_t r, std::int64_t c, T* y, std::int64_t ld, std::int64_t nz, T* z,
              std::int64_t ldz, int method) {
    if (c == 0 || r == 0 || (method != 1 && orthonormal_enough())) return true;
    if constexpr (std::is_same_v<T, float>) {
      if (method == 0 && last_float_ && chol_pass_f(r, c, y, ld)) {
        blas::trsm<float>('L', 'U', 'T', 'N', to_int(c), to_int(nz), 1.0f, gf_.data(), to_int(c),
                          z, to_int(ldz));
        return true;
      }
    }
    std::vector<double> zd;
    double* yp = nullptr;
    std::int64_t ldy = ld;
    if constexpr (std::is_same_v<T, double>) {
      yp = y;
    } else {
      yd_.resize(sz(r * c));
      for (std::int64_t i = 0; i < r; ++i)
        for (std::int64_t j = 0; j < c; ++j) yd_[sz(i * c + j)] = static_cast<double>(y[i * ld + j]);
      yp = yd_.data();
      ldy = c;
    }
    const bool ok = method != 1 && chol_pass(r, c, yp, ldy);
    if (!ok) householder(r, c, yp, ldy);
    if constexpr (!std::is_same_v<T, double>) {
      for (std::int64_t i = 0; i < r; ++i)
        for (std::int64_t j = 0; j < c; ++j) y[i * ld + j] = static_cast<T>(yd_[sz(i * c + j)]);
    }
    if (!ok) return false;
    // z (nz×c row-major) is column-major zᵀ (c×nz): zᵀ ← R⁻ᵀ zᵀ
    const auto ci = to_int(c);
    if constexpr (std::is_same_v<T, double>) {
      blas::trsm<double>('L', 'U', 'T', 'N', ci, to_int(nz), 1.0, g_.data(), ci, z, to_int(ldz));
    } else {
      zd.resize(sz(nz * c));
      for (std::int64_t i = 0; i < nz; ++i)
        for (std::int64_t j = 0; j < c; ++j) zd[sz(i * c + j)] = static_cast<double>(z[i * ldz + j]);
      blas::trsm<double>('L', 'U', 'T', 'N', ci, to_int(nz), 1.0, g_.data(), ci, zd.data(), ci);
      for (std::int64_t i = 0; i < nz; ++i)
        for (std::int64_t j = 0; j < c; ++j) z[i * ldz + j] = static_cast<T>(zd[sz(i * c + j)]);
    }
    return true;
  }

 private:
  std::vector<double> yd_, g_, h_, tau_, work_;

  void run_d(std::int64_t r, std::int64_t c, double* y, std::int64_t ld, bool final,
             int method) {
    if (method == 1 || !chol_pass(r, c, y, ld)) {
      householder(r, c, y, ld);
      return;
    }
    if (final && !chol_pass(r, c, y, ld)) householder(r, c, y, ld);
  }

  bool chol_pass(std::int64_t r, std::int64_t c, double* y, std::int64_t ld) {
    exact_ = false;
    last_float_ = false;
    return chol_qr_pass(r, c, y, ld, g_, &cond_);
  }
  bool chol_pass_f(std::int64_t r, std::int64_t c, float* y, std::int64_t ld) {
    if (!chol_qr_pass_t<float>(r, c, y, ld, gf_, &cond_, 1.0 / 256)) return false;
    exact_ = false;
    last_float_ = true;
    return true;
  }
  bool last_float_ = false;
  std::vector<float> gf_;
  // One Cholesky-QR pass leaves ‖QᵀQ − I‖ ≈ eps₆₄·κ²; a second pass is only worth it when that
  // shows at T's precision (κ from R's diagonal, a rough lower estimate, hence the margin).
  bool orthonormal_enough() const {
    const double eps_t = static_cast<double>(std::numeric_limits<T>::epsilon());
    return exact_ || (!last_float_ && 1.1e-16 * cond_ * cond_ < 1e-3 * eps_t);
  }
  bool exact_ = false;
  double cond_ = 1e300;

  void householder(std::int64_t r, std::int64_t c, double* y, std::int64_t ld) {
    ++householder_count;
    exact_ = true;
    const auto ci = to_int(c), ri = to_int(r);
    h_.resize(sz(r * c));
    for (std::int64_t i = 0; i < r; ++i)
      for (std::int64_t j = 0; j < c; ++j) h_[sz(j * r + i)] = y[i * ld + j];
    tau_.resize(sz(c));
    double q1 = 0.0, q2 = 0.0;
    blas::geqrf<double>(ri, ci, h_.data(), ri, tau_.data(), &q1, -1);
    blas::orgqr<double>(ri, ci, ci, h_.data(), ri, tau_.data(), &q2, -1);
    const auto lw = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::max(q1, q2)));
    work_.resize(sz(lw));
    blas::geqrf<double>(ri, ci, h_.data(), ri, tau_.data(), work_.data(), to_int(lw));
    blas::orgqr<double>(ri, ci, ci, h_.data(), ri, tau_.data(), work_.data(), to_int(lw));
    for (std::int64_t i = 0; i < r; ++i)
      for (std::int64_t j = 0; j < c; ++j) y[i * ld + j] = h_[sz(j * r + i)];
  }
};

// SVD of a small l×n matrix given column-major (ld), computed in double.
struct SmallSvd {
  std::int64_t l = 0, n = 0;
  std::vector<double> s, u, vt;  // u: l×l col-major; vt: l×n col-major (ld l)

  template <class T>
  void compute(std::int64_t l_, std::int64_t n_, const T* b, std::int64_t ldb, bool want_vectors,
               bool b_rowmajor = false) {
    compute_with<T>(l_, n_, want_vectors, [&](double* a) {
      if (b_rowmajor) {  // b holds the l×n matrix row-major
        for (std::int64_t i = 0; i < l_; ++i)
          for (std::int64_t j = 0; j < n_; ++j)
            a[sz(j * l_ + i)] = static_cast<double>(b[i * ldb + j]);
      } else {
        for (std::int64_t j = 0; j < n_; ++j)
          for (std::int64_t i = 0; i < l_; ++i)
            a[sz(j * l_ + i)] = static_cast<double>(b[j * ldb + i]);
      }
    });
  }

  // The same with the l×n matrix written by fill(a) into a column-major double buffer (ld l).
  template <class T, class Fill>
  void compute_with(std::int64_t l_, std::int64_t n_, bool want_vectors, Fill&& fill) {
    eps_out_ = static_cast<double>(std::numeric_limits<T>::epsilon());
    l = l_;
    n = n_;
    const std::int64_t mn = std::min(l, n);
    a_.resize(sz(l * n));
    std::vector<double>& a = a_;
    fill(a.data());
    s.assign(sz(mn), 0.0);
    if (mn == 0) return;
    const char jobz = want_vectors ? 'S' : 'N';
    if (want_vectors) {
      u.assign(sz(l * mn), 0.0);
      vt.assign(sz(mn * n), 0.0);
    }
    if (want_vectors && n >= 2 * l && via_cholesky()) return;
    if (!want_vectors && n >= 2 * l) {  // values only (the SVT stopping test): Gram eigenvalues
      const auto li = to_int(l);
      std::vector<double> g(sz(l * l), 0.0), w(sz(l));
      blas::syrk<double>('U', 'N', li, to_int(n), 1.0, a.data(), li, 0.0, g.data(), li);
      double wq = 0.0;
      blas::blas_int iq = 0;
      blas::syevd<double>('N', 'U', li, g.data(), li, w.data(), &wq, -1, &iq, -1);
      std::vector<double> work(sz(std::max<std::int64_t>(1, static_cast<std::int64_t>(wq))));
      std::vector<blas::blas_int> iw(sz(std::max<blas::blas_int>(1, iq)));
      blas::syevd<double>('N', 'U', li, g.data(), li, w.data(), work.data(), to_int(work.size()),
                          iw.data(), to_int(iw.size()));
      for (std::int64_t i = 0; i < l; ++i) s[sz(i)] = std::sqrt(std::max(w[sz(l - 1 - i)], 0.0));
      return;
    }
    double dummy = 0.0;
    double* up = want_vectors ? u.data() : &dummy;
    double* vp = want_vectors ? vt.data() : &dummy;
    const auto li = to_int(l), ni = to_int(n), mni = to_int(mn);
    std::vector<blas::blas_int> iwork(sz(8 * mn));
    double q = 0.0;
    blas::gesdd<double>(jobz, li, ni, a.data(), li, s.data(), up, li, vp, mni, &q, -1,
                        iwork.data());
    auto lw = std::max<std::int64_t>(1, static_cast<std::int64_t>(q));
    std::vector<double> work(sz(lw));
    const auto info = blas::gesdd<double>(jobz, li, ni, a.data(), li, s.data(), up, li, vp, mni,
                                          work.data(), to_int(lw), iwork.data());
    if (info > 0) throw std::runtime_error("randomized_svd: LAPACK gesdd did not converge");
  }

 private:
  std::vector<double> a_;
  double eps_out_ = 1e-16;
  // B (l×n, l ≪ n) = Rᵀ Qᵀ with Bᵀ = Q R by Cholesky-QR2 (the columns of Bᵀ are a row-major
  // n×l matrix, which is how `a` is stored); then the l×l SVD Rᵀ = Ur S Vrᵀ gives
  // B = Ur S (Q Vr)ᵀ. One gesdd of l×l instead of l×n: LAPACK's many small threaded BLAS
  // calls inside a large gesdd/gesvd are what is slow here (and worse on a loaded machine).
  bool via_cholesky() {
    std::vector<double> q(a_), g1, g2;
    double cond = 0.0;
    if (!chol_qr_pass(n, l, q.data(), l, g1, &cond)) return false;
    const auto li = to_int(l), ni = to_int(n);
    if (1.1e-16 * cond * cond >= 1e-3 * eps_out_) {  // second pass (see Orth::orthonormal_enough)
      if (!chol_qr_pass(n, l, q.data(), l, g2)) return false;
      // R = R2 R1 (upper)
      blas::trmm<double>('L', 'U', 'N', 'N', li, li, 1.0, g2.data(), li, g1.data(), li);
    }
    std::vector<double> rt(sz(l * l), 0.0), ur(sz(l * l)), vr(sz(l * l));
    for (std::int64_t j = 0; j < l; ++j)
      for (std::int64_t i = 0; i <= j; ++i) rt[sz(i * l + j)] = g1[sz(j * l + i)];
    // gesvd below ~100 columns (gesdd measured up to 100× slower there on this OpenBLAS,
    // under load), gesdd above (gesvd is the slower one at 200+)
    double wq = 0.0;
    if (l <= 96) {
      blas::gesvd<double>('S', 'S', li, li, rt.data(), li, s.data(), ur.data(), li, vr.data(),
                          li, &wq, -1);
      std::vector<double> work(sz(std::max<std::int64_t>(1, static_cast<std::int64_t>(wq))));
      if (blas::gesvd<double>('S', 'S', li, li, rt.data(), li, s.data(), ur.data(), li,
                              vr.data(), li, work.data(), to_int(work.size())) > 0)
        return false;
    } else {
      std::vector<blas::blas_int> iwork(sz(8 * l));
      blas::gesdd<double>('S', li, li, rt.data(), li, s.data(), ur.data(), li, vr.data(), li,
                          &wq, -1, iwork.data());
      std::vector<double> work(sz(std::max<std::int64_t>(1, static_cast<std::int64_t>(wq))));
      if (blas::gesdd<double>('S', li, li, rt.data(), li, s.data(), ur.data(), li, vr.data(),
                              li, work.data(), to_int(work.size()), iwork.data()) > 0)
        return false;
    }
    u = ur;
    // vt (l×n, column-major ld l) = Vrᵀ Qᵀ, and Qᵀ is `q` read column-major (l×n, ld l)
    blas::gemm<double>('N', 'N', li, ni, li, 1.0, vr.data(), li, q.data(), li, 0.0, vt.data(), li);
    return true;
  }
};

// f from the small SVD: s[:k]; U (m×k) = Q · Ub[:, :k], where `q_times(ub, l, u)` multiplies
// Q by ub (row-major k×l: the first k columns of Ub) into u (row-major m×k, zeroed); Vt (k×n)
// from sv.vt (col-major, ld min(l, n)). One body for the two ways Q is held (one array, blocks).
template <class T, class QTimes>
void assemble_with(std::int64_t m, const SmallSvd& sv, std::int64_t k, OpFactors<T>& f,
                   QTimes&& q_times) {
  const std::int64_t l = sv.l, n = sv.n;
  f.k = k;
  f.s.assign(sv.s.begin(), sv.s.begin() + k);
  f.u.assign(sz(m * k), T(0));
  f.vt.assign(sz(k * n), T(0));
  if (k == 0) return;
  std::vector<T> ub(sz(l * k));  // first k columns of Ub, column-major = row-major k×l
  for (std::int64_t c = 0; c < k; ++c)
    for (std::int64_t i = 0; i < l; ++i) ub[sz(c * l + i)] = static_cast<T>(sv.u[sz(c * l + i)]);
  q_times(ub.data(), l, f.u.data());
  const std::int64_t ldv = std::min(l, n);
  for (std::int64_t c = 0; c < k; ++c)
    for (std::int64_t j = 0; j < n; ++j) f.vt[sz(c * n + j)] = static_cast<T>(sv.vt[sz(j * ldv + c)]);
}

// Q one array (m×l, ld ldq).
template <class T>
void assemble(std::int64_t m, const T* q, std::int64_t ldq, const SmallSvd& sv, std::int64_t k,
              OpFactors<T>& f) {
  assemble_with<T>(m, sv, k, f, [&](const T* ub, std::int64_t l, T* u) {
    blas::gemm_rm<T>(false, true, to_int(m), to_int(k), to_int(l), T(1), q, to_int(ldq), ub,
                     to_int(l), T(0), u, to_int(k));
  });
}

// Full LAPACK SVD of a dense operator (in T), truncated afterwards by `choose(s)`.
template <class T, class Choose>
void direct_svd(const LinOp<T>& A, OpFactors<T>& f, Choose&& choose) {
  bool tr = false;
  std::int64_t ld = 0;
  const T* a = A.colmajor(&tr, &ld);
  const std::int64_t m = A.m, n = A.n;
  if (m >= 2 * n) {
    // Tall: Aᵀ = Us S Vsᵀ through Cholesky-QR of A in double and an n×n SVD (SmallSvd), which
    // is several times cheaper than gesdd on A here; gesdd is SmallSvd's own fallback.
    SmallSvd sv;
    sv.compute<T>(n, m, a, ld, true, !tr);
    const std::int64_t k = choose(sv.s);
    f.k = k;
    f.s.assign(sv.s.begin(), sv.s.begin() + k);
    f.u.assign(sz(m * k), T(0));
    f.vt.assign(sz(k * n), T(0));
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t c = 0; c < k; ++c) f.u[sz(i * k + c)] = static_cast<T>(sv.vt[sz(i * n + c)]);
    for (std::int64_t c = 0; c < k; ++c)
      for (std::int64_t j = 0; j < n; ++j) f.vt[sz(c * n + j)] = static_cast<T>(sv.u[sz(c * n + j)]);
    return;
  }
  // the stored column-major matrix M is A (m×n) or Aᵀ (n×m)
  const std::int64_t rm = tr ? n : m, cm = tr ? m : n, mn = n;
  std::vector<T> buf(sz(rm * cm));
  for (std::int64_t j = 0; j < cm; ++j)
    std::copy(a + j * ld, a + j * ld + rm, buf.begin() + static_cast<std::ptrdiff_t>(j * rm));
  std::vector<T> s(sz(mn)), uc(sz(rm * mn)), vtc(sz(mn * cm));
  std::vector<blas::blas_int> iwork(sz(8 * mn));
  const auto rmi = to_int(rm), cmi = to_int(cm), mni = to_int(mn);
  T q = T(0);
  blas::gesdd<T>('S', rmi, cmi, buf.data(), rmi, s.data(), uc.data(), rmi, vtc.data(), mni, &q,
                 -1, iwork.data());
  const auto lw = std::max<std::int64_t>(1, static_cast<std::int64_t>(q) + 1);
  std::vector<T> work(sz(lw));
  if (blas::gesdd<T>('S', rmi, cmi, buf.data(), rmi, s.data(), uc.data(), rmi, vtc.data(), mni,
                     work.data(), to_int(lw), iwork.data()) > 0)
    throw std::runtime_error("randomized_svd: LAPACK gesdd did not converge");
  std::vector<double> sd(s.begin(), s.end());
  const std::int64_t k = choose(sd);
  f.k = k;
  f.s.assign(sd.begin(), sd.begin() + k);
  f.u.assign(sz(m * k), T(0));
  f.vt.assign(sz(k * n), T(0));
  for (std::int64_t c = 0; c < k; ++c) {
    for (std::int64_t i = 0; i < m; ++i)
      f.u[sz(i * k + c)] = tr ? vtc[sz(i * mn + c)] : uc[sz(c * rm + i)];
    for (std::int64_t j = 0; j < n; ++j)
      f.vt[sz(c * n + j)] = tr ? uc[sz(c * rm + j)] : vtc[sz(j * mn + c)];
  }
}

double sumsq(std::int64_t r, std::int64_t c, const float* x, std::int64_t ld) {
  double a = 0.0;
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const double v = static_cast<double>(x[i * ld + j]);
      a += v * v;
    }
  return a;
}
double sumsq(std::int64_t r, std::int64_t c, const double* x, std::int64_t ld) {
  double a = 0.0;
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j) a += x[i * ld + j] * x[i * ld + j];
  return a;
}

// Σ of the k largest σᵢ(B)² for B = Zᵀ, Z (n×l row-major): eigenvalues of the l×l Gram matrix.
template <class T>
double top_energy(std::int64_t n, std::int64_t l, const T* z, std::int64_t k) {
  std::vector<double> zd(sz(n * l)), g(sz(l * l), 0.0), w(sz(l));
  for (std::int64_t i = 0; i < n * l; ++i) zd[sz(i)] = static_cast<double>(z[i]);
  const auto li = to_int(l);
  blas::syrk<double>('U', 'N', li, to_int(n), 1.0, zd.data(), li, 0.0, g.data(), li);
  double wq = 0.0;
  blas::blas_int iq = 0;
  blas::syevd<double>('N', 'U', li, g.data(), li, w.data(), &wq, -1, &iq, -1);
  std::vector<double> work(sz(std::max<std::int64_t>(1, static_cast<std::int64_t>(wq))));
  std::vector<blas::blas_int> iwork(sz(std::max<blas::blas_int>(1, iq)));
  blas::syevd<double>('N', 'U', li, g.data(), li, w.data(), work.data(), to_int(work.size()),
                      iwork.data(), to_int(iwork.size()));
  double e = 0.0;  // ascending eigenvalues: the last k
  for (std::int64_t i = std::max<std::int64_t>(0, l - k); i < l; ++i) e += std::max(w[sz(i)], 0.0);
  return e;
}

// Fixed rank: Halko-Martinsson-Tropp subspace iteration, normalised at every step.
// power_iters < 0 (auto): at least 2 iterations, then more while the rank-k error estimate
// sqrt(‖A‖² − Σ_{i<k} σᵢ(B)²) still drops noticeably (flat spectra converge slowly), at most
// 10. The estimate comes almost for free from
// Bᵀ = AᵀQ, the first product of every iteration (an l×l Gram matrix and its eigenvalues).
template <class T>
void fixed_rank(const LinOp<T>& A, const RsvdParams& p, OpFactors<T>& f, RsvdInfo& info) {
  const std::int64_t m = A.m, n = A.n, k = p.rank;
  const std::int64_t l = std::min(n, k + std::max<std::int64_t>(p.oversamples, 0));
  const bool adaptive = p.power_iters < 0 && l < n;
  const int qmin = (l == n) ? 0 : (adaptive ? 2 : p.power_iters);
  const int qmax = adaptive ? 10 : qmin;
  const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
  const auto li = l;
  std::vector<T> z(sz(n * l)), y(sz(m * l));
  gaussian_sketch<T>(n, l, 0, p.seed, z.data(), li, A.n_threads);
  Orth<T> orth;
  A.mm(l, z.data(), li, y.data(), li);
  orth.run(m, l, y.data(), li, false, p.orth);
  double e_pp = 0.0, e_p = 0.0;  // error estimates two and one iterations back
  int it = 0;
  for (;; ++it) {
    A.mm_t(l, y.data(), li, z.data(), li);  // z = Aᵀ Q = Bᵀ: B column-major l×n, ld l
    if (it >= qmax) break;
    if (adaptive) {
      // the rank-k error with this basis: sqrt(‖A‖² − Σ_{i<k} σᵢ(B)²)
      const double e2 = std::max(A.fro2 - top_energy<T>(n, l, z.data(), k), 0.0);
      const double e = std::sqrt(e2);
      if (it >= qmin) {
        // Stop when the last iteration gained < 2.5 % and the geometric extrapolation of the
        // gains leaves < 0.8 % (measured: this lands within ~1.5 % of optimal on polynomial,
        // exponential and flat spectra, with 2 iterations on fast-decaying ones).
        const double d1 = e_pp - e_p, d2 = e_p - e;
        const double rho = d1 > 0.0 ? std::clamp(d2 / d1, 0.0, 0.95) : 0.95;
        const double rest = std::max(d2, 0.0) * rho / (1.0 - rho);
        const bool at_noise = e2 <= 64.0 * eps * A.fro2;
        if (at_noise || (d2 <= 0.025 * e && rest <= 0.008 * e)) break;
      }
      e_pp = e_p;
      e_p = e;
    }
    orth.run(n, l, z.data(), li, false, p.orth);
    A.mm(l, z.data(), li, y.data(), li);
    orth.run(m, l, y.data(), li, false, p.orth);
  }
  // Q to full orthonormality (a second Cholesky-QR pass Q ← Q R⁻¹), carried over to
  // Bᵀ ← Bᵀ R⁻¹ so that B = QᵀA still holds; Householder and one more product if needed.
  if (!orth.polish(m, l, y.data(), li, n, z.data(), li, p.orth)) A.mm_t(l, y.data(), li, z.data(), li);
  SmallSvd sv;
  sv.compute<T>(l, n, z.data(), l, true);
  assemble<T>(m, y.data(), l, sv, k, f);
  info.basis = l;
  info.power_iters = it;
}

// One block of the adaptive QB: Qᵢ (m×b) and Bᵢᵀ = AᵀQᵢ (n×b), both row-major; its first
// column is column `off` of Q. The basis is kept as a list of blocks, not one growing matrix: a
// contiguous Q and Bᵀ had to be reallocated (old and new copies at once, capacity doubled) as
// the basis grew, which made the fixed-accuracy SVD of a 2048² float32 matrix peak at 7.3×
// the matrix (issue 15).
template <class T>
struct QbBlock {
  std::int64_t off = 0, b = 0;
  std::vector<T> q, bt;
};

template <class T>
void gemm_rm_t(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha,
               const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
               std::int64_t ldc) {
  blas::gemm_rm<T>(ta, tb, to_int(m), to_int(n), to_int(k), alpha, a, to_int(lda), b,
                   to_int(ldb), beta, c, to_int(ldc));
}

// t (l×c row-major) = Qᵀ x (x m×c), or Bx = (Bᵀ)ᵀ x (x n×c) when of_b.
template <class T>
void blocks_t_times(const std::vector<QbBlock<T>>& bl, bool of_b, std::int64_t rows, const T* x,
                    std::int64_t c, T* t) {
  for (const auto& k : bl)
    gemm_rm_t<T>(true, false, k.b, c, rows, T(1), (of_b ? k.bt : k.q).data(), k.b, x, c, T(0),
                 t + k.off * c, c);
}

// y (rows×c) += alpha · Q t (or Bᵀ t when of_b), t (l×c row-major).
template <class T>
void blocks_times(const std::vector<QbBlock<T>>& bl, bool of_b, std::int64_t rows, T alpha,
                  const T* t, std::int64_t c, T* y) {
  for (const auto& k : bl)
    gemm_rm_t<T>(false, false, rows, c, k.b, alpha, (of_b ? k.bt : k.q).data(), k.b,
                 t + k.off * c, c, T(1), y, c);
}

// Rows j0..j1 of Bᵀ (n×l) into a double buffer: d[(j − j0)·l + i] = B(i, j), i.e. the columns
// j0..j1 of B, column-major with ld l.
template <class T>
void bt_rows(const std::vector<QbBlock<T>>& bl, std::int64_t l, std::int64_t j0, std::int64_t j1,
             double* d) {
  for (const auto& k : bl)
    for (std::int64_t j = j0; j < j1; ++j)
      for (std::int64_t c = 0; c < k.b; ++c)
        d[sz((j - j0) * l + k.off + c)] = static_cast<double>(k.bt[sz(j * k.b + c)]);
}

// Blocked adaptive QB (randQB_EI): Q (m×l) and Bᵀ = AᵀQ (n×l) grow by blocks until the
// energy indicator ‖A‖² − ‖B‖² meets the target (kTol) or the newest block's largest singular
// value falls below lam (kSvt).
template <class T>
class AdaptiveQB {
 public:
  AdaptiveQB(const LinOp<T>& A, const RsvdParams& p) : A_(A), p_(p) {
    lmax_ = std::min(A.n, p.max_rank > 0 ? p.max_rank : A.n);
    b0_ = p.block > 0 ? p.block
                      : std::clamp<std::int64_t>(((A.n / 24) + 7) / 8 * 8, 32, 64);
    energy_ = A.fro2;
  }
  std::int64_t l() const { return l_; }
  std::int64_t lmax() const { return lmax_; }
  int blocks() const { return static_cast<int>(bl_.size()); }
  double energy_left() const { return energy_; }
  // The last sketch found nothing outside span(Q) but rounding errors.
  bool exhausted() const { return exhausted_; }
  const std::vector<QbBlock<T>>& basis() const { return bl_; }
  void release() { std::vector<QbBlock<T>>().swap(bl_); }
  void release_q() {
    for (auto& k : bl_) std::vector<T>().swap(k.q);
  }
  void release_bt() {
    for (auto& k : bl_) std::vector<T>().swap(k.bt);
  }

  // Adds blocks until stop() is true or the basis is full.
  template <class Stop>
  void grow(Stop&& stop) {
    const std::int64_t m = A_.m, n = A_.n;
    while (l_ < lmax_ && !exhausted_) {
      std::int64_t b = std::max(b0_, (l_ / 3 + 7) / 8 * 8);
      b = std::min({b, std::int64_t(512), lmax_ - l_});
      std::vector<T> y(sz(m * b)), z(sz(n * b));
      t_.resize(sz(l_ * b));
      gaussian_sketch<T>(n, b, l_, p_.seed, z.data(), b, A_.n_threads);
      A_.mm(b, z.data(), b, y.data(), b);
      if (l_ > 0) {  // y -= Q (B Ω)
        blocks_t_times<T>(bl_, true, n, z.data(), b, t_.data());
        blocks_times<T>(bl_, false, m, T(-1), t_.data(), b, y.data());
      }
      // (I − QQᵀ)AΩ at rounding level: the basis holds A's whole range (an exactly low-rank
      // A). E‖AΩ‖² = b‖A‖²; a product in T carries relative errors of about eps·sqrt(n) (8×
      // that is the bound used: measured 1.5·eps·sqrt(n) on a CSR all-ones matrix). A block of
      // noise would only add directions of rounding errors: stop here.
      if (l_ > 0 && sumsq(m, b, y.data(), b) <= 64.0 * eps2_ * static_cast<double>(n) *
                                                    static_cast<double>(b) * A_.fro2) {
        exhausted_ = true;
        break;
      }
      orth_.run(m, b, y.data(), b, false, p_.orth);
      for (int it = 0; it < (p_.power_iters < 0 ? 2 : p_.power_iters); ++it) {
        A_.mm_t(b, y.data(), b, z.data(), b);
        if (l_ > 0) {  // z -= Bᵀ (Qᵀ y)
          blocks_t_times<T>(bl_, false, m, y.data(), b, t_.data());
          blocks_times<T>(bl_, true, n, T(-1), t_.data(), b, z.data());
        }
        orth_.run(n, b, z.data(), b, false, p_.orth);
        A_.mm(b, z.data(), b, y.data(), b);
        if (l_ > 0) {  // y -= Q (B z)
          blocks_t_times<T>(bl_, true, n, z.data(), b, t_.data());
          blocks_times<T>(bl_, false, m, T(-1), t_.data(), b, y.data());
        }
        orth_.run(m, b, y.data(), b, false, p_.orth);
      }
      if (l_ > 0) {
        // Re-orthogonalise against Q twice ("twice is enough"): when the block is mostly
        // inside span(Q), one projection leaves a remainder whose own component in span(Q)
        // is as large as itself once normalised (block Gram-Schmidt, BCGS2).
        project_q(b, y.data());
        // y's columns were unit vectors: a column that kept at least half its energy is
        // orthogonal to Q to working accuracy after one pass (Kahan-Parlett); otherwise the
        // second pass.
        if (min_col_sumsq(m, b, y.data()) < 0.5) {
          orth_.run(m, b, y.data(), b, false, p_.orth);
          project_q(b, y.data());
        }
      }
      for (int pass = 0;; ++pass) {
        const int hh = orth_.householder_count;
        orth_.run(m, b, y.data(), b, true, p_.orth);
        // Householder completes a rank-deficient block with arbitrary directions, which need
        // not be orthogonal to Q: project those out and orthonormalise once more.
        if (l_ == 0 || orth_.householder_count == hh || pass == 2) break;
        project_q(b, y.data());
      }
      A_.mm_t(b, y.data(), b, z.data(), b);  // Bᵢᵀ = Aᵀ Yᵢ
      energy_ -= sumsq(n, b, z.data(), b);
      bl_.push_back(QbBlock<T>{l_, b, std::move(y), std::move(z)});
      l_ += b;
      if (stop(*this, bl_.back().bt.data(), b)) break;
    }
    std::vector<T>().swap(t_);
    orth_.release();  // not held through the final stage (issue 15)
  }

 private:
  const LinOp<T>& A_;
  const RsvdParams& p_;
  std::int64_t lmax_ = 0, b0_ = 16, l_ = 0;
  bool exhausted_ = false;
  const double eps2_ = static_cast<double>(std::numeric_limits<T>::epsilon()) *
                       static_cast<double>(std::numeric_limits<T>::epsilon());
  double energy_ = 0.0;
  std::vector<QbBlock<T>> bl_;
  std::vector<T> t_;
  Orth<T> orth_;

  static double min_col_sumsq(std::int64_t r, std::int64_t c, const T* y) {
    std::vector<double> ss(sz(c), 0.0);
    for (std::int64_t i = 0; i < r; ++i)
      for (std::int64_t j = 0; j < c; ++j) {
        const double v = static_cast<double>(y[i * c + j]);
        ss[sz(j)] += v * v;
      }
    return c > 0 ? *std::min_element(ss.begin(), ss.end()) : 1.0;
  }
  // y -= Q (Qᵀ y)
  void project_q(std::int64_t b, T* y) {
    blocks_t_times<T>(bl_, false, A_.m, y, b, t_.data());
    blocks_times<T>(bl_, false, A_.m, T(-1), t_.data(), b, y);
  }
};

// The small SVD of B (l×n) from the blocks.
template <class T>
void small_svd_of(const AdaptiveQB<T>& qb, std::int64_t n, bool want_vectors, SmallSvd& sv) {
  const std::int64_t l = qb.l();
  sv.compute_with<T>(l, n, want_vectors, [&](double* a) { bt_rows<T>(qb.basis(), l, 0, n, a); });
}

// Q held as blocks of its columns.
template <class T>
void assemble(std::int64_t m, const std::vector<QbBlock<T>>& bl, const SmallSvd& sv,
              std::int64_t k, OpFactors<T>& f) {
  assemble_with<T>(m, sv, k, f, [&](const T* ub, std::int64_t l, T* u) {
    for (const auto& b : bl)
      gemm_rm_t<T>(false, true, m, k, b.b, T(1), b.q.data(), b.b, ub + b.off, l, T(1), u, k);
  });
}

// Smallest r with fro2 − Σ_{i<r} s_i² <= target (s descending); -1 if none.
std::int64_t rank_for(const std::vector<double>& s, double fro2, double target, double* err2) {
  double kept = 0.0;
  for (std::int64_t r = 0; r <= static_cast<std::int64_t>(s.size()); ++r) {
    if (r > 0) kept += s[sz(r - 1)] * s[sz(r - 1)];
    const double e = std::max(fro2 - kept, 0.0);
    if (e <= target) {
      *err2 = e;
      return r;
    }
  }
  *err2 = std::max(fro2 - kept, 0.0);
  return -1;
}

template <class T>
double verify2(const LinOp<T>& A, const OpFactors<T>& f) {
  std::vector<T> us(f.u);  // U diag(s)
  for (std::int64_t i = 0; i < A.m; ++i)
    for (std::int64_t c = 0; c < f.k; ++c)
      us[sz(i * f.k + c)] = static_cast<T>(static_cast<double>(us[sz(i * f.k + c)]) * f.s[sz(c)]);
  return A.resid2(f.k, us.data(), f.vt.data());
}

// ---- the final stage by the Gram matrix ----------------------------------------------------
// G = BBᵀ (l×l, double) has the eigenvalues σᵢ(B)² and B's left singular vectors as
// eigenvectors, so U = Q Z and Vt = S⁻¹ Zᵀ B. Its memory is G and the r wanted eigenvectors,
// against the l×n double copy of B, its l×l and l×n factors and gesdd's workspace of the
// SVD of B (issue 15). The squared values carry absolute errors of about eps₆₄‖A‖², which
// is used only where the target is far above that (gram_accurate).

// G's upper triangle, column-major, from Bᵀ's rows in chunks (never a double copy of B).
template <class T>
std::vector<double> gram_of_b(const std::vector<QbBlock<T>>& bl, std::int64_t l, std::int64_t n) {
  std::vector<double> g(sz(l * l), 0.0);
  const std::int64_t c =
      std::min(n, std::clamp<std::int64_t>((std::int64_t(1) << 18) / std::max<std::int64_t>(l, 1), 16, 512));
  std::vector<double> d(sz(c * l));
  for (std::int64_t j0 = 0; j0 < n; j0 += c) {
    const std::int64_t j1 = std::min(n, j0 + c);
    bt_rows<T>(bl, l, j0, j1, d.data());
    blas::syrk<double>('U', 'N', to_int(l), to_int(j1 - j0), 1.0, d.data(), to_int(l),
                       j0 == 0 ? 0.0 : 1.0, g.data(), to_int(l));
  }
  return g;
}

// syevr with its workspace query; false when LAPACK reports a failure (info > 0).
inline bool syevr_run(char jobz, char range, char uplo, std::int64_t l, double* g,
                      std::int64_t il, std::int64_t iu, std::vector<double>& w,
                      std::vector<double>& z, std::int64_t nz) {
  const auto li = to_int(l);
  blas::blas_int found = 0, iq = 0;
  double wq = 0.0;
  w.assign(sz(l), 0.0);
  if (jobz == 'V') z.assign(sz(l * nz), 0.0);
  std::vector<blas::blas_int> isuppz(sz(2 * std::max<std::int64_t>(nz, 1)));
  double dz = 0.0;
  double* zp = jobz == 'V' ? z.data() : &dz;
  blas::syevr<double>(jobz, range, uplo, li, g, li, to_int(il), to_int(iu), &found, w.data(), zp,
                      li, isuppz.data(), &wq, -1, &iq, -1);
  std::vector<double> work(sz(std::max<std::int64_t>(1, static_cast<std::int64_t>(wq))));
  std::vector<blas::blas_int> iwork(sz(std::max<blas::blas_int>(1, iq)));
  const auto info = blas::syevr<double>(jobz, range, uplo, li, g, li, to_int(il), to_int(iu),
                                        &found, w.data(), zp, li, isuppz.data(), work.data(),
                                        to_int(work.size()), iwork.data(), to_int(iwork.size()));
  return info == 0 && (range != 'I' || found == iu - il + 1);
}

// All eigenpairs of G (consumed): ascending values in w, vectors in z (l×l, column-major).
// MRRR (syevr, range 'A'): its subset mode falls back to bisection and inverse iteration,
// measured 4× slower at l = 2,000. False when LAPACK reports a failure.
inline bool gram_eig(std::vector<double>&& g, std::int64_t l, std::vector<double>& w,
                     std::vector<double>& z) {
  const bool ok = syevr_run('V', 'A', 'U', l, g.data(), 1, l, w, z, l);
  std::vector<double>().swap(g);
  return ok;
}

// The rank-r factors U = Q Z, Vt = S⁻¹ Zᵀ B from G's eigenpairs (w ascending, z l×l) and the
// blocks. Vt first, from B and z in double; then B and z are freed and U is built from Q and a
// T copy of z's r wanted columns, and Q freed: each output is allocated once what it no longer
// needs is gone (issue 15: Q, B, z and both outputs were held at once).
template <class T>
void gram_factors(AdaptiveQB<T>& qb, std::int64_t m, std::int64_t n, const std::vector<double>& w,
                  std::vector<double>&& z, std::int64_t r, OpFactors<T>& f) {
  const std::int64_t l = qb.l();
  f = OpFactors<T>{};
  f.k = r;
  f.s.assign(sz(r), 0.0);
  if (r == 0) return;
  // singular triplet k is eigenpair l − 1 − k (column l − 1 − k of z)
  for (std::int64_t k = 0; k < r; ++k) f.s[sz(k)] = std::sqrt(std::max(w[sz(l - 1 - k)], 0.0));
  f.vt.assign(sz(r * n), T(0));
  {
    // Vt in double by chunks of B's columns, so that rows of Vt for small σ stay orthonormal;
    // the r wanted eigenvectors are z's last r columns
    const double* zr = z.data() + (l - r) * l;
    const std::int64_t c = std::min(
        n, std::clamp<std::int64_t>((std::int64_t(1) << 18) / std::max(l, r), 16, 512));
    std::vector<double> d(sz(c * l)), v(sz(r * c));
    for (std::int64_t j0 = 0; j0 < n; j0 += c) {
      const std::int64_t j1 = std::min(n, j0 + c), h = j1 - j0;
      bt_rows<T>(qb.basis(), l, j0, j1, d.data());
      blas::gemm<double>('T', 'N', to_int(r), to_int(h), to_int(l), 1.0, zr, to_int(l),
                         d.data(), to_int(l), 0.0, v.data(), to_int(r));
      for (std::int64_t cc = 0; cc < r; ++cc) {
        const std::int64_t k = r - 1 - cc;
        const double inv = f.s[sz(k)] > 0.0 ? 1.0 / f.s[sz(k)] : 0.0;
        for (std::int64_t j = 0; j < h; ++j)
          f.vt[sz(k * n + j0 + j)] = static_cast<T>(v[sz(j * r + cc)] * inv);
      }
    }
  }
  qb.release_bt();
  std::vector<T> zt(sz(r * l));  // row-major r×l, descending
  for (std::int64_t k = 0; k < r; ++k)
    for (std::int64_t i = 0; i < l; ++i)
      zt[sz(k * l + i)] = static_cast<T>(z[sz((l - 1 - k) * l + i)]);
  std::vector<double>().swap(z);
  f.u.assign(sz(m * r), T(0));
  for (const auto& b : qb.basis())
    gemm_rm_t<T>(false, true, m, r, b.b, T(1), b.q.data(), b.b, zt.data() + b.off, l, T(1),
                 f.u.data(), r);
  qb.release_q();
}

// ‖(I − QQᵀ)A‖² in double, by chunks of A's columns (the measured part of the error when the
// energy indicator cannot resolve the target).
template <class T>
double resid_of_basis2(const LinOp<T>& A, const std::vector<QbBlock<T>>& bl, std::int64_t l) {
  const std::int64_t m = A.m, n = A.n;
  const std::int64_t c = std::min(
      n, std::clamp<std::int64_t>((std::int64_t(1) << 18) / std::max<std::int64_t>(m, 1), 8, 256));
  std::vector<std::int64_t> cols(sz(c));
  std::vector<T> y(sz(m * c)), t(sz(l * c));
  double total = 0.0;
  for (std::int64_t j0 = 0; j0 < n; j0 += c) {
    const std::int64_t h = std::min(n, j0 + c) - j0;
    for (std::int64_t j = 0; j < h; ++j) cols[sz(j)] = j0 + j;
    A.columns(cols.data(), h, y.data());
    blocks_t_times<T>(bl, false, m, y.data(), h, t.data());
    blocks_times<T>(bl, false, m, T(-1), t.data(), h, y.data());
    total += sumsq(m, h, y.data(), h);
  }
  return total;
}

// The Gram path is used where the eigenvalue errors, at most about l·eps₆₄‖A‖² over a tail
// sum, stay 256× below the target: every float32 tolerance the dtype can meet (100·eps₃₂ and
// up, for up to ~4,000 columns), float64 down to about 1e-5.
inline bool gram_accurate(double tol2, std::int64_t lmax) {
  return tol2 >= 256.0 * static_cast<double>(lmax) * std::numeric_limits<double>::epsilon();
}

template <class T>
void fixed_accuracy(const LinOp<T>& A, const RsvdParams& p, OpFactors<T>& f, RsvdInfo& info) {
  const double fro2 = A.fro2;
  const double tol2 = p.tol * p.tol;
  const double target = tol2 * fro2;
  if (fro2 == 0.0) {
    f = OpFactors<T>{};
    f.u.clear();
    info.rel_err = 0.0;
    return;
  }
  // The indicator ‖A‖² − ‖B‖² is only as good as ~ eps·sqrt(dim) relative to ‖A‖²: below
  // that, grow the basis until the indicator reaches its own resolution (or the sketch finds
  // nothing but rounding errors), then measure the residual itself.
  const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
  const double resolution = 64.0 * eps * std::sqrt(static_cast<double>(A.m));
  const bool must_verify = tol2 < resolution;
  AdaptiveQB<T> qb(A, p);
  bool gram = gram_accurate(tol2, qb.lmax());
  const double goal = must_verify ? resolution * fro2 : target;
  qb.grow([goal](const AdaptiveQB<T>& s, const T*, std::int64_t) { return s.energy_left() <= goal; });
  if (!must_verify && p.max_rank > 0 && qb.l() >= qb.lmax() && qb.energy_left() > goal) {
    // the caller's cap reached before the target: it has no use for these triplets (it asked
    // for no more), so none are built (issue 15: U and Vt of the whole capped basis were the
    // peak); the error says how far the basis got
    info.basis = qb.l();
    info.n_blocks = qb.blocks();
    info.rel_err = std::sqrt(std::max(qb.energy_left(), 0.0) / fro2);
    f = OpFactors<T>{};
    f.u.clear();
    return;
  }
  for (;;) {
    const std::int64_t l = qb.l();
    info.basis = l;
    info.n_blocks = qb.blocks();
    if (gram) {
      std::vector<double> w, z;
      if (!gram_eig(gram_of_b<T>(qb.basis(), l, A.n), l, w, z)) {
        gram = false;  // LAPACK failed: the SVD of B below
        continue;
      }
      std::vector<double> lam(w.rbegin(), w.rend());  // σᵢ², descending
      for (auto& v : lam) v = std::max(v, 0.0);
      const auto nl = static_cast<std::int64_t>(lam.size());
      std::vector<double> tail(sz(nl + 1), 0.0);
      for (std::int64_t i = nl - 1; i >= 0; --i) tail[sz(i)] = tail[sz(i + 1)] + lam[sz(i)];
      std::int64_t r = 0;
      double rb2 = 0.0;
      if (!must_verify) {
        double kept = 0.0;  // the smallest r meeting the indicator (all l: the best we have)
        while (r < nl && fro2 - kept > target) kept += lam[sz(r++)];
      } else {
        rb2 = resid_of_basis2<T>(A, qb.basis(), l);
        while (r < nl && rb2 + tail[sz(r)] > target) ++r;
        if (rb2 + tail[sz(r)] > target) {
          if (!qb.exhausted() && l < qb.lmax()) {
            qb.grow([](const AdaptiveQB<T>&, const T*, std::int64_t) { return true; });
            if (qb.l() > l) continue;
          }
          r = 0;  // below what this basis resolves: the smallest rank within a factor 2 of it
          while (r < nl && tail[sz(r)] > rb2) ++r;
        }
      }
      // values at G's rounding level hold no direction: their triplets would not be
      // orthonormal, and they add nothing to U S Vt
      while (r > 0 && lam[sz(r - 1)] <= static_cast<double>(l) * 4.0 *
                                           std::numeric_limits<double>::epsilon() * lam[0])
        --r;
      gram_factors<T>(qb, A.m, A.n, w, std::move(z), r, f);
      double kept = 0.0;
      for (std::int64_t i = 0; i < r; ++i) kept += lam[sz(i)];
      info.rel_err = must_verify ? std::sqrt((rb2 + tail[sz(r)]) / fro2)
                                 : std::sqrt(std::max(fro2 - kept, 0.0) / fro2);
      info.verified = must_verify;
      return;
    }
    SmallSvd sv;
    small_svd_of<T>(qb, A.n, true, sv);
    if (!must_verify) {
      double e2 = 0.0;
      std::int64_t r = rank_for(sv.s, fro2, target, &e2);
      if (r < 0) r = l;  // basis full: the best we have
      assemble<T>(A.m, qb.basis(), sv, r, f);
      info.rel_err = std::sqrt(e2 / fro2);
      info.verified = false;
      return;
    }
    // ‖A − U_r S_r V_rᵀ‖² = ‖A − QB‖² + Σ_{i>=r} sᵢ² (Q orthonormal): the first term measured
    // directly, the second from tail sums (no cancellation).
    assemble<T>(A.m, qb.basis(), sv, l, f);
    const double rb2 = verify2(A, f);
    const auto ns = static_cast<std::int64_t>(sv.s.size());
    std::vector<double> tail(sz(ns + 1), 0.0);
    for (std::int64_t i = ns - 1; i >= 0; --i) tail[sz(i)] = tail[sz(i + 1)] + sv.s[sz(i)] * sv.s[sz(i)];
    std::int64_t r = 0;
    while (r < ns && rb2 + tail[sz(r)] > target) ++r;
    const bool met = rb2 + tail[sz(r)] <= target;
    if (!met && !qb.exhausted() && l < qb.lmax()) {
      qb.grow([](const AdaptiveQB<T>&, const T*, std::int64_t) { return true; });  // one block
      if (qb.l() > l) continue;
    }
    if (!met) {  // below what this basis (or the working precision) resolves: the smallest
      r = 0;     // rank within a factor 2 of the best error the basis gives
      while (r < ns && tail[sz(r)] > rb2) ++r;
    }
    assemble<T>(A.m, qb.basis(), sv, r, f);
    info.rel_err = std::sqrt((rb2 + tail[sz(r)]) / fro2);  // measured residual + exact tail
    info.verified = true;
    return;
  }
}

template <class T>
void svt_qb(const LinOp<T>& A, const RsvdParams& p, OpFactors<T>& f, RsvdInfo& info) {
  const double lam = p.lam;
  f = OpFactors<T>{};
  if (A.fro2 == 0.0) return;
  AdaptiveQB<T> qb(A, p);
  const std::int64_t n = A.n;
  // Stop once the newest block's top singular value (≈ ‖(I − QQᵀ)A‖₂ after the power
  // iterations, an upper bound on every singular value not yet captured) is below lam.
  qb.grow([lam, n](const AdaptiveQB<T>&, const T* zb, std::int64_t b) {
    SmallSvd s;
    s.compute<T>(b, n, zb, b, false);
    return s.s.empty() || s.s[0] <= lam;
  });
  const std::int64_t l = qb.l();
  SmallSvd sv;
  small_svd_of<T>(qb, n, true, sv);
  std::int64_t r = 0;
  while (r < static_cast<std::int64_t>(sv.s.size()) && sv.s[sz(r)] > lam) ++r;
  assemble<T>(A.m, qb.basis(), sv, r, f);
  for (auto& v : f.s) v -= lam;
  info.basis = l;
  info.n_blocks = qb.blocks();
}

}  // namespace

template <class T>
void rsvd_core(const LinOp<T>& A, const RsvdParams& p, OpFactors<T>& f, RsvdInfo& info) {
  bool tr = false;
  std::int64_t ld = 0;
  const bool dense = A.colmajor(&tr, &ld) != nullptr;
  const std::int64_t n = A.n;
  if (p.mode == RsvdParams::kRank) {
    const std::int64_t l = std::min(n, p.rank + std::max<std::int64_t>(p.oversamples, 0));
    const bool direct = dense && (p.direct == 1 || (p.direct < 0 && (n <= 32 || 2 * l >= n)));
    info.direct = direct;
    if (direct) {
      const std::int64_t k = p.rank;
      direct_svd<T>(A, f, [k](const std::vector<double>&) { return k; });
      info.basis = n;
    } else {
      fixed_rank<T>(A, p, f, info);
    }
    info.rank = f.k;
    return;
  }
  const bool direct = dense && (p.direct == 1 || (p.direct < 0 && n <= 32));
  info.direct = direct;
  if (p.mode == RsvdParams::kTol) {
    if (direct) {
      const double tol2 = p.tol * p.tol;
      double total = 0.0, err2 = 0.0;
      direct_svd<T>(A, f, [&](const std::vector<double>& s) {
        std::vector<double> tail(s.size() + 1, 0.0);  // tail sums: no cancellation
        for (std::int64_t i = static_cast<std::int64_t>(s.size()) - 1; i >= 0; --i)
          tail[sz(i)] = tail[sz(i + 1)] + s[sz(i)] * s[sz(i)];
        total = tail[0];
        std::int64_t r = 0;
        while (r < static_cast<std::int64_t>(s.size()) && tail[sz(r)] > tol2 * total) ++r;
        err2 = tail[sz(r)];
        return r;
      });
      info.rel_err = total > 0.0 ? std::sqrt(err2 / total) : 0.0;
      info.verified = true;
      info.basis = n;
    } else {
      fixed_accuracy<T>(A, p, f, info);
    }
  } else {
    if (direct) {
      const double lam = p.lam;
      direct_svd<T>(A, f, [lam](const std::vector<double>& s) {
        std::int64_t r = 0;
        while (r < static_cast<std::int64_t>(s.size()) && s[sz(r)] > lam) ++r;
        return r;
      });
      for (auto& v : f.s) v -= lam;
      info.basis = n;
    } else {
      svt_qb<T>(A, p, f, info);
    }
  }
  info.rank = f.k;
}

template void rsvd_core<float>(const LinOp<float>&, const RsvdParams&, OpFactors<float>&,
                               RsvdInfo&);
template void rsvd_core<double>(const LinOp<double>&, const RsvdParams&, OpFactors<double>&,
                                RsvdInfo&);

}  // namespace rsvd_detail

template void gaussian_sketch<float>(std::int64_t, std::int64_t, std::int64_t, std::uint64_t,
                                     float*, std::int64_t, int);
template void gaussian_sketch<double>(std::int64_t, std::int64_t, std::int64_t, std::uint64_t,
                                      double*, std::int64_t, int);

}  // namespace wp
