// Round-to-nearest quantization (quant.hpp): each group's scale and zero point, with or
// without the clipping search, and the codes.
//
// Compiled once per instruction set (isa.hpp) and without FP contraction (CMakeLists.txt):
// the clipping search's error sums are the same bits on every level, so a layer's scales do
// not depend on the CPU. The AVX2/AVX-512 copies run the search's eight partial sums as one
// vector and the range scans in wider ones: GPTQ's static groups ask for every group's
// parameters once per sweep, about a sixth of a calibrated layer's build on the SSE2 copy
// (issue 13).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"
#include "weightpress/quant.hpp"

namespace wp {
namespace {

// Whether w[0 .. n) are all finite, as one branch-free scan (|x| <= max is false for NaN).
template <class T>
WP_INLINE bool all_finite(const T* w, std::int64_t n) {
  const T big = std::numeric_limits<T>::max();
  int bad = 0;
  for (std::int64_t j = 0; j < n; ++j) bad |= !(std::fabs(w[j]) <= big);
  return bad == 0;
}

template <class T>
WP_INLINE void rtn_rows(std::int64_t r0, std::int64_t r1, std::int64_t cols, const T* __restrict W,
                        const QuantSpec& spec, std::uint8_t* __restrict codes,
                        std::uint16_t* __restrict scales, std::uint8_t* __restrict zeros) {
  const std::int64_t g = quant_group(cols, spec.group), ng = quant_n_groups(cols, spec.group);
  const int maxq = (1 << spec.bits) - 1;
  for (std::int64_t r = r0; r < r1; ++r) {
    const T* w = W + r * cols;
    if (!all_finite(w, cols)) {
      std::int64_t j = 0;
      while (std::isfinite(w[j])) ++j;
      throw ShapeError("quantize: W[" + std::to_string(r) + ", " + std::to_string(j) +
                       "] is not finite");
    }
    for (std::int64_t gi = 0; gi < ng; ++gi) {
      const std::int64_t c0 = gi * g, c1 = std::min(c0 + g, cols);
      const GroupParams p = quant_params_spec(w + c0, c1 - c0, spec);
      scales[r * ng + gi] = p.half;
      if (!spec.symmetric) zeros[r * ng + gi] = static_cast<std::uint8_t>(p.zero);
      if (codes != nullptr)  // (null: the parameters only, GPTQ's static groups)
        for (std::int64_t j = c0; j < c1; ++j)
          codes[r * cols + j] = static_cast<std::uint8_t>(quant_code(w[j], p, maxq));
    }
  }
}

template <class T>
void rtn_base(std::int64_t r0, std::int64_t r1, std::int64_t cols, const T* W, const QuantSpec& spec,
              std::uint8_t* codes, std::uint16_t* scales, std::uint8_t* zeros) {
  rtn_rows(r0, r1, cols, W, spec, codes, scales, zeros);
}
#ifdef WP_X86_DISPATCH
// The AVX2 copy serves AVX-512 CPUs too: measured on a Xeon (AVX-512), the 512-bit copy of the
// search took 2.1x the AVX2 copy's time (its eight partial sums are one 256-bit vector; wider
// vectors only add shuffles), the AVX2 copy 0.7x the SSE2 one.
template <class T>
WP_TARGET_V3 void rtn_v3(std::int64_t r0, std::int64_t r1, std::int64_t cols, const T* W,
                         const QuantSpec& spec, std::uint8_t* codes, std::uint16_t* scales,
                         std::uint8_t* zeros) {
  rtn_rows(r0, r1, cols, W, spec, codes, scales, zeros);
}
#endif

}  // namespace

template <class T>
void quant_rtn(std::int64_t rows, std::int64_t cols, const T* __restrict W, const QuantSpec& spec,
               std::uint8_t* __restrict codes, std::uint16_t* __restrict scales,
               std::uint8_t* __restrict zeros, int n_threads) {
  quant_check_spec(spec, "quantize");
  FirstError err;
  const Isa level = isa_level();
  const int nt = threads_for(rows * cols, n_threads, kGrainElementwise);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t r = 0; r < rows; ++r) {
    err.run([&] {
#ifdef WP_X86_DISPATCH
      if (level != Isa::kBase) return rtn_v3(r, r + 1, cols, W, spec, codes, scales, zeros);
#endif
      rtn_base(r, r + 1, cols, W, spec, codes, scales, zeros);
    });
  }
  (void)level;
  err.rethrow();
}

template void quant_rtn<float>(std::int64_t, std::int64_t, const float*, const QuantSpec&,
                               std::uint8_t*, std::uint16_t*, std::uint8_t*, int);
template void quant_rtn<double>(std::int64_t, std::int64_t, const double*, const QuantSpec&,
                                std::uint8_t*, std::uint16_t*, std::uint8_t*, int);

}  // namespace wp
