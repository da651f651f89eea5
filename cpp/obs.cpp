// The optimal-brain sweep (GPTQ / SparseGPT): see obs.hpp.
#include "weightpress/obs.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "weightpress/blas.hpp"
#include "weightpress/parallel.hpp"

namespace wp {

namespace {

// In-place inverse of an upper triangular matrix (column-major, lda), recursively:
// [A11 A12; 0 A22]⁻¹ = [A11⁻¹, −A11⁻¹ A12 A22⁻¹; 0, A22⁻¹], two TRMMs per level (n³/3 flops).
template <class T>
void tri_inv_upper(blas::blas_int n, T* A, blas::blas_int lda) {
  if (n <= 64) {
    for (blas::blas_int j = 0; j < n; ++j) {
      T* aj = A + static_cast<std::int64_t>(j) * lda;
      aj[j] = T(1) / aj[j];
      const T ajj = -aj[j];
      for (blas::blas_int i = 0; i < j; ++i) {  // ascending: A(i, j) is read only by rows <= i
        T sum = T(0);
        for (blas::blas_int k = i; k < j; ++k) sum += A[i + static_cast<std::int64_t>(k) * lda] * aj[k];
        aj[i] = sum * ajj;
      }
    }
    return;
  }
  const blas::blas_int n1 = n / 2, n2 = n - n1;
  T* A12 = A + static_cast<std::int64_t>(n1) * lda;
  T* A22 = A12 + n1;
  tri_inv_upper(n1, A, lda);
  tri_inv_upper(n2, A22, lda);
  blas::trmm<T>('L', 'U', 'N', 'N', n1, n2, T(1), A, lda, A12, lda);
  blas::trmm<T>('R', 'U', 'N', 'N', n1, n2, T(-1), A22, lda, A12, lda);
}

// Indices of the k smallest scores (ties: lower index first), marked in mask.
void mark_smallest(std::vector<double>& score, std::int64_t k, std::uint8_t* mask,
                   std::vector<std::int64_t>& idx) {
  const std::int64_t n = static_cast<std::int64_t>(score.size());
  std::fill(mask, mask + n, std::uint8_t(0));
  if (k <= 0) return;
  if (k >= n) {
    std::fill(mask, mask + n, std::uint8_t(1));
    return;
  }
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), std::int64_t(0));
  auto less = [&](std::int64_t a, std::int64_t b) {
    const double sa = score[static_cast<size_t>(a)], sb = score[static_cast<size_t>(b)];
    return sa < sb || (sa == sb && a < b);
  };
  std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), less);
  for (std::int64_t t = 0; t < k; ++t) mask[idx[static_cast<size_t>(t)]] = 1;
}

}  // namespace

template <class T>
int obs_factor(std::int64_t n, T* H, double damp, std::uint8_t* dead, bool keep_lower) {
  if (n == 0) return 0;
  const blas::blas_int N = blas::to_int(n, "obs_factor: n_features");
  double mean = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    T& hjj = H[j * n + j];
    const bool d = (hjj == T(0));
    if (dead) dead[j] = d;
    if (d) hjj = T(1);
    if (!std::isfinite(hjj) || hjj < T(0))
      throw ShapeError("obs_factor: H[" + std::to_string(j) + ", " + std::to_string(j) +
                       "] must be finite and >= 0");
    mean += static_cast<double>(hjj);
  }
  mean /= static_cast<double>(n);
  for (std::int64_t j = 0; j < n; ++j) H[j * n + j] += static_cast<T>(damp * mean);
  // H = R Rᵀ with R upper ("UL" Cholesky) is the ordinary Cholesky of J H J (J reverses the
  // order), and then H⁻¹ = UᵀU with U = R⁻¹ upper: one potrf and one triangular inverse.
  // Reversing the whole n×n buffer maps (i, j) to (n−1−i, n−1−j).
  std::reverse(H, H + n * n);
  const blas::blas_int info = blas::potrf<T>('L', N, H, N);
  std::reverse(H, H + n * n);  // column-major R in the upper triangle
  if (info > 0) return static_cast<int>(info);  // (the row-major upper triangle is still H)
  tri_inv_upper<T>(N, H, N);
  // column-major upper U → row-major upper U (a transpose). The swap moves the row-major
  // upper triangle, which the factorisation never touched (H's own values), below.
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = i + 1; j < n; ++j) std::swap(H[i * n + j], H[j * n + i]);
  if (!keep_lower)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < i; ++j) H[i * n + j] = T(0);
  return 0;
}

template <class T>
void obs_sweep(std::int64_t rows, std::int64_t cols, T* W, const T* U, const ObsOptions& opt,
               std::uint8_t* codes, std::uint16_t* scales, std::uint8_t* zeros, int n_threads) {
  const bool quant = opt.bits > 0;
  QuantSpec spec{opt.bits, opt.group, opt.symmetric, opt.mse};
  if (quant) quant_check_spec(spec, "obs_sweep");
  if (opt.nm_m < 0 || opt.nm_n < 0 || (opt.nm_m > 0 && opt.nm_n > opt.nm_m))
    throw ShapeError("obs_sweep: N:M pattern needs 0 <= N <= M");
  if (opt.n_prune < 0 || opt.n_prune > rows * cols)
    throw ShapeError("obs_sweep: n_prune must be in [0, rows * cols]");
  if (rows == 0 || cols == 0) return;
  const std::int64_t g = quant ? quant_group(cols, opt.group) : cols;
  const std::int64_t ng = quant ? quant_n_groups(cols, opt.group) : 0;
  const bool fixed = quant && opt.col_group != nullptr;
  const bool per_row = quant && !fixed && g >= cols;
  if (fixed)
    for (std::int64_t c = 0; c < cols; ++c)
      if (opt.col_group[c] < 0 || opt.col_group[c] >= ng)
        throw ShapeError("obs_sweep: col_group[" + std::to_string(c) + "] is not a group index");
  std::int64_t B = std::max<std::int64_t>(1, opt.block);
  if (quant && !per_row && !fixed) B = std::max(g, (B / g) * g);  // every group inside a block
  B = std::min(B, cols);
  const int maxq = quant ? (1 << opt.bits) - 1 : 0;

  std::vector<T> err(static_cast<size_t>(rows * B));
  std::vector<std::uint8_t> mask(static_cast<size_t>(rows * B), 0);
  std::vector<GroupParams> params(static_cast<size_t>(rows), GroupParams{0.0f, 0, 0});
  std::vector<double> score;
  std::vector<std::int64_t> idx;
  // Each thread gets at least ~16 M flops of the in-block sweep: the phase sits between two
  // BLAS calls, and a smaller one costs more in wake-ups (and in OpenBLAS threads still
  // spinning on the other core) than it saves.
  const int nt = threads_for(rows * B * B / 2, n_threads, std::int64_t(1) << 24);
  FirstError fe;

  if (per_row) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (std::int64_t r = 0; r < rows; ++r)
      fe.run([&] {
        const GroupParams p = quant_params_spec(W + r * cols, cols, spec);
        params[static_cast<size_t>(r)] = p;
        scales[r] = p.half;
        if (!opt.symmetric) zeros[r] = static_cast<std::uint8_t>(p.zero);
      });
    fe.rethrow();
  }

  for (std::int64_t i1 = 0; i1 < cols; i1 += B) {
    const std::int64_t i2 = std::min(i1 + B, cols), nb = i2 - i1;
    if (opt.n_prune > 0) {  // the block's share of the exact total, smallest w² / U[c,c]²
      const double tot = static_cast<double>(opt.n_prune);
      const auto k = static_cast<std::int64_t>(std::nearbyint(tot * static_cast<double>(i2) / static_cast<double>(cols)) -
                                               std::nearbyint(tot * static_cast<double>(i1) / static_cast<double>(cols)));
      score.resize(static_cast<size_t>(rows * nb));
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t i = 0; i < nb; ++i) {
          const double w = static_cast<double>(W[r * cols + i1 + i]);
          const double d = static_cast<double>(U[(i1 + i) * cols + i1 + i]);
          score[static_cast<size_t>(r * nb + i)] = (w * w) / (d * d);
        }
      mark_smallest(score, k, mask.data(), idx);
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1)  // rows independent
    for (std::int64_t r = 0; r < rows; ++r)
      fe.run([&] {
        T* __restrict w = W + r * cols;
        std::uint8_t* mk = mask.data() + r * nb;
        T* __restrict e = err.data() + r * nb;
        GroupParams p = params[static_cast<size_t>(r)];
        if (opt.nm_m > 0) std::fill(mk, mk + nb, std::uint8_t(0));
        for (std::int64_t i = 0; i < nb; ++i) {
          const std::int64_t c = i1 + i;
          if (opt.nm_m > 0 && c % opt.nm_m == 0) {
            const std::int64_t gs = std::min<std::int64_t>(opt.nm_m, cols - c);
            if (i + gs <= nb) {  // the group lies inside this block
              const std::int64_t drop = std::max<std::int64_t>(0, gs - opt.nm_n);
              for (std::int64_t t = 0; t < gs; ++t) mk[i + t] = 0;
              for (std::int64_t t = 0; t < drop; ++t) {  // drop-th smallest, ties to the left
                std::int64_t best = -1;
                double bs = 0;
                for (std::int64_t q = 0; q < gs; ++q) {
                  if (mk[i + q]) continue;
                  const double wq = static_cast<double>(w[c + q]);
                  const double dq = static_cast<double>(U[(c + q) * cols + c + q]);
                  const double sq = (wq * wq) / (dq * dq);
                  if (best < 0 || sq < bs) best = q, bs = sq;
                }
                mk[i + best] = 1;
              }
            }
          }
          if (fixed) {
            const std::int64_t gi = r * ng + opt.col_group[c];
            p.half = scales[gi];
            p.scale = half_to_float(p.half);
            p.zero = opt.symmetric ? (1 << (opt.bits - 1)) : zeros[gi];
          } else if (quant && !per_row && c % g == 0) {
            p = quant_params_spec(w + c, std::min(g, cols - c), spec);
            scales[r * ng + c / g] = p.half;
            if (!opt.symmetric) zeros[r * ng + c / g] = static_cast<std::uint8_t>(p.zero);
          }
          const T wv = w[c];
          T q;
          int code = 0;
          if (mk[i]) {
            q = T(0);
            code = p.zero;
          } else if (quant) {
            code = quant_code(wv, p, maxq);
            q = static_cast<T>(p.scale) * static_cast<T>(code - p.zero);
          } else {
            q = wv;
          }
          if (codes) codes[r * cols + c] = static_cast<std::uint8_t>(code);
          const T* __restrict u = U + c * cols;
          const T ec = (wv - q) / u[c];
          w[c] = q;
          for (std::int64_t j = c + 1; j < i2; ++j) w[j] -= ec * u[j];
          e[i] = ec;
        }
        params[static_cast<size_t>(r)] = p;
        if (opt.row_err) {
          double acc = 0;
          for (std::int64_t i = 0; i < nb; ++i) acc += static_cast<double>(e[i]) * static_cast<double>(e[i]);
          opt.row_err[r] += acc;
        }
      });
    fe.rethrow();
    if (i2 < cols)  // W[:, i2:] −= E (rows × nb) · U[i1:i2, i2:]
      blas::gemm_rm<T>(false, false, blas::to_int(rows), blas::to_int(cols - i2), blas::to_int(nb),
                       T(-1), err.data(), blas::to_int(nb), U + i1 * cols + i2, blas::to_int(cols),
                       T(1), W + i2, blas::to_int(cols));
  }
}

template int obs_factor<float>(std::int64_t, float*, double, std::uint8_t*, bool);
template int obs_factor<double>(std::int64_t, double*, double, std::uint8_t*, bool);
template void obs_sweep<float>(std::int64_t, std::int64_t, float*, const float*, const ObsOptions&,
                               std::uint8_t*, std::uint16_t*, std::uint8_t*, int);
template void obs_sweep<double>(std::int64_t, std::int64_t, double*, const double*,
                                const ObsOptions&, std::uint8_t*, std::uint16_t*, std::uint8_t*, int);

}  // namespace wp
