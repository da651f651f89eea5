// Integer quantization of weight matrices: bit packing (2–8 bits), round-to-nearest with
// per-row or group-wise float16 scales, and products with the packed matrix that dequantize
// in registers (the float matrix is never materialised).
//
// Storage (the format every function here reads and writes):
//   - W is (rows × cols), groups run along each row: group gi of row r covers columns
//     [gi·group, min((gi+1)·group, cols)); group = cols means one scale per row.
//   - codes u ∈ [0, 2^bits) are packed per row, little-endian bit order (element j of a row at
//     bit j·bits of the row's bytes), each row padded to whole bytes: row_bytes = ⌈cols·bits/8⌉.
//   - value = scale · (u − zero). Symmetric: zero = 2^(bits−1) for every group (not stored),
//     scale = max|w| / (2^(bits−1) − 1). Asymmetric: zero ∈ [0, 2^bits) stored per group
//     (uint8), scale = (max(w,0) − min(w,0)) / (2^bits − 1), so 0 is exactly representable.
//   - scales are IEEE float16 bit patterns (uint16), rows × n_groups, row-major.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "weightpress/errors.hpp"
#include "weightpress/isa.hpp"

namespace wp {

struct QuantSpec {
  int bits = 4;            // 2..8
  std::int64_t group = 0;  // columns per scale; 0 or >= cols means one scale per row
  bool symmetric = true;
  bool mse = false;        // search the clipping range for the least squared error (below)
};

inline std::int64_t quant_row_bytes(std::int64_t cols, int bits) { return (cols * bits + 7) / 8; }
inline std::int64_t quant_group(std::int64_t cols, std::int64_t group) {
  return (group <= 0 || group >= cols) ? (cols > 0 ? cols : 1) : group;
}
inline std::int64_t quant_n_groups(std::int64_t cols, std::int64_t group) {
  const std::int64_t g = quant_group(cols, group);
  return cols == 0 ? 0 : (cols + g - 1) / g;
}
// Throws ShapeError unless 2 <= bits <= 8 and group >= 0.
void quant_check_spec(const QuantSpec& spec, const char* who);

// ---- float16 (IEEE binary16) bit patterns, round to nearest even ----------------------------
inline std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (ax < 0x38800000u) {  // below 2^-14: a half subnormal (or zero), in units of 2^-24
    float v;
    std::memcpy(&v, &ax, 4);
    const auto m = static_cast<std::uint32_t>(std::nearbyint(v * 16777216.0f));
    return static_cast<std::uint16_t>(sign | m);
  }
  std::uint32_t h = ((((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13));
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}
// A stored float16 scale, read without assuming 2-byte alignment: scales may be a view into a
// container's byte buffer at any offset (UBSan flagged the plain load in the product).
inline std::uint16_t load_half(const std::uint16_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 31u, m = h & 0x3ffu;
  std::uint32_t bits;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) bits = sign | 0x7f800000u | (m << 13);
  else bits = sign | ((e + 112u) << 23) | (m << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---- One group's parameters and codes (shared by round-to-nearest and the OBS sweep) --------
// fmin/fmax of a running bound and a value, NaN values ignored (the bound is never NaN), as
// compares: std::fmin/fmax are library calls on x86-64 without -ffinite-math-only, and three
// per weight were a fifth of GPTQ's sweep. Signed zeros may differ from fmin's; no result here
// depends on the sign of a zero bound.
inline double min_num(double bound, double v) { return v < bound ? v : bound; }
inline double max_num(double bound, double v) { return v > bound ? v : bound; }


struct GroupParams {
  float scale;          // the float16-rounded scale, as a float
  std::uint16_t half;   // its bit pattern
  int zero;             // code of the value 0
};

// Parameters for the values w[0 .. n) (min/max rule above). Throws ShapeError if the scale
// overflows float16 (|w| beyond about 65504 · (2^(bits-1) - 1)).
struct GroupRange {
  double lo, hi, amax;  // min(0, w), max(0, w), max |w| (NaN skipped)
};

// The range of w[0 .. n), in 32-byte vectors of T (GCC's vector extension: the compares become
// vector compares and blends on every level, which the scalar ternaries do not without
// -ffinite-math-only; that scalar chain was a third of the clipping search's time). Exact:
// minima and maxima round nothing, so the lanes' order does not matter, and T holds each value
// exactly as double does.
template <class T>
WP_INLINE GroupRange group_range(const T* w, std::int64_t n) {
  constexpr int L = 16 / sizeof(T);
  typedef T V __attribute__((vector_size(16)));
  V lo = {}, hi = {}, am = {};
  const V zero = {};
  std::int64_t j = 0;
  for (; j + L <= n; j += L) {
    V v;
    std::memcpy(&v, w + j, sizeof v);
    const V a = v < zero ? -v : v;
    lo = v < lo ? v : lo;  // (NaN compares false: skipped, as by min_num/max_num)
    hi = v > hi ? v : hi;
    am = a > am ? a : am;
  }
  GroupRange r{0.0, 0.0, 0.0};
  for (int i = 0; i < L; ++i) {
    r.lo = min_num(r.lo, static_cast<double>(lo[i]));
    r.hi = max_num(r.hi, static_cast<double>(hi[i]));
    r.amax = max_num(r.amax, static_cast<double>(am[i]));
  }
  for (; j < n; ++j) {
    const double v = static_cast<double>(w[j]);
    r.lo = min_num(r.lo, v);
    r.hi = max_num(r.hi, v);
    r.amax = max_num(r.amax, std::fabs(v));
  }
  return r;
}

// Parameters of a group whose range is r.
inline GroupParams quant_params_of(const GroupRange& r, int bits, bool symmetric);

template <class T>
inline GroupParams quant_params(const T* w, std::int64_t n, int bits, bool symmetric) {
  return quant_params_of(group_range(w, n), bits, symmetric);
}

inline GroupParams quant_params_of(const GroupRange& r, int bits, bool symmetric) {
  const int maxq = (1 << bits) - 1;
  const double lo = r.lo;
  const double s = symmetric ? r.amax / static_cast<double>((1 << (bits - 1)) - 1)
                             : (r.hi - r.lo) / maxq;
  GroupParams p;
  p.half = float_to_half(static_cast<float>(s));
  // The scale is rounded UP to float16: rounded down, it spans the range in more steps than the
  // codes have, and the extreme weight clips — by whole steps at float16's subnormal scales
  // (below 2^-14), and by just over half a step where the zero point's rounding adds to it
  // (an 8-bit group [-0.133, 0.0135]: 0.524 step). Rounded up, (hi - lo) / scale <= maxq, so
  // some zero point keeps both ends within half a step, and round(-lo / scale) is one.
  if (s > 0 && static_cast<double>(half_to_float(p.half)) < s) ++p.half;
  if ((p.half & 0x7c00u) == 0x7c00u)
    throw ShapeError("quantize: a group's scale " + std::to_string(s) +
                     " does not fit float16 (weights too large or not finite)");
  p.scale = half_to_float(p.half);
  if (symmetric) p.zero = 1 << (bits - 1);
  else {
    double z = p.scale > 0 ? std::nearbyint(-lo / p.scale) : 0.0;
    p.zero = static_cast<int>(z < 0 ? 0 : (z > maxq ? maxq : z));
  }
  return p;
}

// With mse: the range (max|w|, or [min, max]) shrunk by each of 1, 0.95, ..., 0.5 in turn, the
// one whose rounding leaves the least squared error on w[0 .. n) kept (ties: the widest).
// Clipping a few large weights buys a finer step for all the others (GPTQ's grid search).
template <class T>
WP_INLINE GroupParams quant_params_mse(const T* w, std::int64_t n, int bits, bool symmetric);

// Code of w under p: clamp(round(w / scale) + zero, 0, 2^bits - 1); NaN gives 0.
template <class T>
inline int quant_code(T w, const GroupParams& p, int maxq) {
  if (!(p.scale > 0)) return p.zero;
  double t = std::nearbyint(static_cast<double>(w) / p.scale) + p.zero;
  if (!(t >= 0)) t = 0;
  if (t > maxq) t = maxq;
  return static_cast<int>(t);
}

// Always inlined: the OBS sweep's AVX2/AVX-512 copies then run its error loop in their own
// vectors (it was a tenth of GPTQ's sweep in baseline SSE); obs.cpp is compiled without FP
// contraction, so every copy computes the same sums.
template <class T>
WP_INLINE GroupParams quant_params_mse(const T* w, std::int64_t n, int bits, bool symmetric) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  const GroupRange range = group_range(w, n);
  GroupParams best{};
  double best_err = -1;
  for (int k = 0; k <= 10; ++k) {
    const double shrink = 1.0 - 0.05 * k;
    // the shrunk range, as the two points it was taken from (rounded to T, then back)
    const double a = static_cast<double>(static_cast<T>(symmetric ? range.amax * shrink : range.lo * shrink));
    const double b = static_cast<double>(static_cast<T>(symmetric ? 0.0 : range.hi * shrink));
    const GroupParams p = quant_params_of(
        GroupRange{min_num(0.0, min_num(a, b)), max_num(0.0, max_num(a, b)),
                   max_num(std::fabs(a), std::fabs(b))}, bits, symmetric);
    if (!(p.scale > 0)) return p;  // all zero: nothing to search
    // squared rounding error, in float with branch-free clamping and magic-number rounding
    // (to nearest even, like nearbyint, for |t| < 2^22), so the loop vectorizes
    const float inv = 1.0f / p.scale, z = static_cast<float>(p.zero), s = p.scale;
    const float magic = 12582912.0f;  // 1.5 · 2^23
    auto sq = [&](std::int64_t j) {
      const float v = static_cast<float>(w[j]);
      float t = v * inv + z;
      t = std::min(std::max(t, 0.0f), maxq);  // NaN stays NaN, as with the ternaries
      t = (t + magic) - magic;
      const float d = v - s * (t - z);
      return d * d;
    };
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight partial sums: one vector
    std::int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      for (int i = 0; i < 8; ++i) part[i] += sq(j + i);
    float err = 0.0f;
    for (; j < n; ++j) err += sq(j);
    for (int i = 0; i < 8; ++i) err += part[i];
    if (best_err < 0 || static_cast<double>(err) < best_err) best = p, best_err = static_cast<double>(err);
  }
  return best;
}

template <class T>
WP_INLINE GroupParams quant_params_spec(const T* w, std::int64_t n, const QuantSpec& s) {
  return s.mse ? quant_params_mse(w, n, s.bits, s.symmetric) : quant_params(w, n, s.bits, s.symmetric);
}

// ---- Kernels --------------------------------------------------------------------------------
// Pack codes (rows × cols, one per byte, each < 2^bits) into rows × row_bytes. Throws
// ShapeError naming the first code out of range.
void quant_pack(std::int64_t rows, std::int64_t cols, int bits, const std::uint8_t* __restrict codes,
                std::uint8_t* __restrict packed, int n_threads);
// The inverse: rows × row_bytes → rows × cols codes (padding bits are ignored).
void quant_unpack(std::int64_t rows, std::int64_t cols, int bits, const std::uint8_t* __restrict packed,
                  std::uint8_t* __restrict codes, int n_threads);

// Round-to-nearest: codes (rows × cols), scales (rows × n_groups, float16 bits) and, when
// asymmetric, zeros (rows × n_groups). W must be finite (ShapeError otherwise). codes may be null: the
// scales and zeros only.
template <class T>
void quant_rtn(std::int64_t rows, std::int64_t cols, const T* __restrict W, const QuantSpec& spec,
               std::uint8_t* __restrict codes, std::uint16_t* __restrict scales,
               std::uint8_t* __restrict zeros, int n_threads);

// W = scale · (u − zero), rows × cols in T. zeros may be null when symmetric.
template <class T>
void quant_dequantize(std::int64_t rows, std::int64_t cols, const std::uint8_t* __restrict packed,
                      const std::uint16_t* __restrict scales, const std::uint8_t* __restrict zeros,
                      const QuantSpec& spec, T* __restrict out, int n_threads);

// Y (n × rows) = X (n × cols) · Wᵀ with W packed as above. Row-parallel; each output is summed
// in a fixed order (identical for any thread count on one machine). Vectorized paths for 2, 4
// and 8 bits (AVX-512 / AVX2 / SSE2 chosen at run time); 3, 5, 6, 7 bits decode per chunk.
template <class T>
void quant_matmul(std::int64_t rows, std::int64_t cols, const std::uint8_t* __restrict packed,
                  const std::uint16_t* __restrict scales, const std::uint8_t* __restrict zeros,
                  const QuantSpec& spec, std::int64_t n, const T* __restrict X, T* __restrict Y,
                  int n_threads);

// Which vector path quant_matmul takes on this CPU: 2 = AVX-512, 1 = AVX2, 0 = baseline
// (wp::isa_level(), the engine-wide dispatch of weightpress/isa.hpp).
int quant_isa_level();

}  // namespace wp
