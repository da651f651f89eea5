// Shared binding helpers: strict array access, dtype dispatch. No math here.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "weightpress/errors.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace wpb {

template <class T>
using carr = py::array_t<T, py::array::c_style>;  // no forcecast: nothing converts silently

template <class T>
struct tag {
  using type = T;
};

template <class T>
inline std::string dtype_name() {
  return py::str(py::dtype::of<T>()).cast<std::string>();
}

// Borrow h as a C-contiguous array of T, or raise TypeError naming the argument.
template <class T>
carr<T> strict(py::handle h, const char* what) {
  if (!py::isinstance<carr<T>>(h))
    throw py::type_error(std::string(what) + ": expected a C-contiguous " + dtype_name<T>() +
                         " array");
  return py::reinterpret_borrow<carr<T>>(h);
}

// The same, and also writeable (an output).
template <class T>
carr<T> strict_out(py::handle h, const char* what) {
  auto a = strict<T>(h, what);
  if (!a.writeable()) throw py::value_error(std::string(what) + ": array is read-only");
  return a;
}

template <class F>
decltype(auto) dispatch_real(const py::dtype& dt, F&& f) {
  if (dt.equal(py::dtype::of<float>())) return f(tag<float>{});
  if (dt.equal(py::dtype::of<double>())) return f(tag<double>{});
  throw py::type_error("expected float32 or float64 data, got " + py::str(dt).cast<std::string>());
}

template <class F>
decltype(auto) dispatch_index(const py::dtype& dt, F&& f) {
  if (dt.equal(py::dtype::of<std::int32_t>())) return f(tag<std::int32_t>{});
  if (dt.equal(py::dtype::of<std::int64_t>())) return f(tag<std::int64_t>{});
  throw py::type_error("expected int32 or int64 indices, got " + py::str(dt).cast<std::string>());
}

inline void check_threads(int n_threads) {
  if (n_threads < 1) throw py::value_error("n_threads must be >= 1, got " + std::to_string(n_threads));
}

// Each binding file registers its functions here (called from module.cpp).
void load_blas(py::module_& m);
void bind_dense(py::module_& m);
void bind_sparse(py::module_& m);
void bind_svd(py::module_& m);
void bind_recovery(py::module_& m);

}  // namespace wpb
