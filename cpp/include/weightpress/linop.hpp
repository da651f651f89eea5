// The one linear-operator abstraction of the engine: a matrix A (m×n) seen only through
// products with thin row-major blocks, shared by the randomized SVD (rsvd*.cpp) and the l1
// homotopy (basis_pursuit.cpp).
//
// DenseOp: a dense buffer read in place, row-major (!col) or holding the operator's columns as
// its rows (col, i.e. column-major A). Products go to BLAS (call from a serial context); a
// single vector against a small matrix runs in our own loops instead, because waking BLAS
// threads costs more than such a product on a busy machine.
// CsrOp: a CSR matrix (indptr validated by the caller; column indices range-checked on every
// product), optionally seen transposed. Products go to wp::csr_matmat / csr_matmat_t, whose
// results do not depend on the thread count.
#pragma once
#include <cstdint>
#include <vector>

namespace wp {

// Row-major r×c → c×r copy of x (explicitly instantiated for float and double).
template <class T>
std::vector<T> transposed_copy(std::int64_t r, std::int64_t c, const T* x);

// y = A x for a row-major m×n A, through our own loop (blas = false) or BLAS gemv: the hook
// with which benchmarks/bench_sparse.py measures kSmallProduct (blas.hpp).
template <class T>
void dense_matvec(std::int64_t m, std::int64_t n, const T* a, const T* x, T* y, bool blas);

template <class T>
class LinOp {
 public:
  std::int64_t m = 0, n = 0;  // the operator's shape
  double fro2 = 0.0;          // ‖A‖_F², when the owner computed it (rsvd does)
  int n_threads = 1;          // for our own OpenMP loops (CSR products)
  virtual ~LinOp() = default;

  // Y (m×l, ld ldy) = A X (n×l, ld ldx), row-major.
  virtual void mm(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const = 0;
  // Y (n×l, ld ldy) = Aᵀ X (m×l, ld ldx), row-major.
  virtual void mm_t(std::int64_t l, const T* x, std::int64_t ldx, T* y,
                    std::int64_t ldy) const = 0;
  // Y (m×b, row-major, ld b) = A[:, cols].
  virtual void columns(const std::int64_t* cols, std::int64_t b, T* y) const = 0;
  // out[j] = ‖A[:, j]‖² in double, j < n.
  virtual void col_sumsq(double* out) const = 0;
  // ‖A − L R‖_F² in double; L (m×k row-major, ld k), R (k×n row-major, ld n).
  virtual double resid2(std::int64_t k, const T* L, const T* R) const = 0;
  // Dense operators: the buffer as a column-major view of A (*is_transpose = false) or of Aᵀ
  // (true), with its leading dimension; nullptr when the operator is not dense.
  virtual const T* colmajor(bool* is_transpose, std::int64_t* ld) const {
    *is_transpose = false;
    *ld = 0;
    return nullptr;
  }

  void matvec(const T* x, T* y) const { mm(1, x, 1, y, 1); }
  void rmatvec(const T* r, T* y) const { mm_t(1, r, 1, y, 1); }
  // out (n×b, column-major, ld n) = Aᵀ A[:, cols]; work is scratch.
  void gram(const std::int64_t* cols, std::int64_t b, T* out, std::vector<T>& work) const;
};

template <class T>
class DenseOp final : public LinOp<T> {
 public:
  const T* a = nullptr;
  std::int64_t ld = 0;  // stride between stored rows
  bool col = false;     // stored rows are the operator's columns
  std::vector<T> own;   // a scaled copy, when the owner needed one
  const double* sumsq = nullptr;  // the columns' squared norms, when known: col_sumsq copies them
  // mm / mm_t of many vectors as gemms of fixed row tiles on weightpress's threads, for a
  // caller that runs BLAS on one thread (randomized_svd); otherwise one gemm on BLAS's threads.
  bool tiled = false;

  void mm(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const override;
  void mm_t(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const override;
  void columns(const std::int64_t* cols, std::int64_t b, T* y) const override;
  void col_sumsq(double* out) const override;
  double resid2(std::int64_t k, const T* L, const T* R) const override;
  const T* colmajor(bool* is_transpose, std::int64_t* ldo) const override {
    *is_transpose = !col;
    *ldo = ld;
    return a;
  }
};

template <class T, class I>
class CsrOp final : public LinOp<T> {
 public:
  std::int64_t rs = 0, cs = 0;  // stored shape
  const I* indptr = nullptr;
  const I* indices = nullptr;
  const T* data = nullptr;
  bool tr = false;  // the operator is the stored matrix transposed
  std::vector<T> own;

  void mm(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const override;
  void mm_t(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const override;
  void columns(const std::int64_t* cols, std::int64_t b, T* y) const override;
  void col_sumsq(double* out) const override;
  double resid2(std::int64_t k, const T* L, const T* R) const override;

 private:
  void fwd(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const;
  void bwd(std::int64_t l, const T* x, std::int64_t ldx, T* y, std::int64_t ldy) const;
  mutable std::vector<std::int64_t> pos_;
};

}  // namespace wp
