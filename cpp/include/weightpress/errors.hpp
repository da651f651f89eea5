#pragma once
#include <stdexcept>
#include <string>

namespace wp {
// Bad shapes, sizes or values given to the engine. The module maps it to Python's ValueError.
struct ShapeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
}  // namespace wp
