#include "weightpress/probe.hpp"

#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"

namespace wp {
namespace {

// 8 independent accumulators: vectorized to whole registers at every ISA level.
WP_INLINE std::uint64_t xor_body(const std::uint64_t* __restrict p, std::int64_t n) {
  std::uint64_t a[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) a[l] ^= p[i + l];
  for (; i < n; ++i) a[0] ^= p[i];
  return ((a[0] ^ a[1]) ^ (a[2] ^ a[3])) ^ ((a[4] ^ a[5]) ^ (a[6] ^ a[7]));
}
std::uint64_t xor_base(const std::uint64_t* p, std::int64_t n) { return xor_body(p, n); }
#ifdef WP_X86_DISPATCH
WP_TARGET_V3 std::uint64_t xor_v3(const std::uint64_t* p, std::int64_t n) { return xor_body(p, n); }
WP_TARGET_V4 std::uint64_t xor_v4(const std::uint64_t* p, std::int64_t n) { return xor_body(p, n); }
#endif
std::uint64_t xor_words(const std::uint64_t* p, std::int64_t n) {
#ifdef WP_X86_DISPATCH
  switch (isa_level()) {
    case Isa::kV4: return xor_v4(p, n);
    case Isa::kV3: return xor_v3(p, n);
    case Isa::kBase: break;
  }
#endif
  return xor_base(p, n);
}

}  // namespace

std::uint64_t read_probe(std::int64_t n, const std::uint64_t* p, int n_threads) {
  const int nt = threads_for(n, n_threads, kGrainIndexScan);
  std::uint64_t acc = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(^ : acc)
  {
    const std::int64_t t = thread_id(), nth = team_size();
    const std::int64_t i0 = n * t / nth, i1 = n * (t + 1) / nth;
    acc ^= xor_words(p + i0, i1 - i0);
  }
  return acc;
}

}  // namespace wp
