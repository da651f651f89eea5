// The only file that knows about SciPy's capsules: fills wp::blas::Table once at import.
#include <pybind11/pybind11.h>

#include <string>

#include "bind_common.hpp"
#include "weightpress/blas.hpp"

namespace wpb {
namespace {

template <class Fn>
Fn* capsule_fn(const py::dict& capi, const std::string& name) {
  if (!capi.contains(name.c_str()))
    throw std::runtime_error("weightpress: SciPy does not export " + name + " in cython_blas/cython_lapack");
  auto cap = py::reinterpret_borrow<py::capsule>(capi[name.c_str()]);
  void* p = PyCapsule_GetPointer(cap.ptr(), PyCapsule_GetName(cap.ptr()));
  if (p == nullptr) throw py::error_already_set();
  return reinterpret_cast<Fn*>(p);
}

template <class T>
void fill(wp::blas::Fns<T>& f, const py::dict& b, const py::dict& l, char p) {
  using F = wp::blas::Fns<T>;
  std::string s(1, p);
  f.gemm = capsule_fn<typename F::gemm_t>(b, s + "gemm");
  f.gemv = capsule_fn<typename F::gemv_t>(b, s + "gemv");
  f.syrk = capsule_fn<typename F::syrk_t>(b, s + "syrk");
  f.trsm = capsule_fn<typename F::trsm_t>(b, s + "trsm");
  f.trmm = capsule_fn<typename F::trsm_t>(b, s + "trmm");
  f.geqrf = capsule_fn<typename F::geqrf_t>(l, s + "geqrf");
  f.orgqr = capsule_fn<typename F::orgqr_t>(l, s + "orgqr");
  f.gesdd = capsule_fn<typename F::gesdd_t>(l, s + "gesdd");
  f.gesvd = capsule_fn<typename F::gesvd_t>(l, s + "gesvd");
  f.potrf = capsule_fn<typename F::potrf_t>(l, s + "potrf");
  f.potrs = capsule_fn<typename F::potrs_t>(l, s + "potrs");
  f.syevd = capsule_fn<typename F::syevd_t>(l, s + "syevd");
  f.syevr = capsule_fn<typename F::syevr_t>(l, s + "syevr");
  f.getrf = capsule_fn<typename F::getrf_t>(l, s + "getrf");
  f.trtrs = capsule_fn<typename F::trtrs_t>(l, s + "trtrs");
}

}  // namespace

void load_blas(py::module_& m) {
  auto blas = py::module_::import("scipy.linalg.cython_blas");
  auto lapack = py::module_::import("scipy.linalg.cython_lapack");
  if (py::hasattr(blas, "_blas_int_size") && blas.attr("_blas_int_size")().cast<int>() != 4)
    throw std::runtime_error("weightpress needs LP64 cython_blas (this SciPy is ILP64)");
  py::dict b = blas.attr("__pyx_capi__"), l = lapack.attr("__pyx_capi__");
  wp::blas::Table t;
  fill<float>(t.s, b, l, 's');
  fill<double>(t.d, b, l, 'd');
  wp::blas::set_table(t);
  m.attr("_cython_blas") = blas;  // keep the providers alive as long as the module
  m.attr("_cython_lapack") = lapack;
}

}  // namespace wpb
