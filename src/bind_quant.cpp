// Quantization (pack/unpack, round-to-nearest, dequantize, packed products) and the
// optimal-brain sweep (GPTQ / SparseGPT). Strict checks, dtype dispatch, GIL release.
#include "bind_common.hpp"
#include "weightpress/obs.hpp"
#include "weightpress/quant.hpp"

namespace wpb {
namespace {

using u8 = std::uint8_t;
using u16 = std::uint16_t;

void check_2d(const py::array& a, std::int64_t rows, std::int64_t cols, const char* what) {
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols)
    throw wp::ShapeError(std::string(what) + ": expected shape (" + std::to_string(rows) + ", " +
                         std::to_string(cols) + ")");
}

wp::QuantSpec spec_of(int bits, std::int64_t group, bool symmetric) {
  wp::QuantSpec s{bits, group, symmetric};
  wp::quant_check_spec(s, "quantize");
  return s;
}

// The packed form's arrays, borrowed and checked against (rows, cols, spec).
struct Packed {
  carr<u8> packed;
  carr<u16> scales;
  const u8* zeros = nullptr;
  py::object keep;
};
Packed packed_args(py::handle packed, py::handle scales, py::handle zeros, std::int64_t rows,
                   std::int64_t cols, const wp::QuantSpec& s) {
  Packed p{strict<u8>(packed, "packed"), strict<u16>(scales, "scales"), nullptr, py::none()};
  check_2d(p.packed, rows, wp::quant_row_bytes(cols, s.bits), "packed");
  const std::int64_t ng = wp::quant_n_groups(cols, s.group);
  check_2d(p.scales, rows, ng, "scales");
  if (!s.symmetric) {
    auto z = strict<u8>(zeros, "zeros");
    check_2d(z, rows, ng, "zeros");
    p.zeros = z.data();
    p.keep = z;
  }
  return p;
}

py::array quant_pack(py::array codes_, int bits, int n_threads) {
  check_threads(n_threads);
  auto codes = strict<u8>(codes_, "codes");
  if (codes.ndim() != 2) throw wp::ShapeError("codes: expected a 2-D array");
  const std::int64_t rows = codes.shape(0), cols = codes.shape(1);
  spec_of(bits, 0, true);
  carr<u8> out({rows, wp::quant_row_bytes(cols, bits)});
  const u8* cp = codes.data();
  u8* op = out.mutable_data();
  py::gil_scoped_release nogil;
  wp::quant_pack(rows, cols, bits, cp, op, n_threads);
  return out;
}

py::array quant_unpack(py::array packed_, std::int64_t cols, int bits, int n_threads) {
  check_threads(n_threads);
  auto packed = strict<u8>(packed_, "packed");
  spec_of(bits, 0, true);
  if (cols < 0) throw wp::ShapeError("cols must be >= 0");
  if (packed.ndim() != 2) throw wp::ShapeError("packed: expected a 2-D array");
  const std::int64_t rows = packed.shape(0);
  check_2d(packed, rows, wp::quant_row_bytes(cols, bits), "packed");
  carr<u8> out({rows, cols});
  const u8* pp = packed.data();
  u8* op = out.mutable_data();
  py::gil_scoped_release nogil;
  wp::quant_unpack(rows, cols, bits, pp, op, n_threads);
  return out;
}

py::tuple quant_rtn(py::array W_, int bits, std::int64_t group, bool symmetric, bool mse,
                    int n_threads, bool with_codes) {
  check_threads(n_threads);
  auto s = spec_of(bits, group, symmetric);
  s.mse = mse;
  return dispatch_real(W_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    auto W = strict<T>(W_, "W");
    if (W.ndim() != 2) throw wp::ShapeError("W: expected a 2-D array");
    const std::int64_t rows = W.shape(0), cols = W.shape(1), ng = wp::quant_n_groups(cols, group);
    carr<u8> codes({with_codes ? rows : std::int64_t(0), with_codes ? cols : std::int64_t(0)});
    carr<u16> scales({rows, ng});
    carr<u8> zeros({symmetric ? std::int64_t(0) : rows, symmetric ? std::int64_t(0) : ng});
    const T* wp_ = W.data();
    u8 *cp = with_codes ? codes.mutable_data() : nullptr, *zp = zeros.mutable_data();
    u16* sp = scales.mutable_data();
    {
      py::gil_scoped_release nogil;
      wp::quant_rtn<T>(rows, cols, wp_, s, cp, sp, zp, n_threads);
    }
    return py::make_tuple(with_codes ? py::object(codes) : py::object(py::none()), scales,
                          symmetric ? py::object(py::none()) : py::object(zeros));
  });
}

void quant_dequantize(py::array packed, py::array scales, py::object zeros, int bits,
                      std::int64_t group, bool symmetric, py::array out_, int n_threads) {
  check_threads(n_threads);
  const auto s = spec_of(bits, group, symmetric);
  dispatch_real(out_.dtype(), [&](auto t) {
    using T = typename decltype(t)::type;
    auto out = strict_out<T>(out_, "out");
    if (out.ndim() != 2) throw wp::ShapeError("out: expected a 2-D array");
    const std::int64_t rows = out.shape(0), cols = out.shape(1);
    auto p = packed_args(packed, scales, zeros, rows, cols, s);
    const u8* pp = p.packed.data();
    const u16* sp = p.scales.data();
    T* op = out.mutable_data();
    py::gil_scoped_release nogil;
    wp::quant_dequantize<T>(rows, cols, pp, sp, p.zeros, s, op, n_threads);
  });
}

py::array quant_matmul(py::array packed, py::array scales, py::object zeros, std::int64_t rows,
                       std::int64_t cols, int bits, std::int64_t group, bool symmetric,
                       py::array X_, int n_threads) {
  check_threads(n_threads);
  const auto s = spec_of(bits, group, symmetric);
  return dispatch_real(X_.dtype(), [&](auto t) -> py::array {
    using T = typename decltype(t)::type;
    auto X = strict<T>(X_, "X");
    if (X.ndim() != 2 || X.shape(1) != cols)
      throw wp::ShapeError("X: expected shape (n, " + std::to_string(cols) + ")");
    auto p = packed_args(packed, scales, zeros, rows, cols, s);
    const std::int64_t n = X.shape(0);
    carr<T> Y({n, rows});
    const u8* pp = p.packed.data();
    const u16* sp = p.scales.data();
    const T* xp = X.data();
    T* yp = Y.mutable_data();
    {
      py::gil_scoped_release nogil;
      wp::quant_matmul<T>(rows, cols, pp, sp, p.zeros, s, n, xp, yp, n_threads);
    }
    return Y;
  });
}

py::tuple obs_factor(py::array H_, double damp, bool keep_lower, int n_threads) {
  check_threads(n_threads);
  if (!(damp >= 0)) throw py::value_error("damp must be >= 0");
  return dispatch_real(H_.dtype(), [&](auto t) -> py::tuple {
    using T = typename decltype(t)::type;
    auto H = strict_out<T>(H_, "H");
    if (H.ndim() != 2 || H.shape(0) != H.shape(1)) throw wp::ShapeError("H: expected a square matrix");
    const std::int64_t n = H.shape(0);
    carr<u8> dead({n});
    T* hp = H.mutable_data();
    u8* dp = dead.mutable_data();
    int info;
    {
      py::gil_scoped_release nogil;
      info = wp::obs_factor<T>(n, hp, damp, dp, keep_lower, n_threads);
    }
    return py::make_tuple(info, dead);
  });
}

py::object obs_sweep(py::array W_, py::array U_, int bits, std::int64_t group, bool symmetric,
                     bool mse, std::int64_t n_prune, int nm_n, int nm_m, std::int64_t block, py::object col_group,
                     py::object scales_in, py::object zeros_in, int n_threads, py::object row_err) {
  check_threads(n_threads);
  wp::ObsOptions opt;
  opt.bits = bits;
  opt.group = group;
  opt.symmetric = symmetric;
  opt.mse = mse;
  opt.n_prune = n_prune;
  opt.nm_n = nm_n;
  opt.nm_m = nm_m;
  opt.block = block;
  if (bits != 0) spec_of(bits, group, symmetric);
  return dispatch_real(W_.dtype(), [&](auto t) -> py::object {
    using T = typename decltype(t)::type;
    auto W = strict_out<T>(W_, "W");
    auto U = strict<T>(U_, "U");
    if (W.ndim() != 2) throw wp::ShapeError("W: expected a 2-D array");
    const std::int64_t rows = W.shape(0), cols = W.shape(1);
    check_2d(U, cols, cols, "U");
    const std::int64_t ng = bits ? wp::quant_n_groups(cols, group) : 0;
    const bool q = bits != 0, z = q && !symmetric;
    carr<u8> codes({q ? rows : 0, q ? cols : 0});
    carr<u16> scales({q ? rows : 0, ng});
    carr<u8> zeros({z ? rows : 0, z ? ng : 0});
    carr<std::int64_t> cg;
    if (!col_group.is_none()) {  // fixed groups: scales (and zeros) come in
      if (!q) throw wp::ShapeError("col_group: only with bits > 0");
      cg = strict<std::int64_t>(col_group, "col_group");
      if (cg.ndim() != 1 || cg.shape(0) != cols) throw wp::ShapeError("col_group: expected length cols");
      auto si = strict<u16>(scales_in, "scales");
      check_2d(si, rows, ng, "scales");
      std::copy(si.data(), si.data() + rows * ng, scales.mutable_data());
      if (z) {
        auto zi = strict<u8>(zeros_in, "zeros");
        check_2d(zi, rows, ng, "zeros");
        std::copy(zi.data(), zi.data() + rows * ng, zeros.mutable_data());
      }
      opt.col_group = cg.data();
    }
    carr<double> re;
    if (!row_err.is_none()) {  // accumulated into: the caller zeroes it
      re = strict_out<double>(row_err, "row_err");
      if (re.ndim() != 1 || re.shape(0) != rows) throw wp::ShapeError("row_err: expected length rows");
      opt.row_err = re.mutable_data();
    }
    T* wp_ = W.mutable_data();
    const T* up = U.data();
    u8 *cp = codes.mutable_data(), *zp = zeros.mutable_data();
    u16* sp = scales.mutable_data();
    {
      py::gil_scoped_release nogil;
      wp::obs_sweep<T>(rows, cols, wp_, up, opt, q ? cp : nullptr, sp, zp, n_threads);
    }
    if (!q) return py::none();
    return py::make_tuple(codes, scales, z ? py::object(zeros) : py::object(py::none()));
  });
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def("quant_pack", &quant_pack, "Pack uint8 codes (rows, cols) into rows of bits-wide fields.",
        "codes"_a.noconvert(), "bits"_a, "n_threads"_a);
  m.def("quant_unpack", &quant_unpack, "Unpack rows of bits-wide fields into uint8 codes.",
        "packed"_a.noconvert(), "cols"_a, "bits"_a, "n_threads"_a);
  m.def("quant_rtn", &quant_rtn,
        "Round-to-nearest quantization: (codes|None, scales f16 bits, zeros|None).",
        "W"_a.noconvert(), "bits"_a, "group"_a, "symmetric"_a, "mse"_a, "n_threads"_a,
        "with_codes"_a = true);
  m.def("quant_dequantize", &quant_dequantize, "Dequantize a packed matrix into out.",
        "packed"_a.noconvert(), "scales"_a.noconvert(), "zeros"_a, "bits"_a, "group"_a,
        "symmetric"_a, "out"_a.noconvert(), "n_threads"_a);
  m.def("quant_matmul", &quant_matmul, "Y = X @ W.T with W packed (never dequantized in memory).",
        "packed"_a.noconvert(), "scales"_a.noconvert(), "zeros"_a, "rows"_a, "cols"_a, "bits"_a,
        "group"_a, "symmetric"_a, "X"_a.noconvert(), "n_threads"_a);
  m.def("quant_isa_level", &wp::quant_isa_level,
        "Vector path of quant_matmul on this CPU: 2 AVX-512, 1 AVX2, 0 baseline.");
  m.def("obs_factor", &obs_factor,
        "Replace H by the upper Cholesky factor of the damped inverse; returns (info, dead).",
        "H"_a.noconvert(), "damp"_a, "keep_lower"_a = false, "n_threads"_a = 1);
  m.def("obs_sweep", &obs_sweep,
        "GPTQ / SparseGPT column sweep of W in place; returns (codes, scales, zeros|None) or None.",
        "W"_a.noconvert(), "U"_a.noconvert(), "bits"_a, "group"_a, "symmetric"_a, "mse"_a, "n_prune"_a,
        "nm_n"_a, "nm_m"_a, "block"_a, "col_group"_a, "scales"_a, "zeros"_a, "n_threads"_a,
        "row_err"_a = py::none());
}

}  // namespace wpb
