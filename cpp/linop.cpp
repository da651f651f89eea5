// Dense and CSR linear operators (see linop.hpp).
#include "weightpress/linop.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "weightpress/blas.hpp"
#include "weightpress/csr.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"

namespace wp {
namespace {
// f(r0, r1) over rows [0, rows) in eight tiles (multiples of 16 rows, at least 64: a function
// of the shape only, so the bits do not depend on the thread count; eight, so that 2, 4 or 8
// threads share them evenly: 768 rows in tiles of 512 left one thread a third of the product
// alone), on up to n_threads threads; `work` is each row's multiply-adds. OpenBLAS's own
// threads, woken for each product of randomized_svd and spinning between them through its
// OpenMP regions on the same cores, were 14% of its samples (4096², k = 64, float32).
template <class F>
void row_tiles(std::int64_t rows, std::int64_t work, int n_threads, const F& f) {
  const std::int64_t B = std::max<std::int64_t>(64, ((rows + 7) / 8 + 15) / 16 * 16);
  const std::int64_t nb = (rows + B - 1) / B;
  const int nt = static_cast<int>(std::min<std::int64_t>(nb, threads_for(rows * work, n_threads, std::int64_t(1) << 22)));
  FirstError err;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (std::int64_t t = 0; t < nb; ++t)
    err.run([&] { f(t * B, std::min(rows, t * B + B)); });
  err.rethrow();
}
}  // namespace

namespace {

using blas::to_int;
inline std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// A single vector against a matrix of at most kSmallProduct entries runs in our own loops
// (see linop.hpp and blas.hpp).
constexpr std::int64_t kSmallVec = blas::kSmallProduct;

// out[i] = Σ_j s[i, j] x[j] for a row-major r×c s (ld): 64 partial sums (entry j feeds sum
// j % 64, so the adds of independent chains overlap), added in a fixed tree. The sums are held
// as vectors of the level's native width VB (16, 32 or 64 bytes): each lane does the same
// operations in the same order whatever VB is (no FMA contraction: -ffp-contract=off), so the
// result is the same on every CPU; compiled per level through isa.hpp. (One 16-lane generic
// vector, wider than a ymm register, was lowered through the stack in the AVX2 copy: 3-7x
// BLAS gemv's time on an AMD EPYC, bench_sparse "small products".)
template <int VB, class T>
WP_INLINE void row_dots_body(std::int64_t r, std::int64_t c, const T* s, std::int64_t ld,
                             const T* x, T* out) {
  constexpr int L = VB / static_cast<int>(sizeof(T));
  constexpr int NV = 64 / L;
  typedef T vn __attribute__((vector_size(VB)));
  for (std::int64_t i = 0; i < r; ++i) {
    const T* a = s + i * ld;
    vn acc[NV] = {}, av, xv;
    std::int64_t j = 0;
    for (; j + 64 <= c; j += 64)
#pragma GCC unroll 32
      for (int q = 0; q < NV; ++q) {
        std::memcpy(&av, a + j + L * q, sizeof av);
        std::memcpy(&xv, x + j + L * q, sizeof xv);
        acc[q] += av * xv;
      }
    T sum[64];  // sum[j % 64]
    std::memcpy(sum, acc, sizeof sum);
    for (int l = 0; j < c; ++j, ++l) sum[l] += a[j] * x[j];
    T h[16];
    for (int l = 0; l < 16; ++l) h[l] = (sum[l] + sum[l + 32]) + (sum[l + 16] + sum[l + 48]);
    for (int l = 0; l < 8; ++l) h[l] = h[l] + h[l + 8];
    out[i] = ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
  }
}

// out[j] = Σ_i s[i, j] x[i] for a row-major r×c s (ld): row axpys.
template <class T>
WP_INLINE void row_axpys_body(std::int64_t r, std::int64_t c, const T* s, std::int64_t ld,
                              const T* x, T* out) {
  std::fill(out, out + c, T(0));
  for (std::int64_t i = 0; i < r; ++i) {
    const T* a = s + i * ld;
    const T xi = x[i];
    for (std::int64_t j = 0; j < c; ++j) out[j] += a[j] * xi;
  }
}

#define WP_ROWOP_ARGS std::int64_t r, std::int64_t c, const T *s, std::int64_t ld, const T *x, T *out
template <class T>
void row_dots_base(WP_ROWOP_ARGS) { row_dots_body<16>(r, c, s, ld, x, out); }
template <class T>
void row_axpys_base(WP_ROWOP_ARGS) { row_axpys_body(r, c, s, ld, x, out); }
#ifdef WP_X86_DISPATCH
template <class T>
WP_TARGET_V3 void row_dots_v3(WP_ROWOP_ARGS) { row_dots_body<32>(r, c, s, ld, x, out); }
template <class T>
WP_TARGET_V4 void row_dots_v4(WP_ROWOP_ARGS) { row_dots_body<64>(r, c, s, ld, x, out); }
template <class T>
WP_TARGET_V3 void row_axpys_v3(WP_ROWOP_ARGS) { row_axpys_body(r, c, s, ld, x, out); }
template <class T>
WP_TARGET_V4 void row_axpys_v4(WP_ROWOP_ARGS) { row_axpys_body(r, c, s, ld, x, out); }
#endif
template <class T>
void row_dots(WP_ROWOP_ARGS) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return row_dots_v4(r, c, s, ld, x, out);
    case Isa::kV3: return row_dots_v3(r, c, s, ld, x, out);
    case Isa::kBase: break;
  }
#endif
  row_dots_base(r, c, s, ld, x, out);
}
template <class T>
void row_axpys(WP_ROWOP_ARGS) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return row_axpys_v4(r, c, s, ld, x, out);
    case Isa::kV3: return row_axpys_v3(r, c, s, ld, x, out);
    case Isa::kBase: break;
  }
#endif
  row_axpys_base(r, c, s, ld, x, out);
}
#undef WP_ROWOP_ARGS

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
      blas::gemm_rm<T>(false, false, to_int(h), to_int(n), to_int(k), T(-1), L + r0 * k,
                       to_int(k), R, to_int(n), T(1), d.data(), to_int(n));
    double acc = 0.0;
    for (std::int64_t i = 0; i < h * n; ++i) {
      const double v = static_cast<double>(d[sz(i)]);
      acc += v * v;
    }
    total += acc;
  }
  return total;
}

}  // namespace

template <class T>
void LinOp<T>::gram(const std::int64_t* cols, std::int64_t b, T* out, std::vector<T>& work) const {
  if (m == 0) {
    std::fill(out, out + n * b, T(0));
    return;
  }
  work.resize(sz(m * b + n * b));
  T* y = work.data();
  T* g = y + m * b;
  columns(cols, b, y);
  mm_t(b, y, b, g, b);  // n×b row-major
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t t = 0; t < b; ++t) out[r + t * n] = g[sz(r * b + t)];
}

// ---- dense ----------------------------------------------------------------------------------

template <class T>
void DenseOp<T>::mm(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const {
  const std::int64_t m_ = this->m, n_ = this->n;
  if (m_ == 0 || l == 0) return;
  if (n_ == 0) {
    for (std::int64_t i = 0; i < m_; ++i) std::fill(y + i * ldy, y + i * ldy + l, T(0));
    return;
  }
  if (l == 1 && ldx == 1 && ldy == 1 && m_ * n_ <= kSmallVec) {
    if (col) row_axpys<T>(n_, m_, a, ld, x, y);
    else row_dots<T>(m_, n_, a, ld, x, y);
    return;
  }
  if (l == 1 && ldx == 1 && ldy == 1) {  // stored row-major S: A x = S x (!col) or Sᵀ x (col)
    const blas::blas_int sr = to_int(col ? n_ : m_), sc = to_int(col ? m_ : n_);
    blas::gemv<T>(col ? 'N' : 'T', sc, sr, T(1), a, to_int(ld), x, 1, T(0), y, 1);
    return;
  }
  if (tiled) {  // rows of y: rows of the stored matrix (!col) or its columns (col)
    row_tiles(m_, n_ * l, this->n_threads, [&](std::int64_t r0, std::int64_t r1) {
      blas::gemm_rm<T>(col, false, to_int(r1 - r0), to_int(l), to_int(n_), T(1),
                       col ? a + r0 : a + r0 * ld, to_int(ld), x, to_int(ldx), T(0), y + r0 * ldy,
                       to_int(ldy));
    });
    return;
  }
  blas::gemm_rm<T>(col, false, to_int(m_), to_int(l), to_int(n_), T(1), a, to_int(ld), x,
                   to_int(ldx), T(0), y, to_int(ldy));
}

template <class T>
void DenseOp<T>::mm_t(std::int64_t l, const T* x, std::int64_t ldx, T* y,
                      std::int64_t ldy) const {
  const std::int64_t m_ = this->m, n_ = this->n;
  if (n_ == 0 || l == 0) return;
  if (m_ == 0) {
    for (std::int64_t j = 0; j < n_; ++j) std::fill(y + j * ldy, y + j * ldy + l, T(0));
    return;
  }
  if (l == 1 && ldx == 1 && ldy == 1 && m_ * n_ <= kSmallVec) {
    if (col) row_dots<T>(n_, m_, a, ld, x, y);
    else row_axpys<T>(m_, n_, a, ld, x, y);
    return;
  }
  if (l == 1 && ldx == 1 && ldy == 1) {
    const blas::blas_int sr = to_int(col ? n_ : m_), sc = to_int(col ? m_ : n_);
    blas::gemv<T>(col ? 'T' : 'N', sc, sr, T(1), a, to_int(ld), x, 1, T(0), y, 1);
    return;
  }
  if (tiled) {  // rows of y: columns of the stored matrix (!col) or its rows (col)
    row_tiles(n_, m_ * l, this->n_threads, [&](std::int64_t r0, std::int64_t r1) {
      blas::gemm_rm<T>(!col, false, to_int(r1 - r0), to_int(l), to_int(m_), T(1),
                       col ? a + r0 * ld : a + r0, to_int(ld), x, to_int(ldx), T(0), y + r0 * ldy,
                       to_int(ldy));
    });
    return;
  }
  blas::gemm_rm<T>(!col, false, to_int(n_), to_int(l), to_int(m_), T(1), a, to_int(ld), x,
                   to_int(ldx), T(0), y, to_int(ldy));
}

template <class T>
void DenseOp<T>::columns(const std::int64_t* cols, std::int64_t b, T* y) const {
  const std::int64_t m_ = this->m;
  if (!col) {
    for (std::int64_t i = 0; i < m_; ++i)
      for (std::int64_t t = 0; t < b; ++t) y[i * b + t] = a[i * ld + cols[t]];
  } else {
    for (std::int64_t t = 0; t < b; ++t) {
      const T* s = a + cols[t] * ld;
      for (std::int64_t i = 0; i < m_; ++i) y[i * b + t] = s[i];
    }
  }
}

namespace {

// out[j] += s[i, j]² over the rows i of a row-major r×c s (ld), in row order: elementwise, the
// same bits at every ISA level; compiled per level (LASSO 1024×4096, one thread: the baseline
// SSE2 loop was 4.2% of the solve, this one 3.3%, bound by the read of A).
template <class T>
WP_INLINE void rows_sumsq_body(std::int64_t r, std::int64_t c, const T* s, std::int64_t ld,
                               double* __restrict out) {
  for (std::int64_t i = 0; i < r; ++i) {
    const T* __restrict row = s + i * ld;
    for (std::int64_t j = 0; j < c; ++j) {
      const double v = static_cast<double>(row[j]);
      out[j] += v * v;
    }
  }
}
#ifdef WP_X86_DISPATCH
template <class T>
WP_TARGET_V4 void rows_sumsq_v4(std::int64_t r, std::int64_t c, const T* s, std::int64_t ld,
                                double* out) {
  rows_sumsq_body<T>(r, c, s, ld, out);
}
template <class T>
WP_TARGET_V3 void rows_sumsq_v3(std::int64_t r, std::int64_t c, const T* s, std::int64_t ld,
                                double* out) {
  rows_sumsq_body<T>(r, c, s, ld, out);
}
#endif
template <class T>
void rows_sumsq(std::int64_t r, std::int64_t c, const T* s, std::int64_t ld, double* out) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return rows_sumsq_v4<T>(r, c, s, ld, out);
    case Isa::kV3: return rows_sumsq_v3<T>(r, c, s, ld, out);
    case Isa::kBase: break;
  }
#endif
  rows_sumsq_body<T>(r, c, s, ld, out);
}

}  // namespace

template <class T>
void DenseOp<T>::col_sumsq(double* out) const {
  const std::int64_t m_ = this->m, n_ = this->n;
  if (sumsq) {
    std::copy(sumsq, sumsq + n_, out);
    return;
  }
  std::fill(out, out + n_, 0.0);
  if (!col) {
    rows_sumsq<T>(m_, n_, a, ld, out);
  } else {
    for (std::int64_t j = 0; j < n_; ++j) {
      double s = 0.0;
      for (std::int64_t i = 0; i < m_; ++i) {
        const double v = static_cast<double>(a[j * ld + i]);
        s += v * v;
      }
      out[j] = s;
    }
  }
}

template <class T>
double DenseOp<T>::resid2(std::int64_t k, const T* L, const T* R) const {
  const std::int64_t mm_ = this->m, nn_ = this->n;
  if (!col)
    return resid2_rows<T>(mm_, nn_, k, L, R, [&](std::int64_t r0, std::int64_t r1, T* d) {
      for (std::int64_t i = r0; i < r1; ++i)
        std::copy(a + i * ld, a + i * ld + nn_, d + (i - r0) * nn_);
    });
  // stored rows are the operator's columns: ‖Aᵀ − Rᵀ Lᵀ‖
  const auto Lt = transposed_copy(mm_, k, L), Rt = transposed_copy(k, nn_, R);
  return resid2_rows<T>(nn_, mm_, k, Rt.data(), Lt.data(),
                        [&](std::int64_t r0, std::int64_t r1, T* d) {
                          for (std::int64_t i = r0; i < r1; ++i)
                            std::copy(a + i * ld, a + i * ld + mm_, d + (i - r0) * mm_);
                        });
}

// ---- CSR ------------------------------------------------------------------------------------

template <class T, class I>
void CsrOp<T, I>::fwd(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const {
  const std::int64_t bad =
      csr_matmat<T, I>(rs, cs, indptr, indices, data, l, x, ldx, y, ldy, this->n_threads);
  if (bad >= 0) csr_bad_index<I>(indices, bad, cs);
}

template <class T, class I>
void CsrOp<T, I>::bwd(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const {
  const std::int64_t bad =
      csr_matmat_t<T, I>(rs, cs, indptr, indices, data, l, x, ldx, y, ldy, this->n_threads);
  if (bad >= 0) csr_bad_index<I>(indices, bad, cs);
}

template <class T, class I>
void CsrOp<T, I>::mm(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const {
  if (tr) bwd(l, x, ldx, y, ldy);
  else fwd(l, x, ldx, y, ldy);
}

template <class T, class I>
void CsrOp<T, I>::mm_t(std::int64_t l, const T* x, std::int64_t ldx, T* y,
                       std::int64_t ldy) const {
  if (tr) fwd(l, x, ldx, y, ldy);
  else bwd(l, x, ldx, y, ldy);
}

template <class T, class I>
void CsrOp<T, I>::columns(const std::int64_t* cols, std::int64_t b, T* y) const {
  const std::int64_t m_ = this->m;
  std::fill(y, y + m_ * b, T(0));
  if (tr) {  // the operator's column j is stored row j
    for (std::int64_t t = 0; t < b; ++t)
      for (auto q = static_cast<std::int64_t>(indptr[cols[t]]);
           q < static_cast<std::int64_t>(indptr[cols[t] + 1]); ++q) {
        const auto i = static_cast<std::int64_t>(indices[q]);
        if (i >= 0 && i < m_) y[i * b + t] += data[q];  // out of range: reported by products
      }
    return;
  }
  pos_.assign(sz(cs), -1);
  for (std::int64_t t = 0; t < b; ++t) pos_[sz(cols[t])] = t;
  for (std::int64_t i = 0; i < rs; ++i)
    for (auto q = static_cast<std::int64_t>(indptr[i]); q < static_cast<std::int64_t>(indptr[i + 1]);
         ++q) {
      const auto j = static_cast<std::int64_t>(indices[q]);
      if (j < 0 || j >= cs) continue;  // reported by the products
      const std::int64_t t = pos_[sz(j)];
      if (t >= 0) y[i * b + t] += data[q];
    }
}

template <class T, class I>
void CsrOp<T, I>::col_sumsq(double* out) const {
  std::fill(out, out + this->n, 0.0);
  for (std::int64_t i = 0; i < rs; ++i)
    for (auto q = static_cast<std::int64_t>(indptr[i]); q < static_cast<std::int64_t>(indptr[i + 1]);
         ++q) {
      const double v = static_cast<double>(data[q]);
      if (tr) {
        out[i] += v * v;
      } else {
        const auto j = static_cast<std::int64_t>(indices[q]);
        if (j >= 0 && j < cs) out[j] += v * v;
      }
    }
}

template <class T, class I>
double CsrOp<T, I>::resid2(std::int64_t k, const T* L, const T* R) const {
  auto fill = [&](std::int64_t r0, std::int64_t r1, T* d) {
    std::fill(d, d + (r1 - r0) * cs, T(0));
    for (std::int64_t i = r0; i < r1; ++i)
      for (auto p = static_cast<std::int64_t>(indptr[i]); p < static_cast<std::int64_t>(indptr[i + 1]);
           ++p)
        d[(i - r0) * cs + static_cast<std::int64_t>(indices[p])] += data[p];
  };
  if (!tr) return resid2_rows<T>(rs, cs, k, L, R, fill);
  const auto Lt = transposed_copy(this->m, k, L), Rt = transposed_copy(k, this->n, R);
  return resid2_rows<T>(rs, cs, k, Rt.data(), Lt.data(), fill);
}

template <class T>
std::vector<T> transposed_copy(std::int64_t r, std::int64_t c, const T* x) {
  std::vector<T> t(sz(r * c));
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j) t[sz(j * r + i)] = x[i * c + j];
  return t;
}
template std::vector<float> transposed_copy(std::int64_t, std::int64_t, const float*);
template std::vector<double> transposed_copy(std::int64_t, std::int64_t, const double*);

template <class T>
void dense_matvec(std::int64_t m, std::int64_t n, const T* a, const T* x, T* y, bool use_blas) {
  if (m == 0) return;
  if (!use_blas || n == 0) {
    row_dots<T>(m, n, a, n, x, y);
    return;
  }
  blas::gemv<T>('T', to_int(n), to_int(m), T(1), a, to_int(n), x, 1, T(0), y, 1);
}
template void dense_matvec<float>(std::int64_t, std::int64_t, const float*, const float*, float*, bool);
template void dense_matvec<double>(std::int64_t, std::int64_t, const double*, const double*, double*, bool);

template class LinOp<float>;
template class LinOp<double>;
template class DenseOp<float>;
template class DenseOp<double>;
template class CsrOp<float, std::int32_t>;
template class CsrOp<float, std::int64_t>;
template class CsrOp<double, std::int32_t>;
template class CsrOp<double, std::int64_t>;

}  // namespace wp
