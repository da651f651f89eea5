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
py::tuple omp(py::array d_, py::array y_, py::object g_, std::int64_t kmax, double tol,
              int n_threads, std::int64_t chunk_) {
  check_threads(n_threads);
  return dispatch_real(d_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    auto D = matrix<T>(d_, "D");
    auto Y = matrix<T>(y_, "Y");
    const std::int64_t m = D.shape(0), n = D.shape(1), N = Y.shape(1);
    if (Y.shape(0) != m)
      throw wp::ShapeError("omp: Y has " + std::to_string(Y.shape(0)) + " rows, D has " +
                           std::to_string(m));
    if (kmax < 1 || kmax > n) throw wp::ShapeError("omp: n_nonzero must be in [1, n_atoms]");
    carr<T> G;
    if (!g_.is_none()) {
      G = matrix<T>(g_, "G");
      if (G.shape(0) != n || G.shape(1) != n) throw wp::ShapeError("omp: G must be n_atoms²");
    }
    carr<std::int64_t> supp({N, kmax}), count(N);
    carr<T> coef({N, kmax}), resid2(N);
    // Signals go in chunks so that DᵀY (chunk × n) stays within ~256 MiB (chunk_ > 0: tests).
    const std::int64_t chunk = std::max<std::int64_t>(
        1, chunk_ > 0 ? chunk_
                      : std::min<std::int64_t>(N, (std::int64_t(1) << 25) / std::max<std::int64_t>(n, 1)));
    std::vector<T> gbuf, cbuf(static_cast<std::size_t>(std::min(N, chunk) * n)),
        nbuf(static_cast<std::size_t>(std::min(N, chunk)));
    const T *dp = D.data(), *yp = Y.data();
    const T* gp = g_.is_none() ? nullptr : G.data();
    auto* sp = supp.mutable_data();
    auto* cp = count.mutable_data();
    T *fp = coef.mutable_data(), *rp = resid2.mutable_data();
    {
      py::gil_scoped_release nogil;
      // Few signals: Gram columns on demand beat the full n² Gram matrix.
      // (and their lockstep workspaces, chunk·n·(kmax + 2) values, stay within ~512 MiB).
      const bool lazy = !gp && 2 * N * kmax <= n && std::min(N, chunk) * n * (kmax + 2) <= (std::int64_t(1) << 26);
      if (!gp && !lazy) {
        gbuf.resize(static_cast<std::size_t>(n * n));
        wp::omp_gram<T>(m, n, dp, gbuf.data());
        gp = gbuf.data();
      }
      for (std::int64_t s0 = 0; s0 < N; s0 += chunk) {
        const std::int64_t b = std::min(chunk, N - s0);
        wp::omp_correlate<T>(m, n, b, dp, yp + s0, N, cbuf.data());
        wp::col_sqnorms<T>(m, b, yp + s0, N, nbuf.data(), n_threads);
        if (lazy)
          wp::omp_lazy<T>(m, n, b, dp, cbuf.data(), nbuf.data(), kmax, tol, sp + s0 * kmax,
                          fp + s0 * kmax, cp + s0, rp + s0, n_threads);
        else
          wp::omp_batch<T>(n, b, gp, cbuf.data(), nbuf.data(), kmax, tol, sp + s0 * kmax,
                           fp + s0 * kmax, cp + s0, rp + s0, n_threads);
      }
    }
    return py::make_tuple(supp, coef, count, resid2);
  });
}

py::dict info_dict(const wp::L1Info& i) {
  py::dict d;
  d["iterations"] = i.iterations;
  d["n_active"] = i.n_active;
  d["gram_columns"] = i.gram_columns;
  d["lambda"] = i.lambda;
  d["resid_norm"] = i.resid_norm;
  d["primal"] = i.primal;
  d["dual"] = i.dual;
  d["gap"] = i.gap;
  d["corr_max"] = i.corr_max;
  d["finished"] = i.finished;
  return d;
}

wp::L1Mode l1_mode(int mode) {
  if (mode < 0 || mode > 2) throw py::value_error("l1 mode must be 0 (lasso), 1 (bpdn), 2 (bp)");
  return static_cast<wp::L1Mode>(mode);
}

// Homotopy on dense row-major A: returns (x, info).
py::tuple l1_dense(py::array a_, py::array y_, int mode, double target, std::int64_t max_iter,
                   int n_threads) {
  check_threads(n_threads);
  const auto md = l1_mode(mode);
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
      info = wp::l1_homotopy_dense<T>(m, n, ap, yp, md, target, max_iter, xp, n_threads);
    }
    return py::make_tuple(x, info_dict(info));
  });
}

// Homotopy on CSR A (indptr/indices/data, shape (m, n)): returns (x, info).
py::tuple l1_csr(py::array ip_, py::array ix_, py::array dt_, std::int64_t m, std::int64_t n,
                 py::array y_, int mode, double target, std::int64_t max_iter, int n_threads) {
  check_threads(n_threads);
  const auto md = l1_mode(mode);
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
  m.def("omp_gram", &omp_gram, "G = D.T @ D for row-major D (one BLAS syrk).", "D"_a.noconvert());
  m.def("omp", &omp, "Batch OMP: (supp, coef, count, resid2) for the columns of Y.",
        "D"_a.noconvert(), "Y"_a.noconvert(), "G"_a.none(true), "kmax"_a, "tol"_a, "n_threads"_a,
        "chunk"_a = 0);
  m.def("l1_dense", &l1_dense, "l1 homotopy (mode 0 lasso, 1 BPDN, 2 BP) on dense A: (x, info).",
        "A"_a.noconvert(), "y"_a.noconvert(), "mode"_a, "target"_a, "max_iter"_a, "n_threads"_a);
  m.def("l1_csr", &l1_csr, "l1 homotopy on CSR A: (x, info).", "indptr"_a.noconvert(),
        "indices"_a.noconvert(), "data"_a.noconvert(), "n_rows"_a, "n_cols"_a, "y"_a.noconvert(),
        "mode"_a, "target"_a, "max_iter"_a, "n_threads"_a);
}

}  // namespace wpb
