// Private to cpp/rsvd*.cpp: the algorithm entry on an oriented operator (linop.hpp).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "weightpress/linop.hpp"
#include "weightpress/rsvd.hpp"

namespace wp::rsvd_detail {

inline std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// Factors in the operator's orientation: U (m×k), s (k), Vt (k×n), row-major.
template <class T>
struct OpFactors {
  std::int64_t k = 0;
  std::vector<T> u, vt;
  std::vector<double> s;
};

// The algorithm on an oriented, scanned, scaled operator.
template <class T>
void rsvd_core(const LinOp<T>& A, const RsvdParams& p, OpFactors<T>& f, RsvdInfo& info);

}  // namespace wp::rsvd_detail
