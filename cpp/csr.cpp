#include "weightpress/csr.hpp"

#include <algorithm>
#include <atomic>
#include <string>
#include <type_traits>
#include <vector>

#include "weightpress/errors.hpp"
#include "weightpress/parallel.hpp"

namespace wp {

template <class I>
void csr_check_indptr(std::int64_t rows, const I* indptr, std::int64_t nnz) {
  if (indptr[0] != 0)
    throw ShapeError("malformed CSR: indptr[0] must be 0, got " + std::to_string(indptr[0]));
  for (std::int64_t i = 0; i < rows; ++i)
    if (indptr[i + 1] < indptr[i])
      throw ShapeError("malformed CSR: indptr is not monotone (indptr[" + std::to_string(i + 1) +
                       "] = " + std::to_string(indptr[i + 1]) + " < indptr[" + std::to_string(i) +
                       "] = " + std::to_string(indptr[i]) + ")");
  if (static_cast<std::int64_t>(indptr[rows]) != nnz)
    throw ShapeError("malformed CSR: indptr[-1] = " + std::to_string(indptr[rows]) +
                     " but indices/data have length " + std::to_string(nnz));
}

namespace {
template <class I>
inline bool out_of_range(I j, std::int64_t cols) {
  using U = std::make_unsigned_t<I>;
  return static_cast<std::uint64_t>(static_cast<U>(j)) >= static_cast<std::uint64_t>(cols) || j < 0;
}

// Row range of part p of n_parts, balanced on nnz + rows (depends only on the matrix).
template <class I>
std::int64_t part_start(std::int64_t rows, const I* indptr, std::int64_t p, std::int64_t n_parts) {
  if (p <= 0) return 0;
  if (p >= n_parts) return rows;
  const std::int64_t nnz = indptr[rows];
  const std::int64_t target = (nnz + rows) * p / n_parts;
  // smallest i with indptr[i] + i >= target
  std::int64_t lo = 0, hi = rows;
  while (lo < hi) {
    std::int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<std::int64_t>(indptr[mid]) + mid < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

inline void note_bad(std::atomic<std::int64_t>& first_bad, std::int64_t p) {
  std::int64_t cur = first_bad.load(std::memory_order_relaxed);
  while ((cur < 0 || p < cur) && !first_bad.compare_exchange_weak(cur, p)) {
  }
}
}  // namespace

template <class I>
void csr_check(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
               std::int64_t nnz, int n_threads) {
  csr_check_indptr(rows, indptr, nnz);
  std::atomic<std::int64_t> first_bad{-1};
  const int nt = threads_for(nnz, n_threads, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t p = 0; p < nnz; ++p)
    if (out_of_range(indices[p], cols)) note_bad(first_bad, p);
  const std::int64_t b = first_bad.load();
  if (b >= 0)
    throw ShapeError("malformed CSR: column index " + std::to_string(indices[b]) + " at position " +
                     std::to_string(b) + " is out of range for " + std::to_string(cols) +
                     " columns");
}

template <class T, class I>
std::int64_t csr_matmat(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
                        const T* data, std::int64_t k, const T* x, std::int64_t ldx, T* y,
                        std::int64_t ldy, int n_threads) {
  std::atomic<std::int64_t> first_bad{-1};
  const std::int64_t nnz = indptr[rows];
  const int nt = threads_for((nnz + rows) * std::max<std::int64_t>(k, 1), n_threads, 1 << 15);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#ifdef WP_HAVE_OPENMP
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int tid = 0, nth = 1;
#endif
    const std::int64_t r0 = part_start(rows, indptr, tid, nth);
    const std::int64_t r1 = part_start(rows, indptr, tid + 1, nth);
    if (k == 1) {
      for (std::int64_t i = r0; i < r1; ++i) {
        T s = T(0);
        for (std::int64_t p = indptr[i]; p < static_cast<std::int64_t>(indptr[i + 1]); ++p) {
          const I j = indices[p];
          if (out_of_range(j, cols)) {
            note_bad(first_bad, p);
            continue;
          }
          s += data[p] * x[static_cast<std::int64_t>(j) * ldx];
        }
        y[i * ldy] = s;
      }
    } else {
      for (std::int64_t i = r0; i < r1; ++i) {
        T* __restrict yr = y + i * ldy;
        for (std::int64_t c = 0; c < k; ++c) yr[c] = T(0);
        for (std::int64_t p = indptr[i]; p < static_cast<std::int64_t>(indptr[i + 1]); ++p) {
          const I j = indices[p];
          if (out_of_range(j, cols)) {
            note_bad(first_bad, p);
            continue;
          }
          const T a = data[p];
          const T* __restrict xr = x + static_cast<std::int64_t>(j) * ldx;
          for (std::int64_t c = 0; c < k; ++c) yr[c] += a * xr[c];
        }
      }
    }
  }
  return first_bad.load();
}

template <class T, class I>
std::int64_t csr_matmat_t(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
                          const T* data, std::int64_t k, const T* x, std::int64_t ldx, T* y,
                          std::int64_t ldy, int n_threads) {
  std::atomic<std::int64_t> first_bad{-1};
  const std::int64_t nnz = indptr[rows];
  // Rows are split into blocks (a number that depends on the problem only, never on
  // n_threads), each scatters into its own copy of Y, and the copies are summed in block
  // order. Few blocks: each copy of Y must stay cache-friendly, and the reduction costs
  // n_blocks * cols * k against the scatter's nnz * k. At most 32 MiB of extra copies.
  const std::int64_t out_elems = std::max<std::int64_t>(cols * k, 1);
  std::int64_t n_blocks = std::clamp<std::int64_t>(nnz / std::max<std::int64_t>(4 * cols, 1), 1, 4);
  n_blocks = std::min<std::int64_t>(
      n_blocks, 1 + (std::int64_t(32) << 20) / (out_elems * std::int64_t(sizeof(T))));
  if (nnz * k < (1 << 15)) n_blocks = 1;
  std::vector<T> buf(static_cast<size_t>((n_blocks - 1) * out_elems));
  const int nt = static_cast<int>(std::min<std::int64_t>(n_threads, n_blocks));
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    T* out = (b == 0) ? y : buf.data() + (b - 1) * out_elems;
    const std::int64_t ld = (b == 0) ? ldy : k;
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t c = 0; c < k; ++c) out[j * ld + c] = T(0);
    const std::int64_t r0 = part_start(rows, indptr, b, n_blocks);
    const std::int64_t r1 = part_start(rows, indptr, b + 1, n_blocks);
    for (std::int64_t i = r0; i < r1; ++i) {
      const T* __restrict xr = x + i * ldx;
      for (std::int64_t p = indptr[i]; p < static_cast<std::int64_t>(indptr[i + 1]); ++p) {
        const I j = indices[p];
        if (out_of_range(j, cols)) {
          note_bad(first_bad, p);
          continue;
        }
        const T a = data[p];
        T* __restrict o = out + static_cast<std::int64_t>(j) * ld;
        for (std::int64_t c = 0; c < k; ++c) o[c] += a * xr[c];
      }
    }
  }
  if (n_blocks > 1) {
    const int nr = threads_for(out_elems * n_blocks, n_threads, 1 << 15);
#pragma omp parallel for num_threads(nr) schedule(static) if (nr > 1)
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t b = 1; b < n_blocks; ++b) {
        const T* src = buf.data() + (b - 1) * out_elems + j * k;
        T* dst = y + j * ldy;
        for (std::int64_t c = 0; c < k; ++c) dst[c] += src[c];
      }
  }
  return first_bad.load();
}

#define WP_CSR_INST_I(I)                                                                   \
  template void csr_check_indptr<I>(std::int64_t, const I*, std::int64_t);                \
  template void csr_check<I>(std::int64_t, std::int64_t, const I*, const I*, std::int64_t, int);
#define WP_CSR_INST(T, I)                                                                  \
  template std::int64_t csr_matmat<T, I>(std::int64_t, std::int64_t, const I*, const I*,   \
                                         const T*, std::int64_t, const T*, std::int64_t, T*, \
                                         std::int64_t, int);                               \
  template std::int64_t csr_matmat_t<T, I>(std::int64_t, std::int64_t, const I*, const I*, \
                                           const T*, std::int64_t, const T*, std::int64_t, \
                                           T*, std::int64_t, int);
WP_CSR_INST_I(std::int32_t)
WP_CSR_INST_I(std::int64_t)
WP_CSR_INST(float, std::int32_t)
WP_CSR_INST(float, std::int64_t)
WP_CSR_INST(double, std::int32_t)
WP_CSR_INST(double, std::int64_t)

}  // namespace wp
