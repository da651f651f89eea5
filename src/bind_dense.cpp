// Dense elementwise kernels and the BLAS table's test hooks.
#include "bind_common.hpp"
#include "weightpress/blas.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/linop.hpp"
#include "weightpress/probe.hpp"
#include "weightpress/threshold.hpp"

namespace wpb {
namespace {

// x and out are flat, same dtype and size; out may be x.
void threshold(py::array x_, double level, py::array out_, wp::Shrink kind, int n_threads) {
  check_threads(n_threads);
  dispatch_real(x_.dtype(), [&](auto t) {
    using T = typename decltype(t)::type;
    auto x = strict<T>(x_, "x");
    auto out = strict_out<T>(out_, "out");
    if (x.size() != out.size())
      throw wp::ShapeError("threshold: out has " + std::to_string(out.size()) +
                           " elements, x has " + std::to_string(x.size()));
    const T* xp = x.data();
    T* op = out.mutable_data();
    const auto n = static_cast<std::int64_t>(x.size());
    py::gil_scoped_release nogil;
    if (kind == wp::Shrink::kSoft) wp::soft_threshold<T>(n, xp, static_cast<T>(level), op, n_threads);
    else wp::hard_threshold<T>(n, xp, static_cast<T>(level), op, n_threads);
  });
}

// Row-major C = A @ B through the BLAS table (the table's test hook and a building block).
py::array blas_gemm(py::array a_, py::array b_) {
  return dispatch_real(a_.dtype(), [&](auto t) -> py::array {
    using T = typename decltype(t)::type;
    auto a = strict<T>(a_, "a");
    auto b = strict<T>(b_, "b");
    if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(0))
      throw wp::ShapeError("blas_gemm: expected a (m, k) and b (k, n)");
    const auto m = wp::blas::to_int(a.shape(0)), k = wp::blas::to_int(a.shape(1)),
               n = wp::blas::to_int(b.shape(1));
    carr<T> c({a.shape(0), b.shape(1)});
    const T *ap = a.data(), *bp = b.data();
    T* cp = c.mutable_data();
    {
      py::gil_scoped_release nogil;
      if (k == 0)
        std::fill(cp, cp + static_cast<std::int64_t>(m) * n, T(0));
      else
        wp::blas::gemm_rm<T>(false, false, m, n, k, T(1), ap, std::max(k, 1), bp, std::max(n, 1),
                             T(0), cp, std::max(n, 1));
    }
    return c;
  });
}

// XOR of an array's bytes taken as 64-bit words (a C-contiguous array whose size in bytes is
// a multiple of 8): the benchmarks' read-bandwidth probe.
std::uint64_t read_probe(py::array a, int n_threads) {
  check_threads(n_threads);
  if (!(a.flags() & py::array::c_style) || a.nbytes() % 8 != 0)
    throw py::type_error("read_probe: expected a C-contiguous array of 8-byte multiples");
  const auto* p = static_cast<const std::uint64_t*>(a.data());
  const auto n = static_cast<std::int64_t>(a.nbytes() / 8);
  py::gil_scoped_release nogil;
  return wp::read_probe(n, p, n_threads);
}

// y = a @ x for a C-contiguous 2-D a: our loop or BLAS gemv (kSmallProduct's measurement hook).
py::array dense_matvec(py::array a_, py::array x_, bool use_blas) {
  return dispatch_real(a_.dtype(), [&](auto t) -> py::array {
    using T = typename decltype(t)::type;
    auto a = strict<T>(a_, "a");
    auto x = strict<T>(x_, "x");
    if (a.ndim() != 2 || x.ndim() != 1 || x.shape(0) != a.shape(1))
      throw wp::ShapeError("dense_matvec: expected a (m, n) and x (n,)");
    carr<T> y(std::vector<py::ssize_t>{a.shape(0)});
    const T *ap = a.data(), *xp = x.data();
    T* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    wp::dense_matvec<T>(a.shape(0), a.shape(1), ap, xp, yp, use_blas);
    return y;
  });
}

py::dict blas_selftest(const std::string& prefix) {
  wp::blas::SelfTestRow rows[32];
  int n;
  {
    py::gil_scoped_release nogil;
    n = (prefix == "s") ? wp::blas::selftest<float>(rows, 32) : wp::blas::selftest<double>(rows, 32);
  }
  py::dict d;
  for (int i = 0; i < n; ++i) d[py::str(rows[i].name)] = rows[i].residual;
  return d;
}

}  // namespace

void bind_dense(py::module_& m) {
  py::native_enum<wp::Shrink>(m, "Shrink", "enum.IntEnum", "Soft or hard thresholding.")
      .value("soft", wp::Shrink::kSoft)
      .value("hard", wp::Shrink::kHard)
      .finalize();
  m.def("threshold", &threshold, "Soft or hard thresholding (Shrink) of flat arrays.",
        "x"_a.noconvert(), "level"_a, "out"_a.noconvert(), "kind"_a, "n_threads"_a);
  m.def("blas_gemm", &blas_gemm, "Row-major a @ b through SciPy's BLAS table.", "a"_a.noconvert(),
        "b"_a.noconvert());
  m.def("dense_matvec", &dense_matvec, "a @ x through our loop or BLAS gemv (benchmark hook).",
        "a"_a.noconvert(), "x"_a.noconvert(), "use_blas"_a);
  m.def("read_probe", &read_probe, "XOR of the array's 64-bit words (read-bandwidth probe).",
        "a"_a, "n_threads"_a);
  m.def("isa_level", [] { return static_cast<int>(wp::isa_level()); },
        "Instruction set the kernels dispatch to: 0 baseline, 1 x86-64-v3 (AVX2), 2 x86-64-v4 (AVX-512).");
  m.def("blas_selftest", &blas_selftest,
        "Run each BLAS/LAPACK routine of the table ('s' or 'd') on a fixed problem; "
        "returns name -> relative residual.",
        "prefix"_a);
}

}  // namespace wpb
