// The optimal-brain sweep (GPTQ / SparseGPT): see obs.hpp.
#include "weightpress/obs.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "weightpress/blas.hpp"
#include "weightpress/isa.hpp"
#include "weightpress/parallel.hpp"
#include "weightpress/tiled.hpp"

namespace wp {

namespace {

// In-place inverse of an upper triangular matrix (column-major, lda), recursively:
// [A11 A12; 0 A22]⁻¹ = [A11⁻¹, −A11⁻¹ A12 A22⁻¹; 0, A22⁻¹], two TRMMs per level (n³/3 flops).
template <class T>
void tri_inv_upper(blas::blas_int n, T* A, blas::blas_int lda, int n_threads) {
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
  tri_inv_upper(n1, A, lda, n_threads);
  tri_inv_upper(n2, A22, lda, n_threads);
  tiled_trmm_upper<T>('L', n1, n2, T(1), A, lda, A12, lda, n_threads);
  tiled_trmm_upper<T>('R', n1, n2, T(-1), A22, lda, A12, lda, n_threads);
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


// ---- The in-block sweep, kTileRows rows at a time -------------------------------------------
// Each row's sweep is a chain (column c's rounding depends on the errors of the columns before
// it), but rows are independent: a tile holds kTileRows rows' block transposed (wt[i][l], lane
// l = row), so the rank-1 update W[:, j] −= e · U[c, j] runs across the lanes in vectors and
// the rows' chains overlap instead of each waiting on its own divisions. Every lane does the
// same operations in the same order as a row on its own (no FP contraction under -std=c++17),
// so results equal the one-row sweep bit for bit, on every CPU and thread count.
constexpr std::int64_t kTileRows = 16;

template <class T>
struct LaneVecOf {
  typedef T type __attribute__((vector_size(kTileRows * sizeof(T))));
};
template <class T>
using LaneVec = typename LaneVecOf<T>::type;

template <class T>
struct SweepBlock {
  std::int64_t rows, cols, g, ng, i1, i2;
  bool quant, per_row, fixed, masked;
  int maxq;
  const QuantSpec* spec;
  const ObsOptions* opt;
  T* W;
  const T* U;
  T* err;                     // rows × nb: the block's scaled errors (for the GEMM after it)
  const std::uint8_t* mask;   // rows × nb: unstructured pruning mask of the block
  GroupParams* params;        // each row's current quantization parameters
  std::uint8_t* codes;
  std::uint16_t* scales;
  std::uint8_t* zeros;
};

template <class T>
WP_INLINE void sweep_tile(const SweepBlock<T>& b, std::int64_t r0) {
  constexpr std::int64_t L = kTileRows;
  const ObsOptions& opt = *b.opt;
  const std::int64_t cols = b.cols, i1 = b.i1, nb = b.i2 - b.i1;
  const std::int64_t nl = std::min<std::int64_t>(L, b.rows - r0);  // live lanes; the rest stay 0
  std::vector<T> buf(static_cast<size_t>(2 * nb * L), T(0));
  T* __restrict wt = buf.data();
  T* __restrict et = wt + nb * L;
  std::vector<std::uint8_t> mk(static_cast<size_t>(nb * L), 0);
  std::vector<std::uint8_t> ctv(static_cast<size_t>(nb * L));  // the block's codes, lane-major
  std::uint8_t* __restrict ct = ctv.data();
  for (std::int64_t l = 0; l < nl; ++l) {
    const T* w = b.W + (r0 + l) * cols + i1;
    for (std::int64_t i = 0; i < nb; ++i) wt[i * L + l] = w[i];
    if (b.masked && opt.nm_m == 0)  // N:M masks are chosen in the sweep, per group
      for (std::int64_t i = 0; i < nb; ++i) mk[static_cast<size_t>(i * L + l)] = b.mask[(r0 + l) * nb + i];
  }
  GroupParams p[L];
  for (std::int64_t l = 0; l < L; ++l) p[l] = l < nl ? b.params[r0 + l] : GroupParams{0.0f, 0, 0};
  std::vector<T> tmp(static_cast<size_t>(b.quant && !b.per_row && !b.fixed ? b.g : 0));
  T ec[L];
  int code[L];
  for (std::int64_t i = 0; i < nb; ++i) {
    const std::int64_t c = i1 + i;
    if (opt.nm_m > 0 && c % opt.nm_m == 0) {
      const std::int64_t gs = std::min<std::int64_t>(opt.nm_m, cols - c);
      if (i + gs <= nb) {  // the group lies inside this block
        const std::int64_t drop = std::max<std::int64_t>(0, gs - opt.nm_n);
        for (std::int64_t l = 0; l < nl; ++l) {
          for (std::int64_t t = 0; t < gs; ++t) mk[static_cast<size_t>((i + t) * L + l)] = 0;
          for (std::int64_t t = 0; t < drop; ++t) {  // drop-th smallest, ties to the left
            std::int64_t best = -1;
            double bs = 0;
            for (std::int64_t q = 0; q < gs; ++q) {
              if (mk[static_cast<size_t>((i + q) * L + l)]) continue;
              const double wq = static_cast<double>(wt[(i + q) * L + l]);
              const double dq = static_cast<double>(b.U[(c + q) * cols + c + q]);
              const double sq = (wq * wq) / (dq * dq);
              if (best < 0 || sq < bs) best = q, bs = sq;
            }
            mk[static_cast<size_t>((i + best) * L + l)] = 1;
          }
        }
      }
    }
    if (b.fixed) {
      for (std::int64_t l = 0; l < nl; ++l) {
        const std::int64_t gi = (r0 + l) * b.ng + opt.col_group[c];
        p[l].half = b.scales[gi];
        p[l].scale = half_to_float(p[l].half);
        p[l].zero = opt.symmetric ? (1 << (opt.bits - 1)) : b.zeros[gi];
      }
    } else if (b.quant && !b.per_row && c % b.g == 0) {
      const std::int64_t gl = std::min(b.g, cols - c);
      for (std::int64_t l = 0; l < nl; ++l) {
        for (std::int64_t q = 0; q < gl; ++q) tmp[static_cast<size_t>(q)] = wt[(i + q) * L + l];
        p[l] = quant_params_spec(tmp.data(), gl, *b.spec);
        b.scales[(r0 + l) * b.ng + c / b.g] = p[l].half;
        if (!opt.symmetric) b.zeros[(r0 + l) * b.ng + c / b.g] = static_cast<std::uint8_t>(p[l].zero);
      }
    }
    const T* __restrict u = b.U + c * cols;
    const T uc = u[c];
    T* __restrict wi = wt + i * L;
    const std::uint8_t* __restrict mi = mk.data() + i * L;
    // quant_code and the error, written branch-free over the lanes (they vectorize): the
    // same operations as quant_code's, selects in place of its early returns
    if (b.quant) {
      double sc[L], zr[L], dk[L];  // codes as doubles (small integers: exact)
      for (std::int64_t l = 0; l < L; ++l)
        sc[l] = static_cast<double>(p[l].scale), zr[l] = static_cast<double>(p[l].zero);
      const double mq = static_cast<double>(b.maxq);
      for (std::int64_t l = 0; l < L; ++l) {
        double t = std::nearbyint(static_cast<double>(wi[l]) / sc[l]) + zr[l];
        t = t >= 0 ? t : 0.0;  // NaN too
        t = t > mq ? mq : t;
        t = sc[l] > 0 ? t : zr[l];
        dk[l] = mi[l] ? zr[l] : t;
      }
      for (std::int64_t l = 0; l < L; ++l) {
        const T wv = wi[l];
        T q = static_cast<T>(static_cast<float>(sc[l])) * static_cast<T>(dk[l] - zr[l]);
        q = mi[l] ? T(0) : q;
        ec[l] = (wv - q) / uc;
        wi[l] = q;
      }
      for (std::int64_t l = 0; l < L; ++l) code[l] = static_cast<int>(dk[l]);
    } else {
      for (std::int64_t l = 0; l < L; ++l) {
        const T wv = wi[l];
        const T q = mi[l] ? T(0) : wv;
        code[l] = 0;
        ec[l] = (wv - q) / uc;
        wi[l] = q;
      }
    }
    for (std::int64_t l = 0; l < L; ++l) et[i * L + l] = ec[l];
    for (std::int64_t l = 0; l < L; ++l) ct[i * L + l] = static_cast<std::uint8_t>(code[l]);
    // the rank-1 update, one vector of lanes per column (GCC's vector extension: one zmm of
    // floats on AVX-512, two ymm on AVX2; left to the vectorizer, GCC vectorized along j with
    // permutes instead)
    LaneVec<T> ev;
    std::memcpy(&ev, ec, sizeof ev);
    for (std::int64_t j = i + 1; j < nb; ++j) {
      LaneVec<T> wv;
      std::memcpy(&wv, wt + j * L, sizeof wv);
      wv -= ev * u[i1 + j];
      std::memcpy(wt + j * L, &wv, sizeof wv);
    }
  }
  for (std::int64_t l = 0; l < nl; ++l) {
    T* w = b.W + (r0 + l) * cols + i1;
    T* e = b.err + (r0 + l) * nb;
    for (std::int64_t i = 0; i < nb; ++i) {
      w[i] = wt[i * L + l];
      e[i] = et[i * L + l];
    }
    if (b.codes) {
      std::uint8_t* k = b.codes + (r0 + l) * cols + i1;
      for (std::int64_t i = 0; i < nb; ++i) k[i] = ct[i * L + l];
    }
    b.params[r0 + l] = p[l];
    if (opt.row_err) {
      double acc = 0;
      for (std::int64_t i = 0; i < nb; ++i) acc += static_cast<double>(e[i]) * static_cast<double>(e[i]);
      opt.row_err[r0 + l] += acc;
    }
  }
}

template <class T>
void sweep_tile_base(const SweepBlock<T>& b, std::int64_t r0) { sweep_tile(b, r0); }
#ifdef WP_X86_DISPATCH
template <class T>
WP_TARGET_V3 void sweep_tile_v3(const SweepBlock<T>& b, std::int64_t r0) { sweep_tile(b, r0); }
template <class T>
WP_TARGET_V4 void sweep_tile_v4(const SweepBlock<T>& b, std::int64_t r0) { sweep_tile(b, r0); }
#endif

template <class T>
void sweep_tile_dispatch(Isa level, const SweepBlock<T>& b, std::int64_t r0) {
#ifdef WP_X86_DISPATCH
  if (level == Isa::kV4) return sweep_tile_v4(b, r0);
  if (level == Isa::kV3) return sweep_tile_v3(b, r0);
#else
  (void)level;
#endif
  sweep_tile_base(b, r0);
}

}  // namespace

template <class T>
int obs_factor(std::int64_t n, T* H, double damp, std::uint8_t* dead, bool keep_lower,
               int n_threads) {
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
  // Reversing the whole n×n buffer maps (i, j) to (n−1−i, n−1−j). Our own blocked Cholesky,
  // not LAPACK's potrf: OpenBLAS's threaded potrf rounds differently for each thread count.
  std::reverse(H, H + n * n);
  const int info = chol_lower<T>(n, H, n, n_threads);
  std::reverse(H, H + n * n);  // column-major R in the upper triangle
  if (info > 0) return info;  // (the row-major upper triangle is still H)
  tri_inv_upper<T>(N, H, N, n_threads);
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

  const Isa level = isa_level();
  const std::int64_t n_tiles = (rows + kTileRows - 1) / kTileRows;
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
    const SweepBlock<T> sb{rows, cols, g, ng, i1, i2, quant, per_row, fixed, opt.n_prune > 0,
                           maxq, &spec, &opt, W, U, err.data(), mask.data(), params.data(),
                           codes, scales, zeros};
    // rows independent, kTileRows at a time (one tile per task: results do not depend on
    // the thread count)
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (std::int64_t t = 0; t < n_tiles; ++t) fe.run([&] { sweep_tile_dispatch(level, sb, t * kTileRows); });
    fe.rethrow();
    if (i2 < cols)  // W[:, i2:] −= E (rows × nb) · U[i1:i2, i2:], by fixed tiles (tiled.hpp)
      tiled_gemm_rm<T>(rows, cols - i2, nb, T(-1), err.data(), nb, U + i1 * cols + i2, cols, T(1),
                       W + i2, cols, n_threads);
  }
}

template int obs_factor<float>(std::int64_t, float*, double, std::uint8_t*, bool, int);
template int obs_factor<double>(std::int64_t, double*, double, std::uint8_t*, bool, int);
template void obs_sweep<float>(std::int64_t, std::int64_t, float*, const float*, const ObsOptions&,
                               std::uint8_t*, std::uint16_t*, std::uint8_t*, int);
template void obs_sweep<double>(std::int64_t, std::int64_t, double*, const double*,
                                const ObsOptions&, std::uint8_t*, std::uint16_t*, std::uint8_t*, int);

}  // namespace wp
