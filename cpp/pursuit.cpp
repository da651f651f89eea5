// Batch orthogonal matching pursuit. See pursuit.hpp.
//
// Per signal the pursuit keeps V = G[:, I] L⁻ᵀ (n×k, L the Cholesky factor of G[I, I]) one
// column per step, so that
//   L[k, :k] = V[j_k, :k]            (row j_k of V; no triangular solve),
//   V[:, k]  = (G[:, j_k] − V[:, :k] L[k, :k]ᵀ) / L[k, k],
//   z_k      = (Dᵀy)[j_k] − L[k, :k]·z[:k]) / L[k, k]     (z = L⁻¹ (Dᵀy)_I),
//   Dᵀr     −= V[:, k] z_k,           ‖r‖² −= z_k²,
// and x_I = L⁻ᵀ z at the end. A step reads one column of G and the thread's own V, so the
// Gram matrix (often larger than the caches) is streamed once per selected atom.
#include "weightpress/pursuit.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "weightpress/blas.hpp"
#include "weightpress/errors.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"
#include "weightpress/scratch.hpp"

#ifdef WP_X86_DISPATCH
#include <immintrin.h>
#endif

namespace wp {

namespace {
template <class T>
void mirror_upper(std::int64_t n, T* G) {
  // Column-major upper triangle: G[i + j n], i <= j. Mirrored into the lower one eight
  // destination columns at a time: for each later row j, the eight contiguous entries
  // G[i0:i0+8, j] go to row j of columns i0..i0+7 (eight write streams advancing together).
  // Measured 2.3-3.1x faster than 32×32 tiles (n = 1024: 1.72 -> 0.56 ms; n = 2048: 7.7 -> 3.4 ms,
  // one thread), whose mirror was 13% of a 100-signal call at 256×1024.
  constexpr std::int64_t W = 8;
  for (std::int64_t i0 = 0; i0 < n; i0 += W) {
    const std::int64_t i1 = std::min(n, i0 + W);
    for (std::int64_t j = i0; j < i1; ++j)  // the diagonal block
      for (std::int64_t i = i0; i < j; ++i) G[j + i * n] = G[i + j * n];
    if (i1 - i0 == W) {
      T* __restrict c0 = G + i0 * n;
      for (std::int64_t j = i1; j < n; ++j) {
        const T* __restrict src = G + i0 + j * n;
        for (std::int64_t u = 0; u < W; ++u) c0[j + u * n] = src[u];
      }
    } else {
      for (std::int64_t j = i1; j < n; ++j)
        for (std::int64_t i = i0; i < i1; ++i) G[j + i * n] = G[i + j * n];
    }
  }
}
}  // namespace

template <class T>
void omp_gram(std::int64_t m, std::int64_t n, const T* D, T* G) {
  if (n == 0) return;
  if (m == 0) {
    std::fill(G, G + n * n, T(0));
    return;
  }
  const auto bn = blas::to_int(n, "n_atoms"), bm = blas::to_int(m, "n_features");
  blas::syrk<T>('U', 'N', bn, bm, T(1), D, bn, T(0), G, bn);
  mirror_upper<T>(n, G);
}

namespace {
// omp_gram for a caller that runs BLAS on one thread: strips of 256 columns of the upper
// triangle, G[0:j1, j0:j1] = Dᵀ D[:, j0:j1], one gemm each on weightpress's threads (fixed
// strips: the bits do not depend on the thread count), then the mirror.
template <class T>
void omp_gram_strips(std::int64_t m, std::int64_t n, const T* D, T* G, int n_threads) {
  if (n == 0) return;
  if (m == 0) {
    std::fill(G, G + n * n, T(0));
    return;
  }
  constexpr std::int64_t W = 256;
  const std::int64_t ns = (n + W - 1) / W;
  const int nt = static_cast<int>(std::min<std::int64_t>(ns, threads_for(m * n * n / 2, n_threads, std::int64_t(1) << 22)));
  const auto bn = blas::to_int(n, "n_atoms"), bm = blas::to_int(m, "n_features");
  FirstError err;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (std::int64_t t = ns - 1; t >= 0; --t)  // the largest strips first
    err.run([&] {
      const std::int64_t j0 = t * W, j1 = std::min(n, j0 + W);
      blas::gemm<T>('N', 'T', blas::to_int(j1, "n_atoms"), blas::to_int(j1 - j0, "n_atoms"), bm, T(1), D,
                    bn, D + j0, bn, T(0), G + j0 * n, bn);
    });
  err.rethrow();
  mirror_upper<T>(n, G);
}
}  // namespace

// Below this many columns, DᵀX is a hand-written single pass over D: OpenBLAS would wake its
// threads for a product this thin, and on a busy machine that costs more than the product.
constexpr std::int64_t kSmallBlock = 8;

// a·b + c for the OMP loops below: one fused multiply-add where the copy's target has FMA
// (F: the AVX2 and AVX-512 copies, and portable builds on targets with it, e.g. aarch64), so
// those give the same bits; a product then a sum in the baseline x86-64 copy, whose CPUs
// have no FMA instruction (libm's fma, software there, made a one-signal call 4x slower even on
// this AVX-512 machine). The baseline's results differ from the others' in the last bits.
#if defined(__FMA__) || defined(__aarch64__) || !(defined(__x86_64__) || defined(__i386__))
constexpr bool kPortableFma = true;
#else
constexpr bool kPortableFma = false;
#endif
template <bool F, class T>
WP_INLINE T madd(T a, T b, T c) {
  if constexpr (F) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// out (b×n, row-major: row t is Dᵀx_t) = (DᵀX)ᵀ for row-major D (m×n) and X (m×b, row stride
// ldx); with sq, also sq[j] = ‖d_j‖² (the column norms in the same pass over D: a separate pass
// was 9% of a one-signal call). Every entry is one chain of fused multiply-adds over the rows in
// order, from 0: out[t, j] = fma(D[m−1, j], X[m−1, t], … fma(D[0, j], X[0, t], 0)). fma rounds
// once by definition, so the chain gives the same bits on every FMA level (madd) and for any
// blocking of rows or columns; the code below blocks them differently per level and per b.
//
// small_atb_rows: columns [0, n) of D and out, row strides ldd and ldo. Rows of D four at a
// time, each entry's four fmas in one go (out loaded and stored once per four rows), in
// column chunks that keep the b rows of out and four rows of D within L1.
template <class T, bool F>
WP_INLINE void small_atb_rows(std::int64_t m, std::int64_t n, std::int64_t ldd, std::int64_t b,
                              const T* D, const T* X, std::int64_t ldx, T* out, std::int64_t ldo,
                              T* sq) {
  // The sums build up in a local block whose rows are `ld` apart, not ldo: with n a multiple
  // of 512 values, the b rows of out and the four rows of D all fell in the same L1 sets
  // (and each store 4K-aliased the next loads of D).
  const std::int64_t pad = 64 / static_cast<std::int64_t>(sizeof(T));
  // Columns of D in chunks whose b rows of out and four rows of D stay within 32 KiB (L1):
  // with eight signals, out (8·n) spilled to L2 on every four rows, and eight Gram columns
  // cost as much as eight passes over D.
  const std::int64_t J = std::max<std::int64_t>(
      64, (std::int64_t(32768) / ((b + 4 + (sq ? 1 : 0)) * static_cast<std::int64_t>(sizeof(T)))) / 16 * 16);
  const std::int64_t ld = J + pad;
  std::vector<T> acc(static_cast<std::size_t>((b + 1) * ld));
  T* const qa = acc.data() + b * ld;  // the column norms' row
  for (std::int64_t j0 = 0; j0 < n; j0 += J) {
    const std::int64_t w = std::min(J, n - j0);
    std::fill(acc.begin(), acc.end(), T(0));
    std::int64_t i0 = 0;
    for (; i0 + 4 <= m; i0 += 4) {
      const T* __restrict d0 = D + i0 * ldd + j0;
      const T* __restrict d1 = d0 + ldd;
      const T* __restrict d2 = d1 + ldd;
      const T* __restrict d3 = d2 + ldd;
      for (std::int64_t t = 0; t < b; ++t) {
        const T x0 = X[i0 * ldx + t], x1 = X[(i0 + 1) * ldx + t], x2 = X[(i0 + 2) * ldx + t],
                x3 = X[(i0 + 3) * ldx + t];
        T* __restrict o = acc.data() + t * ld;
        for (std::int64_t j = 0; j < w; ++j)
          o[j] = madd<F>(d3[j], x3, madd<F>(d2[j], x2, madd<F>(d1[j], x1, madd<F>(d0[j], x0, o[j]))));
      }
      if (sq) {
        T* __restrict q = qa;
        for (std::int64_t j = 0; j < w; ++j)
          q[j] = madd<F>(d3[j], d3[j], madd<F>(d2[j], d2[j], madd<F>(d1[j], d1[j], madd<F>(d0[j], d0[j], q[j]))));
      }
    }
    for (std::int64_t i = i0; i < m; ++i) {
      const T* __restrict di = D + i * ldd + j0;
      for (std::int64_t t = 0; t < b; ++t) {
        const T xv = X[i * ldx + t];
        T* __restrict o = acc.data() + t * ld;
        for (std::int64_t j = 0; j < w; ++j) o[j] = madd<F>(di[j], xv, o[j]);
      }
      if (sq) {
        T* __restrict q = qa;
        for (std::int64_t j = 0; j < w; ++j) q[j] = madd<F>(di[j], di[j], q[j]);
      }
    }
    for (std::int64_t t = 0; t < b; ++t)
      std::copy(acc.data() + t * ld, acc.data() + t * ld + w, out + t * ldo + j0);
    if (sq) std::copy(qa, qa + w, sq + j0);
  }
}

// A register tile: B signals × C columns of out, rows [i0, i1) of D fused onto it (from 0 when
// FIRST, else onto what out holds). B·C/8 accumulators stay in registers (AVX-512: 32 of
// them), D's C values of a row are loaded once for all B signals.
template <class T, int B, int C, bool FIRST, bool F = true>
WP_INLINE void atb_tile(std::int64_t i0, std::int64_t i1, std::int64_t n, const T* D, const T* X,
                        std::int64_t ldx, std::int64_t j, T* out) {
  T acc[B][C];
  for (int t = 0; t < B; ++t)
    for (int u = 0; u < C; ++u) acc[t][u] = FIRST ? T(0) : out[t * n + j + u];
  for (std::int64_t i = i0; i < i1; ++i) {
    const T* __restrict d = D + i * n + j;
    for (int t = 0; t < B; ++t) {
      const T x = X[i * ldx + t];
      for (int u = 0; u < C; ++u) acc[t][u] = madd<F>(d[u], x, acc[t][u]);
    }
  }
  for (int t = 0; t < B; ++t)
    for (int u = 0; u < C; ++u) out[t * n + j + u] = acc[t][u];
}

#ifdef WP_X86_DISPATCH
// atb_tile for the AVX2 copy, in intrinsics: GCC kept the portable tile's accumulators in
// memory there (a load and a store per fma; 2.4x the time of OpenBLAS's gemm). C = three ymm
// registers of a row, B ≤ 4 signals (12 accumulators of 16 registers). _mm256_fmadd is the
// same single rounding as std::fma, so the same bits as the other copies.
template <class T>
struct Ymm;
template <>
struct Ymm<double> {
  using V = __m256d;
  static constexpr int W = 4;
};
template <>
struct Ymm<float> {
  using V = __m256;
  static constexpr int W = 8;
};
WP_TARGET_V3 WP_INLINE __m256d ymm_load(const double* p) { return _mm256_loadu_pd(p); }
WP_TARGET_V3 WP_INLINE __m256 ymm_load(const float* p) { return _mm256_loadu_ps(p); }
WP_TARGET_V3 WP_INLINE void ymm_store(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
WP_TARGET_V3 WP_INLINE void ymm_store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
WP_TARGET_V3 WP_INLINE __m256d ymm_set1(double x) { return _mm256_set1_pd(x); }
WP_TARGET_V3 WP_INLINE __m256 ymm_set1(float x) { return _mm256_set1_ps(x); }
WP_TARGET_V3 WP_INLINE __m256d ymm_fma(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
WP_TARGET_V3 WP_INLINE __m256 ymm_fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }

template <class T, int B, bool FIRST>
WP_TARGET_V3 void atb_tile_v3(std::int64_t i0, std::int64_t i1, std::int64_t n,
                                        const T* D, const T* X, std::int64_t ldx,
                                        std::int64_t j, T* out) {
  using V = typename Ymm<T>::V;
  constexpr int W = Ymm<T>::W;
  V acc[B][3];
  for (int t = 0; t < B; ++t)
    for (int u = 0; u < 3; ++u)
      acc[t][u] = FIRST ? ymm_set1(T(0)) : ymm_load(out + t * n + j + u * W);
  for (std::int64_t i = i0; i < i1; ++i) {
    const T* d = D + i * n + j;
    const V d0 = ymm_load(d), d1 = ymm_load(d + W), d2 = ymm_load(d + 2 * W);
    for (int t = 0; t < B; ++t) {
      const V x = ymm_set1(X[i * ldx + t]);
      acc[t][0] = ymm_fma(d0, x, acc[t][0]);
      acc[t][1] = ymm_fma(d1, x, acc[t][1]);
      acc[t][2] = ymm_fma(d2, x, acc[t][2]);
    }
  }
  for (int t = 0; t < B; ++t)
    for (int u = 0; u < 3; ++u) ymm_store(out + t * n + j + u * W, acc[t][u]);
}
#endif

// The tile of B signals (the AVX2 copy's in intrinsics when Y2).
template <class T, int B, int C, bool FIRST, bool Y2>
WP_INLINE void atb_tile_any(std::int64_t i0, std::int64_t i1, std::int64_t n, const T* D,
                            const T* X, std::int64_t ldx, std::int64_t j, T* out) {
#ifdef WP_X86_DISPATCH
  if constexpr (Y2) {
    static_assert(C == 3 * Ymm<T>::W, "three ymm of a row");
    atb_tile_v3<T, B, FIRST>(i0, i1, n, D, X, ldx, j, out);
    return;
  }
#endif
  if constexpr (!Y2) atb_tile<T, B, C, FIRST>(i0, i1, n, D, X, ldx, j, out);
}

// atb_tile for bs < B signals (the last group of a wide block).
template <class T, int B, int C, bool FIRST, bool Y2>
WP_INLINE void atb_tile_var(std::int64_t bs, std::int64_t i0, std::int64_t i1, std::int64_t n,
                            const T* D, const T* X, std::int64_t ldx, std::int64_t j, T* out) {
  if constexpr (B > 1) {
    if (bs == B - 1) return atb_tile_any<T, B - 1, C, FIRST, Y2>(i0, i1, n, D, X, ldx, j, out);
    return atb_tile_var<T, B - 1, C, FIRST, Y2>(bs, i0, i1, n, D, X, ldx, j, out);
  }
}

// Columns [0, n − n mod C) by register tiles, in panels of 32 rows (the panel's D, 32 rows ×
// n, stays in L2 while the tiles walk across it; one strip down all m rows missed every
// cache). Returns the columns done.
template <class T, int B, int C>
WP_INLINE std::int64_t atb_tiled(std::int64_t m, std::int64_t n, std::int64_t ld, const T* D,
                                 const T* X, std::int64_t ldx, T* out) {
  constexpr std::int64_t P = 32;
  const std::int64_t nt = n - n % C;
  for (std::int64_t i0 = 0; i0 < m; i0 += P) {
    const std::int64_t i1 = std::min(m, i0 + P);
    for (std::int64_t j = 0; j < nt; j += C) {
      if (i0 == 0)
        atb_tile<T, B, C, true>(i0, i1, ld, D, X, ldx, j, out);
      else
        atb_tile<T, B, C, false>(i0, i1, ld, D, X, ldx, j, out);
    }
  }
  return nt;
}

// Any number of columns of X (b > 8: the lazy path's blocks of Gram columns) by register tiles
// of B signals: per panel of 32 rows (in L2), each group of B columns walks the tiles across
// it, so D is read from memory once, not once per group. Every entry is still the chain over
// the rows in order from 0 (the same bits as the row pass). Returns the columns done.
template <class T, int B, int C, bool Y2 = false>
WP_INLINE std::int64_t atb_tiled_wide(std::int64_t m, std::int64_t n, std::int64_t ld, std::int64_t b,
                                      const T* D, const T* X, std::int64_t ldx, T* out) {
  constexpr std::int64_t P = 32;
  const std::int64_t nt = n - n % C;
  const std::int64_t rb = b % B;  // the last group's columns (when not B)
  for (std::int64_t i0 = 0; i0 < m; i0 += P) {
    const std::int64_t i1 = std::min(m, i0 + P);
    for (std::int64_t t0 = 0; t0 < b; t0 += B) {
      const T* Xg = X + t0;
      T* og = out + t0 * ld;
      if (t0 + B <= b) {
        for (std::int64_t j = 0; j < nt; j += C) {
          if (i0 == 0)
            atb_tile_any<T, B, C, true, Y2>(i0, i1, ld, D, Xg, ldx, j, og);
          else
            atb_tile_any<T, B, C, false, Y2>(i0, i1, ld, D, Xg, ldx, j, og);
        }
      } else {
        for (std::int64_t j = 0; j < nt; j += C) {
          if (i0 == 0)
            atb_tile_var<T, B, C, true, Y2>(rb, i0, i1, ld, D, Xg, ldx, j, og);
          else
            atb_tile_var<T, B, C, false, Y2>(rb, i0, i1, ld, D, Xg, ldx, j, og);
        }
      }
    }
  }
  return nt;
}

// TILE: the AVX-512 copy takes four to eight signals by register tiles (one signal at 256×1024,
// k = 8: its pass of eight Gram columns 172 -> 71 µs, measured alone); fewer signals and the
// norms are bound by reading D, which the row pass does as well. The other levels have 16
// vector registers: the row pass throughout.
template <class T, bool TILE, bool F, bool WIDE2 = false>
WP_INLINE void small_atb_impl(std::int64_t m, std::int64_t n, std::int64_t ld, std::int64_t b,
                              const T* D, const T* X, std::int64_t ldx, T* out, T* sq) {
  std::int64_t j0 = 0;
  if constexpr (TILE) {  // (the other copies do not instantiate the tiles)
    constexpr int C = 64 / static_cast<int>(sizeof(T)) * 3;  // three zmm registers of a row
    if (!sq && m > 0 && b > kSmallBlock) {
      j0 = atb_tiled_wide<T, 8, C>(m, n, ld, b, D, X, ldx, out);
    } else if (!sq && m > 0) {
      switch (b) {
        case 4: j0 = atb_tiled<T, 4, C>(m, n, ld, D, X, ldx, out); break;
        case 5: j0 = atb_tiled<T, 5, C>(m, n, ld, D, X, ldx, out); break;
        case 6: j0 = atb_tiled<T, 6, C>(m, n, ld, D, X, ldx, out); break;
        case 7: j0 = atb_tiled<T, 7, C>(m, n, ld, D, X, ldx, out); break;
        case 8: j0 = atb_tiled<T, 8, C>(m, n, ld, D, X, ldx, out); break;
        default: break;
      }
    }
  }
  if constexpr (WIDE2) {  // AVX2: 16 registers, tiles of 4 signals × two ymm of a row
    if (!sq && m > 0 && b > kSmallBlock)
      j0 = atb_tiled_wide<T, 4, 32 / static_cast<int>(sizeof(T)) * 3, true>(m, n, ld, b, D, X, ldx, out);
  }
  if (j0 < n)
    small_atb_rows<T, F>(m, n - j0, ld, b, D + j0, X, ldx, out ? out + j0 : nullptr, ld,
                      sq ? sq + j0 : nullptr);
}

// Per ISA (weightpress/isa.hpp): the same chains of fmas, so the same bits everywhere (the
// baseline x86-64 copy multiplies then adds: madd above).
#ifdef WP_X86_DISPATCH
template <class T>
WP_TARGET_V4 void small_atb_v4(std::int64_t m, std::int64_t n, std::int64_t ld, std::int64_t b,
                               const T* D, const T* X, std::int64_t ldx, T* out, T* sq) {
  small_atb_impl<T, true, true>(m, n, ld, b, D, X, ldx, out, sq);
}
template <class T>
WP_TARGET_V3 void small_atb_v3(std::int64_t m, std::int64_t n, std::int64_t ld, std::int64_t b,
                               const T* D, const T* X, std::int64_t ldx, T* out, T* sq) {
  small_atb_impl<T, false, true, true>(m, n, ld, b, D, X, ldx, out, sq);
}
#endif

// Columns [0, n) of D (row stride ld) and of out (the same stride).
template <class T>
void small_atb_cols(std::int64_t m, std::int64_t n, std::int64_t ld, std::int64_t b, const T* D,
                    const T* X, std::int64_t ldx, T* out, T* sq) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return small_atb_v4<T>(m, n, ld, b, D, X, ldx, out, sq);
    case Isa::kV3: return small_atb_v3<T>(m, n, ld, b, D, X, ldx, out, sq);
    case Isa::kBase: break;
  }
#endif
  small_atb_impl<T, false, kPortableFma>(m, n, ld, b, D, X, ldx, out, sq);
}

// All n columns, in fixed strips of 384 (a multiple of every tile width) spread over
// n_threads: every entry is the same chain of fmas in any strip, so the bits do not depend on
// the thread count. One thread did all of it: the lazy path's blocks of Gram columns were 60%
// of a one-signal call at 512×2048, k = 32, with the second core idle.
template <class T>
void small_atb(std::int64_t m, std::int64_t n, std::int64_t b, const T* D, const T* X,
               std::int64_t ldx, T* out, T* sq = nullptr, int n_threads = 1) {
  constexpr std::int64_t W = 384;
  const std::int64_t ns = (n + W - 1) / W;
  const int nt = static_cast<int>(std::min<std::int64_t>(
      ns, threads_for(m * n * std::max<std::int64_t>(b, 1), n_threads, std::int64_t(1) << 20)));
  if (nt <= 1) {
    small_atb_cols<T>(m, n, n, b, D, X, ldx, out, sq);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (std::int64_t t = 0; t < ns; ++t) {
    const std::int64_t c = t * W;
    small_atb_cols<T>(m, std::min(W, n - c), n, b, D + c, X, ldx, out ? out + c : nullptr,
                      sq ? sq + c : nullptr);
  }
}

// Whether small_atb has register tiles for blocks of more than kSmallBlock columns (AVX2,
// AVX-512). The lazy path's blocks of Gram columns go to it then, not to gemm: OpenBLAS packs
// all of D for each such product, and at 512×2048, k = 32 (one signal: 45 columns in three
// gemms) the packing was 27% of the call. Elsewhere (the baseline copy, other architectures)
// gemm stays.
inline bool wide_tiles() {
#ifdef WP_X86_DISPATCH
  return isa_level() != Isa::kBase;
#else
  return false;
#endif
}

template <class T>
void omp_correlate(std::int64_t m, std::int64_t n, std::int64_t N, const T* D, const T* Y,
                   std::int64_t ldy, T* C, int n_threads) {
  if (n == 0 || N == 0) return;
  if (m == 0) {
    std::fill(C, C + n * N, T(0));
    return;
  }
  if (N <= kSmallBlock) {  // a few signals: one pass over D, no BLAS thread wake-up
    small_atb<T>(m, n, N, D, Y, ldy, C, nullptr, n_threads);
    return;
  }
  const auto bn = blas::to_int(n, "n_atoms"), bm = blas::to_int(m, "n_features"),
             bN = blas::to_int(N, "n_signals"), bl = blas::to_int(ldy, "n_signals");
  blas::gemm<T>('N', 'T', bn, bN, bm, T(1), D, bn, Y, bl, T(0), C, bn);
}

template <class T>
void col_sqnorms(std::int64_t m, std::int64_t N, const T* Y, std::int64_t ldy, T* out,
                 int n_threads) {
  constexpr std::int64_t B = 256;  // columns per task: fixed, so the result is too
  const std::int64_t nb = (N + B - 1) / B;
  const int nt = threads_for(m * N, n_threads, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t s0 = b * B, s1 = std::min(N, s0 + B);
    for (std::int64_t s = s0; s < s1; ++s) out[s] = T(0);
    for (std::int64_t i = 0; i < m; ++i) {
      const T* row = Y + i * ldy;
      for (std::int64_t s = s0; s < s1; ++s) out[s] += row[s] * row[s];
    }
  }
}

namespace {

// V's layout: row tiles of R = 512 bytes of rows (64 doubles, 128 floats), each tile holding
// its rows of all kmax columns one after another (column i of tile t at V + t·R·kmax + i·R), so
// that a step reads the k columns of a tile as one contiguous run.
template <class T>
constexpr std::int64_t kTileRows = 512 / static_cast<std::int64_t>(sizeof(T));
template <class T>
WP_INLINE std::int64_t vtiles(std::int64_t n) {
  return (n + kTileRows<T> - 1) / kTileRows<T>;
}
// V[j, i]
template <class T>
WP_INLINE std::int64_t vat(std::int64_t j, std::int64_t i, std::int64_t kmax) {
  constexpr std::int64_t R = kTileRows<T>;
  return (j / R) * R * kmax + i * R + j % R;
}

template <class T>
struct Workspace {
  std::vector<T> V, a, z, L, x;
  std::vector<std::int64_t> sel, ord;
  std::vector<T> w;  // 1/G_jj, zeroed while atom j is in use
  // Zeroed, as fresh vectors are: a workspace reused from an earlier call (LazyPool) is too.
  void init(std::int64_t n, std::int64_t kmax) {
    V.assign(static_cast<std::size_t>(vtiles<T>(n) * kTileRows<T> * kmax), T(0));
    a.assign(static_cast<std::size_t>(n), T(0));
    z.assign(static_cast<std::size_t>(kmax), T(0));
    L.assign(static_cast<std::size_t>(kmax * kmax), T(0));
    x.assign(static_cast<std::size_t>(kmax), T(0));
    sel.assign(static_cast<std::size_t>(kmax), 0);
    ord.assign(static_cast<std::size_t>(kmax), 0);
  }
};

// The lazy path's buffers (workspaces, Gram columns), kept by the calling thread from one call
// to the next while they take at most kKeepBytes: one signal at 512×2048, k = 32 touches
// 2 MB of fresh pages per call, and their page faults were 13% of its time (a run with
// glibc's trimming and mmap thresholds raised, measured against one without).
template <class T>
struct LazyPool {
  std::vector<Workspace<T>> wss;
  std::vector<T> cache, buf;
};
template <class T>
LazyPool<T>& lazy_pool() {
  thread_local LazyPool<T> pool;
  return pool;
}

// v = (g − Σ_{i<k} V_i w_i) * inv into column k of V, then a −= v zk; returns max_j a_j² sw_j
// over the updated a (the next selection's score, fused into this pass: sw_j = 1/G_jj, 0 for
// used atoms). S rows at a time (S/lanes accumulators in registers: 8 on every level), all k
// columns of the tile onto them, then the update of a: g, v, a and sw are read once per step,
// and V's tile as one run (it was: V in column blocks of eight, v loaded and stored once per
// block, then a second pass for a). Each v_r is g_r − V_r0 w_0 − V_r1 w_1 − …, one fused
// multiply-add per term in order of i (the same bits for any blocking of the rows, and on
// every FMA level: madd above).
template <class T, bool F, int S>
WP_INLINE T new_column_impl(std::int64_t n, std::int64_t k, std::int64_t kmax,
                            const T* __restrict g, T* __restrict V, const T* __restrict w, T inv,
                            T zk, T* __restrict a, const T* __restrict sw) {
  constexpr std::int64_t R = kTileRows<T>;
  static_assert(R % S == 0, "sub-blocks divide a tile");
  T mxl[S] = {};
  std::int64_t r0 = 0;
  for (; r0 + R <= n; r0 += R) {
    T* tile = V + (r0 / R) * R * kmax;
    for (std::int64_t s0 = 0; s0 < R; s0 += S) {
      T acc[S];
      for (int u = 0; u < S; ++u) acc[u] = g[r0 + s0 + u];
      for (std::int64_t i = 0; i < k; ++i) {
        const T* __restrict vp = tile + i * R + s0;
        const T wi = -w[i];
        for (int u = 0; u < S; ++u) acc[u] = madd<F>(vp[u], wi, acc[u]);
      }
      T* __restrict vk = tile + k * R + s0;
      T* __restrict ap = a + r0 + s0;
      const T* __restrict sp = sw + r0 + s0;
      for (int u = 0; u < S; ++u) {
        const T vr = acc[u] * inv;
        vk[u] = vr;
        const T ar = madd<F>(vr, -zk, ap[u]);
        ap[u] = ar;
        const T sc = ar * ar * sp[u];
        mxl[u] = mxl[u] > sc ? mxl[u] : sc;
      }
    }
  }
  T mx = T(0);
  if (r0 < n) {  // the last, partial tile: row by row
    T* tile = V + (r0 / R) * R * kmax;
    for (std::int64_t r = r0; r < n; ++r) {
      const std::int64_t u = r - r0;
      T acc = g[r];
      for (std::int64_t i = 0; i < k; ++i) acc = madd<F>(tile[i * R + u], -w[i], acc);
      const T vr = acc * inv;
      tile[k * R + u] = vr;
      const T ar = madd<F>(vr, -zk, a[r]);
      a[r] = ar;
      const T sc = ar * ar * sw[r];
      mx = mx > sc ? mx : sc;
    }
  }
  for (int u = 0; u < S; ++u) mx = mx > mxl[u] ? mx : mxl[u];
  return mx;
}

// The first j with a_j² w_j == mx (the maximum, computed by the same expression), -1 if none.
template <class T>
WP_INLINE std::int64_t first_with_impl(std::int64_t n, const T* __restrict a,
                                       const T* __restrict w, T mx) {
  if (!(mx > T(0))) return -1;
  for (std::int64_t j = 0; j < n; ++j)
    if (a[j] * a[j] * w[j] == mx) return j;
  return -1;  // unreachable unless NaN
}

// The same search a vector at a time (a compare mask, its lowest bit): the scalar scan, with
// its exit test on every element and GCC vectorising none of it, was 9% of a 10 000-signal
// call at 512×2048, k = 32 (half of n per step on average). The same products, so the same j.
#ifdef WP_X86_DISPATCH
template <class T>
WP_TARGET_V4 std::int64_t first_with_v4(std::int64_t n, const T* __restrict a,
                                        const T* __restrict w, T mx) {
  if (!(mx > T(0))) return -1;
  std::int64_t j = 0;
  if constexpr (std::is_same_v<T, double>) {
    const __m512d m = _mm512_set1_pd(mx);
    for (; j + 8 <= n; j += 8) {
      const __m512d x = _mm512_loadu_pd(a + j);
      const __m512d sc = _mm512_mul_pd(_mm512_mul_pd(x, x), _mm512_loadu_pd(w + j));
      const unsigned h = _mm512_cmp_pd_mask(sc, m, _CMP_EQ_OQ);
      if (h) return j + __builtin_ctz(h);
    }
  } else {
    const __m512 m = _mm512_set1_ps(mx);
    for (; j + 16 <= n; j += 16) {
      const __m512 x = _mm512_loadu_ps(a + j);
      const __m512 sc = _mm512_mul_ps(_mm512_mul_ps(x, x), _mm512_loadu_ps(w + j));
      const unsigned h = _mm512_cmp_ps_mask(sc, m, _CMP_EQ_OQ);
      if (h) return j + __builtin_ctz(h);
    }
  }
  for (; j < n; ++j)
    if (a[j] * a[j] * w[j] == mx) return j;
  return -1;
}
template <class T>
WP_TARGET_V3 std::int64_t first_with_v3(std::int64_t n, const T* __restrict a,
                                        const T* __restrict w, T mx) {
  if (!(mx > T(0))) return -1;
  std::int64_t j = 0;
  if constexpr (std::is_same_v<T, double>) {
    const __m256d m = _mm256_set1_pd(mx);
    for (; j + 4 <= n; j += 4) {
      const __m256d x = _mm256_loadu_pd(a + j);
      const __m256d sc = _mm256_mul_pd(_mm256_mul_pd(x, x), _mm256_loadu_pd(w + j));
      const int h = _mm256_movemask_pd(_mm256_cmp_pd(sc, m, _CMP_EQ_OQ));
      if (h) return j + __builtin_ctz(static_cast<unsigned>(h));
    }
  } else {
    const __m256 m = _mm256_set1_ps(mx);
    for (; j + 8 <= n; j += 8) {
      const __m256 x = _mm256_loadu_ps(a + j);
      const __m256 sc = _mm256_mul_ps(_mm256_mul_ps(x, x), _mm256_loadu_ps(w + j));
      const int h = _mm256_movemask_ps(_mm256_cmp_ps(sc, m, _CMP_EQ_OQ));
      if (h) return j + __builtin_ctz(static_cast<unsigned>(h));
    }
  }
  for (; j < n; ++j)
    if (a[j] * a[j] * w[j] == mx) return j;
  return -1;
}
#endif

// argmax_j a_j² w_j (w_j = 1/G_jj for unused atoms, 0 for used or zero ones) with a positive
// score, first index on ties; -1 if none. Pass 1 takes the maximum in L independent lanes (a
// vector max), pass 2 finds its first occurrence.
template <class T>
WP_INLINE T max_score_impl(std::int64_t n, const T* __restrict a, const T* __restrict w) {
  constexpr int L = 16;
  T acc[L] = {};
  std::int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) {
      const T v = a[j + l] * a[j + l] * w[j + l];
      acc[l] = acc[l] > v ? acc[l] : v;
    }
  T mx = T(0);
  for (; j < n; ++j) {
    const T v = a[j] * a[j] * w[j];
    mx = mx > v ? mx : v;
  }
  for (int l = 0; l < L; ++l) mx = mx > acc[l] ? mx : acc[l];
  return mx;
}

// The two hot loops, compiled for AVX-512, AVX2-era CPUs and the baseline, chosen at run time
// (weightpress/isa.hpp). Elementwise loops only and no FP contraction under -std=c++17, so
// every variant gives bit-identical results.
#ifdef WP_X86_DISPATCH
#define WP_VARIANTS(T)                                                                         \
  WP_TARGET_V4 T new_column_v4(std::int64_t n, std::int64_t k, std::int64_t kmax,            \
                               const T* __restrict g, T* __restrict V, const T* __restrict w,  \
                               T inv, T zk, T* __restrict a, const T* __restrict sw) {         \
    return new_column_impl<T, true, 512 / sizeof(T)>(n, k, kmax, g, V, w, inv, zk, a, sw);     \
  }                                                                                            \
  WP_TARGET_V3 T new_column_v3(std::int64_t n, std::int64_t k, std::int64_t kmax,            \
                               const T* __restrict g, T* __restrict V, const T* __restrict w,  \
                               T inv, T zk, T* __restrict a, const T* __restrict sw) {         \
    return new_column_impl<T, true, 256 / sizeof(T)>(n, k, kmax, g, V, w, inv, zk, a, sw);     \
  }                                                                                            \
  WP_TARGET_V4 T max_score_v4(std::int64_t n, const T* __restrict a, const T* __restrict w) {  \
    return max_score_impl<T>(n, a, w);                                                         \
  }                                                                                            \
  WP_TARGET_V3 T max_score_v3(std::int64_t n, const T* __restrict a, const T* __restrict w) {  \
    return max_score_impl<T>(n, a, w);                                                         \
  }
WP_VARIANTS(float)
WP_VARIANTS(double)
#undef WP_VARIANTS
#endif

template <class T>
T new_column(std::int64_t n, std::int64_t k, std::int64_t kmax, const T* __restrict g,
             T* __restrict V, const T* __restrict w, T inv, T zk, T* __restrict a,
             const T* __restrict sw) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return new_column_v4(n, k, kmax, g, V, w, inv, zk, a, sw);
    case Isa::kV3: return new_column_v3(n, k, kmax, g, V, w, inv, zk, a, sw);
    case Isa::kBase: break;
  }
#endif
  return new_column_impl<T, kPortableFma, 128 / sizeof(T)>(n, k, kmax, g, V, w, inv, zk, a, sw);
}

template <class T>
std::int64_t first_with(std::int64_t n, const T* __restrict a, const T* __restrict w, T mx) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return first_with_v4(n, a, w, mx);
    case Isa::kV3: return first_with_v3(n, a, w, mx);
    case Isa::kBase: break;
  }
#endif
  return first_with_impl<T>(n, a, w, mx);
}

template <class T>
std::int64_t select_atom(std::int64_t n, const T* __restrict a, const T* __restrict w) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return first_with_v4<T>(n, a, w, max_score_v4(n, a, w));
    case Isa::kV3: return first_with_v3<T>(n, a, w, max_score_v3(n, a, w));
    case Isa::kBase: break;
  }
#endif
  return first_with_impl<T>(n, a, w, max_score_impl<T>(n, a, w));
}

// One signal's pursuit, step by step: start, then select/add until done, then finish. The
// workspace holds everything that changes (V, Dᵀr, z, L, the used-atom weights).
template <class T>
struct Pursuit {
  std::int64_t n, kmax;
  double tol;
  const T* invdiag;
  Workspace<T>* ws;
  const T* alpha0 = nullptr;
  T r2 = T(0);
  std::int64_t k = 0;
  bool done = false;
  T mx_next = T(-1);  // the next selection's maximum score, from the last update (-1: none)

  void start(const T* a0, T ynorm2) {
    alpha0 = a0;
    r2 = ynorm2;
    k = 0;
    mx_next = T(-1);
    done = tol >= 0 && static_cast<double>(r2) <= tol;
    if (!done) std::copy(a0, a0 + n, ws->a.data());
  }
  // The next atom by the OMP rule, or -1 (then done).
  std::int64_t select() {
    if (done || k >= kmax) {
      done = true;
      return -1;
    }
    const std::int64_t best = mx_next >= T(0) ? first_with(n, ws->a.data(), ws->w.data(), mx_next)
                                              : select_atom(n, ws->a.data(), ws->w.data());
    if (best < 0) done = true;  // residual orthogonal to every atom
    return best;
  }
  // Adds atom j with Gram column g = G[:, j]; stops instead if j is dependent (pivot test).
  // gjj = G[j, j]. On the last step (k + 1 == kmax) g is not read and may be null: the new
  // column of V and the update of Dᵀr serve only the next selection, and there is none (the
  // lazy path then computes no Gram column: one pass over D, 10% of one signal at 512×2048,
  // k = 32; in the Gram path one step's update in kmax).
  void add(std::int64_t j, const T* g, T gjj) {
    const T ptol = T(1000) * std::numeric_limits<T>::epsilon();
    T* V = ws->V.data();
    T* z = ws->z.data();
    T* Lk = ws->L.data() + k * kmax;
    T s2 = T(0), dot = T(0);
    for (std::int64_t i = 0; i < k; ++i) {
      const T w = V[vat<T>(j, i, kmax)];
      Lk[i] = w;
      s2 += w * w;
      dot += w * z[i];
    }
    const T piv = gjj - s2;
    if (!(piv > ptol * gjj)) {  // dependent on the chosen atoms (or NaN)
      done = true;
      return;
    }
    const T lkk = std::sqrt(piv);
    Lk[k] = lkk;
    const T zk = (alpha0[j] - dot) / lkk;
    ws->w[static_cast<std::size_t>(j)] = T(0);
    if (k + 1 < kmax)
      mx_next = new_column(n, k, kmax, g, V, Lk, T(1) / lkk, zk, ws->a.data(), ws->w.data());
    z[k] = zk;
    ws->sel[static_cast<std::size_t>(k)] = j;
    r2 -= zk * zk;
    ++k;
    if (tol >= 0 && static_cast<double>(r2) <= tol) done = true;
  }
  // x = L⁻ᵀ z (back substitution), sorted by atom index, into this signal's output row.
  void finish(std::int64_t* supp, T* coef, std::int64_t* count, T* resid2) {
    const T* L = ws->L.data();
    const T* z = ws->z.data();
    T* x = ws->x.data();
    std::int64_t* sel = ws->sel.data();
    for (std::int64_t i = k - 1; i >= 0; --i) {
      T sum = z[i];
      for (std::int64_t j = i + 1; j < k; ++j) sum -= L[j * kmax + i] * x[j];
      x[i] = sum / L[i * kmax + i];
    }
    std::int64_t* ord = ws->ord.data();
    std::iota(ord, ord + k, std::int64_t(0));
    std::sort(ord, ord + k, [&](std::int64_t p, std::int64_t q) { return sel[p] < sel[q]; });
    for (std::int64_t i = 0; i < k; ++i) {
      supp[i] = sel[ord[i]];
      coef[i] = x[ord[i]];
      ws->w[static_cast<std::size_t>(sel[i])] = invdiag[sel[i]];
    }
    for (std::int64_t i = k; i < kmax; ++i) {
      supp[i] = -1;
      coef[i] = T(0);
    }
    *count = k;
    *resid2 = std::max(r2, T(0));
  }
};

template <class T>
std::vector<T> inverse_diag(std::int64_t n, const T* d, std::int64_t stride) {
  std::vector<T> inv(static_cast<std::size_t>(n));
  for (std::int64_t j = 0; j < n; ++j) {
    const T v = d[j * stride];
    inv[static_cast<std::size_t>(j)] = v > T(0) ? T(1) / v : T(0);
  }
  return inv;
}

}  // namespace

template <class T>
void omp_batch(std::int64_t n, std::int64_t N, const T* G, const T* C, const T* ynorm2,
               std::int64_t kmax, double tol, std::int64_t* supp, T* coef, std::int64_t* count,
               T* resid2, int n_threads) {
  if (kmax < 1 || kmax > n) throw ShapeError("omp: kmax must be in [1, n_atoms]");
  const std::vector<T> invdiag = inverse_diag<T>(n, G, n + 1);
  // Threads only for batches worth waking them for (about N·n·kmax flops per call).
  const int nt = threads_for(N * n * kmax, n_threads, std::int64_t(1) << 21);
  std::vector<Workspace<T>> wss(static_cast<std::size_t>(nt));  // allocated serially
  for (auto& w : wss) {
    w.init(n, kmax);
    w.w = invdiag;
  }
  FirstError err;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1)
  for (std::int64_t s = 0; s < N; ++s)
    err.run([&] {
      Pursuit<T> p{n, kmax, tol, invdiag.data(), &wss[static_cast<std::size_t>(thread_id())]};
      p.start(C + s * n, ynorm2[s]);
      while (!p.done) {
        const std::int64_t j = p.select();
        if (j < 0) break;
        p.add(j, G + j * n, G[j + j * n]);
      }
      p.finish(supp + s * kmax, coef + s * kmax, count + s, resid2 + s);
    });
  err.rethrow();
}

namespace {
// ‖d_j‖² of the n columns of a row-major m×n D: small_atb's fused pass with no signals (the
// same fused multiply-adds over the rows in order, so the same bits as with signals).
template <class T>
void atom_sqnorms(std::int64_t m, std::int64_t n, const T* D, T* out, int n_threads) {
  small_atb<T>(m, n, 0, D, nullptr, 0, nullptr, out, n_threads);
}
}  // namespace

template <class T>
void omp_lazy(std::int64_t m, std::int64_t n, std::int64_t N, const T* D, const T* C,
              const T* ynorm2, std::int64_t kmax, double tol, std::int64_t* supp, T* coef,
              std::int64_t* count, T* resid2, int n_threads, const T* sqnorms) {
  if (kmax < 1 || kmax > n) throw ShapeError("omp: kmax must be in [1, n_atoms]");
  std::vector<T> diag;
  if (!sqnorms) {
    diag.resize(static_cast<std::size_t>(n));
    atom_sqnorms<T>(m, n, D, diag.data(), n_threads);
    sqnorms = diag.data();
  }
  const std::vector<T> invdiag = inverse_diag<T>(n, sqnorms, 1);
  const std::int64_t max_cols = std::min(n, N * kmax + 64);
  const auto bytes = static_cast<std::size_t>(N * n * (kmax + 2) + max_cols * n + m * 64) * sizeof(T);
  LazyPool<T> own;
  LazyPool<T>& pool = bytes <= kKeepBytes ? lazy_pool<T>() : own;
  std::vector<Workspace<T>>& wss = pool.wss;
  wss.resize(static_cast<std::size_t>(N));
  std::vector<Pursuit<T>> ps;
  ps.reserve(static_cast<std::size_t>(N));
  for (std::int64_t s = 0; s < N; ++s) {
    auto& w = wss[static_cast<std::size_t>(s)];
    w.init(n, kmax);
    w.w = invdiag;
    ps.push_back(Pursuit<T>{n, kmax, tol, invdiag.data(), &w});
    ps.back().start(C + s * n, ynorm2[s]);
  }
  std::vector<T>& cache = pool.cache;                          // Gram columns, n each
  std::vector<T>& buf = pool.buf;
  cache.clear();
  // at most 64 more columns than atoms chosen: reserved, so that growing never copies
  cache.reserve(static_cast<std::size_t>(max_cols * n));
  std::vector<std::int64_t> cand;
  std::vector<std::int64_t> slot(static_cast<std::size_t>(n), -1), want(static_cast<std::size_t>(N));
  std::int64_t ncache = 0;
  // Rounds are short (N·n·k work at most): threads only when a round is worth it.
  const int nt = threads_for(N * n * kmax, n_threads, std::int64_t(1) << 20);
  const auto bn = blas::to_int(n, "n_atoms"), bm = blas::to_int(m, "n_features");
  for (std::int64_t round = 0; round < kmax; ++round) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t s = 0; s < N; ++s) want[static_cast<std::size_t>(s)] = ps[static_cast<std::size_t>(s)].select();
    std::vector<std::int64_t> fresh;  // atoms wanted this round whose column is not cached
    for (std::int64_t j : want)
      if (j >= 0 && slot[static_cast<std::size_t>(j)] < 0) {
        slot[static_cast<std::size_t>(j)] = ncache + static_cast<std::int64_t>(fresh.size());
        fresh.push_back(j);
      }
    if (fresh.empty() && std::all_of(want.begin(), want.end(), [](std::int64_t j) { return j < 0; }))
      break;
    // The last step (every signal still going has k = round) reads no Gram column
    // (Pursuit::add), only G[j, j]: the column norms give it with the same bits as our own
    // kernels' column would (the same fma chain), so the columns are not computed where those
    // kernels would have computed them (the block below has min(64, N) columns at most), and
    // are where gemm would have.
    const bool last = round == kmax - 1 && (wide_tiles() || std::min<std::int64_t>(64, N) <= kSmallBlock);
    if (last) {
      const T* cp = cache.data();
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (std::int64_t s = 0; s < N; ++s) {
        const std::int64_t j = want[static_cast<std::size_t>(s)];
        if (j < 0) continue;
        const std::int64_t sl = slot[static_cast<std::size_t>(j)];
        const T* g = sl < ncache ? cp + sl * n : nullptr;
        ps[static_cast<std::size_t>(s)].add(j, nullptr, g ? g[j] : sqnorms[j]);
      }
      break;
    }
    // Columns per block when a round needs any: as many as the steps the signals have left,
    // N·(kmax − round), up to 64 (each costs m·n; a round that finds its atom cached costs
    // nothing). Measured on one thread, one signal, against the former rule (2·kmax up to 64
    // from kmax = 16, none below): 512×2048 k = 32 went from 128 columns in 2 gemms to 45 in
    // 3, 6.2 -> 3.5-3.7 ms; 256×1024 k = 8 from 8 passes over D to 2 (8 + 3 columns),
    // 440 -> 370 µs; four and sixteen signals alike or faster. (Since then the last round
    // computes none, and blocks of more than 8 are our register tiles, not gemm: 512×2048
    // k = 32 is 44 columns in 2 passes over D.)
    const std::int64_t block = std::min<std::int64_t>(64, N * (kmax - round));
    if (!fresh.empty() && static_cast<std::int64_t>(fresh.size()) < block) {
      // Predicted columns ride along: each signal's uncached atoms of highest score, the ones
      // likeliest to be chosen next (one block of `block` columns reads D once; a column at
      // a time read it once per column).
      const std::int64_t per = (block - static_cast<std::int64_t>(fresh.size()) + N - 1) / N;
      for (std::int64_t s = 0; s < N && static_cast<std::int64_t>(fresh.size()) < block; ++s) {
        if (want[static_cast<std::size_t>(s)] < 0) continue;
        const T* a = wss[static_cast<std::size_t>(s)].a.data();
        const T* w = wss[static_cast<std::size_t>(s)].w.data();
        cand.clear();
        for (std::int64_t j = 0; j < n; ++j)
          if (slot[static_cast<std::size_t>(j)] < 0 && w[j] > T(0)) cand.push_back(j);
        const auto t = std::min<std::int64_t>(per, static_cast<std::int64_t>(cand.size()));
        auto by_score = [&](std::int64_t p, std::int64_t q) {
          const T sp = a[p] * a[p] * w[p], sq = a[q] * a[q] * w[q];
          return sp > sq || (sp == sq && p < q);
        };
        std::partial_sort(cand.begin(), cand.begin() + t, cand.end(), by_score);
        for (std::int64_t i = 0; i < t && static_cast<std::int64_t>(fresh.size()) < block; ++i) {
          const std::int64_t j = cand[static_cast<std::size_t>(i)];
          slot[static_cast<std::size_t>(j)] = ncache + static_cast<std::int64_t>(fresh.size());
          fresh.push_back(j);
        }
      }
    }
    if (!fresh.empty()) {  // G[:, fresh] = Dᵀ D[:, fresh]: one product (tiles or gemm)
      const auto b = static_cast<std::int64_t>(fresh.size());
      buf.resize(static_cast<std::size_t>(m * b));
      cache.resize(static_cast<std::size_t>((ncache + b) * n));
      if (b <= kSmallBlock || wide_tiles()) {
        for (std::int64_t i = 0; i < m; ++i)  // row-major m×b
          for (std::int64_t t = 0; t < b; ++t)
            buf[static_cast<std::size_t>(i * b + t)] = D[i * n + fresh[static_cast<std::size_t>(t)]];
        small_atb<T>(m, n, b, D, buf.data(), b, cache.data() + ncache * n, nullptr, n_threads);
      } else {
        for (std::int64_t i = 0; i < m; ++i)  // column-major m×b
          for (std::int64_t t = 0; t < b; ++t)
            buf[static_cast<std::size_t>(i + t * m)] = D[i * n + fresh[static_cast<std::size_t>(t)]];
        blas::gemm<T>('N', 'N', bn, blas::to_int(b), bm, T(1), D, bn, buf.data(), bm, T(0),
                      cache.data() + ncache * n, bn);
      }
      ncache += b;
    }
    const T* cp = cache.data();
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t s = 0; s < N; ++s) {
      const std::int64_t j = want[static_cast<std::size_t>(s)];
      if (j >= 0) {
        const T* g = cp + slot[static_cast<std::size_t>(j)] * n;
        ps[static_cast<std::size_t>(s)].add(j, g, g[j]);
      }
    }
  }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t s = 0; s < N; ++s)
    ps[static_cast<std::size_t>(s)].finish(supp + s * kmax, coef + s * kmax, count + s, resid2 + s);
}

namespace {
// DᵀY for b signals in blocks of 256 (fixed: the bits do not depend on the thread count), one
// gemm each on weightpress's threads. One gemm of the whole chunk on OpenBLAS's threads left
// them spinning through the pursuit that follows on ours, on the same cores (20% of the
// samples of a 10000-signal call at 512×2048, k = 32, two threads).
template <class T>
void correlate_blocks(std::int64_t m, std::int64_t n, std::int64_t b, const T* D, const T* Y,
                      std::int64_t ldy, T* C, int n_threads) {
  constexpr std::int64_t B = 256;
  const std::int64_t nb = (b + B - 1) / B;
  const int nt = static_cast<int>(std::min<std::int64_t>(nb, threads_for(m * n * b, n_threads, std::int64_t(1) << 22)));
  FirstError err;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (std::int64_t t = 0; t < nb; ++t)
    err.run([&] {
      const std::int64_t s0 = t * B, bs = std::min(B, b - s0);
      omp_correlate<T>(m, n, bs, D, Y + s0, ldy, C + s0 * n, 1);
    });
  err.rethrow();
}

std::int64_t omp_chunk(std::int64_t n, std::int64_t N, std::int64_t chunk) {
  return std::max<std::int64_t>(
      1, chunk > 0 ? chunk
                   : std::min<std::int64_t>(N, std::clamp<std::int64_t>(
                                                   (std::int64_t(1) << 21) / std::max<std::int64_t>(n, 1),
                                                   256, 8192)));
}
}  // namespace

// Few signals: Gram columns on demand beat the full n² Gram matrix (and their lockstep
// workspaces, chunk·n·(kmax + 2) values, stay within ~512 MiB).
bool omp_lazy_path(std::int64_t n, std::int64_t N, std::int64_t kmax, bool have_gram,
                   std::int64_t chunk) {
  const std::int64_t cb = std::min(N, omp_chunk(n, N, chunk));
  return !have_gram && 2 * N * kmax <= n && cb * n * (kmax + 2) <= (std::int64_t(1) << 26);
}

template <class T>
void omp_encode(std::int64_t m, std::int64_t n, std::int64_t N, const T* D, const T* Y,
                std::int64_t ldy, const T* G, const OmpParams& p, std::int64_t* supp, T* coef,
                std::int64_t* count, T* resid2, int n_threads) {
  const std::int64_t kmax = p.kmax;
  if (kmax < 1 || kmax > n) throw ShapeError("omp: n_nonzero must be in [1, n_atoms]");
  if (N == 0) return;
  // Signals go in chunks of 2M correlations DᵀY (chunk × n; 256 to 8192 signals), the buffer
  // reused: page-faulting N·n fresh values took 27% of a 10000-signal call (256×1024, one
  // thread). Not smaller: each chunk alternates a BLAS gemm with an OpenMP region, and with
  // 512-signal chunks the two-thread wall time tripled on a loaded machine (BLAS threads
  // spinning, barriers stalled); 2048-8192 signals measured alike.
  const std::int64_t chunk = omp_chunk(n, N, p.chunk);
  const std::int64_t cb = std::min(N, chunk);
  const bool lazy = omp_lazy_path(n, N, kmax, G != nullptr, p.chunk);
  // DᵀY for a chunk (up to 16 MiB; omp_correlate writes every entry) and the signals' norms.
  Scratch<T> cbuf = scratch<T>(static_cast<std::size_t>(cb * n));
  std::vector<T> nbuf(static_cast<std::size_t>(cb));
  // Not value-initialised: omp_gram writes every entry (zeroing 32 MiB first was 3% of a
  // 100-signal call at 512×2048).
  Scratch<T> gbuf;  // huge pages where the system gives them (weightpress/scratch.hpp)
  if (!G && !lazy) {
    gbuf = scratch<T>(static_cast<std::size_t>(n * n));
    if (N > kSmallBlock)
      omp_gram_strips<T>(m, n, D, gbuf.get(), n_threads);  // (BLAS on one thread: see below)
    else
      omp_gram<T>(m, n, D, gbuf.get());
    G = gbuf.get();
  }
  std::vector<T> sq(lazy ? static_cast<std::size_t>(n) : 0);  // ‖d_j‖² for omp_lazy
  for (std::int64_t s0 = 0; s0 < N; s0 += chunk) {
    const std::int64_t b = std::min(chunk, N - s0);
    if (lazy && s0 == 0 && b <= kSmallBlock)  // DᵀY and the column norms in one pass over D
      small_atb<T>(m, n, b, D, Y, ldy, cbuf.get(), sq.data(), n_threads);
    else if (lazy || b <= kSmallBlock)
      omp_correlate<T>(m, n, b, D, Y + s0, ldy, cbuf.get(), n_threads);
    else
      correlate_blocks<T>(m, n, b, D, Y + s0, ldy, cbuf.get(), n_threads);
    if (lazy && s0 == 0 && b > kSmallBlock) atom_sqnorms<T>(m, n, D, sq.data(), n_threads);
    col_sqnorms<T>(m, b, Y + s0, ldy, nbuf.data(), n_threads);
    if (p.check_finite && N <= kSmallBlock) {
      T acc = T(0);  // 0·x stays 0 for finite x and is NaN for NaN or Inf
      for (std::int64_t i = 0; i < b * n; ++i) acc += T(0) * cbuf[static_cast<std::size_t>(i)];
      for (std::int64_t i = 0; i < b; ++i) acc += T(0) * nbuf[static_cast<std::size_t>(i)];
      if (acc != T(0)) throw NonFinite("omp: D.T @ Y is not finite");
    }
    if (lazy)
      omp_lazy<T>(m, n, b, D, cbuf.get(), nbuf.data(), kmax, p.tol, supp + s0 * kmax,
                  coef + s0 * kmax, count + s0, resid2 + s0, n_threads, sq.data());
    else
      omp_batch<T>(n, b, G, cbuf.get(), nbuf.data(), kmax, p.tol, supp + s0 * kmax,
                   coef + s0 * kmax, count + s0, resid2 + s0, n_threads);
  }
}

#define WP_INST(T)                                                                              \
  template void omp_encode<T>(std::int64_t, std::int64_t, std::int64_t, const T*, const T*,     \
                              std::int64_t, const T*, const OmpParams&, std::int64_t*, T*,      \
                              std::int64_t*, T*, int);                                          \
  template void omp_gram<T>(std::int64_t, std::int64_t, const T*, T*);                          \
  template void omp_correlate<T>(std::int64_t, std::int64_t, std::int64_t, const T*, const T*,  \
                                 std::int64_t, T*, int);                                        \
  template void col_sqnorms<T>(std::int64_t, std::int64_t, const T*, std::int64_t, T*, int);    \
  template void omp_batch<T>(std::int64_t, std::int64_t, const T*, const T*, const T*,          \
                             std::int64_t, double, std::int64_t*, T*, std::int64_t*, T*, int);   \
  template void omp_lazy<T>(std::int64_t, std::int64_t, std::int64_t, const T*, const T*,       \
                            const T*, std::int64_t, double, std::int64_t*, T*, std::int64_t*, T*, \
                            int, const T*);
WP_INST(float)
WP_INST(double)
#undef WP_INST

}  // namespace wp
