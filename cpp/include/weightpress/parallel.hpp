// The only place that knows whether OpenMP exists. Kernels use `#pragma omp` freely (ignored
// without -fopenmp) and call these helpers for thread ids and counts.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

#ifdef WP_HAVE_OPENMP
#include <omp.h>
#endif

namespace wp {

#ifdef WP_HAVE_OPENMP
inline constexpr bool has_openmp = true;
inline int thread_id() { return omp_get_thread_num(); }
inline int team_size() { return omp_get_num_threads(); }
inline int omp_max_threads() { return omp_get_max_threads(); }
#else
inline constexpr bool has_openmp = false;
inline int thread_id() { return 0; }
inline int team_size() { return 1; }
inline int omp_max_threads() { return 1; }
#endif

// Threads worth using for `work` units of work (one unit ≈ one flop or one element),
// with `grain` units the least that pays for waking a thread.
inline int threads_for(std::int64_t work, int n_threads, std::int64_t grain = 32768) {
  if (n_threads < 1) n_threads = 1;
  if (work <= grain) return 1;
  return static_cast<int>(std::min<std::int64_t>(n_threads, work / grain));
}

// Captures the first exception thrown inside a parallel region; rethrown after it.
// An exception escaping an OpenMP region would call std::terminate.
class FirstError {
  std::exception_ptr err_;
  std::atomic<bool> taken_{false};

 public:
  template <class F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      if (!taken_.exchange(true)) err_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (err_) std::rethrow_exception(err_);
  }
};

}  // namespace wp
