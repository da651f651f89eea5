// Shared binding helpers: strict array access, dtype dispatch. No math here.
#pragma once
#include <pybind11/native_enum.h>
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

// A CSR matrix's three arrays, borrowed strictly, with the O(1) structural checks every CSR
// entry point makes (the O(nnz) ones happen in the engine, once per call).
template <class T, class I>
struct CsrArgs {
  carr<I> indptr, indices;
  carr<T> data;
  std::int64_t nnz() const { return static_cast<std::int64_t>(indices.size()); }
};

template <class T, class I>
CsrArgs<T, I> csr_args(py::handle ip, py::handle ix, py::handle dt, std::int64_t rows) {
  CsrArgs<T, I> a{strict<I>(ip, "indptr"), strict<I>(ix, "indices"), strict<T>(dt, "data")};
  if (a.indptr.ndim() != 1 || a.indptr.shape(0) != rows + 1)
    throw wp::ShapeError("malformed CSR: indptr has length " + std::to_string(a.indptr.size()) +
                         ", expected n_rows + 1 = " + std::to_string(rows + 1));
  if (a.indices.ndim() != 1 || a.data.ndim() != 1 || a.indices.size() != a.data.size())
    throw wp::ShapeError("malformed CSR: indices has length " + std::to_string(a.indices.size()) +
                         " but data has length " + std::to_string(a.data.size()));
  return a;
}

// Each binding file registers its functions here (called from module.cpp).
void load_blas(py::module_& m);
void bind_dense(py::module_& m);
void bind_sparse(py::module_& m);
void bind_svd(py::module_& m);
void bind_recovery(py::module_& m);
void bind_quant(py::module_& m);

}  // namespace wpb
