#include "weightpress/threshold.hpp"

#include <cmath>

#include "weightpress/parallel.hpp"

namespace wp {

template <class T>
void soft_threshold(std::int64_t n, const T* x, T lam, T* out, int n_threads) {
  const int nt = threads_for(n, n_threads, kGrainElementwise);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const T a = std::abs(v) - lam;
    // As sign(x)·max(|x| − λ, 0) in NumPy: a zero is −0 for negative x (sign(±0) is 0, so
    // +0 for x = ±0); NaN (x NaN, or inf − inf at λ = inf) stays NaN, since !(a <= 0) and
    // copysign(NaN, x) is NaN.
    out[i] = (a <= T(0)) ? (v < T(0) ? -T(0) : T(0)) : std::copysign(a, v);
  }
}

template <class T>
void hard_threshold(std::int64_t n, const T* x, T theta, T* out, int n_threads) {
  const int nt = threads_for(n, n_threads, kGrainElementwise);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    // NaN < theta is false: NaN is kept. A zero keeps x's sign, as x·(|x| >= θ) in NumPy.
    out[i] = (std::abs(v) < theta) ? std::copysign(T(0), v) : v;
  }
}

template void soft_threshold<float>(std::int64_t, const float*, float, float*, int);
template void soft_threshold<double>(std::int64_t, const double*, double, double*, int);
template void hard_threshold<float>(std::int64_t, const float*, float, float*, int);
template void hard_threshold<double>(std::int64_t, const double*, double, double*, int);

}  // namespace wp
