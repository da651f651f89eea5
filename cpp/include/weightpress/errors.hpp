#pragma once
#include <stdexcept>
#include <string>

namespace wp {
// Bad shapes, sizes or values given to the engine. The module maps it to Python's ValueError.
struct ShapeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// A NaN or Inf found in the input by a pass the kernel makes anyway (OMP's DᵀY, the l1
// solvers' column norms) in place of a separate check by the caller, who then finds and names
// the offending array, or, when the values were finite and only the pass overflowed, runs the
// kernel again unchecked. The module maps it to weightpress._core.NonFinite (a ValueError).
struct NonFinite : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace wp
