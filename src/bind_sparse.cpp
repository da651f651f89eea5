// CSR products, CSR checks and magnitude pruning to CSR.
#include "bind_common.hpp"
#include "weightpress/csr.hpp"
#include "weightpress/prune.hpp"

namespace wpb {
namespace {

void csr_check(py::array ip_, py::array ix_, std::int64_t rows, std::int64_t cols, int n_threads) {
  check_threads(n_threads);
  dispatch_index(ip_.dtype(), [&](auto u) {
    using I = typename decltype(u)::type;
    auto indptr = strict<I>(ip_, "indptr");
    auto indices = strict<I>(ix_, "indices");
    if (indptr.ndim() != 1 || indptr.shape(0) != rows + 1)
      throw wp::ShapeError("malformed CSR: indptr has length " + std::to_string(indptr.size()) +
                           ", expected n_rows + 1 = " + std::to_string(rows + 1));
    const I *p = indptr.data(), *j = indices.data();
    const auto nnz = static_cast<std::int64_t>(indices.size());
    py::gil_scoped_release nogil;
    wp::csr_check<I>(rows, cols, p, j, nnz, n_threads);
  });
}

// out = A @ x (transpose=false) or Aᵀ @ x. x and out are C-contiguous 2-D (n, k) arrays of
// A's dtype (1-D products come in as k = 1 views).
void csr_matmat(py::array ip_, py::array ix_, py::array dt_, std::int64_t rows, std::int64_t cols,
                py::array x_, py::array out_, bool transpose, int n_threads) {
  check_threads(n_threads);
  dispatch_real(dt_.dtype(), [&](auto t) {
    using T = typename decltype(t)::type;
    dispatch_index(ip_.dtype(), [&](auto u) {
      using I = typename decltype(u)::type;
      auto csr = csr_args<T, I>(ip_, ix_, dt_, rows);
      auto &indptr = csr.indptr, &indices = csr.indices;
      auto &data = csr.data;
      auto x = strict<T>(x_, "x");
      auto out = strict_out<T>(out_, "out");
      const std::int64_t xr = transpose ? rows : cols, yr = transpose ? cols : rows;
      if (x.ndim() != 2 || x.shape(0) != xr)
        throw wp::ShapeError("csr_matmul: X has " + std::to_string(x.ndim() ? x.shape(0) : 0) +
                             " rows, expected " + std::to_string(xr));
      const std::int64_t k = x.shape(1);
      if (out.ndim() != 2 || out.shape(0) != yr || out.shape(1) != k)
        throw wp::ShapeError("csr_matmul: out has the wrong shape");
      const I *p = indptr.data(), *j = indices.data();
      const T *v = data.data(), *xp = x.data();
      T* yp = out.mutable_data();
      std::int64_t bad;
      {
        py::gil_scoped_release nogil;
        wp::csr_check_indptr<I>(rows, p, static_cast<std::int64_t>(indices.size()));
        bad = transpose ? wp::csr_matmat_t<T, I>(rows, cols, p, j, v, k, xp, k, yp, k, n_threads)
                        : wp::csr_matmat<T, I>(rows, cols, p, j, v, k, xp, k, yp, k, n_threads);
      }
      if (bad >= 0) wp::csr_bad_index<I>(j, bad, cols);
    });
  });
}

// Magnitude pruning: W is any strided 2-D float array. Returns (data, indices, indptr) with
// the index width wp::csr_fits_int32 picks.
// The element view of a strided 2-D float array for the pruning kernels.
template <class T>
struct PruneView {
  std::int64_t rows, cols, rs, cs;
  const T* w;
};

template <class T>
PruneView<T> prune_view(const py::array& w_) {
  if (w_.ndim() != 2) throw wp::ShapeError("prune: W must be 2-D");
  const auto isz = static_cast<py::ssize_t>(sizeof(T));
  if (w_.strides(0) % isz != 0 || w_.strides(1) % isz != 0)
    throw py::type_error("prune: W strides must be multiples of the item size");
  return {w_.shape(0), w_.shape(1), w_.strides(0) / isz, w_.strides(1) / isz,
          static_cast<const T*>(w_.data())};
}

// The count pass alone: each row's kept entries as a CSR indptr (int64), without the arrays.
py::array_t<std::int64_t> prune_row_counts(py::array w_, const wp::PruneSpec& spec, int n_threads) {
  check_threads(n_threads);
  return dispatch_real(w_.dtype(), [&](auto t) -> py::array_t<std::int64_t> {
    using T = typename decltype(t)::type;
    const PruneView<T> v = prune_view<T>(w_);
    wp::PruneState state;
    py::array_t<std::int64_t> indptr(v.rows + 1);
    std::int64_t* ip = indptr.mutable_data();
    py::gil_scoped_release nogil;
    wp::prune_count<T>(v.rows, v.cols, v.w, v.rs, v.cs, spec, state, ip, n_threads);
    return indptr;
  });
}

py::tuple prune(py::array w_, const wp::PruneSpec& spec, int n_threads) {
  check_threads(n_threads);
  return dispatch_real(w_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    const PruneView<T> v = prune_view<T>(w_);
    const std::int64_t rows = v.rows, cols = v.cols, rs = v.rs, cs = v.cs;
    const T* w = v.w;
    wp::PruneState state;
    py::array_t<std::int64_t> indptr64(rows + 1);
    std::int64_t* ip = indptr64.mutable_data();
    std::int64_t nnz;
    {
      py::gil_scoped_release nogil;
      nnz = wp::prune_count<T>(rows, cols, w, rs, cs, spec, state, ip, n_threads);
    }
    py::array_t<T> data(nnz);
    auto fill = [&](auto* indices, const std::int64_t* indptr) {
      using I = std::remove_pointer_t<decltype(indices)>;
      T* dp = data.mutable_data();
      py::gil_scoped_release nogil;
      wp::prune_fill<T, I>(rows, cols, w, rs, cs, state, indptr, indices, dp, n_threads);
    };
    if (wp::csr_fits_int32(nnz, cols)) {
      py::array_t<std::int32_t> indptr32(rows + 1), indices(nnz);
      wp::narrow_indptr(rows, ip, indptr32.mutable_data());
      fill(indices.mutable_data(), ip);
      return py::make_tuple(data, indices, indptr32);
    }
    py::array_t<std::int64_t> indices(nnz);
    fill(indices.mutable_data(), ip);
    return py::make_tuple(data, indices, indptr64);
  });
}

}  // namespace

void bind_sparse(py::module_& m) {
  m.def("csr_check", &csr_check, "Full O(nnz) CSR structure check; raises ValueError.",
        "indptr"_a.noconvert(), "indices"_a.noconvert(), "n_rows"_a, "n_cols"_a, "n_threads"_a);
  m.def("csr_matmat", &csr_matmat, "out = A @ x or A.T @ x for CSR A and C-contiguous 2-D x.",
        "indptr"_a.noconvert(), "indices"_a.noconvert(), "data"_a.noconvert(), "n_rows"_a,
        "n_cols"_a, "x"_a.noconvert(), "out"_a.noconvert(), "transpose"_a, "n_threads"_a);
  m.def("cache_bytes", &wp::cache_bytes,
        "Bytes of this CPU's level-`level` data or unified cache (0: the largest), 0 if unknown.",
        "level"_a);
  m.def("spmv_x_path", &wp::spmv_x_path,
        "How this CPU's SpMV reads x: avx512-gather|loads, avx2-gather|loads or scalar, then "
        "(unless WP_SPMV_X forces one) '; larger than the LLC: ' and 'measuring' or the choices "
        "made so far, e.g. 'x 32 KiB 1t gather'.");
  py::class_<wp::PruneSpec> spec(m, "PruneSpec", "What prune keeps.");
  py::native_enum<wp::PruneSpec::Mode>(spec, "Mode", "enum.IntEnum")
      .value("threshold", wp::PruneSpec::kThreshold)
      .value("keep", wp::PruneSpec::kKeepCount)
      .value("nm", wp::PruneSpec::kNofM)
      .finalize();
  spec.def(py::init<>())
      .def_readwrite("mode", &wp::PruneSpec::mode)
      .def_readwrite("threshold", &wp::PruneSpec::threshold)
      .def_readwrite("keep", &wp::PruneSpec::keep)
      .def_readwrite("n", &wp::PruneSpec::n)
      .def_readwrite("m", &wp::PruneSpec::m);
  m.def("prune_row_counts", &prune_row_counts,
        "prune's count pass alone: the CSR indptr (int64) of what it keeps.", "w"_a.noconvert(), "spec"_a,
        "n_threads"_a);
  m.def("prune", &prune, "Magnitude pruning of a strided 2-D array to CSR (data, indices, indptr).",
        "w"_a.noconvert(), "spec"_a, "n_threads"_a);
}

}  // namespace wpb
