// Memory-bandwidth probe for the benchmarks: a read-only reduction (XOR of 64-bit words), the
// least work per byte a kernel can do, so its speed is the machine's read bandwidth.
#pragma once
#include <cstdint>

namespace wp {

// XOR of the n words at p (any thread count gives the same value: XOR is exact).
std::uint64_t read_probe(std::int64_t n, const std::uint64_t* p, int n_threads);

}  // namespace wp
