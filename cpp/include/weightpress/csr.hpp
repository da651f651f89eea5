// CSR sparse products. Indices may be unsorted and duplicated (duplicates are summed).
// Every output element is computed by one thread in a fixed order: results do not depend
// on n_threads.
#pragma once
#include <cstdint>
#include <string>

namespace wp {

// O(rows) structural checks of indptr; throws ShapeError naming the problem.
template <class I>
void csr_check_indptr(std::int64_t rows, const I* indptr, std::int64_t nnz);

// Full O(nnz) check: indptr as above and 0 <= indices < cols. Throws ShapeError.
template <class I>
void csr_check(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
               std::int64_t nnz, int n_threads);

// Throws the ShapeError naming the out-of-range column index at position `bad` (what the
// products below return when they find one).
template <class I>
[[noreturn]] void csr_bad_index(const I* indices, std::int64_t bad, std::int64_t cols);

// Y(rows×k) = A X with X (cols×k) row-major, leading dimension ldx (>= k); Y row-major, ldy.
// Column indices are range-checked on the fly (free: they are read anyway); returns the
// position of the first out-of-range index in `indices`, or -1 if all were in range (then Y
// is complete; otherwise Y is unspecified). indptr must have passed csr_check_indptr.
template <class T, class I>
std::int64_t csr_matmat(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
                        const T* data, std::int64_t k, const T* x, std::int64_t ldx, T* y,
                        std::int64_t ldy, int n_threads);

// Y(cols×k) = Aᵀ X with X (rows×k), without forming Aᵀ: rows are split into a number of
// blocks (1 to 4) that depends only on the problem size, each block scatters into its own
// copy of Y, and the copies are summed in block order, so the result does not depend on
// n_threads. Same return convention as csr_matmat.
template <class T, class I>
std::int64_t csr_matmat_t(std::int64_t rows, std::int64_t cols, const I* indptr, const I* indices,
                          const T* data, std::int64_t k, const T* x, std::int64_t ldx, T* y,
                          std::int64_t ldy, int n_threads);

// How this CPU's SpMV (k = 1) reads x: "avx512-gather", "avx512-loads", "avx2-gather",
// "avx2-loads" (chosen by timing both loops once: same bits either way) or "scalar"; unless
// WP_SPMV_X forces one, followed by "; larger than the LLC: " and either "measuring" or the
// choices made so far for matrices out of cache, e.g. "x 32 KiB 1t gather, x 32 KiB 2+t
// loads" (per size class of x and thread class, by timing the first such calls).
std::string spmv_x_path();

// Bytes of this CPU's level-`level` data or unified cache (0: the largest of any level), 0 if
// unknown: sysfs (cpu0) first, else sysconf, which in a VM may report the host's cache.
std::int64_t cache_bytes(int level);

}  // namespace wp
