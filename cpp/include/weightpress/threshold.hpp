// Elementwise shrinkage. x and out may be the same array (in place); NaN propagates.
#pragma once
#include <cstdint>

namespace wp {
enum class Shrink : int { kSoft = 0, kHard = 1 };

// out = sign(x) * max(|x| - lam, 0), lam >= 0
template <class T>
void soft_threshold(std::int64_t n, const T* x, T lam, T* out, int n_threads);
// out = x if |x| >= theta else 0
template <class T>
void hard_threshold(std::int64_t n, const T* x, T theta, T* out, int n_threads);
}  // namespace wp
