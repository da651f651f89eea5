"""The solvers' ISA copies give the same bits (their comments promise it).

pursuit.cpp, basis_pursuit.cpp and linop.cpp compile their hot loops for AVX-512, AVX2 and the
baseline and pick one at run time. Each loop is written elementwise in a fixed order, so every
copy computes the same roundings, *if* the compiler does not fuse ``a - b*c`` into one FMA in
the copies whose target has FMA (GCC does, under -std=c++17 too). Run with the dispatch capped
by WP_MAX_ISA, the results must hash alike. OMP's loops use explicit fused multiply-adds where
the copy's target has FMA (AVX2, AVX-512: one rounding by definition, in chains whose order does
not depend on how a copy blocks them), so those two hash alike; the baseline copy, for CPUs
without FMA, multiplies then adds: the same supports, coefficients within rounding.
"""

import os
import subprocess
import sys

import pytest

_DIGEST = r"""
import hashlib
import numpy as np
import scipy.sparse as sp
import weightpress as wp

import sys
h = hashlib.sha256()
omp = hashlib.sha256()
codes = []
rng = np.random.default_rng(7)
for dt in (np.float32, np.float64):
    # OMP: full-Gram batch (many signals) and lazy Gram columns (few), odd sizes for tails
    D = rng.standard_normal((61, 203)).astype(dt)
    X0 = np.zeros((203, 40), dt)
    for s in range(40):
        X0[rng.choice(203, 9, replace=False), s] = rng.standard_normal(9)
    Y = (D @ X0 + 1e-3 * rng.standard_normal((61, 40))).astype(dt)
    # (one signal, k = 8: a block of eight Gram columns, the AVX-512 copy's register tiles)
    for N, k in ((40, 9), (2, 9), (1, 8)):
        X = wp.omp(D, Y[:, :N], n_nonzero=k)
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        omp.update(np.ascontiguousarray(X).tobytes())
        codes.append(X)
    # basis pursuit, BPDN, LASSO on a dense operator (CSR products contract to FMA where the
    # CPU has it: identical across thread counts, not across CPUs; see csr.cpp)
    A = (rng.standard_normal((45, 131)) / np.sqrt(45)).astype(dt)
    x0 = np.zeros(131, dt)
    x0[rng.choice(131, 6, replace=False)] = rng.standard_normal(6)
    y = (A @ x0).astype(dt)
    for op in (A,):
        for f in (lambda: wp.basis_pursuit(op, y), lambda: wp.basis_pursuit(op, y, sigma=0.05),
                  lambda: wp.lasso(op, y, lam=0.02)):
            r = f()
            x = r.x if hasattr(r, "x") else r[0] if isinstance(r, tuple) else r
            h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
# BPDN large enough for the float32 support guess (its float sums, entering steps, Cholesky):
# the answer and the guess's path length (events, Gram columns) must not depend on the ISA
A = rng.standard_normal((512, 2048)) / np.sqrt(512)
x0 = np.zeros(2048)
x0[rng.choice(2048, 64, replace=False)] = rng.standard_normal(64)
e = 0.01 * rng.standard_normal(512)
x, info = wp.basis_pursuit(A, A @ x0 + e, sigma=float(np.linalg.norm(e)), return_info=True)
h.update(x.tobytes())
h.update(str((info.iterations, info.n_active)).encode())
np.savez(sys.argv[1], *codes)
print(omp.hexdigest(), h.hexdigest())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="x86 dispatch levels")
def test_solvers_same_bits_on_every_isa_level(tmp_path):
    import numpy as np
    from weightpress import _core

    top = _core.isa_level()
    digests, codes = {}, {}
    for level in sorted({0, 1, 2} & set(range(top + 1))):
        # BLAS pinned to one thread: OpenBLAS's own blocking is not what this checks
        env = dict(os.environ, WP_MAX_ISA=str(level), OMP_NUM_THREADS="2",
                   OPENBLAS_NUM_THREADS="1")
        out = tmp_path / f"omp{level}.npz"
        r = subprocess.run([sys.executable, "-c", _DIGEST, str(out)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        digests[level] = r.stdout.split()
        with np.load(out) as z:
            codes[level] = [z[k] for k in z.files]
    assert len({d[1] for d in digests.values()}) == 1, digests        # BP, BPDN, LASSO
    # OMP, FMA levels (none on a CPU without AVX2, or with WP_MAX_ISA=0 set for the whole run)
    assert len({d[0] for lv, d in digests.items() if lv >= 1}) == (1 if top >= 1 else 0), digests
    for lv in codes:   # the baseline's OMP: the same supports, coefficients within rounding
        for a, b in zip(codes[lv], codes[max(codes)]):
            assert np.array_equal(a != 0, b != 0)
            tol = 1e-4 if a.dtype == np.float32 else 1e-10
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
