#include "weightpress/prune.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "weightpress/errors.hpp"
#include "weightpress/parallel.hpp"

namespace wp {
namespace {

// Magnitude key: the bits of |w| as an unsigned integer, which orders like |w| for all
// non-NaN values (+0 is key 0). NaN keys are above the key of +inf.
template <class T>
struct Key;
template <>
struct Key<float> {
  using U = std::uint32_t;
  static constexpr U kInf = 0x7f800000u;
  static U of(float v) {
    U u;
    std::memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
  }
};
template <>
struct Key<double> {
  using U = std::uint64_t;
  static constexpr U kInf = 0x7ff0000000000000ull;
  static U of(double v) {
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
  const int nt = threads_for(rows * cols, n_threads, 1 << 16);
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
  const int nt = threads_for(total, n_threads, 1 << 16);
  // NaN check (one pass, shared by all modes; a NaN has no magnitude order).
  std::int64_t n_nan = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : n_nan) if (nt > 1)
  for (std::int64_t i = 0; i < rows; ++i) {
    std::int64_t c = 0;
    each_in_row(w, i, cols, rs, cs, [&](std::int64_t, T v) { c += K::of(v) > K::kInf; });
    n_nan += c;
  }
  if (n_nan > 0) throw ShapeError("prune: W contains " + std::to_string(n_nan) + " NaN value(s)");

  if (spec.mode == PruneSpec::kNofM) {
    if (spec.m < 1 || spec.n < 0 || spec.n > spec.m)
      throw ShapeError("prune: pattern N:M needs 0 <= N <= M and M >= 1");
    const std::int64_t m = spec.m, n = spec.n;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t i = 0; i < rows; ++i) {
      std::int64_t c = 0;
      for (std::int64_t g = 0; g < cols; g += m) {
        const std::int64_t ge = std::min(cols, g + m);
        for (std::int64_t j = g; j < ge; ++j) {
          const U u = K::of(at(w, i, j, rs, cs));
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
  } else {
    U cut;
    std::int64_t tie_quota;  // entries with key == cut to keep, in row-major order
    if (spec.mode == PruneSpec::kThreshold) {
      if (!(spec.threshold >= 0)) throw ShapeError("prune: threshold must be >= 0");
      // compared in W's precision, as NumPy and hard_threshold do: |w| >= T(threshold)
      cut = K::of(static_cast<T>(spec.threshold));
      tie_quota = total;
    } else {
      if (spec.keep < 0 || spec.keep > total) throw ShapeError("prune: keep count out of range");
      if (spec.keep == 0) {
        cut = K::kInf + 1;  // above every non-NaN key: nothing passes
        tie_quota = 0;
      } else {
        cut = static_cast<U>(select_key(rows, cols, w, rs, cs, spec.keep, n_threads));
        tie_quota = -1;  // computed below from the counts
      }
    }
    std::vector<std::int64_t> eq(static_cast<size_t>(rows));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t i = 0; i < rows; ++i) {
      std::int64_t gt = 0, e = 0;
      each_in_row(w, i, cols, rs, cs, [&](std::int64_t, T v) {
        const U u = K::of(v);
        gt += u > cut;
        e += u == cut;
      });
      indptr[i + 1] = gt;
      eq[static_cast<size_t>(i)] = e;
    }
    if (tie_quota < 0) {
      std::int64_t greater = 0;
      for (std::int64_t i = 0; i < rows; ++i) greater += indptr[i + 1];
      tie_quota = spec.keep - greater;
    }
    if (cut == 0) tie_quota = 0;  // zeros are never stored
    for (std::int64_t i = 0; i < rows; ++i) {
      const std::int64_t t = std::min(tie_quota, eq[static_cast<size_t>(i)]);
      state.ties_keep[static_cast<size_t>(i)] = t;
      tie_quota -= t;
      indptr[i + 1] += t;
    }
    state.key = cut;
  }
  for (std::int64_t i = 0; i < rows; ++i) indptr[i + 1] += indptr[i];
  return indptr[rows];
}

template <class T, class I>
void prune_fill(std::int64_t rows, std::int64_t cols, const T* w, std::int64_t rs, std::int64_t cs,
                const PruneState& state, const std::int64_t* indptr, I* indices, T* data,
                int n_threads) {
  using K = Key<T>;
  using U = typename K::U;
  const int nt = threads_for(rows * cols, n_threads, 1 << 16);
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
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t i = 0; i < rows; ++i) {
    std::int64_t p = indptr[i];
    std::int64_t ties = state.ties_keep[static_cast<size_t>(i)];
    each_in_row(w, i, cols, rs, cs, [&](std::int64_t j, T v) {
      const U u = K::of(v);
      if (u > cut || (u == cut && ties > 0)) {
        if (u == cut) --ties;
        indices[p] = static_cast<I>(j);
        data[p++] = v;
      }
    });
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
