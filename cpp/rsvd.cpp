// Entry points of the randomized SVD: dense and CSR operators, the input scan (NaN/Inf, range,
// ‖A‖_F), power-of-two scaling, orientation (the sketch is taken on the longer side), and the
// sign convention.
#include "weightpress/rsvd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "rsvd_detail.hpp"
#include "weightpress/blas.hpp"
#include "weightpress/csr.hpp"
#include "weightpress/errors.hpp"
#include "weightpress/parallel.hpp"

namespace wp {
namespace rsvd_detail {
namespace {

using blas::to_int;

struct Scan {
  bool finite = true;
  double amax = 0.0, fro2 = 0.0;  // amax: the largest row 2-norm (or chunk norm for CSR)
};

// Per-row (or per-chunk) partial results, reduced in order: independent of the thread count.
template <class T>
Scan scan_rows(std::int64_t rows, std::int64_t cols, const T* a, std::int64_t ld, int n_threads) {
  std::vector<double> amax(sz(rows)), ss(sz(rows));
  std::vector<unsigned char> ok(sz(rows));
  const int nt = threads_for(rows * cols, n_threads, 1 << 17);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t i = 0; i < rows; ++i) {
    const T* r = a + i * ld;
    // 16 independent lanes in T over chunks of 256, chunk sums added in double, all in a fixed
    // order: vectorisable and thread-independent. (float lanes lose ~1e-6 of relative accuracy
    // on ‖A‖²; out-of-range magnitudes take the exact path below.)
    constexpr int W = 16;
    constexpr std::int64_t kChunk = 256;
    double s = 0.0;
    for (std::int64_t j0 = 0; j0 < cols; j0 += kChunk) {
      const std::int64_t j1 = std::min(cols, j0 + kChunk);
      T acc[W] = {};
      std::int64_t j = j0;
      for (; j + W <= j1; j += W)
        for (int t = 0; t < W; ++t) acc[t] += r[j + t] * r[j + t];
      for (int t = 0; j < j1; ++j, ++t) acc[t] += r[j] * r[j];
      T cs = T(0);
      for (int t = 0; t < W; ++t) cs += acc[t];
      s += static_cast<double>(cs);
    }
    // squares near the ends of float's range (overflow, underflow): the exact double sum
    if (std::is_same_v<T, float> && std::isfinite(s) && (s > 1e30 || s < 1e-28)) {
      s = 0.0;
      for (std::int64_t c = 0; c < cols; ++c) s += static_cast<double>(r[c]) * static_cast<double>(r[c]);
    }
    bool fin = std::isfinite(s);  // NaN and Inf propagate into the sum of squares
    if (!fin) {                   // or the squares overflowed in T
      fin = true;
      for (std::int64_t c = 0; c < cols; ++c) fin = fin && std::isfinite(static_cast<double>(r[c]));
      if (fin) {
        s = 0.0;
        for (std::int64_t c = 0; c < cols; ++c)
          s += static_cast<double>(r[c]) * static_cast<double>(r[c]);
      }
    }
    amax[sz(i)] = std::sqrt(s);  // the row's 2-norm: bounds its largest entry
    ss[sz(i)] = s;
    ok[sz(i)] = fin;
  }
  Scan out;
  for (std::int64_t i = 0; i < rows; ++i) {
    out.finite = out.finite && ok[sz(i)];
    out.amax = std::max(out.amax, amax[sz(i)]);
    out.fro2 += ss[sz(i)];
  }
  return out;
}

// Power-of-two exponent that brings the largest entry near 1 when it is far enough out of
// range that products could overflow or fall into subnormals; 0 otherwise.
template <class T>
int scale_exponent(double amax) {
  if (!(amax > 0.0)) return 0;
  const int e = std::ilogb(amax);
  // float: 2^±64 (products stay far from overflow and subnormals); double: 2^±400 (squares
  // summed in double stay finite)
  const int lim = std::is_same_v<T, float> ? 64 : 400;
  return (e > lim || e < -lim) ? e : 0;
}

template <class T>
void check_params(std::int64_t m, std::int64_t n, const RsvdParams& p) {
  const std::int64_t mn = std::min(m, n);
  if (m < 1 || n < 1)
    throw ShapeError("randomized_svd: A must have at least one row and one column, got " +
                     std::to_string(m) + "x" + std::to_string(n));
  if (p.mode == RsvdParams::kRank && (p.rank < 1 || p.rank > mn))
    throw ShapeError("randomized_svd: rank must be in [1, min(m, n)] = [1, " +
                     std::to_string(mn) + "], got " + std::to_string(p.rank));
  if (p.mode == RsvdParams::kTol && !(p.tol > 0.0 && p.tol < 1.0))
    throw ShapeError("randomized_svd: tol must be in (0, 1), got " + std::to_string(p.tol));
  if (p.mode == RsvdParams::kSvt && !(p.lam >= 0.0 && std::isfinite(p.lam)))
    throw ShapeError("svt: lam must be finite and >= 0");
  if (p.oversamples < 0) throw ShapeError("randomized_svd: oversamples must be >= 0");
}

// Orientation back to the caller's, scale back, and the sign convention: the entry of largest
// magnitude in each column of U (the first such, on ties) is positive.
// The factors are moved (or transposed one at a time, each source freed at once): never two
// copies of both (issue 15: the output was held three times on its way to Python).
template <class T>
void emit(OpFactors<T>&& f, bool transposed, std::int64_t m, std::int64_t n, int exp2,
          SvdFactors<T>& out) {
  const std::int64_t k = f.k;
  out.m = m;
  out.n = n;
  out.k = k;
  if (!transposed) {
    out.u = std::move(f.u);
    out.vt = std::move(f.vt);
  } else {  // operator = Aᵀ = U' S V'ᵀ  ⇒  A = V' S U'ᵀ
    out.u = transposed_copy(k, m, f.vt.data());
    std::vector<T>().swap(f.vt);
    out.vt = transposed_copy(n, k, f.u.data());
    std::vector<T>().swap(f.u);
  }
  out.s.resize(sz(k));
  for (std::int64_t c = 0; c < k; ++c) out.s[sz(c)] = static_cast<T>(std::ldexp(f.s[sz(c)], exp2));
  for (std::int64_t c = 0; c < k; ++c) {
    std::int64_t best = 0;
    T bv = T(-1);
    for (std::int64_t i = 0; i < m; ++i) {
      const T v = std::abs(out.u[sz(i * k + c)]);
      if (v > bv) {
        bv = v;
        best = i;
      }
    }
    if (out.u[sz(best * k + c)] < T(0)) {
      for (std::int64_t i = 0; i < m; ++i) out.u[sz(i * k + c)] = -out.u[sz(i * k + c)];
      for (std::int64_t j = 0; j < n; ++j) out.vt[sz(c * n + j)] = -out.vt[sz(c * n + j)];
    }
  }
}

// The scratch of one SVD (basis blocks, Gram matrix, eigenvectors: up to about 2x the input)
// goes back to the system. glibc keeps freed heap chunks mapped when a live one (here the
// factors just returned) sits above them, which left about 1x the input resident after the
// call (issue 15, bench_memory.py's auto --error row); malloc_trim releases those pages.
void release_scratch() { release_free_memory(); }

}  // namespace
}  // namespace rsvd_detail

void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

std::size_t fix_mmap_threshold(std::size_t bytes) {
#if defined(__GLIBC__)
  const char* own = std::getenv("WP_MALLOC_TUNE");
  const char* tun = std::getenv("GLIBC_TUNABLES");
  if ((own != nullptr && std::string(own) == "0") || std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr ||
      (tun != nullptr && std::string(tun).find("mmap_threshold") != std::string::npos))
    return 0;
  if (bytes > static_cast<std::size_t>(std::numeric_limits<int>::max())) return 0;
  return mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes)) == 1 ? bytes : 0;
#else
  (void)bytes;
  return 0;
#endif
}

template <class T>
void randomized_svd_dense(std::int64_t m, std::int64_t n, const T* a, std::int64_t lda,
                          bool fortran, const RsvdParams& p, SvdFactors<T>& out, RsvdInfo& info,
                          int n_threads) {
  using namespace rsvd_detail;
  check_params<T>(m, n, p);
  release_scratch();  // (pages the caller freed, before this SVD's scratch is allocated)
  // stored row-major: R rows of C entries with stride lda
  const std::int64_t R = fortran ? n : m, C = fortran ? m : n;
  Scan sc = scan_rows<T>(R, C, a, lda, n_threads);
  if (!sc.finite) throw ShapeError("randomized_svd: A contains NaN or Inf");
  DenseOp<T> op;
  op.n_threads = std::max(1, n_threads);
  op.a = a;
  op.ld = lda;
  op.tiled = p.tiled;
  const int e = scale_exponent<T>(sc.amax);
  op.fro2 = sc.fro2;
  if (e != 0) {
    op.own.resize(sz(R * C));
    for (std::int64_t i = 0; i < R; ++i)
      for (std::int64_t j = 0; j < C; ++j)
        op.own[sz(i * C + j)] = static_cast<T>(std::ldexp(static_cast<double>(a[i * lda + j]), -e));
    op.a = op.own.data();
    op.ld = C;
    op.fro2 = scan_rows<T>(R, C, op.a, C, n_threads).fro2;
  }
  const bool transposed = m < n;  // the operator is always the tall orientation
  op.m = transposed ? n : m;
  op.n = transposed ? m : n;
  op.col = transposed ? !fortran : fortran;
  OpFactors<T> f;
  rsvd_core<T>(op, p, f, info);
  info.scale = std::ldexp(1.0, -e);
  emit<T>(std::move(f), transposed, m, n, e, out);
  release_scratch();
}

template <class T, class I>
void randomized_svd_csr(std::int64_t m, std::int64_t n, const I* indptr, const I* indices,
                        const T* data, const RsvdParams& p, SvdFactors<T>& out, RsvdInfo& info,
                        int n_threads) {
  using namespace rsvd_detail;
  check_params<T>(m, n, p);
  const auto nnz = static_cast<std::int64_t>(indptr[m]);
  const std::int64_t chunk = 1 << 14;
  Scan sc = scan_rows<T>(nnz / chunk, chunk, data, chunk, n_threads);
  const Scan tail = scan_rows<T>(nnz % chunk ? 1 : 0, nnz % chunk, data + (nnz / chunk) * chunk,
                                 chunk, 1);
  sc.finite = sc.finite && tail.finite;
  sc.amax = std::max(sc.amax, tail.amax);
  sc.fro2 += tail.fro2;
  if (!sc.finite) throw ShapeError("randomized_svd: A contains NaN or Inf");
  CsrOp<T, I> op;
  op.n_threads = std::max(1, n_threads);
  op.rs = m;
  op.cs = n;
  op.indptr = indptr;
  op.indices = indices;
  op.data = data;
  op.fro2 = sc.fro2;
  const int e = scale_exponent<T>(sc.amax);
  if (e != 0) {
    op.own.resize(sz(nnz));
    double f2 = 0.0;
    for (std::int64_t i = 0; i < nnz; ++i) {
      op.own[sz(i)] = static_cast<T>(std::ldexp(static_cast<double>(data[i]), -e));
      f2 += static_cast<double>(op.own[sz(i)]) * static_cast<double>(op.own[sz(i)]);
    }
    op.data = op.own.data();
    op.fro2 = f2;
  }
  const bool transposed = m < n;
  op.tr = transposed;
  op.m = transposed ? n : m;
  op.n = transposed ? m : n;
  OpFactors<T> f;
  rsvd_core<T>(op, p, f, info);
  info.scale = std::ldexp(1.0, -e);
  emit<T>(std::move(f), transposed, m, n, e, out);
  release_scratch();
}

#define WP_RSVD_INST(T)                                                                      \
  template void randomized_svd_dense<T>(std::int64_t, std::int64_t, const T*, std::int64_t,  \
                                        bool, const RsvdParams&, SvdFactors<T>&, RsvdInfo&, \
                                        int);
#define WP_RSVD_CSR_INST(T, I)                                                              \
  template void randomized_svd_csr<T, I>(std::int64_t, std::int64_t, const I*, const I*,     \
                                         const T*, const RsvdParams&, SvdFactors<T>&,       \
                                         RsvdInfo&, int);
WP_RSVD_INST(float)
WP_RSVD_INST(double)
WP_RSVD_CSR_INST(float, std::int32_t)
WP_RSVD_CSR_INST(float, std::int64_t)
WP_RSVD_CSR_INST(double, std::int32_t)
WP_RSVD_CSR_INST(double, std::int64_t)

}  // namespace wp
