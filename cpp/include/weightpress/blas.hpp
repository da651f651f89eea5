// The engine's view of BLAS and LAPACK: a table of function pointers, filled once at import
// from SciPy's cython_blas / cython_lapack capsules (src/blas_loader.cpp), then read-only.
// Column-major (Fortran) conventions throughout; LP64 integers. Call these only from serial
// code, never inside an OpenMP parallel region (SciPy's OpenBLAS has its own thread pool).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace wp::blas {

using blas_int = int;

template <class T>
struct Fns {
  using gemm_t = void(char*, char*, blas_int*, blas_int*, blas_int*, T*, T*, blas_int*, T*,
                      blas_int*, T*, T*, blas_int*);
  using gemv_t = void(char*, blas_int*, blas_int*, T*, T*, blas_int*, T*, blas_int*, T*, T*,
                      blas_int*);
  using syrk_t = void(char*, char*, blas_int*, blas_int*, T*, T*, blas_int*, T*, T*, blas_int*);
  using trsm_t = void(char*, char*, char*, char*, blas_int*, blas_int*, T*, T*, blas_int*, T*,
                      blas_int*);  // trmm has the same signature
  using geqrf_t = void(blas_int*, blas_int*, T*, blas_int*, T*, T*, blas_int*, blas_int*);
  using orgqr_t = void(blas_int*, blas_int*, blas_int*, T*, blas_int*, T*, T*, blas_int*,
                       blas_int*);
  using gesdd_t = void(char*, blas_int*, blas_int*, T*, blas_int*, T*, T*, blas_int*, T*,
                       blas_int*, T*, blas_int*, blas_int*, blas_int*);
  using gesvd_t = void(char*, char*, blas_int*, blas_int*, T*, blas_int*, T*, T*, blas_int*, T*,
                       blas_int*, T*, blas_int*, blas_int*);
  using potrf_t = void(char*, blas_int*, T*, blas_int*, blas_int*);
  using potrs_t = void(char*, blas_int*, blas_int*, T*, blas_int*, T*, blas_int*, blas_int*);
  using syevd_t = void(char*, char*, blas_int*, T*, blas_int*, T*, T*, blas_int*, blas_int*,
                       blas_int*, blas_int*);
  using syevr_t = void(char*, char*, char*, blas_int*, T*, blas_int*, T*, T*, blas_int*,
                       blas_int*, T*, blas_int*, T*, T*, blas_int*, blas_int*, T*, blas_int*,
                       blas_int*, blas_int*, blas_int*);
  using getrf_t = void(blas_int*, blas_int*, T*, blas_int*, blas_int*, blas_int*);
  using trtrs_t = void(char*, char*, char*, blas_int*, blas_int*, T*, blas_int*, T*, blas_int*,
                       blas_int*);

  gemm_t* gemm = nullptr;
  gemv_t* gemv = nullptr;
  syrk_t* syrk = nullptr;
  trsm_t* trsm = nullptr;
  trsm_t* trmm = nullptr;
  geqrf_t* geqrf = nullptr;
  orgqr_t* orgqr = nullptr;
  gesdd_t* gesdd = nullptr;
  gesvd_t* gesvd = nullptr;
  potrf_t* potrf = nullptr;
  potrs_t* potrs = nullptr;
  syevd_t* syevd = nullptr;
  syevr_t* syevr = nullptr;
  getrf_t* getrf = nullptr;
  trtrs_t* trtrs = nullptr;
};

struct Table {
  Fns<float> s;
  Fns<double> d;
};

// Set once from the module's init (GIL held), before any kernel runs.
void set_table(const Table& t);
const Table& table();

template <class T> const Fns<T>& fns();
template <> inline const Fns<float>& fns<float>() { return table().s; }
template <> inline const Fns<double>& fns<double>() { return table().d; }

// Entries of the largest matrix whose product with a single vector runs in our own loop rather
// than BLAS gemv (linop.cpp; basis_pursuit.cpp's block size should use the same line).
// Measured with benchmarks/bench_sparse.py "small products" (median of 100; 2-core machine at
// load 12-13, so provisional): up to 2^18 entries serial gemv beat our loop by 1.2-2.3x (1-25
// us); from 2^20 on OpenBLAS ran gemv on its threads (its own cut-off: 460800 entries) and,
// with the second core busy, took 24-28 ms (median) against our loop's 0.16-0.63 ms. So the
// line sits where OpenBLAS starts threading, and the loop below it costs microseconds; whether
// large single-vector products should avoid BLAS's threads too is for a quiet-machine rerun.
inline constexpr std::int64_t kSmallProduct = std::int64_t(1) << 18;

// Narrow a size to BLAS's int, or throw: LP64 BLAS cannot address more.
template <class N>
inline blas_int to_int(N n, const char* what = "dimension") {
  if (n < 0 || static_cast<long long>(n) > 2147483647LL)
    throw std::overflow_error(std::string("weightpress: ") + what +
                              " does not fit the 32-bit BLAS integer");
  return static_cast<blas_int>(n);
}

// ---- Thin typed wrappers (by value in, pointers out; column-major) -------------------------
// C(m×n) = alpha op(A) op(B) + beta C
template <class T>
inline void gemm(char ta, char tb, blas_int m, blas_int n, blas_int k, T alpha, const T* a,
                 blas_int lda, const T* b, blas_int ldb, T beta, T* c, blas_int ldc) {
  if (m == 0 || n == 0) return;
  fns<T>().gemm(&ta, &tb, &m, &n, &k, &alpha, const_cast<T*>(a), &lda, const_cast<T*>(b), &ldb,
                &beta, c, &ldc);
}
template <class T>
inline void gemv(char t, blas_int m, blas_int n, T alpha, const T* a, blas_int lda, const T* x,
                 blas_int incx, T beta, T* y, blas_int incy) {
  fns<T>().gemv(&t, &m, &n, &alpha, const_cast<T*>(a), &lda, const_cast<T*>(x), &incx, &beta, y,
                &incy);
}
template <class T>
inline void syrk(char uplo, char trans, blas_int n, blas_int k, T alpha, const T* a, blas_int lda,
                 T beta, T* c, blas_int ldc) {
  if (n == 0) return;
  fns<T>().syrk(&uplo, &trans, &n, &k, &alpha, const_cast<T*>(a), &lda, &beta, c, &ldc);
}
template <class T>
inline void trsm(char side, char uplo, char ta, char diag, blas_int m, blas_int n, T alpha,
                 const T* a, blas_int lda, T* b, blas_int ldb) {
  if (m == 0 || n == 0) return;
  fns<T>().trsm(&side, &uplo, &ta, &diag, &m, &n, &alpha, const_cast<T*>(a), &lda, b, &ldb);
}
template <class T>
inline void trmm(char side, char uplo, char ta, char diag, blas_int m, blas_int n, T alpha,
                 const T* a, blas_int lda, T* b, blas_int ldb) {
  if (m == 0 || n == 0) return;
  fns<T>().trmm(&side, &uplo, &ta, &diag, &m, &n, &alpha, const_cast<T*>(a), &lda, b, &ldb);
}
// LAPACK wrappers return info (0 = success, > 0 numerical outcome). info < 0 is a bug: throw.
inline void check_info(blas_int info, const char* routine) {
  if (info < 0)
    throw std::logic_error(std::string("weightpress internal error: LAPACK ") + routine +
                           " rejected argument " + std::to_string(-info));
}
template <class T>
inline blas_int geqrf(blas_int m, blas_int n, T* a, blas_int lda, T* tau, T* work, blas_int lwork) {
  blas_int info = 0;
  fns<T>().geqrf(&m, &n, a, &lda, tau, work, &lwork, &info);
  check_info(info, "geqrf");
  return info;
}
template <class T>
inline blas_int orgqr(blas_int m, blas_int n, blas_int k, T* a, blas_int lda, const T* tau, T* work,
                      blas_int lwork) {
  blas_int info = 0;
  fns<T>().orgqr(&m, &n, &k, a, &lda, const_cast<T*>(tau), work, &lwork, &info);
  check_info(info, "orgqr");
  return info;
}
template <class T>
inline blas_int gesdd(char jobz, blas_int m, blas_int n, T* a, blas_int lda, T* s, T* u,
                      blas_int ldu, T* vt, blas_int ldvt, T* work, blas_int lwork,
                      blas_int* iwork) {
  blas_int info = 0;
  fns<T>().gesdd(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, &info);
  check_info(info, "gesdd");
  return info;
}
template <class T>
inline blas_int gesvd(char jobu, char jobvt, blas_int m, blas_int n, T* a, blas_int lda, T* s,
                      T* u, blas_int ldu, T* vt, blas_int ldvt, T* work, blas_int lwork) {
  blas_int info = 0;
  fns<T>().gesvd(&jobu, &jobvt, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, &info);
  check_info(info, "gesvd");
  return info;
}
template <class T>
inline blas_int potrf(char uplo, blas_int n, T* a, blas_int lda) {
  blas_int info = 0;
  fns<T>().potrf(&uplo, &n, a, &lda, &info);
  check_info(info, "potrf");
  return info;
}
template <class T>
inline blas_int potrs(char uplo, blas_int n, blas_int nrhs, const T* a, blas_int lda, T* b,
                      blas_int ldb) {
  blas_int info = 0;
  fns<T>().potrs(&uplo, &n, &nrhs, const_cast<T*>(a), &lda, b, &ldb, &info);
  check_info(info, "potrs");
  return info;
}
template <class T>
inline blas_int syevd(char jobz, char uplo, blas_int n, T* a, blas_int lda, T* w, T* work,
                      blas_int lwork, blas_int* iwork, blas_int liwork) {
  blas_int info = 0;
  fns<T>().syevd(&jobz, &uplo, &n, a, &lda, w, work, &lwork, iwork, &liwork, &info);
  check_info(info, "syevd");
  return info;
}
// Eigenvalues (ascending) of a symmetric matrix, all (range 'A') or those of index il..iu
// (1-based, range 'I'), with their eigenvectors in z (n×m, col-major) when jobz = 'V' (MRRR).
template <class T>
inline blas_int syevr(char jobz, char range, char uplo, blas_int n, T* a, blas_int lda,
                      blas_int il, blas_int iu, blas_int* m, T* w, T* z, blas_int ldz,
                      blas_int* isuppz, T* work, blas_int lwork, blas_int* iwork,
                      blas_int liwork) {
  blas_int info = 0;
  T vl = T(0), vu = T(0), abstol = T(0);
  fns<T>().syevr(&jobz, &range, &uplo, &n, a, &lda, &vl, &vu, &il, &iu, &abstol, m, w, z, &ldz,
                 isuppz, work, &lwork, iwork, &liwork, &info);
  check_info(info, "syevr");
  return info;
}
template <class T>
inline blas_int getrf(blas_int m, blas_int n, T* a, blas_int lda, blas_int* ipiv) {
  blas_int info = 0;
  fns<T>().getrf(&m, &n, a, &lda, ipiv, &info);
  check_info(info, "getrf");
  return info;
}
template <class T>
inline blas_int trtrs(char uplo, char trans, char diag, blas_int n, blas_int nrhs, const T* a,
                      blas_int lda, T* b, blas_int ldb) {
  blas_int info = 0;
  fns<T>().trtrs(&uplo, &trans, &diag, &n, &nrhs, const_cast<T*>(a), &lda, b, &ldb, &info);
  check_info(info, "trtrs");
  return info;
}

// Row-major convenience: C(m×n) = alpha op(A) op(B) + beta C with row-major storage,
// computed as the column-major product Cᵀ = op(B)ᵀ op(A)ᵀ (the usual operand swap).
template <class T>
inline void gemm_rm(bool ta, bool tb, blas_int m, blas_int n, blas_int k, T alpha, const T* a,
                    blas_int lda, const T* b, blas_int ldb, T beta, T* c, blas_int ldc) {
  gemm<T>(tb ? 'T' : 'N', ta ? 'T' : 'N', n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// Runs every routine in the table on a small fixed problem and returns the largest relative
// residual seen for each (name, residual) — the proof that the table is wired correctly.
struct SelfTestRow {
  const char* name;
  double residual;
};
template <class T> int selftest(SelfTestRow* rows, int max_rows);

}  // namespace wp::blas
