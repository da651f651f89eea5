#include "weightpress/csr.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

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
// The size of this CPU's level-`level` data or unified cache, 0 if unknown: sysfs first (what
// cpu0's cores see), else sysconf. In a VM sysconf may report the host's: the L3 of 320 MiB on
// a Zen 4 guest whose sysfs shows its 32 MiB instance. level 0: the largest of any level.
std::int64_t cache_bytes(int level) {
  std::int64_t best = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    long long lv = 0, v = 0;
    char unit = 0, type[32] = {0};
    if (FILE* fp = std::fopen((dir + "level").c_str(), "r")) {
      if (std::fscanf(fp, "%lld", &lv) != 1) lv = 0;
      std::fclose(fp);
    }
    if (FILE* fp = std::fopen((dir + "type").c_str(), "r")) {
      if (std::fscanf(fp, "%31s", type) != 1) type[0] = 0;
      std::fclose(fp);
    }
    if (std::string(type) == "Instruction" || (level > 0 && lv != level)) continue;
    if (FILE* fp = std::fopen((dir + "size").c_str(), "r")) {
      const int got = std::fscanf(fp, "%lld%c", &v, &unit);
      std::fclose(fp);
      if (got >= 1 && v > 0)
        best = std::max<std::int64_t>(best, v << (unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0));
    }
  }
  if (best > 0) return best;
  long sc = 0;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  if (level >= 0 && level <= 3)
    sc = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
#endif
  return sc > 0 ? static_cast<std::int64_t>(sc) : 0;
}

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

// Lanes of T in one native vector of VB bytes (Blocking::vec_bytes of the level compiled).
template <int VB, class T>
constexpr int kLanes = VB / static_cast<int>(sizeof(T));

// X(j, c0 .. c0+W) for the entry `PF` positions ahead of q in its row, fetched into L1 while
// the FMAs of the entries before it run (PF = 0: none).
template <int W, int PF, class T, class I>
WP_INLINE void prefetch_x(const I* __restrict indices, std::int64_t q, std::int64_t end,
                          const T* __restrict x, std::int64_t ldx, std::int64_t c0) {
  if constexpr (PF > 0) {
    if (q + PF < end) {
      const T* xr = x + static_cast<std::int64_t>(indices[q + PF]) * ldx + c0;
      constexpr int kLine = 64 / static_cast<int>(sizeof(T));
      for (int l = 0; l < W; l += kLine) __builtin_prefetch(xr + l);
    }
  }
}

// acc + sum of data[p] * X(indices[p], c0) over [p0, p1), in order, for the last column of a
// tile. Computed in lane 0 of a 2-lane vector: as scalar code GCC vectorizes the products
// in some inlined copies (then adds them in order: a*x+acc rounded twice) and contracts to
// FMA in others, which would make the rounding depend on where the copy sits; as a vector
// it is contracted exactly like the wider tiles.
template <class T, class I>
WP_INLINE T column_sum(std::int64_t p0, std::int64_t p1, const I* __restrict indices,
                       const T* __restrict data, const T* __restrict x, std::int64_t ldx,
                       std::int64_t c0, T acc0) {
  vec_t<T, 2> acc = {acc0, T(0)};
  for (std::int64_t p = p0; p < p1; ++p) {
    const vec_t<T, 2> xv = {x[static_cast<std::int64_t>(indices[p]) * ldx + c0], T(0)};
    acc += data[p] * xv;
  }
  return acc[0];
}

// y(i0 .. i0+R, c0 .. c0+W) for R consecutive rows, the R x W accumulators in registers
// (W > kLanes is held as W / kLanes native vectors, which GCC keeps in registers; one wide
// generic vector would live on the stack). The rows are walked in lockstep, so their
// independent X loads and FMA chains overlap (one row alone waits on the FMA latency when W
// is narrow); each row still sums its own entries in index order with one accumulator per
// output element, so a row's result does not depend on R, on which rows share its block or
// on the thread count.
template <int VB, int R, int W, int PF, class T, class I>
WP_INLINE void gather_block(std::int64_t i0, const I* __restrict indptr,
                            const I* __restrict indices, const T* __restrict data,
                            const T* __restrict x, std::int64_t ldx, std::int64_t c0,
                            T* __restrict y, std::int64_t ldy) {
  std::int64_t p[R], e[R], common = INT64_MAX;
  for (int r = 0; r < R; ++r) {
    p[r] = indptr[i0 + r];
    e[r] = indptr[i0 + r + 1];
    common = std::min(common, e[r] - p[r]);
  }
  if constexpr (W == 1) {
    static_assert(R == 1, "one column goes row by row (gather_tiles)");
    y[i0 * ldy + c0] = column_sum(p[0], e[0], indices, data, x, ldx, c0, T(0));
  } else {
    constexpr int L = W < kLanes<VB, T> ? W : kLanes<VB, T>;
    constexpr int NV = W / L;
    vec_t<T, L> acc[R][NV], xv;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = vec_t<T, L>{};
    for (std::int64_t q = 0; q < common; ++q) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        prefetch_x<W, PF>(indices, p[r] + q, e[r], x, ldx, c0);
        const T* xr = x + static_cast<std::int64_t>(indices[p[r] + q]) * ldx + c0;
        const T a = data[p[r] + q];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          load<L>(xv, xr + v * L);
          acc[r][v] += a * xv;
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (std::int64_t q = p[r] + common; q < e[r]; ++q) {
        prefetch_x<W, PF>(indices, q, e[r], x, ldx, c0);
        const T* xr = x + static_cast<std::int64_t>(indices[q]) * ldx + c0;
        const T a = data[q];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          load<L>(xv, xr + v * L);
          acc[r][v] += a * xv;
        }
      }
      for (int v = 0; v < NV; ++v) store<L>(y + (i0 + r) * ldy + c0 + v * L, acc[r][v]);
    }
  }
}

// out(j, c0 .. c0+W) += a * x(i, c0 .. c0+W) for the entries of row i (Aᵀ X).
template <int VB, int W, class T, class I>
WP_INLINE void scatter_tile(std::int64_t p0, std::int64_t p1, const I* __restrict indices,
                            const T* __restrict data, const T* __restrict xr, std::int64_t c0,
                            T* __restrict out, std::int64_t ld) {
  if constexpr (W == 1) {
    const T xv = xr[c0];
    for (std::int64_t p = p0; p < p1; ++p)
      out[static_cast<std::int64_t>(indices[p]) * ld + c0] += data[p] * xv;
  } else {
    constexpr int L = W < kLanes<VB, T> ? W : kLanes<VB, T>;
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

// Columns [c0, k) of the R rows from i0: tiles of W columns, then halves down to one column.
template <int VB, int R, int W, int PF, class T, class I>
WP_INLINE void gather_tiles(std::int64_t i0, const I* indptr, const I* indices, const T* data,
                            const T* x, std::int64_t ldx, std::int64_t k, T* y, std::int64_t ldy,
                            std::int64_t c0) {
  if constexpr (W == 1 && R > 1) {
    // one column left: row by row (GCC vectorizes R scalar chains across the rows, and may
    // then contract their a*x+acc differently from one row's chain: not bit-identical)
    if (c0 < k)
      for (int r = 0; r < R; ++r) gather_block<VB, 1, 1, PF>(i0 + r, indptr, indices, data, x, ldx, c0, y, ldy);
  } else {
    for (; c0 + W <= k; c0 += W) gather_block<VB, R, W, PF>(i0, indptr, indices, data, x, ldx, c0, y, ldy);
    if constexpr (W > 1) gather_tiles<VB, R, W / 2, PF>(i0, indptr, indices, data, x, ldx, k, y, ldy, c0);
  }
}

// Rows [r0, r1) in blocks of R (the last few one by one: the same sums, see gather_block).
template <int VB, int R, int W, int PF, class T, class I>
WP_INLINE void gather_range(std::int64_t r0, std::int64_t r1, const I* indptr, const I* indices,
                            const T* data, const T* x, std::int64_t ldx, std::int64_t k, T* y,
                            std::int64_t ldy) {
  std::int64_t i = r0;
  if constexpr (R > 1)
    for (; i + R <= r1; i += R) gather_tiles<VB, R, W, PF>(i, indptr, indices, data, x, ldx, k, y, ldy, 0);
  for (; i < r1; ++i) gather_tiles<VB, 1, W, PF>(i, indptr, indices, data, x, ldx, k, y, ldy, 0);
}

template <int VB, int W, class T, class I>
WP_INLINE void scatter_row(std::int64_t p0, std::int64_t p1, const I* indices, const T* data,
                           const T* xr, std::int64_t k, T* out, std::int64_t ld, std::int64_t c0) {
  for (; c0 + W <= k; c0 += W) scatter_tile<VB, W>(p0, p1, indices, data, xr, c0, out, ld);
  if constexpr (W > 1) scatter_row<VB, W / 2>(p0, p1, indices, data, xr, k, out, ld, c0);
}

// True if the row's column indices do not decrease (what gather_column_blocks needs).
template <class I>
WP_INLINE bool row_sorted(const I* __restrict indices, std::int64_t p0, std::int64_t p1) {
  unsigned down = 0;
  for (std::int64_t p = p0 + 1; p < p1; ++p) down |= static_cast<unsigned>(indices[p] < indices[p - 1]);
  return down == 0;
}

// Rows of X per column block: half the L2 cache of this CPU (the other half for A's stream,
// Y and the other hyperthread), 512 KiB where the OS does not say.
inline std::int64_t x_block_rows(std::int64_t row_bytes) {
  static const std::int64_t budget = [] {
    const std::int64_t l2 = cache_bytes(2);
    return l2 > 0 ? std::clamp<std::int64_t>(l2 / 2, 128 << 10, 2 << 20) : std::int64_t(512) << 10;
  }();
  return std::max<std::int64_t>(1, budget / std::max<std::int64_t>(row_bytes, 1));
}

// y(i, c0 .. c0+W) += the entries [p, q) of row i: the accumulators start from y and end
// there, so a row summed over consecutive segments is summed exactly as in one pass.
template <int VB, int W, int PF, class T, class I>
WP_INLINE void gather_segment(std::int64_t p, std::int64_t q, const I* __restrict indices,
                              const T* __restrict data, const T* __restrict x, std::int64_t ldx,
                              std::int64_t c0, T* __restrict yr) {
  if constexpr (W == 1) {
    yr[c0] = column_sum(p, q, indices, data, x, ldx, c0, yr[c0]);
  } else {
    constexpr int L = W < kLanes<VB, T> ? W : kLanes<VB, T>;
    constexpr int NV = W / L;
    vec_t<T, L> acc[NV], xv;
    for (int v = 0; v < NV; ++v) load<L>(acc[v], yr + c0 + v * L);
    for (; p < q; ++p) {
      prefetch_x<W, PF>(indices, p, q, x, ldx, c0);
      const T* xr = x + static_cast<std::int64_t>(indices[p]) * ldx + c0;
      const T a = data[p];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        load<L>(xv, xr + v * L);
        acc[v] += a * xv;
      }
    }
    for (int v = 0; v < NV; ++v) store<L>(yr + c0 + v * L, acc[v]);
  }
}

template <int VB, int W, int PF, class T, class I>
WP_INLINE void segment_tiles(std::int64_t p, std::int64_t q, const I* indices, const T* data,
                             const T* x, std::int64_t ldx, std::int64_t k, T* yr, std::int64_t c0) {
  for (; c0 + W <= k; c0 += W) gather_segment<VB, W, PF>(p, q, indices, data, x, ldx, c0, yr);
  if constexpr (W > 1) segment_tiles<VB, W / 2, PF>(p, q, indices, data, x, ldx, k, yr, c0);
}

// Rows [r0, r1) against X in blocks of `block` of its rows (the columns of A), each block
// small enough to stay in L2 while every row of the range consumes its entries in it. Needs
// column indices sorted within each row (checked by the caller); pos: r1 - r0 cursors.
template <int VB, int W, int PF, class T, class I>
WP_INLINE void gather_column_blocks(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                    const I* indptr, const I* indices, const T* data,
                                    const T* x, std::int64_t ldx, std::int64_t k, T* y,
                                    std::int64_t ldy, std::int64_t block, std::int64_t* pos) {
  for (std::int64_t i = r0; i < r1; ++i) {
    pos[i - r0] = indptr[i];
    for (std::int64_t c = 0; c < k; ++c) y[i * ldy + c] = T(0);
  }
  for (std::int64_t j0 = 0; j0 < cols; j0 += block) {
    const std::int64_t j1 = j0 + block;
    for (std::int64_t i = r0; i < r1; ++i) {
      const std::int64_t p = pos[i - r0], e = indptr[i + 1];
      std::int64_t q = p;
      while (q < e && static_cast<std::int64_t>(indices[q]) < j1) ++q;
      pos[i - r0] = q;
      if (q > p) segment_tiles<VB, W, PF>(p, q, indices, data, x, ldx, k, y + i * ldy, 0);
    }
  }
}

// How the SpMM (k > 1) row loop blocks, per instruction set (measured, see gather_rows):
// rows walked together when a row's tile is narrow, and the bytes of X per row and tile then.
// Wide rows (k * sizeof(T) >= 256 bytes) go one at a time in tiles of wide_bytes.
struct Blocking {
  int rows;        // R: rows in lockstep for narrow tiles
  int tile_bytes;  // of one row's tile in that case: R x tile_bytes of accumulators
  int wide_bytes;  // tile of a wide row
  int vec_bytes;   // the level's native register: tiles are held as vectors of this width
};
inline constexpr Blocking kBlockV4{8, 128, 256, 64};   // 16 zmm of accumulators out of 32; 4
inline constexpr Blocking kBlockV3{4, 64, 256, 32};    // 8 ymm out of 16; 8
inline constexpr Blocking kBlockBase{4, 32, 128, 16};  // 8 xmm out of 16 (SSE2) or of NEON's 32; 8

// Rows [r0, r1) of Y = A X. Returns the first bad index position, or -1.
template <class T, class I, const Blocking& B = kBlockBase>
WP_INLINE std::int64_t gather_rows(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                   const I* indptr, const I* indices, const T* data,
                                   std::int64_t k, const T* x, std::int64_t ldx, T* y,
                                   std::int64_t ldy, std::int64_t* pos = nullptr) {
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
  const std::int64_t block = pos ? x_block_rows(k * static_cast<std::int64_t>(sizeof(T))) : cols;
  bool sorted = block < cols;
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t bad = row_bad(indices, indptr[i], indptr[i + 1], cols);
    if (bad >= 0) return bad;
    if (sorted) sorted = row_sorted(indices, indptr[i], indptr[i + 1]);
  }
  // Measured against MKL's mkl_sparse_s_mm (row-major X, one thread, 4096² float32, AVX-512,
  // a stand-alone A/B of kernel variants called in turn, least of 5-9, load 4-11; then
  // benchmarks/bench_sparse.py "spmm"): at k = 256 X (4 MiB) does not fit L2. The former
  // column panels of X (64 columns, all rows per panel) took 1.4x MKL's time; whole rows one
  // at a time with a software prefetch 16 entries ahead 0.85-0.9x; X in blocks of its rows
  // that fit half of L2, every row consuming its entries of one block before the next,
  // 0.48-0.67x at 90 % sparsity and 0.32-0.40x at 50 % (sorted indices: otherwise whole rows).
  // Narrower rows (k < 64 float32) are bound by the FMA latency of their few accumulators
  // and run R rows in lockstep: k = 16-32, 0.6-0.87x MKL's time against 0.9-1.0x for one row
  // with interleaved chains (prefetching there measured slower).
  constexpr int kWide = B.wide_bytes / static_cast<int>(sizeof(T));
  if (sorted)
    gather_column_blocks<B.vec_bytes, kWide, 16>(r0, r1, cols, indptr, indices, data, x, ldx, k, y, ldy, block, pos);
  else if (k * static_cast<std::int64_t>(sizeof(T)) >= 256)
    gather_range<B.vec_bytes, 1, kWide, 16>(r0, r1, indptr, indices, data, x, ldx, k, y, ldy);
  else
    gather_range<B.vec_bytes, B.rows, B.tile_bytes / static_cast<int>(sizeof(T)), 0>(r0, r1, indptr, indices,
                                                                       data, x, ldx, k, y, ldy);
  return -1;
}

template <class T, class I, const Blocking& B = kBlockBase>
WP_INLINE std::int64_t scatter_rows(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                    const I* indptr, const I* indices, const T* data,
                                    std::int64_t k, const T* x, std::int64_t ldx, T* out,
                                    std::int64_t ld) {
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
    const std::int64_t bad = row_bad(indices, p0, p1, cols);
    if (bad >= 0) return bad;
    scatter_row<B.vec_bytes, kTile<T>>(p0, p1, indices, data, x + i * ldx, k, out, ld, 0);
  }
  return -1;
}

// SpMV (k = 1, unit stride) with hardware gathers of x: the AVX-512 and AVX2 row loops.
// Per row: the index range check (fused: the row's indices are then in L1), V-lane partial
// sums in two chains (entry p feeds lane p % V of chain (p / V) % 2), summed in a fixed order;
// the tail is added lane-wise in order. The order depends only on the row and the ISA.
#ifdef WP_X86_DISPATCH
// The SpMV loops' two streams (indices, values), fetched 2 KiB ahead of the N entries from p:
// on matrices larger than the LLC the hardware prefetcher alone left the 32768² SpMV at
// 0.5-0.8x of the read bandwidth, 0.9x with this (benchmarks/bench_sparse.py, spmv --large).
template <int N, class T, class I>
WP_INLINE void prefetch_streams(const I* indices, const T* data, std::int64_t p) {
  constexpr int kAhead = 2048;
  const char* ip = reinterpret_cast<const char*>(indices + p) + kAhead;
  const char* dp = reinterpret_cast<const char*>(data + p) + kAhead;
  for (int b = 0; b < N * static_cast<int>(sizeof(I)); b += 64) __builtin_prefetch(ip + b);
  for (int b = 0; b < N * static_cast<int>(sizeof(T)); b += 64) __builtin_prefetch(dp + b);
}

// x's entries at 16 (8) indices, read one by one into the lanes a gather would fill: the
// same values in the same lanes, so the same sums and bits (callers check the range first).
template <class I>
WP_TARGET_V4 WP_INLINE __m512 x_loads16(const float* x, const I* q) {
  return _mm512_setr_ps(x[q[0]], x[q[1]], x[q[2]], x[q[3]], x[q[4]], x[q[5]], x[q[6]], x[q[7]],
                        x[q[8]], x[q[9]], x[q[10]], x[q[11]], x[q[12]], x[q[13]], x[q[14]], x[q[15]]);
}
template <class I>
WP_TARGET_V4 WP_INLINE __m512d x_loads8(const double* x, const I* q) {
  return _mm512_setr_pd(x[q[0]], x[q[1]], x[q[2]], x[q[3]], x[q[4]], x[q[5]], x[q[6]], x[q[7]]);
}

// AVX-512: the range check rides in the gather loop (no separate pass over the row's indices:
// on a matrix larger than the LLC that pass read the index stream alone, then the loop read
// the values alone). Each vector of indices is compared unsigned against cols and only the
// lanes in range are gathered; a row with any lane out of range is rescanned for the first.
template <bool Loads, class T, class I>
WP_TARGET_V4 std::int64_t spmv_v4(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                  const I* __restrict indptr, const I* __restrict indices,
                                  const T* __restrict data, const T* __restrict x,
                                  T* __restrict y, std::int64_t ldy) {
  using U = std::make_unsigned_t<I>;
  // every index at or above `lim` (as unsigned) is out of range: negative ones included
  const U lim = static_cast<U>(std::min<std::uint64_t>(
      static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(std::numeric_limits<I>::max()) + 1));
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
    std::int64_t p = p0;
    T s = T(0);
    unsigned ok = 1;  // all lanes so far in range
    if constexpr (std::is_same_v<T, float> && sizeof(I) == 4) {
      const __m512i vl = _mm512_set1_epi32(static_cast<int>(lim));
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      __mmask16 all = 0xffff;
      for (; p + 32 <= p1; p += 32) {
        prefetch_streams<32>(indices, data, p);
        const __m512i j0 = _mm512_loadu_si512(indices + p), j1 = _mm512_loadu_si512(indices + p + 16);
        const __mmask16 m0 = _mm512_cmplt_epu32_mask(j0, vl), m1 = _mm512_cmplt_epu32_mask(j1, vl);
        all = static_cast<__mmask16>(all & m0 & m1);
        if constexpr (Loads) {
          if (all != 0xffff) break;
          a0 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p), x_loads16(x, indices + p), a0);
          a1 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p + 16), x_loads16(x, indices + p + 16), a1);
        } else {
          a0 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, j0, x, 4), a0);
          a1 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p + 16), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, j1, x, 4), a1);
        }
      }
      if (all == 0xffff && p + 16 <= p1) {
        const __m512i j0 = _mm512_loadu_si512(indices + p);
        const __mmask16 m0 = _mm512_cmplt_epu32_mask(j0, vl);
        all = static_cast<__mmask16>(all & m0);
        if constexpr (Loads) {
          if (all == 0xffff) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p), x_loads16(x, indices + p), a0);
        } else {
          a0 = _mm512_fmadd_ps(_mm512_loadu_ps(data + p), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, j0, x, 4), a0);
        }
        p += 16;
      }
      ok = all == 0xffff;
      alignas(64) float l[16];  // (not _mm512_reduce_add_ps: GCC 12 warns inside it)
      _mm512_store_ps(l, _mm512_add_ps(a0, a1));
      float h[8];
      for (int q = 0; q < 8; ++q) h[q] = l[q] + l[q + 8];
      s = ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
    } else if constexpr (std::is_same_v<T, float>) {  // int64 indices: 8 lanes
      const __m512i vl = _mm512_set1_epi64(static_cast<long long>(lim));
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      __mmask8 all = 0xff;
      for (; p + 16 <= p1; p += 16) {
        prefetch_streams<16>(indices, data, p);
        const __m512i j0 = _mm512_loadu_si512(indices + p), j1 = _mm512_loadu_si512(indices + p + 8);
        const __mmask8 m0 = _mm512_cmplt_epu64_mask(j0, vl), m1 = _mm512_cmplt_epu64_mask(j1, vl);
        all = static_cast<__mmask8>(all & m0 & m1);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p), _mm512_mask_i64gather_ps(_mm256_setzero_ps(), m0, j0, x, 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p + 8), _mm512_mask_i64gather_ps(_mm256_setzero_ps(), m1, j1, x, 4), a1);
      }
      ok = all == 0xff;
      const __m256 a = _mm256_add_ps(a0, a1);
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      s = (h[0] + h[1]) + (h[2] + h[3]);
    } else {  // double: 8 lanes
      __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
      __mmask8 all = 0xff;
      for (; p + 16 <= p1; p += 16) {
        prefetch_streams<16>(indices, data, p);
        __m512d x0, x1;
        __mmask8 m0, m1;
        if constexpr (sizeof(I) == 4) {
          const __m256i vl = _mm256_set1_epi32(static_cast<int>(lim));
          const __m256i j0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p));
          const __m256i j1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p + 8));
          m0 = _mm256_cmplt_epu32_mask(j0, vl);
          m1 = _mm256_cmplt_epu32_mask(j1, vl);
          if constexpr (Loads) {
            if ((all & m0 & m1) != 0xff) break;  // (all is updated below, as for the gathers)
            x0 = x_loads8(x, indices + p);
            x1 = x_loads8(x, indices + p + 8);
          } else {
            x0 = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m0, j0, x, 8);
            x1 = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m1, j1, x, 8);
          }
        } else {
          const __m512i vl = _mm512_set1_epi64(static_cast<long long>(lim));
          const __m512i j0 = _mm512_loadu_si512(indices + p), j1 = _mm512_loadu_si512(indices + p + 8);
          m0 = _mm512_cmplt_epu64_mask(j0, vl);
          m1 = _mm512_cmplt_epu64_mask(j1, vl);
          x0 = _mm512_mask_i64gather_pd(_mm512_setzero_pd(), m0, j0, x, 8);
          x1 = _mm512_mask_i64gather_pd(_mm512_setzero_pd(), m1, j1, x, 8);
        }
        all = static_cast<__mmask8>(all & m0 & m1);
        a0 = _mm512_fmadd_pd(_mm512_loadu_pd(data + p), x0, a0);
        a1 = _mm512_fmadd_pd(_mm512_loadu_pd(data + p + 8), x1, a1);
      }
      ok = all == 0xff;
      alignas(64) double l[8];
      _mm512_store_pd(l, _mm512_add_pd(a0, a1));
      s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    }
    for (; p < p1; ++p) {
      const U j = static_cast<U>(indices[p]);
      if (j >= lim) {
        ok = 0;
        break;
      }
      s += data[p] * x[static_cast<std::int64_t>(j)];
    }
    if (!ok) return row_bad(indices, p0, p1, cols);
    y[i * ldy] = s;
  }
  return -1;
}

// Loads = true: x's entries are read one by one (a scalar load and insert per lane, the same
// lanes as the gather, so the same sums and bits) after the block's 16 indices are checked in
// range; a block with any lane out of range ends the row's loop (row_bad rescans the row).
// Measured on an AMD EPYC (Zen 3, 2.45 GHz), float32: vgatherdps took 0.54-0.70 ns per entry
// with x in L1 (1 thread) and these loads 0.38-0.46; bench_sparse.py spmv, 2 threads: 4096² at
// 90 % (13 MB, in the LLC) 0.85 -> 0.66 ms; against reading the CSR's arrays, interleaved,
// 4096² at 50 % 0.83 -> 0.97 of that rate, 8192² at 50 % 0.78 -> 0.80, at 90 % 0.74 -> 0.76.
// Intel cores with a fast gather keep it: spmv_x_loads() picks by measurement on the machine.
template <bool Loads, class T, class I>
WP_TARGET_V3 std::int64_t spmv_v3(std::int64_t r0, std::int64_t r1, std::int64_t cols,
                                  const I* __restrict indptr, const I* __restrict indices,
                                  const T* __restrict data, const T* __restrict x,
                                  T* __restrict y, std::int64_t ldy) {
  if constexpr (sizeof(I) != 4) {
    return gather_rows<T, I>(r0, r1, cols, indptr, indices, data, 1, x, 1, y, ldy);
  } else {
    // as spmv_v4: the range check in the gather loop (AVX2 has no unsigned compare: a lane is
    // in range if j > -1 and not j > cols - 1), only lanes in range gathered
    const int jmax = static_cast<int>(std::min<std::int64_t>(cols - 1, std::numeric_limits<int>::max()));
    const __m256i vmax = _mm256_set1_epi32(jmax), vneg = _mm256_set1_epi32(-1);
    for (std::int64_t i = r0; i < r1; ++i) {
      const std::int64_t p0 = indptr[i], p1 = indptr[i + 1];
      std::int64_t p = p0;
      T s = T(0);
      __m256i okv = vneg;  // all ones while every lane is in range
      if constexpr (std::is_same_v<T, float>) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (; p + 16 <= p1; p += 16) {
          prefetch_streams<16>(indices, data, p);
          const __m256i j0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p));
          const __m256i j1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + p + 8));
          const __m256i m0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(j0, vmax), _mm256_cmpgt_epi32(j0, vneg));
          const __m256i m1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(j1, vmax), _mm256_cmpgt_epi32(j1, vneg));
          okv = _mm256_and_si256(okv, _mm256_and_si256(m0, m1));
          if constexpr (Loads) {
            if (_mm256_movemask_epi8(okv) != -1) break;
            const I* q = indices + p;
            const __m256 g0 = _mm256_setr_ps(x[q[0]], x[q[1]], x[q[2]], x[q[3]], x[q[4]], x[q[5]], x[q[6]], x[q[7]]);
            const __m256 g1 = _mm256_setr_ps(x[q[8]], x[q[9]], x[q[10]], x[q[11]], x[q[12]], x[q[13]], x[q[14]], x[q[15]]);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p), g0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p + 8), g1, a1);
          } else {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p), _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, j0, _mm256_castsi256_ps(m0), 4), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(data + p + 8), _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, j1, _mm256_castsi256_ps(m1), 4), a1);
          }
        }
        const __m256 a = _mm256_add_ps(a0, a1);
        const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = (h[0] + h[1]) + (h[2] + h[3]);
      } else {
        const __m128i vmax4 = _mm256_castsi256_si128(vmax), vneg4 = _mm256_castsi256_si128(vneg);
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        __m128i ok4 = _mm_set1_epi32(-1);  // four 32-bit indices per gather here
        for (; p + 8 <= p1; p += 8) {
          prefetch_streams<8>(indices, data, p);
          const __m128i j0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(indices + p));
          const __m128i j1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(indices + p + 4));
          const __m128i m0 = _mm_andnot_si128(_mm_cmpgt_epi32(j0, vmax4), _mm_cmpgt_epi32(j0, vneg4));
          const __m128i m1 = _mm_andnot_si128(_mm_cmpgt_epi32(j1, vmax4), _mm_cmpgt_epi32(j1, vneg4));
          ok4 = _mm_and_si128(ok4, _mm_and_si128(m0, m1));
          if constexpr (Loads) {
            if (_mm_movemask_epi8(ok4) != 0xFFFF) break;
            const I* q = indices + p;
            a0 = _mm256_fmadd_pd(_mm256_loadu_pd(data + p), _mm256_setr_pd(x[q[0]], x[q[1]], x[q[2]], x[q[3]]), a0);
            a1 = _mm256_fmadd_pd(_mm256_loadu_pd(data + p + 4), _mm256_setr_pd(x[q[4]], x[q[5]], x[q[6]], x[q[7]]), a1);
          } else {
            a0 = _mm256_fmadd_pd(_mm256_loadu_pd(data + p), _mm256_mask_i32gather_pd(_mm256_setzero_pd(), x, j0, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(m0)), 8), a0);
            a1 = _mm256_fmadd_pd(_mm256_loadu_pd(data + p + 4), _mm256_mask_i32gather_pd(_mm256_setzero_pd(), x, j1, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(m1)), 8), a1);
          }
        }
        okv = _mm256_set_m128i(_mm_set1_epi32(-1), ok4);  // the upper half: no indices
        const __m256d a = _mm256_add_pd(a0, a1);
        s = (a[0] + a[1]) + (a[2] + a[3]);
      }
      bool ok = _mm256_movemask_epi8(okv) == -1;
      for (; ok && p < p1; ++p) {
        const std::int64_t j = static_cast<std::int64_t>(indices[p]);
        if (j < 0 || j >= cols) ok = false;
        else s += data[p] * x[j];
      }
      if (!ok) return row_bad(indices, p0, p1, cols);
      y[i * ldy] = s;
    }
    return -1;
  }
}
// Whether the SpMV loop reads x entry by entry (Loads) rather than with a gather on this
// CPU: WP_SPMV_X=loads|gather decides; else both loops are timed once, on 64 rows of 256
// random columns of a 4096-entry x (16 KiB, in L1: the loops' own cost, which decides out of
// cache too: the Zen 3 above ran 8192² at 90 % in 0.70 ns per entry with loads, 0.90 with
// gathers), the least of 7 calls each, interleaved (about 0.1 ms, once per process and ISA
// level). Both give the same bits, so the choice changes the time only.
// WP_SPMV_X: 1 "loads", 0 "gather", -1 unset (or anything else: measured).
int x_forced() {
  const char* env = std::getenv("WP_SPMV_X");
  if (env && std::strcmp(env, "loads") == 0) return 1;
  if (env && std::strcmp(env, "gather") == 0) return 0;
  return -1;
}
template <class Loop>
bool loads_faster(Loop loop) {
  if (const int forced = x_forced(); forced >= 0) return forced == 1;
  constexpr int kCols = 4096, kRows = 64, kLen = 256;
  std::vector<float> x(kCols, 1.0f), data(kRows * kLen, 0.5f), y(kRows);
  std::vector<std::int32_t> idx(kRows * kLen), ptr(kRows + 1);
  std::uint32_t state = 12345;
  for (auto& j : idx) {
    state = state * 1664525u + 1013904223u;
    j = static_cast<std::int32_t>((state >> 8) % kCols);
  }
  for (int i = 0; i <= kRows; ++i) ptr[i] = i * kLen;
  double best[2] = {1e30, 1e30};
  for (int round = 0; round < 8; ++round)
    for (int v = 0; v < 2; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      loop(v == 1, kRows, kCols, ptr.data(), idx.data(), data.data(), x.data(), y.data());
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (round > 0) best[v] = std::min(best[v], t);  // round 0 warms caches and clocks
    }
  return best[1] < best[0];
}
#define WP_SPMV_PROBE(fn)                                                                       \
  [](bool by_loads, int rows, int cols, const std::int32_t* ptr, const std::int32_t* idx,       \
     const float* data, const float* x, float* y) {                                             \
    if (by_loads) fn<true, float, std::int32_t>(0, rows, cols, ptr, idx, data, x, y, 1);        \
    else fn<false, float, std::int32_t>(0, rows, cols, ptr, idx, data, x, y, 1);                \
  }
bool spmv_x_loads() {
  static const bool loads = loads_faster(WP_SPMV_PROBE(spmv_v3));
  return loads;
}
// The same choice for spmv_v4 (Zen 4: vgatherdps zmm against 16 loads and inserts).
bool spmv_x_loads_v4() {
  static const bool loads = loads_faster(WP_SPMV_PROBE(spmv_v4));
  return loads;
}
#undef WP_SPMV_PROBE

// How an SpMV reads x: `loads` entry by entry (else by gathers); `trial` when this call
// times the two towards the choice for matrices larger than the last-level cache. Out of cache
// the in-L1 probe above can mislead: on an AMD EPYC (Zen 4, 2 cores, 32 MiB L3) the loads took
// 0.36 ns per entry against 0.44 for vgatherdps zmm with the CSR in cache, and as long with
// a 16 KiB x out of cache (4096² at 50 %), but 8192² at 90 % (54 MB, a 32 KiB x) ran in
// 3.7-4.6 ms against 3.4-3.6 (1 thread, least of 40: the gathers keep more of x's L2 reads
// in flight beside the streams), while the Zen 3 above ran the loads faster there too. So per
// size of x (powers of two) and for one thread or more, the first 3 calls larger than the
// cache compute each thread's rows in 16 slices of equal entries, alternately by gathers and
// by loads (same bits), each slice timed; the way with the lesser median time per entry over
// those slices serves every later call. Whole calls timed in turn (3-5 of each) picked the
// slower way in the SpMV benchmark, whose other libraries' threads spin on the same 2 cores
// for a while after their calls: slices side by side in one call see the same machine.
// WP_SPMV_X=loads|gather forces either; WP_LLC_BYTES overrides the cache size.
struct XRead {
  bool loads, trial;
  int bucket;
};
struct XReadTrials {
  int n = 0;                         // trial calls recorded
  std::vector<double> per_entry[2];  // seconds per entry of each slice: gathers, loads
  std::atomic<int> chosen{-1};       // -1 measuring, 0 gather, 1 loads
};
constexpr int kXBuckets = 48, kXReadTrials = 3, kXSlices = 16;
std::mutex& x_read_mutex() {
  static std::mutex m;
  return m;
}
XReadTrials* x_read_trials() {
  static XReadTrials t[2 * kXBuckets];  // one thread, then more
  return t;
}
int x_bucket(std::int64_t x_bytes) {  // ceil(log2(bytes))
  int b = 0;
  while (b + 1 < kXBuckets && (std::int64_t(1) << b) < x_bytes) ++b;
  return b;
}

std::int64_t llc_bytes() {
  static const std::int64_t bytes = [] {
    if (const char* env = std::getenv("WP_LLC_BYTES")) {
      const long long v = std::atoll(env);
      if (v > 0) return static_cast<std::int64_t>(v);
    }
    const std::int64_t c = cache_bytes(0);  // the largest cache this CPU's cores share
    return c > 0 ? c : std::int64_t(32) << 20;
  }();
  return bytes;
}

bool x_loads_in_cache() {
  switch (isa_level()) {
    case Isa::kV4: return spmv_x_loads_v4();
    case Isa::kV3: return spmv_x_loads();
    case Isa::kBase: break;
  }
  return false;
}

XRead x_read(std::int64_t stream_bytes, std::int64_t x_bytes, int n_threads) {
  if (isa_level() == Isa::kBase || stream_bytes <= llc_bytes() || x_forced() >= 0)
    return {x_loads_in_cache(), false, 0};
  const int b = x_bucket(x_bytes) + (n_threads > 1 ? kXBuckets : 0);
  XReadTrials& t = x_read_trials()[b];
  const int chosen = t.chosen.load(std::memory_order_acquire);
  if (chosen >= 0) return {chosen == 1, false, b};
  std::lock_guard<std::mutex> lock(x_read_mutex());
  return {t.n % 2 == 1, true, b};  // (which way the first slice takes, alternating per call)
}

void x_read_trial(const XRead& how, const std::vector<double>& secs, const std::vector<std::int64_t>& entries) {
  XReadTrials& t = x_read_trials()[how.bucket];
  std::lock_guard<std::mutex> lock(x_read_mutex());
  if (t.chosen.load() >= 0) return;
  for (std::size_t i = 0; i < secs.size(); ++i)
    if (entries[i] > 0)
      t.per_entry[(static_cast<int>(i % kXSlices) + how.loads) % 2].push_back(secs[i] / static_cast<double>(entries[i]));
  if (++t.n < kXReadTrials) return;
  double med[2];
  for (int v = 0; v < 2; ++v) {
    std::vector<double>& e = t.per_entry[v];
    if (e.empty()) {
      med[v] = 1e30;
      continue;
    }
    std::nth_element(e.begin(), e.begin() + static_cast<std::ptrdiff_t>(e.size() / 2), e.end());
    med[v] = e[e.size() / 2];
  }
  t.chosen.store(med[1] < med[0] ? 1 : 0, std::memory_order_release);
  t.per_entry[0] = {};
  t.per_entry[1] = {};
}
#else
struct XRead {  // one way to read x off x86-64
  bool loads, trial;
  int bucket;
};
constexpr int kXSlices = 1;
XRead x_read(std::int64_t, std::int64_t, int) { return {false, false, 0}; }
void x_read_trial(const XRead&, const std::vector<double>&, const std::vector<std::int64_t>&) {}
#endif

#define WP_ROWS_ARGS                                                                        \
  std::int64_t r0, std::int64_t r1, std::int64_t cols, const I *indptr, const I *indices, \
      const T *data, std::int64_t k, const T *x, std::int64_t ldx, T *y, std::int64_t ldy, \
      std::int64_t *pos
#define WP_ROWS_PASS r0, r1, cols, indptr, indices, data, k, x, ldx, y, ldy

template <bool Scatter, class T, class I>
std::int64_t rows_base(WP_ROWS_ARGS, bool) {
  if constexpr (Scatter) return scatter_rows<T, I, kBlockBase>(WP_ROWS_PASS);
  else return gather_rows<T, I, kBlockBase>(WP_ROWS_PASS, pos);
}
#ifdef WP_X86_DISPATCH
template <bool Scatter, class T, class I>
WP_TARGET_V3 std::int64_t rows_v3(WP_ROWS_ARGS, bool loads) {
  if constexpr (!Scatter)
    if (k == 1 && ldx == 1)
      return loads ? spmv_v3<true, T, I>(r0, r1, cols, indptr, indices, data, x, y, ldy)
                            : spmv_v3<false, T, I>(r0, r1, cols, indptr, indices, data, x, y, ldy);
  if constexpr (Scatter) return scatter_rows<T, I, kBlockV3>(WP_ROWS_PASS);
  else return gather_rows<T, I, kBlockV3>(WP_ROWS_PASS, pos);
}
template <bool Scatter, class T, class I>
WP_TARGET_V4 std::int64_t rows_v4(WP_ROWS_ARGS, bool loads) {
  if constexpr (!Scatter)
    if (k == 1 && ldx == 1)
      return loads ? spmv_v4<true, T, I>(r0, r1, cols, indptr, indices, data, x, y, ldy)
                   : spmv_v4<false, T, I>(r0, r1, cols, indptr, indices, data, x, y, ldy);
  if constexpr (Scatter) return scatter_rows<T, I, kBlockV4>(WP_ROWS_PASS);
  else return gather_rows<T, I, kBlockV4>(WP_ROWS_PASS, pos);
}
#endif

template <bool Scatter, class T, class I>
std::int64_t rows(WP_ROWS_ARGS, bool loads) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return rows_v4<Scatter, T, I>(WP_ROWS_PASS, pos, loads);
    case Isa::kV3: return rows_v3<Scatter, T, I>(WP_ROWS_PASS, pos, loads);
    case Isa::kBase: break;
  }
#endif
  return rows_base<Scatter, T, I>(WP_ROWS_PASS, pos, loads);
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
  // Wide rows of X that do not fit L2 together: X in blocks of its rows (gather_rows), when
  // the blocks hold enough rows and each row of A has a few entries per block (else the
  // per-block bookkeeping, rows x blocks, outweighs the entries). One cursor per row.
  std::vector<std::int64_t> pos;
  const std::int64_t row_bytes = k * static_cast<std::int64_t>(sizeof(T));
  if (row_bytes >= 256) {
    const std::int64_t block = x_block_rows(row_bytes);
    const std::int64_t n_blocks = (cols + block - 1) / block;
    if (n_blocks > 1 && block >= 64 && rows_ * n_blocks * 4 <= nnz) pos.resize(static_cast<size_t>(rows_));
  }
  const std::int64_t stream = nnz * static_cast<std::int64_t>(sizeof(T) + sizeof(I));
  const XRead how = k == 1 && ldx == 1 ? x_read(stream, cols * static_cast<std::int64_t>(sizeof(T)), nt)
                                       : XRead{false, false, 0};
  // a trial: slice q of thread tid's rows is part tid·S + q of nt·S (the same boundaries as
  // the thread's own part), by loads when (q + how.loads) is odd
  const int n_slices = how.trial ? kXSlices : 1;
  std::vector<double> secs(how.trial ? static_cast<std::size_t>(nt * n_slices) : 0);
  std::vector<std::int64_t> entries(secs.size());
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), nth = team_size();
    for (int q = 0; q < n_slices; ++q) {
      const std::int64_t part = static_cast<std::int64_t>(tid) * n_slices + q, parts = static_cast<std::int64_t>(nth) * n_slices;
      const std::int64_t r0 = part_start(rows_, indptr, part, parts);
      const std::int64_t r1 = part_start(rows_, indptr, part + 1, parts);
      const bool loads = how.trial ? (q + how.loads) % 2 == 1 : how.loads;
      const auto t0 = how.trial ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
      const std::int64_t bad = rows<false, T, I>(r0, r1, cols, indptr, indices, data, k, x, ldx, y, ldy,
                                                     pos.empty() ? nullptr : pos.data() + r0, loads);
      if (how.trial) {
        const std::size_t at = static_cast<std::size_t>(part);
        secs[at] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        entries[at] = static_cast<std::int64_t>(indptr[r1]) - static_cast<std::int64_t>(indptr[r0]);
      }
      if (bad >= 0) {
        note_bad(first_bad, bad);
        break;
      }
    }
  }
  if (how.trial && first_bad.load() < 0) x_read_trial(how, secs, entries);
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
    const std::int64_t bad = rows<true, T, I>(r0, r1, cols, indptr, indices, data, k, x, ldx, out, ld, nullptr, false);
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

// "avx2-loads", "avx512-gather", ...: how an SpMV in cache reads x and, unless WP_SPMV_X
// forces one way, how one larger than the last-level cache does ("measuring" until decided).
std::string spmv_x_path() {
#ifdef WP_X86_DISPATCH
  if (isa_level() != Isa::kBase) {
    std::string path = std::string(isa_level() == Isa::kV4 ? "avx512-" : "avx2-") +
                       (x_loads_in_cache() ? "loads" : "gather");
    if (x_forced() < 0) {
      path += "; larger than the LLC:";
      int decided = 0;
      for (int b = 0; b < 2 * kXBuckets; ++b) {
        const int chosen = x_read_trials()[b].chosen.load();
        if (chosen < 0) continue;
        const std::int64_t bytes = std::int64_t(1) << (b % kXBuckets);
        path += std::string(decided++ ? "," : "") + " x " +
                (bytes < 1024 ? std::to_string(bytes) + " B " : std::to_string(bytes >> 10) + " KiB ") +
                (b < kXBuckets ? "1t " : "2+t ") + (chosen == 1 ? "loads" : "gather");
      }
      if (!decided) path += " measuring";
    }
    return path;
  }
#endif
  return "scalar";
}

}  // namespace wp
