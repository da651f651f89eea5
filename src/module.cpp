#include "bind_common.hpp"
#include "weightpress/parallel.hpp"
#include "weightpress/rsvd.hpp"

#ifndef WP_VERSION
#define WP_VERSION "dev"
#endif

// The one exported C symbol: threadpoolctl's controller for weightpress (_threads.py) finds this
// module among the loaded libraries by it (a file name prefix alone, "_core", is not unique).
extern "C" __attribute__((visibility("default"))) int weightpress_omp_max_threads() {
  return wp::omp_max_threads();
}

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
  m.doc() = "weightpress compiled engine (private; use the weightpress package)";
  m.attr("__version__") = WP_VERSION;
  m.attr("has_openmp") = wp::has_openmp;
  m.def("omp_max_threads", &wp::omp_max_threads, "OpenMP's default thread count (OMP_NUM_THREADS).");
  m.def("release_free_memory", &wp::release_free_memory,
        "Return the C heap's free pages to the system (glibc malloc_trim; else nothing).",
        py::call_guard<py::gil_scoped_release>());
  // (issue 15: glibc's heap kept freed full-size temporaries resident; see rsvd.hpp)
  m.attr("mmap_threshold") = wp::fix_mmap_threshold(std::size_t(4) << 20);
  py::register_exception<wp::ShapeError>(m, "ShapeError", PyExc_ValueError);
  wpb::load_blas(m);
  wpb::bind_dense(m);
  wpb::bind_sparse(m);
  wpb::bind_svd(m);
  wpb::bind_recovery(m);
  wpb::bind_quant(m);
}
