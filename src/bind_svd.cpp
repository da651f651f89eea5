// Randomized SVD / SVT: strict checks → dtype dispatch → GIL release → wp::randomized_svd_*.
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "bind_common.hpp"
#include "weightpress/csr.hpp"
#include "weightpress/rsvd.hpp"

namespace wpb {
namespace {

// A NumPy array that owns the vector's buffer (moved, not copied: the factors are the largest
// thing the SVD returns). Empty ones are plain new arrays.
template <class T>
carr<T> adopt(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  if (v.empty()) return carr<T>(shape);
  auto owned = std::make_unique<std::vector<T>>(std::move(v));
  const T* data = owned->data();
  py::capsule base(owned.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); });
  owned.release();
  return carr<T>(shape, data, base);
}

template <class T>
py::tuple to_python(wp::SvdFactors<T>&& f, const wp::RsvdInfo& info) {
  auto u = adopt<T>(std::move(f.u), {f.m, f.k});
  auto s = adopt<T>(std::move(f.s), {f.k});
  auto vt = adopt<T>(std::move(f.vt), {f.k, f.n});
  py::dict d("rank"_a = info.rank, "basis"_a = info.basis, "n_blocks"_a = info.n_blocks,
             "rel_err"_a = info.rel_err, "verified"_a = info.verified, "direct"_a = info.direct,
             "scale"_a = info.scale, "power_iters"_a = info.power_iters);
  return py::make_tuple(u, s, vt, d);
}

// a: C-contiguous 2-D; it holds A (m×n) when !fortran, Aᵀ (n×m) when fortran.
py::tuple rsvd_dense(py::array a_, bool fortran, const wp::RsvdParams& p, int n_threads) {
  check_threads(n_threads);
  return dispatch_real(a_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    auto a = strict<T>(a_, "A");
    if (a.ndim() != 2) throw wp::ShapeError("randomized_svd: A must be 2-D");
    const std::int64_t r = a.shape(0), c = a.shape(1);
    const std::int64_t m = fortran ? c : r, n = fortran ? r : c;
    const T* ap = a.data();
    wp::SvdFactors<T> f;
    wp::RsvdInfo info;
    {
      py::gil_scoped_release nogil;
      wp::randomized_svd_dense<T>(m, n, ap, std::max<std::int64_t>(c, 1), fortran, p, f, info,
                                  n_threads);
    }
    return to_python<T>(std::move(f), info);
  });
}

py::tuple rsvd_csr(py::array ip_, py::array ix_, py::array dt_, std::int64_t rows,
                   std::int64_t cols, const wp::RsvdParams& p, int n_threads) {
  check_threads(n_threads);
  return dispatch_real(dt_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    return dispatch_index(ip_.dtype(), [&](auto u) -> py::tuple {
      using I = typename decltype(u)::type;
      auto csr = csr_args<T, I>(ip_, ix_, dt_, rows);
      auto &indptr = csr.indptr, &indices = csr.indices;
      auto &data = csr.data;
      const I *p_ = indptr.data(), *j_ = indices.data();
      const T* v_ = data.data();
      const auto nnz = static_cast<std::int64_t>(indices.size());
      wp::SvdFactors<T> f;
      wp::RsvdInfo info;
      {
        py::gil_scoped_release nogil;
        wp::csr_check<I>(rows, cols, p_, j_, nnz, n_threads);
        wp::randomized_svd_csr<T, I>(rows, cols, p_, j_, v_, p, f, info, n_threads);
      }
      return to_python<T>(std::move(f), info);
    });
  });
}

// The counter-based Gaussian sketch (exposed for tests: thread-count independence).
py::array gaussian_sketch(py::dtype dt, std::int64_t rows, std::int64_t cols, std::int64_t col0,
                          std::uint64_t seed, int n_threads) {
  check_threads(n_threads);
  return dispatch_real(dt, [&](auto t) -> py::array {
    using T = typename decltype(t)::type;
    carr<T> x({rows, cols});
    T* xp = x.mutable_data();
    py::gil_scoped_release nogil;
    wp::gaussian_sketch<T>(rows, cols, col0, seed, xp, std::max<std::int64_t>(cols, 1), n_threads);
    return x;
  });
}

}  // namespace

void bind_svd(py::module_& m) {
  py::class_<wp::RsvdParams> params(m, "RsvdParams", "Options of rsvd_dense / rsvd_csr.");
  py::native_enum<wp::RsvdParams::Mode>(params, "Mode", "enum.IntEnum")
      .value("rank", wp::RsvdParams::kRank)
      .value("tol", wp::RsvdParams::kTol)
      .value("svt", wp::RsvdParams::kSvt)
      .finalize();
  params.def(py::init<>())
      .def_readwrite("mode", &wp::RsvdParams::mode)
      .def_readwrite("rank", &wp::RsvdParams::rank)
      .def_readwrite("tol", &wp::RsvdParams::tol)
      .def_readwrite("lam", &wp::RsvdParams::lam)
      .def_readwrite("max_rank", &wp::RsvdParams::max_rank)
      .def_readwrite("oversamples", &wp::RsvdParams::oversamples)
      .def_readwrite("power_iters", &wp::RsvdParams::power_iters)
      .def_readwrite("seed", &wp::RsvdParams::seed)
      .def_readwrite("block", &wp::RsvdParams::block)
      .def_readwrite("orth", &wp::RsvdParams::orth)
      .def_readwrite("direct", &wp::RsvdParams::direct)
      .def_readwrite("tiled", &wp::RsvdParams::tiled);
  m.def("rsvd_dense", &rsvd_dense, "Randomized SVD/SVT of a dense C-contiguous A (or Aᵀ).",
        "a"_a.noconvert(), "fortran"_a, "params"_a, "n_threads"_a);
  m.def("rsvd_csr", &rsvd_csr, "Randomized SVD/SVT of a CSR matrix.", "indptr"_a.noconvert(),
        "indices"_a.noconvert(), "data"_a.noconvert(), "n_rows"_a, "n_cols"_a, "params"_a,
        "n_threads"_a);
  m.def("gaussian_sketch", &gaussian_sketch, "Counter-based standard normal sketch (row-major).",
        "dtype"_a, "rows"_a, "cols"_a, "col0"_a, "seed"_a, "n_threads"_a);
}

}  // namespace wpb
