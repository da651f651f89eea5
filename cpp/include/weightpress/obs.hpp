// The optimal-brain sweep over the columns of a weight matrix W (rows × cols, PyTorch layout
// y = x Wᵀ), driven by the upper Cholesky factor U of the damped inverse Hessian
// H⁻¹ = UᵀU (H = XᵀX of the layer's inputs). One engine serves:
//   - GPTQ: each column is quantized in turn and its rounding error is spread over the columns
//     not yet visited, err = (w − q) / U[c, c], W[:, j] −= err · U[c, j] for j > c;
//   - SparseGPT: the same with q = 0 for pruned weights, the mask chosen per block of columns
//     (unstructured: the k smallest w² / U[c,c]² in the block, k spread evenly so the total is
//     exact) or per group of M columns (N:M: keep the N largest of each M per row);
//   - the joint mode: prune, then quantize what is kept.
// Columns are swept in blocks (default 128): inside a block each row is independent (OpenMP
// over tiles of 16 rows swept together in vectors, one tile per task, so results do not
// depend on the thread count or the ISA level); between blocks the block's errors update the
// remaining columns with one GEMM (BLAS, serial call).
#pragma once
#include <cstdint>

#include "weightpress/quant.hpp"

namespace wp {

// H (n × n, symmetric, row-major) is replaced by U (row-major, upper; zeros below). Features
// with H[j, j] == 0 are dead: flagged in dead[j] (may be null) and given H[j, j] = 1. damp is
// added to the diagonal relative to its mean: H += damp · mean(diag H) · I. Returns 0, or (as
// LAPACK's potrf) the order of the first minor that is not positive definite. The products run
// on n_threads by fixed tiles (tiled.hpp): the same bits for any count, BLAS on one thread.
// keep_lower: the strictly lower triangle keeps H's values instead of zeros (obs_sweep reads U's
// upper triangle and diagonal only, so one n × n buffer holds both; the caller keeps H's
// diagonal). The strictly upper triangle holds H's values when info > 0.
template <class T>
int obs_factor(std::int64_t n, T* H, double damp, std::uint8_t* dead, bool keep_lower = false,
               int n_threads = 1);

struct ObsOptions {
  int bits = 0;                // 0: no quantization (pruning only); else 2..8
  std::int64_t group = 0;      // quantization group along rows (0: one scale per row)
  bool symmetric = true;
  bool mse = false;            // clipping search for each group's range (QuantSpec::mse)
  std::int64_t n_prune = 0;    // unstructured: weights to prune in total (exact)
  int nm_n = 0, nm_m = 0;      // N:M: keep nm_n of every nm_m columns per row (nm_m = 0: off)
  std::int64_t block = 128;    // columns per lazy-update block (rounded to a multiple of group)
  // Fixed ("static") quantization groups, for a permuted column order (GPTQ's act-order): the
  // group of swept column c is col_group[c], and scales / zeros are inputs, not outputs.
  const std::int64_t* col_group = nullptr;
  // Optional (rows): each row's Σ_c e_c², e_c = (w_c − q_c) / U[c, c] (w_c as updated when
  // column c is reached): the row's squared error (w − ŵ)ᵀ H_damped (w − ŵ), so one sweep
  // reports its own output error without a product with H.
  double* row_err = nullptr;
};

// Sweep W in place (rows × cols, row-major; on return the compressed weights: pruned entries
// 0, kept ones dequantized when bits > 0). U as from obs_factor (cols × cols). When bits > 0,
// codes (rows × cols), scales (rows × n_groups, float16 bits) and, when asymmetric, zeros
// (rows × n_groups) receive the quantized form (pruned entries get the code of 0).
template <class T>
void obs_sweep(std::int64_t rows, std::int64_t cols, T* W, const T* U, const ObsOptions& opt,
               std::uint8_t* codes, std::uint16_t* scales, std::uint8_t* zeros, int n_threads);

}  // namespace wp
