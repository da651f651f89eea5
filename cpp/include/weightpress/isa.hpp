// The one way the engine selects instruction sets: a hot loop is written once as an
// always-inline template, compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2) and the baseline
// by thin wrappers marked WP_TARGET_V4 / WP_TARGET_V3, and called through a switch on
// wp::isa_level(), which asks the CPU once (wheels stay portable: no -march flag). Other
// architectures (aarch64) and compilers without the attributes compile the baseline only.
// Used by csr.cpp (SpMV/SpMM row kernels), prune.cpp (count and compaction), quant.cpp (the
// packed products, by region), probe.cpp and pursuit.cpp (OMP's two hot loops).
//
// GCC (12 measured) contracts a*b+c into one FMA under -std=c++17 wherever the target level
// has FMA, so the v3/v4 copies of a loop may differ from the baseline copy in the last bit.
// Kernels that must give bit-identical results on every CPU are compiled with
// -ffp-contract=off (CMakeLists.txt: obs.cpp) or document where FMA changes the last bit.
// Explicit std::fma is the other way (pursuit.cpp's OMP loops): one rounding by definition, so
// the AVX2 and AVX-512 copies give the same bits; the baseline copy, for CPUs without FMA,
// multiplies then adds (libm's software fma is far slower) and differs in the last bits.
#pragma once

#define WP_INLINE __attribute__((always_inline)) inline

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define WP_X86_DISPATCH 1
#define WP_TARGET_V4 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt,prefer-vector-width=512")))
#define WP_TARGET_V3 __attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt")))
// The same targets for a whole region of code (a namespace of kernels included from a .inc
// file, as quant.cpp does): every function in it, inline helpers and lambdas included, is
// compiled for the level. WP_BEGIN_TARGET_V3 ... WP_END_TARGET.
#if defined(__clang__)
#define WP_BEGIN_TARGET_V3 \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c,bmi,bmi2,popcnt\"))), apply_to = function)")
#define WP_BEGIN_TARGET_V4                                                                       \
  _Pragma(                                                                                        \
      "clang attribute push(__attribute__((target(\"avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt\"))), apply_to = function)")
#define WP_END_TARGET _Pragma("clang attribute pop")
#else
#define WP_BEGIN_TARGET_V3 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,bmi,bmi2,popcnt\")")
#define WP_BEGIN_TARGET_V4       \
  _Pragma("GCC push_options") \
      _Pragma("GCC target(\"avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt,prefer-vector-width=512\")")
#define WP_END_TARGET _Pragma("GCC pop_options")
#endif
#endif

#include <algorithm>
#include <cstdlib>

namespace wp {

enum class Isa : int { kBase = 0, kV3 = 1, kV4 = 2 };

// The widest level this CPU supports (kBase off x86-64). Computed once.
inline Isa isa_level() {
#ifdef WP_X86_DISPATCH
  static const Isa level = [] {
    __builtin_cpu_init();
    // x86-64-v3 as the psABI defines it (AVX2 + FMA + F16C + BMI1/2), and v4 on top of it
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2");
    Isa best = v3 ? Isa::kV3 : Isa::kBase;
    if (v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      best = Isa::kV4;
    // WP_MAX_ISA=0|1|2 caps the level (tests run the AVX2 and baseline paths on any CPU)
    const char* cap = std::getenv("WP_MAX_ISA");
    if (cap && cap[0] >= '0' && cap[0] <= '2' && cap[1] == '\0')
      best = std::min(best, static_cast<Isa>(cap[0] - '0'));
    return best;
  }();
  return level;
#else
  return Isa::kBase;
#endif
}

}  // namespace wp
