#include "weightpress/prune.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "weightpress/errors.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"

#ifdef WP_X86_DISPATCH
#include <immintrin.h>
#endif

namespace wp {
namespace {

// Entries below which every entry is a selection candidate (no sample).
constexpr std::int64_t kPruneSampleMin = std::int64_t(1) << 16;
// Grain of the prune passes (entries): a compare-and-count pass, like the index scan.
constexpr std::int64_t kGrainPrune = kGrainIndexScan;

// Magnitude key: the bits of |w| as an unsigned integer, which orders like |w| for all
// non-NaN values (+0 is key 0). NaN keys are above the key of +inf.
template <class T>
struct Key;
template <>
struct Key<float> {
  using U = std::uint32_t;
  static constexpr U kInf = 0x7f800000u;
  WP_INLINE static U of(float v) {
    U u;
    std::memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
  }
};
template <>
struct Key<double> {
  using U = std::uint64_t;
  static constexpr U kInf = 0x7ff0000000000000ull;
  WP_INLINE static U of(double v) {
    U u;
    std::memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffffffffffull;
  }
};

template <class T>
inline T at(const T* w, std::int64_t i, std::int64_t j, std::int64_t rs, std::int64_t cs) {
  return w[i * rs + j * cs];
}

// f(j, w(i, j)) for every entry of row i. Contiguous rows (the common case) get a unit-stride
// loop the compiler can vectorize; other layouts the strided one.
template <class T, class F>
__attribute__((always_inline)) inline void each_in_row(const T* w, std::int64_t i,
                                                       std::int64_t cols, std::int64_t rs,
                                                       std::int64_t cs, F&& f) {
  const T* r = w + i * rs;
  if (cs == 1) {
    for (std::int64_t j = 0; j < cols; ++j) f(j, r[j]);
  } else {
    for (std::int64_t j = 0; j < cols; ++j) f(j, r[j * cs]);
  }
}

// The key of the keep-th largest magnitude, by radix selection on 16-bit digits from the top.
template <class T>
std::uint64_t select_key(std::int64_t rows, std::int64_t cols, const T* w, std::int64_t rs,
                         std::int64_t cs, std::int64_t keep, int n_threads) {
  using K = Key<T>;
  using U = typename K::U;
  constexpr int kBits = 8 * sizeof(U);
  constexpr int kDigit = 16;
  constexpr std::int64_t kBins = 1 << kDigit;
  const int nt = threads_for(rows * cols, n_threads, kGrainPrune);
  std::vector<std::int64_t> hist(static_cast<size_t>(kBins) * static_cast<size_t>(nt));
  U prefix = 0;  // the bits decided so far (above `shift + kDigit`)
  std::int64_t remaining = keep;
  for (int shift = kBits - kDigit; shift >= 0; shift -= kDigit) {
    const int hi = shift + kDigit;  // bits >= hi are fixed to prefix
    std::fill(hist.begin(), hist.end(), 0);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      std::int64_t* h = hist.data() + static_cast<std::int64_t>(thread_id()) * kBins;
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = 0; j < cols; ++j) {
          const U u = K::of(at(w, i, j, rs, cs));
          if (hi >= kBits || (u >> hi) == (prefix >> hi))
            ++h[(u >> shift) & static_cast<U>(kBins - 1)];
        }
    }
    for (int t = 1; t < nt; ++t)
      for (std::int64_t b = 0; b < kBins; ++b) hist[b] += hist[t * kBins + b];
    std::int64_t b = kBins - 1;
    for (; b > 0; --b) {
      if (hist[b] >= remaining) break;
      remaining -= hist[b];
    }
    prefix |= static_cast<U>(b) << shift;
  }
  return prefix;
}

}  // namespace

namespace {

// Per-row tallies of one pass over a row: entries above `hi`, entries in [lo, hi] (the band
// that holds the cut), NaNs (keys above +inf). A branch-free loop the compiler vectorizes for
// contiguous rows (counters in U: a row chunk is at most 2^20 entries).
template <class T>
struct RowTally {
  std::int64_t above = 0, band = 0, nan = 0;
};
template <class T>
WP_INLINE RowTally<T> tally_body(const T* r, std::int64_t cols, std::int64_t cs,
                                 typename Key<T>::U lo, typename Key<T>::U hi) {
  using K = Key<T>;
  using U = typename K::U;
  RowTally<T> t;
  for (std::int64_t j0 = 0; j0 < cols; j0 += std::int64_t(1) << 20) {
    const std::int64_t j1 = std::min(cols, j0 + (std::int64_t(1) << 20));
    U above = 0, band = 0, nan = 0;
    if (cs == 1) {
      for (std::int64_t j = j0; j < j1; ++j) {
        const U u = K::of(r[j]);
        above += u > hi;
        band += (u >= lo) & (u <= hi);
        nan += u > K::kInf;
      }
    } else {
      for (std::int64_t j = j0; j < j1; ++j) {
        const U u = K::of(r[j * cs]);
        above += u > hi;
        band += (u >= lo) & (u <= hi);
        nan += u > K::kInf;
      }
    }
    t.above += static_cast<std::int64_t>(above);
    t.band += static_cast<std::int64_t>(band);
    t.nan += static_cast<std::int64_t>(nan);
  }
  return t;
}

template <class T>
RowTally<T> tally_base(const T* r, std::int64_t cols, std::int64_t cs, typename Key<T>::U lo,
                       typename Key<T>::U hi) {
  return tally_body(r, cols, cs, lo, hi);
}
#ifdef WP_X86_DISPATCH
template <class T>
WP_TARGET_V3 RowTally<T> tally_v3(const T* r, std::int64_t cols, std::int64_t cs,
                                  typename Key<T>::U lo, typename Key<T>::U hi) {
  return tally_body(r, cols, cs, lo, hi);
}
template <class T>
WP_TARGET_V4 RowTally<T> tally_v4(const T* r, std::int64_t cols, std::int64_t cs,
                                  typename Key<T>::U lo, typename Key<T>::U hi) {
  return tally_body(r, cols, cs, lo, hi);
}
#endif
template <class T>
RowTally<T> tally_row(const T* r, std::int64_t cols, std::int64_t cs, typename Key<T>::U lo,
                      typename Key<T>::U hi) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return tally_v4(r, cols, cs, lo, hi);
    case Isa::kV3: return tally_v3(r, cols, cs, lo, hi);
    case Isa::kBase: break;
  }
#endif
  return tally_base(r, cols, cs, lo, hi);
}

// A band entry: its key and its row-major position.
template <class U>
struct Cand {
  U key;
  std::int64_t pos;
};

// Entries j in [j0, j1) of a contiguous row with lo <= key <= hi, compacted into bi (column
// indices) and bd (values), in column order; returns their count. bi and bd have room for
// j1 - j0 + 16 entries (the vector paths store whole vectors). Kept entries are unpredictable,
// so no branch per entry: the baseline stores every entry and advances by the predicate; the
// AVX2/AVX-512 paths compress a vector of entries in registers (not the memory form of
// vcompress, which is slow on AMD Zen 4) and store it whole.
template <class T, class I>
WP_INLINE std::int64_t select_scalar(const T* __restrict r, std::int64_t j0, std::int64_t j1,
                                     typename Key<T>::U lo, typename Key<T>::U hi,
                                     I* __restrict bi, T* __restrict bd) {
  std::int64_t n = 0;
  for (std::int64_t j = j0; j < j1; ++j) {
    const T v = r[j];
    const auto u = Key<T>::of(v);
    bi[n] = static_cast<I>(j);
    bd[n] = v;
    n += (u >= lo) & (u <= hi);
  }
  return n;
}

template <class T, class I>
std::int64_t select_base(const T* r, std::int64_t j0, std::int64_t j1, typename Key<T>::U lo,
                         typename Key<T>::U hi, I* bi, T* bd) {
  return select_scalar(r, j0, j1, lo, hi, bi, bd);
}

#ifdef WP_X86_DISPATCH
// Index vectors hold j as int32 (rows are cut into chunks of at most 2^16 columns by the
// callers, offsets added as int32 only while j < 2^31; else the scalar loop).
template <class T, class I>
WP_TARGET_V4 std::int64_t select_v4(const T* __restrict r, std::int64_t j0, std::int64_t j1,
                                    typename Key<T>::U lo, typename Key<T>::U hi,
                                    I* __restrict bi, T* __restrict bd) {
  if (j1 > INT32_MAX) return select_scalar(r, j0, j1, lo, hi, bi, bd);
  std::int64_t n = 0, j = j0;
  if constexpr (std::is_same_v<T, float>) {
    const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo)), vhi = _mm512_set1_epi32(static_cast<int>(hi));
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j0)),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (; j + 16 <= j1; j += 16, idx = _mm512_add_epi32(idx, step)) {
      const __m512 v = _mm512_loadu_ps(r + j);
      const __m512i u = _mm512_and_si512(_mm512_castps_si512(v), abs);
      const __mmask16 m = _mm512_cmpge_epu32_mask(u, vlo) & _mm512_cmple_epu32_mask(u, vhi);
      _mm512_storeu_ps(bd + n, _mm512_maskz_compress_ps(m, v));
      const __m512i ci = _mm512_maskz_compress_epi32(m, idx);
      if constexpr (sizeof(I) == 4) {
        _mm512_storeu_si512(bi + n, ci);
      } else {
        _mm512_storeu_si512(bi + n, _mm512_maskz_cvtepi32_epi64(0xff, _mm512_maskz_extracti64x4_epi64(0xf, ci, 0)));
        _mm512_storeu_si512(bi + n + 8, _mm512_maskz_cvtepi32_epi64(0xff, _mm512_maskz_extracti64x4_epi64(0xf, ci, 1)));
      }
      n += __builtin_popcount(m);
    }
  } else {
    const __m512i vlo = _mm512_set1_epi64(static_cast<long long>(lo)), vhi = _mm512_set1_epi64(static_cast<long long>(hi));
    const __m512i abs = _mm512_set1_epi64(0x7fffffffffffffffll);
    const __m256i step = _mm256_set1_epi32(8);
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (; j + 8 <= j1; j += 8, idx = _mm256_add_epi32(idx, step)) {
      const __m512d v = _mm512_loadu_pd(r + j);
      const __m512i u = _mm512_and_si512(_mm512_castpd_si512(v), abs);
      const __mmask8 m = static_cast<__mmask8>(_mm512_cmpge_epu64_mask(u, vlo) & _mm512_cmple_epu64_mask(u, vhi));
      _mm512_storeu_pd(bd + n, _mm512_maskz_compress_pd(m, v));
      const __m256i ci = _mm256_maskz_compress_epi32(m, idx);
      if constexpr (sizeof(I) == 4) _mm256_storeu_si256(reinterpret_cast<__m256i*>(bi + n), ci);
      else _mm512_storeu_si512(bi + n, _mm512_maskz_cvtepi32_epi64(0xff, ci));
      n += __builtin_popcount(m);
    }
  }
  return n + select_scalar(r, j, j1, lo, hi, bi + n, bd + n);
}

// AVX2 has no compress: a table gives, for each 8-bit mask, the permutation that moves the
// selected lanes to the front (float: eight 32-bit lanes; double: a 4-bit mask, each 64-bit
// lane moved as its two 32-bit halves, perm64).
struct CompressLut {
  alignas(32) std::int32_t perm[256][8];
  alignas(32) std::int32_t perm64[16][8];
  CompressLut() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int l = 0; l < 8; ++l)
        if (m >> l & 1) perm[m][n++] = l;
      for (; n < 8; ++n) perm[m][n] = 0;
    }
    for (int m = 0; m < 16; ++m) {
      int n = 0;
      for (int l = 0; l < 4; ++l)
        if (m >> l & 1) {
          perm64[m][n++] = 2 * l;
          perm64[m][n++] = 2 * l + 1;
        }
      for (; n < 8; ++n) perm64[m][n] = 0;
    }
  }
};
const CompressLut kCompressLut;

template <class T, class I>
WP_TARGET_V3 std::int64_t select_v3(const T* __restrict r, std::int64_t j0, std::int64_t j1,
                                    typename Key<T>::U lo, typename Key<T>::U hi,
                                    I* __restrict bi, T* __restrict bd) {
  if (j1 > INT32_MAX) return select_scalar(r, j0, j1, lo, hi, bi, bd);
  if constexpr (!std::is_same_v<T, float>) {
    // Four doubles a vector (the scalar loop, storing every entry, was 31% of a 4096² float64
    // prune on an AMD EPYC, Zen 3). Keys are < 2^63: unsigned order is signed order after
    // flipping the top bit, which _mm256_cmpgt_epi64 compares.
    std::int64_t n = 0, j = j0;
    const __m256i flip = _mm256_set1_epi64x(INT64_MIN);
    const __m256i vlo = _mm256_xor_si256(_mm256_set1_epi64x(static_cast<long long>(lo)), flip);
    const __m256i vhi = _mm256_xor_si256(_mm256_set1_epi64x(static_cast<long long>(hi)), flip);
    const __m256i abs = _mm256_set1_epi64x(0x7fffffffffffffffll);
    const __m128i step = _mm_set1_epi32(4);
    __m128i idx = _mm_add_epi32(_mm_set1_epi32(static_cast<int>(j0)), _mm_setr_epi32(0, 1, 2, 3));
    for (; j + 4 <= j1; j += 4, idx = _mm_add_epi32(idx, step)) {
      const __m256d v = _mm256_loadu_pd(r + j);
      const __m256i u = _mm256_xor_si256(_mm256_and_si256(_mm256_castpd_si256(v), abs), flip);
      const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi64(vlo, u), _mm256_cmpgt_epi64(u, vhi));
      const int m = ~_mm256_movemask_pd(_mm256_castsi256_pd(out)) & 0xf;
      const __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompressLut.perm64[m]));
      _mm256_storeu_pd(bd + n, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), p)));
      // the indices' four lanes by the float table's permutation for the same mask
      const __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompressLut.perm[m]));
      const __m128i ci = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castsi128_si256(idx), q));
      if constexpr (sizeof(I) == 4) _mm_storeu_si128(reinterpret_cast<__m128i*>(bi + n), ci);
      else _mm256_storeu_si256(reinterpret_cast<__m256i*>(bi + n), _mm256_cvtepi32_epi64(ci));
      n += __builtin_popcount(static_cast<unsigned>(m));
    }
    return n + select_scalar(r, j, j1, lo, hi, bi + n, bd + n);
  } else {
    std::int64_t n = 0, j = j0;
    // unsigned compare as signed after flipping the top bit (keys are < 2^31, bounds <= 2^32-1)
    const __m256i flip = _mm256_set1_epi32(INT32_MIN);
    const __m256i vlo = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(lo)), flip);
    const __m256i vhi = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(hi)), flip);
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), step = _mm256_set1_epi32(8);
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (; j + 8 <= j1; j += 8, idx = _mm256_add_epi32(idx, step)) {
      const __m256 v = _mm256_loadu_ps(r + j);
      const __m256i u = _mm256_xor_si256(_mm256_and_si256(_mm256_castps_si256(v), abs), flip);
      const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(vlo, u), _mm256_cmpgt_epi32(u, vhi));
      const int m = ~_mm256_movemask_ps(_mm256_castsi256_ps(out)) & 0xff;
      const __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompressLut.perm[m]));
      _mm256_storeu_ps(bd + n, _mm256_permutevar8x32_ps(v, p));
      const __m256i ci = _mm256_permutevar8x32_epi32(idx, p);
      if constexpr (sizeof(I) == 4) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bi + n), ci);
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bi + n), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ci)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bi + n + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ci, 1)));
      }
      n += __builtin_popcount(static_cast<unsigned>(m));
    }
    return n + select_scalar(r, j, j1, lo, hi, bi + n, bd + n);
  }
}
#endif

template <class T, class I>
std::int64_t select_range(const T* r, std::int64_t j0, std::int64_t j1, std::int64_t cs,
                          typename Key<T>::U lo, typename Key<T>::U hi, I* bi, T* bd) {
  if (cs != 1) {
    std::int64_t n = 0;
    for (std::int64_t j = j0; j < j1; ++j) {
      const T v = r[j * cs];
      const auto u = Key<T>::of(v);
      bi[n] = static_cast<I>(j);
      bd[n] = v;
      n += (u >= lo) & (u <= hi);
    }
    return n;
  }
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return select_v4<T, I>(r, j0, j1, lo, hi, bi, bd);
    case Isa::kV3: return select_v3<T, I>(r, j0, j1, lo, hi, bi, bd);
    case Isa::kBase: break;
  }
#endif
  return select_base<T, I>(r, j0, j1, lo, hi, bi, bd);
}

// Column chunk of the row buffers of the compaction.
constexpr std::int64_t kSelectChunk = std::int64_t(1) << 16;

// Keys of a deterministic sample of W (the same for any thread count): runs of up to 32
// consecutive row-major entries, spread evenly over W with a hashed jitter; one run per 2048
// entries of W, 512 to 4096 runs. (A fixed 4096 runs, 131k keys, was 22 % of a 1536×384 W:
// gathering and selecting in it took 1.7 ms of a 2.3 ms prune to 90 %, against 0.58 ms for
// the threshold prune, which has no sample. A smaller sample widens the band that the pass
// collects, as 1/√runs: 3 % of W at 512 runs, 1 % at 4096, both cheap beside the sample.)
template <class T>
std::vector<typename Key<T>::U> sample_keys(std::int64_t rows, std::int64_t cols, const T* w,
                                            std::int64_t rs, std::int64_t cs) {
  const std::int64_t total = rows * cols;
  const std::int64_t kRuns = std::clamp<std::int64_t>(total / 2048, 512, 4096);
  constexpr std::int64_t kRun = 32;
  std::vector<typename Key<T>::U> keys;
  keys.reserve(static_cast<size_t>(kRuns * kRun));
  const std::int64_t stride = total / kRuns;
  for (std::int64_t c = 0; c < kRuns; ++c) {
    std::uint64_t h = static_cast<std::uint64_t>(c + 1) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    const std::int64_t span = std::max<std::int64_t>(stride - kRun, 1);
    const std::int64_t p0 = c * stride + static_cast<std::int64_t>(h % static_cast<std::uint64_t>(span));
    for (std::int64_t p = p0; p < std::min(total, p0 + kRun); ++p)
      keys.push_back(Key<T>::of(at(w, p / cols, p % cols, rs, cs)));
  }
  return keys;
}

}  // namespace

template <class T>
std::int64_t prune_count(std::int64_t rows, std::int64_t cols, const T* w, std::int64_t rs,
                         std::int64_t cs, const PruneSpec& spec, PruneState& state,
                         std::int64_t* indptr, int n_threads) {
  using K = Key<T>;
  using U = typename K::U;
  state.spec = spec;
  state.ties_keep.assign(static_cast<size_t>(rows), 0);
  indptr[0] = 0;
  const std::int64_t total = rows * cols;
  const int nt = threads_for(total, n_threads, kGrainPrune);
  auto nan_error = [](std::int64_t n_nan) {
    return ShapeError("prune: W contains " + std::to_string(n_nan) + " NaN value(s)");
  };

  if (spec.mode == PruneSpec::kNofM) {
    if (spec.m < 1 || spec.n < 0 || spec.n > spec.m)
      throw ShapeError("prune: pattern N:M needs 0 <= N <= M and M >= 1");
    const std::int64_t m = spec.m, n = spec.n;
    std::int64_t n_nan = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : n_nan) if (nt > 1)
    for (std::int64_t i = 0; i < rows; ++i) {
      std::int64_t c = 0;
      for (std::int64_t g = 0; g < cols; g += m) {
        const std::int64_t ge = std::min(cols, g + m);
        for (std::int64_t j = g; j < ge; ++j) {
          const U u = K::of(at(w, i, j, rs, cs));
          n_nan += u > K::kInf;
          if (u == 0) continue;
          std::int64_t beaten = 0;  // entries of the group that rank above this one
          for (std::int64_t q = g; q < ge && beaten < n; ++q) {
            const U v = K::of(at(w, i, q, rs, cs));
            beaten += (v > u) || (v == u && q < j);
          }
          c += beaten < n;
        }
      }
      indptr[i + 1] = c;
    }
    if (n_nan > 0) throw nan_error(n_nan);
    for (std::int64_t i = 0; i < rows; ++i) indptr[i + 1] += indptr[i];
    return indptr[rows];
  }

  // Both other modes keep the entries with key > cut, plus ties_keep[i] entries with key == cut
  // in row i (row-major order). One pass over W counts entries above the band [lo, hi] per row
  // (checking for NaN on the way) and collects the entries inside it; the cut is then chosen
  // among those, so W is read twice in all (this pass and the fill).
  U lo, hi;
  std::int64_t keep = -1;  // kKeepCount: entries to keep
  if (spec.mode == PruneSpec::kThreshold) {
    if (!(spec.threshold >= 0)) throw ShapeError("prune: threshold must be >= 0");
    // compared in W's precision, as NumPy and hard_threshold do: |w| >= T(threshold); zeros
    // are never stored (key 0), so the cut is max(key, 1) - 1 with no ties.
    const U t = K::of(static_cast<T>(spec.threshold));
    hi = t > 0 ? t - 1 : 0;
    lo = hi + 1;  // empty band
  } else {
    if (spec.keep < 0 || spec.keep > total) throw ShapeError("prune: keep count out of range");
    keep = spec.keep;
    if (keep == 0) {
      hi = K::kInf;  // nothing non-NaN above: keeps nothing, still checks for NaN
      lo = hi + 1;
    } else if (total <= kPruneSampleMin) {
      lo = 0;  // small: every entry is a candidate
      hi = K::kInf;
    } else {
      // Bracket the cut between two order statistics of a sample, ±6 standard deviations of
      // the sample quantile plus one run (runs are correlated): the band then holds about 1 %
      // of W for 90 % sparsity, and misses the cut with probability ~1e-9 for i.i.d. data
      // (a miss costs a radix select and one more pass, never a wrong answer).
      std::vector<U> sk = sample_keys(rows, cols, w, rs, cs);
      const auto S = static_cast<std::int64_t>(sk.size());
      const double q = static_cast<double>(keep) / static_cast<double>(total);
      const double r = static_cast<double>(S) * (1.0 - q);  // ascending rank of the cut
      const double margin = 6.0 * std::sqrt(static_cast<double>(S) * q * (1.0 - q)) + 32.0;
      const auto r_lo = static_cast<std::int64_t>(std::floor(r - margin));
      const auto r_hi = static_cast<std::int64_t>(std::ceil(r + margin));
      if (r_lo < 0) {
        lo = 0;
      } else {
        std::nth_element(sk.begin(), sk.begin() + r_lo, sk.end());
        lo = sk[static_cast<size_t>(r_lo)];
      }
      if (r_hi >= S) {
        hi = K::kInf;
      } else {
        // (after the first selection, every key from r_lo + 1 on is at or above sk[r_lo])
        std::nth_element(sk.begin() + std::max<std::int64_t>(r_lo + 1, 0), sk.begin() + r_hi, sk.end());
        hi = std::min(sk[static_cast<size_t>(r_hi)], K::kInf);
      }
      lo = std::min(lo, hi);
    }
  }

  std::vector<std::vector<Cand<U>>> cands(static_cast<size_t>(nt));
  std::int64_t n_nan = 0, above_total = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(+ : n_nan, above_total)
  {
    std::vector<Cand<U>>& mine = cands[static_cast<size_t>(thread_id())];
    std::vector<std::int64_t> bi;
    std::vector<T> bd;
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < rows; ++i) {
      const T* r = w + i * rs;
      const RowTally<T> t = tally_row(r, cols, cs, lo, hi);
      indptr[i + 1] = t.above;
      n_nan += t.nan;
      above_total += t.above;
      if (t.band > 0 && t.nan == 0) {  // collect the band (the row is in cache now)
        for (std::int64_t j0 = 0; j0 < cols; j0 += kSelectChunk) {
          const std::int64_t j1 = std::min(cols, j0 + kSelectChunk);
          bi.resize(static_cast<size_t>(j1 - j0 + 16));
          bd.resize(bi.size());
          const std::int64_t nb = select_range(r, j0, j1, cs, lo, hi, bi.data(), bd.data());
          for (std::int64_t q = 0; q < nb; ++q)
            mine.push_back(Cand<U>{K::of(bd[static_cast<size_t>(q)]), i * cols + bi[static_cast<size_t>(q)]});
        }
      }
    }
  }
  if (n_nan > 0) throw nan_error(n_nan);

  U cut = hi;  // threshold mode and keep == 0: no ties
  if (keep > 0) {
    // static schedule: thread t holds rows in ascending blocks, so the concatenation is in
    // row-major order whatever the thread count
    std::vector<Cand<U>> band;
    for (auto& c : cands) band.insert(band.end(), c.begin(), c.end());
    cands.clear();
    const auto n_band = static_cast<std::int64_t>(band.size());
    const std::int64_t need = keep - above_total;  // to take from the band
    if (need <= 0 || need > n_band) {
      // The sample missed (adversarial or highly structured W): exact radix select, then
      // recount against the exact cut.
      cut = static_cast<U>(select_key(rows, cols, w, rs, cs, keep, n_threads));
      std::vector<std::int64_t> eq(static_cast<size_t>(rows));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (std::int64_t i = 0; i < rows; ++i) {
        const RowTally<T> t = tally_row(w + i * rs, cols, cs, cut, cut);
        indptr[i + 1] = t.above;
        eq[static_cast<size_t>(i)] = t.band;
      }
      std::int64_t quota = keep;
      for (std::int64_t i = 0; i < rows; ++i) quota -= indptr[i + 1];
      if (cut == 0) quota = 0;
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t t = std::min(quota, eq[static_cast<size_t>(i)]);
        state.ties_keep[static_cast<size_t>(i)] = t;
        quota -= t;
        indptr[i + 1] += t;
      }
    } else {
      // the need-th largest key of the band
      std::vector<U> keys(static_cast<size_t>(n_band));
      for (std::int64_t p = 0; p < n_band; ++p) keys[static_cast<size_t>(p)] = band[static_cast<size_t>(p)].key;
      std::nth_element(keys.begin(), keys.begin() + (n_band - need), keys.end());
      cut = keys[static_cast<size_t>(n_band - need)];
      std::int64_t quota = need;
      for (const auto& c : band) quota -= c.key > cut;
      if (cut == 0) quota = 0;  // zeros are never stored
      for (const auto& c : band) {
        const std::int64_t i = c.pos / cols;
        if (c.key > cut) {
          ++indptr[i + 1];
        } else if (c.key == cut && quota > 0) {
          ++indptr[i + 1];
          ++state.ties_keep[static_cast<size_t>(i)];
          --quota;
        }
      }
    }
  }
  state.key = cut;
  for (std::int64_t i = 0; i < rows; ++i) indptr[i + 1] += indptr[i];
  return indptr[rows];
}

template <class T, class I>
void prune_fill(std::int64_t rows, std::int64_t cols, const T* w, std::int64_t rs, std::int64_t cs,
                const PruneState& state, const std::int64_t* indptr, I* indices, T* data,
                int n_threads) {
  using K = Key<T>;
  using U = typename K::U;
  const int nt = threads_for(rows * cols, n_threads, kGrainPrune);
  const PruneSpec& spec = state.spec;
  if (spec.mode == PruneSpec::kNofM) {
    const std::int64_t m = spec.m, n = spec.n;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t i = 0; i < rows; ++i) {
      std::int64_t p = indptr[i];
      for (std::int64_t g = 0; g < cols; g += m) {
        const std::int64_t ge = std::min(cols, g + m);
        for (std::int64_t j = g; j < ge; ++j) {
          const T v0 = at(w, i, j, rs, cs);
          const U u = K::of(v0);
          if (u == 0) continue;
          std::int64_t beaten = 0;
          for (std::int64_t q = g; q < ge && beaten < n; ++q) {
            const U v = K::of(at(w, i, q, rs, cs));
            beaten += (v > u) || (v == u && q < j);
          }
          if (beaten < n) {
            indices[p] = static_cast<I>(j);
            data[p++] = v0;
          }
        }
      }
    }
    return;
  }
  const U cut = static_cast<U>(state.key);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    // Compaction into a row buffer (vectorized where the ISA allows, see select_range), then
    // one copy into the row's slot of the output.
    const auto chunk = std::min<std::int64_t>(cols, kSelectChunk);
    std::vector<I> bi(static_cast<size_t>(chunk + 16));
    std::vector<T> bd(bi.size());
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < rows; ++i) {
      const T* r = w + i * rs;
      std::int64_t p = indptr[i];
      std::int64_t ties = state.ties_keep[static_cast<size_t>(i)];
      for (std::int64_t j0 = 0; j0 < cols; j0 += chunk) {
        const std::int64_t j1 = std::min<std::int64_t>(cols, j0 + chunk);
        std::int64_t n = 0;
        if (ties == 0) {
          n = select_range(r, j0, j1, cs, static_cast<U>(cut + 1), K::kInf, bi.data(), bd.data());
        } else {
          for (std::int64_t j = j0; j < j1; ++j) {
            const T v = r[j * cs];
            const U u = K::of(v);
            const bool tie = (u == cut) & (ties > 0);
            ties -= tie;
            bi[static_cast<size_t>(n)] = static_cast<I>(j);
            bd[static_cast<size_t>(n)] = v;
            n += (u > cut) | tie;
          }
        }
        std::memcpy(indices + p, bi.data(), static_cast<size_t>(n) * sizeof(I));
        std::memcpy(data + p, bd.data(), static_cast<size_t>(n) * sizeof(T));
        p += n;
      }
    }
  }
}

#define WP_PRUNE_INST(T)                                                                      \
  template std::int64_t prune_count<T>(std::int64_t, std::int64_t, const T*, std::int64_t,     \
                                       std::int64_t, const PruneSpec&, PruneState&,           \
                                       std::int64_t*, int);                                   \
  template void prune_fill<T, std::int32_t>(std::int64_t, std::int64_t, const T*, std::int64_t, \
                                            std::int64_t, const PruneState&, const std::int64_t*, \
                                            std::int32_t*, T*, int);                          \
  template void prune_fill<T, std::int64_t>(std::int64_t, std::int64_t, const T*, std::int64_t, \
                                            std::int64_t, const PruneState&, const std::int64_t*, \
                                            std::int64_t*, T*, int);
WP_PRUNE_INST(float)
WP_PRUNE_INST(double)

void narrow_indptr(std::int64_t rows, const std::int64_t* in, std::int32_t* out) {
  for (std::int64_t i = 0; i <= rows; ++i) out[i] = static_cast<std::int32_t>(in[i]);
}

}  // namespace wp
