// Sparse recovery: batch OMP, and the homotopy solver behind basis pursuit, BPDN and LASSO.
#include "bind_common.hpp"
#include "weightpress/basis_pursuit.hpp"
#include "weightpress/csr.hpp"
#include "weightpress/pursuit.hpp"

namespace wpb {
namespace {

template <class T>
carr<T> matrix(py::handle h, const char* what) {
  auto a = strict<T>(h, what);
  if (a.ndim() != 2) throw wp::ShapeError(std::string(what) + ": expected a 2-D array");
  return a;
}

py::array omp_gram(py::array d_) {
  return dispatch_real(d_.dtype(), [&](auto t) -> py::array {
    using T = typename decltype(t)::type;
    auto D = matrix<T>(d_, "D");
    const std::int64_t m = D.shape(0), n = D.shape(1);
    carr<T> G({n, n});
    const T* dp = D.data();
    T* gp = G.mutable_data();
    py::gil_scoped_release nogil;
    wp::omp_gram<T>(m, n, dp, gp);
    return G;
  });
}

// Returns (supp (N, kmax) int64, coef (N, kmax), count (N,) int64, resid2 (N,)).
py::tuple omp(py::array d_, py::array y_, py::object g_, const wp::OmpParams& p, int n_threads) {
  check_threads(n_threads);
  return dispatch_real(d_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    auto D = matrix<T>(d_, "D");
    auto Y = matrix<T>(y_, "Y");
    const std::int64_t m = D.shape(0), n = D.shape(1), N = Y.shape(1);
    if (Y.shape(0) != m)
      throw wp::ShapeError("omp: Y has " + std::to_string(Y.shape(0)) + " rows, D has " +
                           std::to_string(m));
    // (before the outputs are allocated with it; omp_encode checks it again)
    if (p.kmax < 1 || p.kmax > n) throw wp::ShapeError("omp: n_nonzero must be in [1, n_atoms]");
    carr<T> G;
    if (!g_.is_none()) {
      G = matrix<T>(g_, "G");
      if (G.shape(0) != n || G.shape(1) != n) throw wp::ShapeError("omp: G must be n_atoms²");
    }
    carr<std::int64_t> supp({N, p.kmax}), count(N);
    carr<T> coef({N, p.kmax}), resid2(N);
    const T *dp = D.data(), *yp = Y.data();
    const T* gp = g_.is_none() ? nullptr : G.data();
    auto* sp = supp.mutable_data();
    auto* cp = count.mutable_data();
    T *fp = coef.mutable_data(), *rp = resid2.mutable_data();
    {
      py::gil_scoped_release nogil;
      wp::omp_encode<T>(m, n, N, dp, yp, N, gp, p, sp, fp, cp, rp, n_threads);
    }
    return py::make_tuple(supp, coef, count, resid2);
  });
}

py::dict info_dict(const wp::L1Info& i) {
  py::dict d;
  d["iterations"] = i.iterations;
  d["n_active"] = i.n_active;
  d["gram_columns"] = i.gram_columns;
  d["support_solves"] = i.support_solves;
  d["lambda"] = i.lambda;
  d["resid_norm"] = i.resid_norm;
  d["primal"] = i.primal;
  d["dual"] = i.dual;
  d["gap"] = i.gap;
  d["corr_max"] = i.corr_max;
  d["finished"] = i.finished;
  return d;
}

// Homotopy on dense row-major A: returns (x, info).
py::tuple l1_dense(py::array a_, py::array y_, wp::L1Mode md, double target, std::int64_t max_iter,
                   int n_threads, bool check_finite) {
  check_threads(n_threads);
  return dispatch_real(a_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    auto A = matrix<T>(a_, "A");
    auto y = strict<T>(y_, "y");
    const std::int64_t m = A.shape(0), n = A.shape(1);
    if (y.ndim() != 1 || y.shape(0) != m)
      throw wp::ShapeError("l1: y must be 1-D of length " + std::to_string(m));
    carr<T> x(n);
    const T *ap = A.data(), *yp = y.data();
    T* xp = x.mutable_data();
    wp::L1Info info;
    {
      py::gil_scoped_release nogil;
      info = wp::l1_homotopy_dense<T>(m, n, ap, yp, md, target, max_iter, xp, n_threads,
                                      check_finite);
    }
    return py::make_tuple(x, info_dict(info));
  });
}

// Homotopy on CSR A (indptr/indices/data, shape (m, n)): returns (x, info).
py::tuple l1_csr(py::array ip_, py::array ix_, py::array dt_, std::int64_t m, std::int64_t n,
                 py::array y_, wp::L1Mode md, double target, std::int64_t max_iter,
                 int n_threads) {
  check_threads(n_threads);
  return dispatch_real(dt_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    return dispatch_index(ip_.dtype(), [&](auto u) -> py::tuple {
      using I = typename decltype(u)::type;
      auto csr = csr_args<T, I>(ip_, ix_, dt_, m);
      auto &indptr = csr.indptr, &indices = csr.indices;
      auto &data = csr.data;
      auto y = strict<T>(y_, "y");
      if (y.ndim() != 1 || y.shape(0) != m)
        throw wp::ShapeError("l1: y must be 1-D of length " + std::to_string(m));
      carr<T> x(n);
      const I *pp = indptr.data(), *jp = indices.data();
      const T *vp = data.data(), *yp = y.data();
      T* xp = x.mutable_data();
      const auto nnz = static_cast<std::int64_t>(indices.size());
      wp::L1Info info;
      {
        py::gil_scoped_release nogil;
        wp::csr_check_indptr<I>(m, pp, nnz);
        info = wp::l1_homotopy_csr<T, I>(m, n, pp, jp, vp, yp, md, target, max_iter, xp, n_threads);
      }
      return py::make_tuple(x, info_dict(info));
    });
  });
}

}  // namespace

void bind_recovery(py::module_& m) {
  py::register_exception<wp::NonFinite>(m, "NonFinite", PyExc_ValueError);
  m.def("omp_lazy_path", &wp::omp_lazy_path,
        "Whether omp takes its lazy path (Gram columns on demand) for N signals of n atoms.",
        "n"_a, "N"_a, "kmax"_a, "have_gram"_a, "chunk"_a = 0);
  m.def("omp_gram", &omp_gram, "G = D.T @ D for row-major D (one BLAS syrk).", "D"_a.noconvert());
  py::class_<wp::OmpParams>(m, "OmpParams", "Options of omp.")
      .def(py::init<>())
      .def_readwrite("kmax", &wp::OmpParams::kmax)
      .def_readwrite("tol", &wp::OmpParams::tol)
      .def_readwrite("chunk", &wp::OmpParams::chunk)
      .def_readwrite("check_finite", &wp::OmpParams::check_finite);
  m.def("omp", &omp, "Batch OMP: (supp, coef, count, resid2) for the columns of Y.",
        "D"_a.noconvert(), "Y"_a.noconvert(), "G"_a.none(true), "params"_a, "n_threads"_a);
  py::native_enum<wp::L1Mode>(m, "L1Mode", "enum.IntEnum", "What the l1 homotopy solves.")
      .value("lasso", wp::L1Mode::kLasso)
      .value("bpdn", wp::L1Mode::kBPDN)
      .value("bp", wp::L1Mode::kBP)
      .finalize();
  m.def("l1_dense", &l1_dense, "l1 homotopy (L1Mode) on dense A: (x, info).",
        "A"_a.noconvert(), "y"_a.noconvert(), "mode"_a, "target"_a, "max_iter"_a, "n_threads"_a,
        "check_finite"_a = false);
  m.def("l1_csr", &l1_csr, "l1 homotopy on CSR A: (x, info).", "indptr"_a.noconvert(),
        "indices"_a.noconvert(), "data"_a.noconvert(), "n_rows"_a, "n_cols"_a, "y"_a.noconvert(),
        "mode"_a, "target"_a, "max_iter"_a, "n_threads"_a);
}

}  // namespace wpb
