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

// Thread cut-offs, by measurement (a stand-alone loop program, GCC 12 + libgomp, -O3, on the
// 2-core development machine, best of 200, shared with other jobs):
//   - fork/join of a parallel-for on a warm 2-thread team: median 0.67-0.73 µs (p90 0.79 µs);
//   - soft threshold, double, in cache: 0.31 ns/element serial; 2 threads break even at 4k
//     elements, 1.6× at 16k, 2.0× at 64k;
//   - CSR column-index range check: 0.15 ns/entry; break even near 8k, 1.3× at 16k, 1.7× at 64k.
// A region pays off safely once its serial time is >= 20 fork/joins (<= 5 % overhead, with
// margin for a loaded machine, where one run of 2 threads at 256k elements measured 13.7 ms
// against 0.14 ms serial: a descheduled worker stalls the barrier): about 14 µs of work.
inline constexpr std::int64_t kGrainElementwise = std::int64_t(1) << 15;  // 14 µs / 0.31 ns ≈ 45k
inline constexpr std::int64_t kGrainIndexScan = std::int64_t(1) << 16;    // 14 µs / 0.15 ns ≈ 93k

// Threads worth using for `work` units of work (one unit ≈ one element or one multiply-add of
// the kernel at hand), with `grain` units the least that pays for a parallel region; each
// kernel states its grain (the constants above where measured, else its own comment).
inline int threads_for(std::int64_t work, int n_threads, std::int64_t grain) {
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
