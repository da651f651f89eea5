#include "weightpress/csr.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "weightpress/errors.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"

#ifdef WP_X86_DISPATCH
#include <immintrin.h>
#endif

namespace wp {

template <class I>
void csr_check_indptr(std::int64_t rows, const I* indptr, std::int64_t nnz) {
  if (indptr[0] != 0)
    throw ShapeError("malformed CSR: indptr[0] must be 0, got " + std::to_string(indptr[0]));
  for (std::int64_t i = 0; i < rows; ++i)
    if (indptr[i + 1] < indptr[i])
      throw ShapeError("malformed CSR: indptr is not monotone (indptr[" + std::to_string(i + 1) +
                       "] = " + std::to_string(indptr[i + 1]) + " < indptr[" + std::to_string(i) +
                       "] = " + std::to_string(indptr[i]) + ")");
  if (static_cast<std::int64_t>(indptr[rows]) != nnz)
    throw ShapeError("malformed CSR: indptr[-1] = " + std::to_string(indptr[rows]) +
                     " but indices/data have length " + std::to_string(nnz));
}

namespace {
template <class I>
inline bool out_of_range(I j, std::int64_t cols) {
  using U = std::make_unsigned_t<I>;
  return static_cast<std::uint64_t>(static_cast<U>(j)) >= static_cast<std::uint64_t>(cols) || j < 0;
}

// Row range of part p of n_parts, balanced on nnz + rows (depends only on the matrix).
template <class I>
std::int64_t part_start(std::int64_t rows, const I* indptr, std::int64_t p, std::int64_t n_parts) {
  if (p <= 0) return 0;
  if (p >= n_parts) return rows;
  const std::int64_t nnz = indptr[rows];
  const std::int64_t target = (nnz + rows) * p / n_parts;
  // smallest i with indptr[i] + i >= target
  std::int64_t lo = 0, hi = rows;
  while (lo < hi) {
    std::int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<std::int64_t>(indptr[mid]) + mid < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

inline void note_bad(std::atomic<std::int64_t>& first_bad, std::int64_t p) {
  std::int64_t cur = first_bad.load(std::memory_order_relaxed);
  while ((cur < 0 || p < cur) && !first_bad.compare_exchange_weak(cur, p)) {
  }
}
}  // namespace

template <class I>
void csr_check(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
               std::int64_t nnz, int n_threads) {
  csr_check_indptr(rows, indptr, nnz);
  std::atomic<std::int64_t> first_bad{-1};
  const int nt = threads_for(nnz, n_threads, kGrainIndexScan);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t p = 0; p < nnz; ++p)
    if (out_of_range(indices[p], cols)) note_bad(first_bad, p);
  const std::int64_t b = first_bad.load();
  if (b >= 0) csr_bad_index<I>(indices, b, cols);
}

template <class I>
void csr_bad_index(const I* indices, std::int64_t bad, std::int64_t cols) {
  throw ShapeError("malformed CSR: column index " + std::to_string(indices[bad]) + " at position " +
                   std::to_string(bad) + " is out of range for " + std::to_string(cols) +
                   " columns");
}

// ---- Row kernels ---------------------------------------------------------------------------
// Written once as always-inline templates and compiled three times: for AVX-512, for AVX2 and
// for the baseline ISA, chosen at run time (weightpress/isa.hpp). The AVX levels contract
// a*b+c into FMA; results are identical for any thread count on one machine, and may differ
// in the last bit between CPUs with and without FMA.
namespace {

// Position of the first out-of-range index in [p0, p1), or -1. A branch-free OR over the row
// (vectorizes), then a scan only when something is wrong.
template <class I>
WP_INLINE std::int64_t row_bad(const I* __restrict indices, std::int64_t p0, std::int64_t p1,
                               std::int64_t cols) {
  using U = std::make_unsigned_t<I>;
  const U ucols = static_cast<U>(cols);
  U any = 0;
  for (std::int64_t p = p0; p < p1; ++p) any |= static_cast<U>(static_cast<U>(indices[p]) >= ucols);
  if (!any) return -1;
  for (std::int64_t p = p0; p < p1; ++p)
    if (static_cast<U>(indices[p]) >= ucols) return p;
  return -1;
}

// GCC/Clang vector extensions: a vector of N lanes of T, lowered to whatever registers the
// target has (zmm, ymm or xmm). Written this way, the tile loops vectorize across the columns
// of X with the accumulators in registers, never across the row (which would need an
// in-order reduction, since the summation order is fixed).
template <class T, int N>
struct Vec {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <class T, int N>
using vec_t = typename Vec<T, N>::type;

// (Out-parameters, not return values: vectors passed by value trip GCC's psABI warning.)
template <int W, class T>
WP_INLINE void load(vec_t<T, W>& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}
template <int W, class T>
WP_INLINE void store(T* p, const vec_t<T, W>& v) {
  std::memcpy(p, &v, sizeof v);
}

// Lanes in one 64-byte vector: the widest register the dispatch targets.
template <class T>
constexpr int kLanes = 64 / static_cast<int>(sizeof(T));

// y[c0 .. c0+W) of one row: the accumulators stay in registers for the whole row (W > kLanes
// is held as W / kLanes native vectors, which GCC keeps in registers; one wide generic vector
// would live on the stack).
template <int W, class T, class I>
WP_INLINE void gather_tile(std::int64_t p0, std::int64_t p1, const I* __restrict indices,
                           const T* __restrict data, const T* __restrict x, std::int64_t ldx,
                           std::int64_t c0, T* __restrict yr) {
  if constexpr (W == 1) {
    T acc = T(0);
    for (std::int64_t p = p0; p < p1; ++p)
      acc += data[p] * x[static_cast<std::int64_t>(indices[p]) * ldx + c0];
    yr[c0] = acc;
  } else {
    constexpr int L = W < kLanes<T> ? W : kLanes<T>;
    constexpr int NV = W / L;
    // Independent accumulator chains (entry p feeds chain p % C) so that at least 4 FMAs are
    // in flight: one chain per vector would wait on the FMA latency at every entry. The
    // chains are summed in a fixed order at the end: deterministic.
    constexpr int C = NV >= 4 ? 1 : 4 / NV;
    vec_t<T, L> acc[C][NV], xv;
    for (int c = 0; c < C; ++c)
      for (int v = 0; v < NV; ++v) acc[c][v] = vec_t<T, L>{};
    std::int64_t p = p0;
    for (; p + C <= p1; p += C) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const T* xr = x + static_cast<std::int64_t>(indices[p + c]) * ldx + c0;
        const T a = data[p + c];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          load<L>(xv, xr + v * L);
          acc[c][v] += a * xv;
        }
      }
    }
    for (int c = 0; p < p1; ++p, ++c) {
      const T* xr = x + static_cast<std::int64_t>(indices[p]) * ldx + c0;
      const T a = data[p];
      for (int v = 0; v < NV; ++v) {
        load<L>(xv, xr + v * L);
        acc[c][v] += a * xv;
      }
    }
    for (int c = 1; c < C; ++c)
      for (int v = 0; v < NV; ++v) acc[0][v] += acc[c][v];
    for (int v = 0; v < NV; ++v) store<L>(yr + c0 + v * L, acc[0][v]);
  }
}

// out(j, c0 .. c0+W) += a * x(i, c0 .. c0+W) for the entries of row i (Aᵀ X).
template <int W, class T, class I>
WP_INLINE void scatter_tile(std::int64_t p0, std::int64_t p1, const I* __restrict indices,
                            const T* __restrict data, const T* __restrict xr, std::int64_t c0,
                            T* __restrict out, std::int64_t ld) {
  if constexpr (W == 1) {
    const T xv = xr[c0];
    for (std::int64_t p = p0; p < p1; ++p)
      out[static_cast<std::int64_t>(indices[p]) * ld + c0] += data[p] * xv;
  } else {
    constexpr int L = W < kLanes<T> ? W : kLanes<T>;
    constexpr int NV = W / L;
    vec_t<T, L> xt[NV], ov;
    for (int v = 0; v < NV; ++v) load<L>(xt[v], xr + c0 + v * L);
    for (std::int64_t p = p0; p < p1; ++p) {
      T* o = out + static_cast<std::int64_t>(indices[p]) * ld + c0;
      const T a = data[p];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        load<L>(ov, o + v * L);
        ov += a * xt[v];
        store<L>(o + v * L, ov);
      }
    }
  }
}

// Tiles of 256 bytes, then halves down to one column: any k, each output element summed
// over the row in index order whatever the tiling.
template <class T>
constexpr int kTile = 256 / static_cast<int>(sizeof(T));

template <int W, class T, class I>
WP_INLINE void gather_row(std::int64_t p0, std::int64_t p1, const I* indices, const T* data,
                          const T* x, std::int64_t ldx, std::int64_t k, T* yr, std::int64_t c0) {
  for (; c0 + W <= k; c0 += W) gather_tile<W>(p0, p1, indices, data, x, ldx, c0, yr);
  if constexpr (W > 1) gather_row<W / 2>(p0, p1, indices, data, x, ldx, k, yr, c0);
}

template <int W, class T, class I>
WP_INLINE void scatter_row(std::int64_t p0, std::int64_t p1, const I* indices, const T* data,
                           const T* xr, std::int64_t k, T* out, std::int64_t ld, std::int64_t c0) {
  for (; c0 + W <= k; c0 += W) scatter_tile<W>(p0, p1, indices, data, xr, c0, out, ld);
  if constexpr (W > 1) scatter_row<W / 2>(p0, p1, indices, data, xr, k, out, ld, c0);
}

// Column panels of X: all rows against one panel of `W` columns, so the panel (cols × W)
// stays in L2 while A streams once per panel.
template <int W, class T, class I>
WP_INLINE std::int64_t gather_panels(std::int64_t r0, std::int64_t r1, const I* indptr,
                                     const I* indices, const T* data, std::int64_t k, const T* x,
                                     std::int64_t ldx, T* y, std::int64_t ldy) {
  std::int64_t c0 = 0;
  for (; c0 + W <= k; c0 += W)
    for (std::int64_t i = r0; i < r1; ++i)
      gather_tile<W>(indptr[i], indptr[i + 1], indices, data, x, ldx, c0, y + i * ldy);
  return c0;
}

// Rows [r0, r1) of Y = A X. Returns the first bad index position, or -1.
template <class T, class I>
WP_INLINE std::int64_t gather_rows(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                   const I* indptr, const I* indices, const T* data,
                                   std::int64_t k, const T* x, std::int64_t ldx, T* y,
                                   std::int64_t ldy) {
  if (k == 1) {
    for (std::int64_t i = r0; i < r1; ++i) {
      const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
      if (p1 - p0 < 8) {  // short rows (very sparse matrices): a plain loop, checked inline
        T s = T(0);
        for (std::int64_t p = p0; p < p1; ++p) {
          const std::int64_t j = static_cast<std::int64_t>(indices[p]);
          if (static_cast<std::uint64_t>(j) >= static_cast<std::uint64_t>(cols)) return p;
          s += data[p] * x[j * ldx];
        }
        y[i * ldy] = s;
        continue;
      }
      const std::int64_t bad = row_bad(indices, p0, p1, cols);  // fused: the row is in L1 now
      if (bad >= 0) return bad;
      // SpMV: 8 interleaved partial sums (fixed by position: deterministic)
      vec_t<T, 8> acc = {}, xv = {}, dv;
      std::int64_t p = p0;
      for (; p + 8 <= p1; p += 8) {
        for (int l = 0; l < 8; ++l) xv[l] = x[static_cast<std::int64_t>(indices[p + l]) * ldx];
        load<8>(dv, data + p);
        acc += dv * xv;
      }
      for (int l = 0; p + l < p1; ++l)
        acc[l] += data[p + l] * x[static_cast<std::int64_t>(indices[p + l]) * ldx];
      y[i * ldy] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    return -1;
  }
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t bad = row_bad(indices, indptr[i], indptr[i + 1], cols);
    if (bad >= 0) return bad;
  }
  // X small enough for L2: each row sweeps all of its columns. Otherwise panels of X that fit.
  constexpr std::int64_t kL2 = std::int64_t(1) << 20;
  const std::int64_t row_bytes = cols * static_cast<std::int64_t>(sizeof(T));
  std::int64_t c0 = 0;
  if (row_bytes * k > kL2) {
    constexpr int L = kLanes<T>;
    if (row_bytes * 4 * L <= kL2) c0 = gather_panels<4 * L>(r0, r1, indptr, indices, data, k, x, ldx, y, ldy);
    else if (row_bytes * 2 * L <= kL2) c0 = gather_panels<2 * L>(r0, r1, indptr, indices, data, k, x, ldx, y, ldy);
    else c0 = gather_panels<L>(r0, r1, indptr, indices, data, k, x, ldx, y, ldy);
  }
  if (c0 < k)
    for (std::int64_t i = r0; i < r1; ++i)
      gather_row<kTile<T>>(indptr[i], indptr[i + 1], indices, data, x, ldx, k, y + i * ldy, c0);
  return -1;
}

template <class T, class I>
WP_INLINE std::int64_t scatter_rows(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                    const I* indptr, const I* indices, const T* data,
                                    std::int64_t k, const T* x, std::int64_t ldx, T* out,
                                    std::int64_t ld) {
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
    const std::int64_t bad = row_bad(indices, p0, p1, cols);
    if (bad >= 0) return bad;
    scatter_row<kTile<T>>(p0, p1, indices, data, x + i * ldx, k, out, ld, 0);
  }
  return -1;
}

// SpMV (k = 1, unit stride) with hardware gathers of x: the AVX-512 and AVX2 row loops.
// Per row: the index range check (fused: the row's indices are then in L1), V-lane partial
// sums in two chains (entry p feeds lane p % V of chain (p / V) % 2), summed in a fixed order;
// the tail is added lane-wise in order. The order depends only on the row and the ISA.
#ifdef WP_X86_DISPATCH
template <class T, class I>
WP_TARGET_V4 std::int64_t spmv_v4(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                  const I* __restrict indptr, const I* __restrict indices,
                                  const T* __restrict data, const T* __restrict x,
                                  T* __restrict y, std::int64_t ldy) {
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
    const std::int64_t bad = row_bad(indices, p0, p1, cols);
    if (bad >= 0) return bad;
    std::int64_t p = p0;
    T s = T(0);
    if constexpr (std::is_same_v<T, float> && sizeof(I) == 4) {
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      for (; p + 32 <= p1; p += 32) {
        const __m512i j0 = _mm512_loadu_si512(indices + p), j1 = _mm512_loadu_si512(indices + p + 16);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p), _mm512_i32gather_ps(j0, x, 4), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p + 16), _mm512_i32gather_ps(j1, x, 4), a1);
      }
      if (p + 16 <= p1) {
        const __m512i j0 = _mm512_loadu_si512(indices + p);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p), _mm512_i32gather_ps(j0, x, 4), a0);
        p += 16;
      }
      s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    } else if constexpr (std::is_same_v<T, float>) {  // int64 indices: 8 lanes
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (; p + 16 <= p1; p += 16) {
        const __m512i j0 = _mm512_loadu_si512(indices + p), j1 = _mm512_loadu_si512(indices + p + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p), _mm512_i64gather_ps(j0, x, 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p + 8), _mm512_i64gather_ps(j1, x, 4), a1);
      }
      const __m256 a = _mm256_add_ps(a0, a1);
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      s = (h[0] + h[1]) + (h[2] + h[3]);
    } else {  // double: 8 lanes
      __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
      for (; p + 16 <= p1; p += 16) {
        __m512d x0, x1;
        if constexpr (sizeof(I) == 4) {
          x0 = _mm512_i32gather_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p)), x, 8);
          x1 = _mm512_i32gather_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p + 8)), x, 8);
        } else {
          x0 = _mm512_i64gather_pd(_mm512_loadu_si512(indices + p), x, 8);
          x1 = _mm512_i64gather_pd(_mm512_loadu_si512(indices + p + 8), x, 8);
        }
        a0 = _mm512_fmadd_pd(_mm512_loadu_pd(data + p), x0, a0);
        a1 = _mm512_fmadd_pd(_mm512_loadu_pd(data + p + 8), x1, a1);
      }
      s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    }
    for (; p < p1; ++p) s += data[p] * x[static_cast<std::int64_t>(indices[p])];
    y[i * ldy] = s;
  }
  return -1;
}

template <class T, class I>
WP_TARGET_V3 std::int64_t spmv_v3(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                  const I* __restrict indptr, const I* __restrict indices,
                                  const T* __restrict data, const T* __restrict x,
                                  T* __restrict y, std::int64_t ldy) {
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
    const std::int64_t bad = row_bad(indices, p0, p1, cols);
    if (bad >= 0) return bad;
    std::int64_t p = p0;
    T s = T(0);
    if constexpr (std::is_same_v<T, float> && sizeof(I) == 4) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (; p + 16 <= p1; p += 16) {
        const __m256i j0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p));
        const __m256i j1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p + 8));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p), _mm256_i32gather_ps(x, j0, 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p + 8), _mm256_i32gather_ps(x, j1, 4), a1);
      }
      const __m256 a = _mm256_add_ps(a0, a1);
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      s = (h[0] + h[1]) + (h[2] + h[3]);
    } else if constexpr (std::is_same_v<T, double> && sizeof(I) == 4) {
      __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
      for (; p + 8 <= p1; p += 8) {
        const __m128i j0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(indices + p));
        const __m128i j1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(indices + p + 4));
        a0 = _mm256_fmadd_pd(_mm256_loadu_pd(data + p), _mm256_i32gather_pd(x, j0, 8), a0);
        a1 = _mm256_fmadd_pd(_mm256_loadu_pd(data + p + 4), _mm256_i32gather_pd(x, j1, 8), a1);
      }
      const __m256d a = _mm256_add_pd(a0, a1);
      s = (a[0] + a[1]) + (a[2] + a[3]);
    } else {
      return gather_rows<T, I>(i, r1, cols, indptr, indices, data, 1, x, 1, y, ldy);
    }
    for (; p < p1; ++p) s += data[p] * x[static_cast<std::int64_t>(indices[p])];
    y[i * ldy] = s;
  }
  return -1;
}
#endif

#define WP_ROWS_ARGS                                                                        \
  std::int64_t r0, std::int64_t r1, std::int64_t cols, const I *indptr, const I *indices, \
      const T *data, std::int64_t k, const T *x, std::int64_t ldx, T *y, std::int64_t ldy
#define WP_ROWS_PASS r0, r1, cols, indptr, indices, data, k, x, ldx, y, ldy

template <bool Scatter, class T, class I>
std::int64_t rows_base(WP_ROWS_ARGS) {
  if constexpr (Scatter) return scatter_rows<T, I>(WP_ROWS_PASS);
  else return gather_rows<T, I>(WP_ROWS_PASS);
}
#ifdef WP_X86_DISPATCH
template <bool Scatter, class T, class I>
WP_TARGET_V3 std::int64_t rows_v3(WP_ROWS_ARGS) {
  if constexpr (!Scatter)
    if (k == 1 && ldx == 1) return spmv_v3<T, I>(r0, r1, cols, indptr, indices, data, x, y, ldy);
  if constexpr (Scatter) return scatter_rows<T, I>(WP_ROWS_PASS);
  else return gather_rows<T, I>(WP_ROWS_PASS);
}
template <bool Scatter, class T, class I>
WP_TARGET_V4 std::int64_t rows_v4(WP_ROWS_ARGS) {
  if constexpr (!Scatter)
    if (k == 1 && ldx == 1) return spmv_v4<T, I>(r0, r1, cols, indptr, indices, data, x, y, ldy);
  if constexpr (Scatter) return scatter_rows<T, I>(WP_ROWS_PASS);
  else return gather_rows<T, I>(WP_ROWS_PASS);
}
#endif

template <bool Scatter, class T, class I>
std::int64_t rows(WP_ROWS_ARGS) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return rows_v4<Scatter, T, I>(WP_ROWS_PASS);
    case Isa::kV3: return rows_v3<Scatter, T, I>(WP_ROWS_PASS);
    case Isa::kBase: break;
  }
#endif
  return rows_base<Scatter, T, I>(WP_ROWS_PASS);
}

}  // namespace

// Serial cost of the products in units of 1/40 ns, fitted to measurements (benchmarks/
// bench_sparse.py "thread grain": 1 thread, float32, in cache, best of 200 on the 2-core
// development machine): A X took 0.31 ns per entry at k = 1, 0.57 at k = 8 and 0.9-1.0 at
// k = 32, i.e. 0.025·(12 + k) ns; Aᵀ X 0.72-0.82, 0.8-1.1 and 2.6-2.9 ns, i.e.
// 0.025·(28 + 2.6k) ns. (The former grain counted (nnz + rows)·k units against 2^15, which
// sent a k = 32 product of 1 µs to two threads and kept a k = 1 product of 10 µs on one.)
// A region pays off once its serial time is about 14 µs (parallel.hpp): kGrainCost.
inline std::int64_t gather_cost(std::int64_t nnz, std::int64_t rows, std::int64_t k) {
  return nnz * (12 + k) + rows * k;
}
inline std::int64_t scatter_cost(std::int64_t nnz, std::int64_t cols, std::int64_t k) {
  return nnz * (28 + 26 * k / 10) + cols * k;
}
constexpr std::int64_t kGrainCost = 14 * 1000 * 40;

template <class T, class I>
std::int64_t csr_matmat(std::int64_t rows_, std::int64_t cols, const I* indptr, const I* indices,
                        const T* data, std::int64_t k, const T* x, std::int64_t ldx, T* y,
                        std::int64_t ldy, int n_threads) {
  std::atomic<std::int64_t> first_bad{-1};
  const std::int64_t nnz = indptr[rows_];
  if (k == 0) return -1;
  // Tiny products run on the calling thread: waking a team costs more than the work.
  const int nt = threads_for(gather_cost(nnz, rows_, k), n_threads, kGrainCost);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), nth = team_size();
    const std::int64_t r0 = part_start(rows_, indptr, tid, nth);
    const std::int64_t r1 = part_start(rows_, indptr, tid + 1, nth);
    const std::int64_t bad = rows<false, T, I>(r0, r1, cols, indptr, indices, data, k, x, ldx, y, ldy);
    if (bad >= 0) note_bad(first_bad, bad);
  }
  return first_bad.load();
}

template <class T, class I>
std::int64_t csr_matmat_t(std::int64_t rows_, std::int64_t cols, const I* indptr, const I* indices,
                          const T* data, std::int64_t k, const T* x, std::int64_t ldx, T* y,
                          std::int64_t ldy, int n_threads) {
  std::atomic<std::int64_t> first_bad{-1};
  const std::int64_t nnz = indptr[rows_];
  // Rows are split into blocks (a number that depends on the problem only, never on
  // n_threads), each scatters into its own copy of Y, and the copies are summed in block
  // order. Few blocks: each copy of Y must stay cache-friendly, and the reduction costs
  // n_blocks * cols * k against the scatter's nnz * k. At most 32 MiB of extra copies.
  const std::int64_t out_elems = std::max<std::int64_t>(cols * k, 1);
  std::int64_t n_blocks = std::clamp<std::int64_t>(nnz / std::max<std::int64_t>(4 * cols, 1), 1, 4);
  n_blocks = std::min<std::int64_t>(
      n_blocks, 1 + (std::int64_t(32) << 20) / (out_elems * std::int64_t(sizeof(T))));
  if (scatter_cost(nnz, cols, k) <= kGrainCost) n_blocks = 1;
  std::vector<T> buf(static_cast<size_t>((n_blocks - 1) * out_elems));
  const int nt = static_cast<int>(std::min<std::int64_t>(n_threads, n_blocks));
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    T* out = (b == 0) ? y : buf.data() + (b - 1) * out_elems;
    const std::int64_t ld = (b == 0) ? ldy : k;
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t c = 0; c < k; ++c) out[j * ld + c] = T(0);
    const std::int64_t r0 = part_start(rows_, indptr, b, n_blocks);
    const std::int64_t r1 = part_start(rows_, indptr, b + 1, n_blocks);
    const std::int64_t bad = rows<true, T, I>(r0, r1, cols, indptr, indices, data, k, x, ldx, out, ld);
    if (bad >= 0) note_bad(first_bad, bad);
  }
  if (n_blocks > 1 && first_bad.load() < 0) {
    const int nr = threads_for(out_elems * n_blocks, n_threads, kGrainElementwise);
#pragma omp parallel for num_threads(nr) schedule(static) if (nr > 1)
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t b = 1; b < n_blocks; ++b) {
        const T* src = buf.data() + (b - 1) * out_elems + j * k;
        T* dst = y + j * ldy;
        for (std::int64_t c = 0; c < k; ++c) dst[c] += src[c];
      }
  }
  return first_bad.load();
}

#define WP_CSR_INST_I(I)                                                                   \
  template void csr_check_indptr<I>(std::int64_t, const I*, std::int64_t);                \
  template void csr_check<I>(std::int64_t, std::int64_t, const I*, const I*, std::int64_t, int); \
  template void csr_bad_index<I>(const I*, std::int64_t, std::int64_t);
#define WP_CSR_INST(T, I)                                                                  \
  template std::int64_t csr_matmat<T, I>(std::int64_t, std::int64_t, const I*, const I*,   \
                                         const T*, std::int64_t, const T*, std::int64_t, T*, \
                                         std::int64_t, int);                               \
  template std::int64_t csr_matmat_t<T, I>(std::int64_t, std::int64_t, const I*, const I*, \
                                           const T*, std::int64_t, const T*, std::int64_t, \
                                           T*, std::int64_t, int);
WP_CSR_INST_I(std::int32_t)
WP_CSR_INST_I(std::int64_t)
WP_CSR_INST(float, std::int32_t)
WP_CSR_INST(float, std::int64_t)
WP_CSR_INST(double, std::int32_t)
WP_CSR_INST(double, std::int64_t)

}  // namespace wp
