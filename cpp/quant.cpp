// Integer quantization kernels: pack/unpack, dequantize, and the product with a packed matrix
// (dequantized in registers); round-to-nearest is in quant_rtn.cpp. See quant.hpp for the
// storage format.
#include "weightpress/quant.hpp"

#include <algorithm>
#include <atomic>
#include <string>
#include <type_traits>
#include <vector>

#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"

#ifdef WP_X86_DISPATCH
#include <immintrin.h>
#endif

namespace wp {

void quant_check_spec(const QuantSpec& spec, const char* who) {
  if (spec.bits < 2 || spec.bits > 8)
    throw ShapeError(std::string(who) + ": bits must be in [2, 8], got " + std::to_string(spec.bits));
  if (spec.group < 0)
    throw ShapeError(std::string(who) + ": group must be >= 0 (0 = one scale per row), got " +
                     std::to_string(spec.group));
}

namespace {

// Code j of a packed row (any bits in 2..8): read the (at most two) bytes it spans.
inline unsigned get_code(const std::uint8_t* row, std::int64_t j, int bits, std::int64_t row_bytes) {
  const std::int64_t bit = j * bits;
  const std::int64_t byte = bit >> 3;
  unsigned v = row[byte];
  if (byte + 1 < row_bytes) v |= static_cast<unsigned>(row[byte + 1]) << 8;
  return (v >> (bit & 7)) & ((1u << bits) - 1u);
}

// One packed row's codes, one per byte (8 and 4 bits as byte loops, which vectorize).
inline void unpack_row(const std::uint8_t* in, std::uint8_t* __restrict c, std::int64_t cols, int bits,
                       std::int64_t row_bytes) {
  if (cols <= 0) return;  // (memcpy of nothing from a null row is still undefined: UBSan)
  if (bits == 8) {
    std::memcpy(c, in, static_cast<size_t>(cols));
  } else if (bits == 4) {
    const std::int64_t h = cols / 2;
    for (std::int64_t k = 0; k < h; ++k) {
      c[2 * k] = static_cast<std::uint8_t>(in[k] & 15u);
      c[2 * k + 1] = static_cast<std::uint8_t>(in[k] >> 4);
    }
    if (cols & 1) c[cols - 1] = static_cast<std::uint8_t>(in[h] & 15u);
  } else {
    for (std::int64_t j = 0; j < cols; ++j) c[j] = static_cast<std::uint8_t>(get_code(in, j, bits, row_bytes));
  }
}

inline float group_zero(const std::uint8_t* zeros, std::int64_t idx, const QuantSpec& spec) {
  return spec.symmetric ? static_cast<float>(1 << (spec.bits - 1)) : static_cast<float>(zeros[idx]);
}

}  // namespace

void quant_pack(std::int64_t rows, std::int64_t cols, int bits, const std::uint8_t* __restrict codes,
                std::uint8_t* __restrict packed, int n_threads) {
  quant_check_spec(QuantSpec{bits, 0, true}, "quant_pack");
  const std::int64_t rb = quant_row_bytes(cols, bits);
  const unsigned limit = 1u << bits;
  std::atomic<std::int64_t> first_bad{-1};
  const int nt = threads_for(rows * cols, n_threads, kGrainIndexScan);  // a byte scan
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint8_t* c = codes + r * cols;
    std::uint8_t* out = packed + r * rb;
    unsigned any = 0;
    for (std::int64_t j = 0; j < cols; ++j) any |= static_cast<unsigned>(c[j] >= limit);
    if (any) {
      for (std::int64_t j = 0; j < cols; ++j)
        if (c[j] >= limit) {
          std::int64_t expect = -1;
          first_bad.compare_exchange_strong(expect, r * cols + j);
          break;
        }
      continue;
    }
    if (bits == 8) {
      std::memcpy(out, c, static_cast<size_t>(cols));
    } else if (bits == 4) {
      const std::int64_t h = cols / 2;
      for (std::int64_t k = 0; k < h; ++k)
        out[k] = static_cast<std::uint8_t>(c[2 * k] | (c[2 * k + 1] << 4));
      if (cols & 1) out[h] = c[cols - 1];
    } else {
      std::uint64_t acc = 0;
      int nb = 0;
      std::int64_t o = 0;
      for (std::int64_t j = 0; j < cols; ++j) {
        acc |= static_cast<std::uint64_t>(c[j]) << nb;
        nb += bits;
        while (nb >= 8) {
          out[o++] = static_cast<std::uint8_t>(acc & 0xffu);
          acc >>= 8;
          nb -= 8;
        }
      }
      if (nb > 0) out[o++] = static_cast<std::uint8_t>(acc & 0xffu);
    }
  }
  const std::int64_t bad = first_bad.load();
  if (bad >= 0)
    throw ShapeError("quant_pack: code " + std::to_string(codes[bad]) + " at flat position " +
                     std::to_string(bad) + " does not fit " + std::to_string(bits) + " bits");
}

void quant_unpack(std::int64_t rows, std::int64_t cols, int bits, const std::uint8_t* __restrict packed,
                  std::uint8_t* __restrict codes, int n_threads) {
  quant_check_spec(QuantSpec{bits, 0, true}, "quant_unpack");
  const std::int64_t rb = quant_row_bytes(cols, bits);
  const int nt = threads_for(rows * cols, n_threads, kGrainIndexScan);  // a byte scan
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t r = 0; r < rows; ++r) unpack_row(packed + r * rb, codes + r * cols, cols, bits, rb);
}

template <class T>
void quant_dequantize(std::int64_t rows, std::int64_t cols, const std::uint8_t* __restrict packed,
                      const std::uint16_t* __restrict scales, const std::uint8_t* __restrict zeros,
                      const QuantSpec& spec, T* __restrict out, int n_threads) {
  quant_check_spec(spec, "dequantize");
  const std::int64_t g = quant_group(cols, spec.group), ng = quant_n_groups(cols, spec.group);
  const std::int64_t rb = quant_row_bytes(cols, spec.bits);
  const int nt = threads_for(rows * cols, n_threads, kGrainElementwise);
  // Each row's codes unpacked into a byte buffer first (the 8- and 4-bit cases as plain byte
  // loops), then scaled group by group: both loops vectorize, where reading each code through
  // get_code's two loads and variable shifts did not (~10 ns a weight on the ratio search's
  // error checks; issue 13)
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<std::uint8_t> c(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::uint8_t* __restrict cr = c.data();
      unpack_row(packed + r * rb, c.data(), cols, spec.bits, rb);
      T* __restrict o = out + r * cols;
      for (std::int64_t gi = 0; gi < ng; ++gi) {
        const T s = static_cast<T>(half_to_float(load_half(scales + r * ng + gi)));
        const T z = static_cast<T>(group_zero(zeros, r * ng + gi, spec));
        const std::int64_t c1 = std::min((gi + 1) * g, cols);
        for (std::int64_t j = gi * g; j < c1; ++j) o[j] = s * (static_cast<T>(cr[j]) - z);
      }
    }
  }
}

// ---- The product ----------------------------------------------------------------------------
// Compiled once per instruction set (the namespaces below), chosen per CPU by wp::isa_level()
// (weightpress/isa.hpp), the engine's one dispatch.

namespace {

template <class T, int N>
struct Vec {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <class T, int N>
using vec_t = typename Vec<T, N>::type;

struct MatArgs {
  std::int64_t rows, cols, g, ng, rb, n;
  int bits;
  bool symmetric;
  const std::uint8_t* packed;
  const std::uint16_t* scales;
  const std::uint8_t* zeros;
};

// The fast path holds for bits 2, 4, 8 when each group starts on a byte boundary.
inline bool fast_bits(int bits, std::int64_t g) {
  return (bits == 2 || bits == 4 || bits == 8) && ((g * bits) % 8 == 0);
}

// x permuted to the order in which a chunk's codes come out of the bytes: a chunk is L bytes
// holding per = 8/bits codes each; sub-vector k of a chunk holds codes per·i + k (i < L).
template <class T>
void permute_x(const MatArgs& a, int L, const T* x, T* xp) {
  const int per = 8 / a.bits;
  const std::int64_t C = static_cast<std::int64_t>(per) * L;
  for (std::int64_t gi = 0; gi < a.ng; ++gi) {
    const std::int64_t c0 = gi * a.g, c1 = std::min(c0 + a.g, a.cols);
    std::int64_t c = c0;
    if (fast_bits(a.bits, a.g))
      for (; c + C <= c1; c += C)
        for (int k = 0; k < per; ++k)
          for (int i = 0; i < L; ++i) xp[c + k * L + i] = x[c + per * i + k];
    for (; c < c1; ++c) xp[c] = x[c];
  }
}

}  // namespace
}  // namespace wp

// The kernels, once per instruction set (see quant_tile.inc).
namespace qk_base {
using wp::MatArgs;
using wp::fast_bits;
using wp::get_code;
using wp::vec_t;
using wp::half_to_float;
using wp::load_half;
constexpr int kVecBytes = 16;
#define WPQ_HAS_F16C 0
#define WPQ_LUT 0
#include "quant_tile.inc"
#undef WPQ_HAS_F16C
#undef WPQ_LUT
}  // namespace qk_base
#ifdef WP_X86_DISPATCH
WP_BEGIN_TARGET_V3
namespace qk_v3 {
using wp::MatArgs;
using wp::fast_bits;
using wp::get_code;
using wp::vec_t;
using wp::half_to_float;
using wp::load_half;
constexpr int kVecBytes = 32;
#define WPQ_HAS_F16C 1
#define WPQ_LUT 0
#include "quant_tile.inc"
#undef WPQ_HAS_F16C
#undef WPQ_LUT
}  // namespace qk_v3
WP_END_TARGET
WP_BEGIN_TARGET_V4
namespace qk_v4 {
using wp::MatArgs;
using wp::fast_bits;
using wp::get_code;
using wp::vec_t;
using wp::half_to_float;
using wp::load_half;
constexpr int kVecBytes = 64;
#define WPQ_HAS_F16C 1
#define WPQ_LUT 1
#include "quant_tile.inc"
#undef WPQ_HAS_F16C
#undef WPQ_LUT
}  // namespace qk_v4
WP_END_TARGET
#endif

namespace wp {

int quant_isa_level() { return static_cast<int>(isa_level()); }

template <class T>
void quant_matmul(std::int64_t rows, std::int64_t cols, const std::uint8_t* __restrict packed,
                  const std::uint16_t* __restrict scales, const std::uint8_t* __restrict zeros,
                  const QuantSpec& spec, std::int64_t n, const T* __restrict X, T* __restrict Y,
                  int n_threads) {
  quant_check_spec(spec, "quant_matmul");
  if (n == 0 || rows == 0) return;
  if (cols == 0) {
    std::fill(Y, Y + n * rows, T(0));
    return;
  }
  const MatArgs a{rows, cols, quant_group(cols, spec.group), quant_n_groups(cols, spec.group),
                  quant_row_bytes(cols, spec.bits), n, spec.bits, spec.symmetric, packed, scales,
                  zeros};
#ifdef WP_X86_DISPATCH
  const int level = quant_isa_level();
  const int L = level == 2 ? qk_v4::lanes<T>() : level == 1 ? qk_v3::lanes<T>() : qk_base::lanes<T>();
#else
  const int L = qk_base::lanes<T>();  // (one copy off x86-64: no level to ask, aarch64 included)
#endif
  const bool fast = fast_bits(a.bits, a.g);
  std::vector<T> xpbuf(static_cast<size_t>(n * cols));
  std::vector<const T*> xp(static_cast<size_t>(n));
  std::vector<T*> y(static_cast<size_t>(n));
  for (std::int64_t b = 0; b < n; ++b) {
    if (fast) permute_x<T>(a, L, X + b * cols, xpbuf.data() + b * cols);
    else std::copy(X + b * cols, X + (b + 1) * cols, xpbuf.data() + b * cols);
    xp[static_cast<size_t>(b)] = xpbuf.data() + b * cols;
    y[static_cast<size_t>(b)] = Y + b * rows;
  }
  const T* const* xq = xp.data();
  T* const* yq = y.data();
  const std::int64_t items = (fast && n < 4) ? rows / 4 + 1 : rows;
  // at least ~1 M weights per thread (tens of µs): smaller products are done before a team wakes
  const int nt = threads_for(rows * cols * n, n_threads, std::int64_t(1) << 20);
  // Dynamic chunks (8 per thread): on a shared machine a descheduled thread's rows are taken
  // by the other; each output is still computed by one thread in one fixed order.
  const std::int64_t chunk = std::max<std::int64_t>(1, items / (8 * std::int64_t(nt)));
  const std::int64_t n_chunks = (items + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (std::int64_t ci = 0; ci < n_chunks; ++ci) {
    const std::int64_t t0 = ci * chunk, t1 = std::min(items, t0 + chunk);
#ifdef WP_X86_DISPATCH
    if (level == 2) qk_v4::range<T>(a, xq, yq, t0, t1);
    else if (level == 1) qk_v3::range<T>(a, xq, yq, t0, t1);
    else qk_base::range<T>(a, xq, yq, t0, t1);
#else
    qk_base::range<T>(a, xq, yq, t0, t1);
#endif
  }
}

#define WP_QUANT_INST(T)                                                                        \
  template void quant_dequantize<T>(std::int64_t, std::int64_t, const std::uint8_t*,             \
                                    const std::uint16_t*, const std::uint8_t*, const QuantSpec&, \
                                    T*, int);                                                     \
  template void quant_matmul<T>(std::int64_t, std::int64_t, const std::uint8_t*,                 \
                                const std::uint16_t*, const std::uint8_t*, const QuantSpec&,     \
                                std::int64_t, const T*, T*, int);
WP_QUANT_INST(float)
WP_QUANT_INST(double)

}  // namespace wp
