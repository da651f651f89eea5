#include "weightpress/blas.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace wp::blas {

namespace {
Table g_table;
}

void set_table(const Table& t) { g_table = t; }
const Table& table() { return g_table; }

namespace {

// Column-major helpers for the self-test (tiny sizes; plain loops are the reference).
template <class T>
struct Mat {
  int m, n;
  std::vector<T> a;
  Mat(int m_, int n_) : m(m_), n(n_), a(static_cast<size_t>(m_) * static_cast<size_t>(n_), T(0)) {}
  T& operator()(int i, int j) { return a[static_cast<size_t>(j) * static_cast<size_t>(m) + static_cast<size_t>(i)]; }
  T operator()(int i, int j) const { return a[static_cast<size_t>(j) * static_cast<size_t>(m) + static_cast<size_t>(i)]; }
  T* data() { return a.data(); }
};

template <class T>
Mat<T> filled(int m, int n, int seed) {
  Mat<T> x(m, n);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i)
      x(i, j) = static_cast<T>(std::sin(1.0 + seed + 0.7 * i + 1.3 * j + 0.11 * i * j));
  return x;
}

template <class T>
Mat<T> mul(const Mat<T>& a, const Mat<T>& b, bool ta = false, bool tb = false) {
  int m = ta ? a.n : a.m, k = ta ? a.m : a.n, n = tb ? b.m : b.n;
  Mat<T> c(m, n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) s += double(ta ? a(p, i) : a(i, p)) * double(tb ? b(j, p) : b(p, j));
      c(i, j) = static_cast<T>(s);
    }
  return c;
}

template <class T>
double rel_diff(const Mat<T>& x, const Mat<T>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.a.size(); ++i) {
    num += (double(x.a[i]) - double(y.a[i])) * (double(x.a[i]) - double(y.a[i]));
    den += double(y.a[i]) * double(y.a[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

template <class T>
Mat<T> spd(int n) {  // A Aᵀ + n I
  Mat<T> a = filled<T>(n, n, 5);
  Mat<T> s = mul(a, a, false, true);
  for (int i = 0; i < n; ++i) s(i, i) += static_cast<T>(n);
  return s;
}

}  // namespace

template <class T>
int selftest(SelfTestRow* rows, int max_rows) {
  int r = 0;
  auto put = [&](const char* name, double res) {
    if (r < max_rows) rows[r++] = {name, res};
  };
  const int m = 7, n = 5, k = 4;
  {  // gemm
    Mat<T> a = filled<T>(m, k, 0), b = filled<T>(k, n, 1), c(m, n);
    gemm<T>('N', 'N', m, n, k, T(1), a.data(), m, b.data(), k, T(0), c.data(), m);
    put("gemm", rel_diff(c, mul(a, b)));
  }
  {  // gemv
    Mat<T> a = filled<T>(m, n, 2), x = filled<T>(n, 1, 3), y(m, 1);
    gemv<T>('N', m, n, T(1), a.data(), m, x.data(), 1, T(0), y.data(), 1);
    put("gemv", rel_diff(y, mul(a, x)));
  }
  {  // syrk (lower triangle of A Aᵀ)
    Mat<T> a = filled<T>(n, k, 4), c(n, n);
    syrk<T>('L', 'N', n, k, T(1), a.data(), n, T(0), c.data(), n);
    Mat<T> ref = mul(a, a, false, true);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < j; ++i) ref(i, j) = 0;
    put("syrk", rel_diff(c, ref));
  }
  Mat<T> s = spd<T>(n);
  Mat<T> lower = s;  // Cholesky factor via potrf
  {
    potrf<T>('L', n, lower.data(), n);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < j; ++i) lower(i, j) = 0;
    put("potrf", rel_diff(mul(lower, lower, false, true), s));
  }
  {  // trsm: solve L X = B
    Mat<T> b = filled<T>(n, 3, 6), x = b;
    trsm<T>('L', 'L', 'N', 'N', n, 3, T(1), lower.data(), n, x.data(), n);
    put("trsm", rel_diff(mul(lower, x), b));
  }
  {  // trmm: B := L B
    Mat<T> b = filled<T>(n, 3, 7), x = b;
    trmm<T>('L', 'L', 'N', 'N', n, 3, T(1), lower.data(), n, x.data(), n);
    put("trmm", rel_diff(x, mul(lower, b)));
  }
  {  // potrs: S X = B with the factor above
    Mat<T> b = filled<T>(n, 2, 8), x = b;
    potrs<T>('L', n, 2, lower.data(), n, x.data(), n);
    put("potrs", rel_diff(mul(s, x), b));
  }
  {  // trtrs: solve Lᵀ X = B
    Mat<T> b = filled<T>(n, 2, 9), x = b;
    trtrs<T>('L', 'T', 'N', n, 2, lower.data(), n, x.data(), n);
    put("trtrs", rel_diff(mul(lower, x, true, false), b));
  }
  {  // geqrf + orgqr: A = Q R
    Mat<T> a = filled<T>(m, n, 10), q = a;
    std::vector<T> tau(n), work(1);
    T wq;
    geqrf<T>(m, n, q.data(), m, tau.data(), &wq, -1);
    work.resize(static_cast<size_t>(wq) + 1);
    geqrf<T>(m, n, q.data(), m, tau.data(), work.data(), static_cast<blas_int>(work.size()));
    Mat<T> rr(n, n);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i <= j; ++i) rr(i, j) = q(i, j);
    orgqr<T>(m, n, n, q.data(), m, tau.data(), &wq, -1);
    work.resize(std::max(work.size(), static_cast<size_t>(wq) + 1));
    orgqr<T>(m, n, n, q.data(), m, tau.data(), work.data(), static_cast<blas_int>(work.size()));
    put("geqrf+orgqr", rel_diff(mul(q, rr), a));
  }
  auto svd_check = [&](bool dd) {
    Mat<T> a = filled<T>(m, n, 11), w = a, u(m, n), vt(n, n);
    std::vector<T> sv(n);
    std::vector<blas_int> iwork(8 * n);
    T wq;
    if (dd) gesdd<T>('S', m, n, w.data(), m, sv.data(), u.data(), m, vt.data(), n, &wq, -1, iwork.data());
    else gesvd<T>('S', 'S', m, n, w.data(), m, sv.data(), u.data(), m, vt.data(), n, &wq, -1);
    std::vector<T> work(static_cast<size_t>(wq) + 1);
    blas_int lw = static_cast<blas_int>(work.size());
    blas_int info = dd ? gesdd<T>('S', m, n, w.data(), m, sv.data(), u.data(), m, vt.data(), n, work.data(), lw, iwork.data())
                       : gesvd<T>('S', 'S', m, n, w.data(), m, sv.data(), u.data(), m, vt.data(), n, work.data(), lw);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) u(i, j) *= sv[static_cast<size_t>(j)];
    return info != 0 ? 1.0 : rel_diff(mul(u, vt), a);
  };
  put("gesdd", svd_check(true));
  put("gesvd", svd_check(false));
  {  // syevd: S V = V diag(w)
    Mat<T> v = s;
    std::vector<T> ev(n);
    T wq;
    blas_int iq;
    syevd<T>('V', 'L', n, v.data(), n, ev.data(), &wq, -1, &iq, -1);
    std::vector<T> work(static_cast<size_t>(wq) + 1);
    std::vector<blas_int> iwork(static_cast<size_t>(iq) + 1);
    syevd<T>('V', 'L', n, v.data(), n, ev.data(), work.data(), static_cast<blas_int>(work.size()),
             iwork.data(), static_cast<blas_int>(iwork.size()));
    Mat<T> vd = v;
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < n; ++i) vd(i, j) *= ev[static_cast<size_t>(j)];
    put("syevd", rel_diff(mul(s, v), vd));
  }
  {  // getrf: P A = L U
    Mat<T> a = filled<T>(n, n, 12), lu = a;
    std::vector<blas_int> ipiv(n);
    getrf<T>(n, n, lu.data(), n, ipiv.data());
    Mat<T> l(n, n), uu(n, n);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < n; ++i) {
        if (i > j) l(i, j) = lu(i, j);
        else uu(i, j) = lu(i, j);
        if (i == j) l(i, j) = T(1);
      }
    Mat<T> pa = a;  // apply the row interchanges in order
    for (int i = 0; i < n; ++i) {
      int p = ipiv[static_cast<size_t>(i)] - 1;
      for (int j = 0; j < n; ++j) std::swap(pa(i, j), pa(p, j));
    }
    put("getrf", rel_diff(mul(l, uu), pa));
  }
  return r;
}

template int selftest<float>(SelfTestRow*, int);
template int selftest<double>(SelfTestRow*, int);

}  // namespace wp::blas
