// Magnitude pruning of a strided dense matrix straight to CSR, in two passes (count, fill),
// with no dense temporary the size of W. Zeros are never stored.
#pragma once
#include <cstdint>
#include <vector>

namespace wp {

struct PruneSpec {
  enum Mode { kThreshold, kKeepCount, kNofM } mode = kThreshold;
  double threshold = 0;  // kThreshold: keep |w| >= threshold
  std::int64_t keep = 0;  // kKeepCount: keep exactly this many largest |w| (ties: row-major order)
  int n = 0, m = 0;       // kNofM: keep the n largest of each m consecutive entries of a row
};

// What the count pass decided; the fill pass replays it.
struct PruneState {
  PruneSpec spec;
  std::uint64_t key = 0;                 // magnitude key at the cut
  std::vector<std::int64_t> ties_keep;   // per row: how many entries with key == cut to keep
};

// Count pass: fills counts[0..rows] as a CSR indptr (int64) and returns nnz.
// W(i, j) = w[i * rs + j * cs] (strides in elements, any sign). Throws ShapeError on NaN.
template <class T>
std::int64_t prune_count(std::int64_t rows, std::int64_t cols, const T* w, std::int64_t rs,
                         std::int64_t cs, const PruneSpec& spec, PruneState& state,
                         std::int64_t* indptr, int n_threads);

// Fill pass: writes indices and data in row order, column indices sorted.
template <class T, class I>
void prune_fill(std::int64_t rows, std::int64_t cols, const T* w, std::int64_t rs, std::int64_t cs,
                const PruneState& state, const std::int64_t* indptr, I* indices, T* data,
                int n_threads);

// CSR index width: true when int32 holds every column index and every indptr entry.
inline bool csr_fits_int32(std::int64_t nnz, std::int64_t cols) {
  return nnz <= INT32_MAX && cols <= INT32_MAX;
}

// indptr narrowed to int32 (the caller checked csr_fits_int32).
void narrow_indptr(std::int64_t rows, const std::int64_t* in, std::int32_t* out);

}  // namespace wp
