import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import weightpress as wp
from weightpress import _core


def test_threads_policy():
    default = wp.get_num_threads()
    assert default >= 1
    wp.set_num_threads(1)
    try:
        assert wp.get_num_threads() == 1
        with wp.threads(2) as n:
            assert n == (2 if wp.has_openmp else 1)
            assert wp.get_num_threads() == n
            with wp.threads(1):
                assert wp.get_num_threads() == 1
            assert wp.get_num_threads() == n
        assert wp.get_num_threads() == 1
    finally:
        wp.set_num_threads(None)
    assert wp.get_num_threads() == default
    with pytest.raises(ValueError, match="n=0"):
        wp.set_num_threads(0)
    with pytest.raises(TypeError, match="int"):
        wp.set_num_threads(1.5)
    with wp.threads(-1):
        assert wp.get_num_threads() >= 1


@pytest.mark.skipif(not wp.has_openmp, reason="a serial build has one thread count only")
def test_threads_context_is_per_python_thread():
    """A ``threads(n)`` context in one Python thread does not leak into another: the other
    sees the process-wide setting (set here to differ from the context's count)."""
    seen = {}

    def worker():
        seen["inner"] = wp.get_num_threads()

    wp.set_num_threads(1)
    try:
        with wp.threads(2):
            t = threading.Thread(target=worker)
            t.start()
            t.join()
            assert wp.get_num_threads() == 2
    finally:
        wp.set_num_threads(None)
    assert seen["inner"] == 1


def test_default_honours_omp_num_threads():
    code = "import weightpress as wp; print(wp.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env={"OMP_NUM_THREADS": "1", "PATH": ""},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_has_openmp_flag():
    assert wp.has_openmp is bool(_core.has_openmp)
    assert isinstance(wp.__version__, str)


@pytest.mark.parametrize("prefix", ["s", "d"])
def test_blas_table_selftest(prefix):
    res = _core.blas_selftest(prefix)
    expected = {"gemm", "gemv", "syrk", "trsm", "trmm", "geqrf+orgqr", "gesdd", "gesvd", "potrf",
                "potrs", "syevd", "getrf", "trtrs"}
    assert set(res) == expected
    tol = 1e-5 if prefix == "s" else 1e-13
    for name, r in res.items():
        assert r < tol, (name, r)


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 40), st.integers(0, 40),
       st.integers(0, 40), st.integers(0, 2**31))
def test_gemm_through_table_equals_numpy(dtype, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = _core.blas_gemm(a, b)
    assert c.dtype == dtype and c.shape == (m, n)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    tol = (1e-5 if dtype == np.float32 else 1e-13) * (np.abs(a) @ np.abs(b) + 1)
    assert np.all(np.abs(c - ref) <= tol)


def test_binding_is_strict():
    with pytest.raises(TypeError, match="C-contiguous float32"):
        _core.blas_gemm(np.ones((2, 2), np.float32), np.ones((2, 2)))
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.blas_gemm(np.ones((2, 2), np.int64), np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="expected a"):
        _core.blas_gemm(np.ones((2, 3)), np.ones((2, 2)))


def test_more_threads_than_the_build_supports():
    from weightpress import _threads

    if wp.has_openmp:
        with wp.threads(2):
            assert wp.get_num_threads() == 2
        return
    _threads._warned_serial = False  # serial build: asking for 2 threads warns once, runs on 1
    with pytest.warns(RuntimeWarning, match="without OpenMP"):
        with wp.threads(2) as n:
            assert n == 1


def test_threadpoolctl_governs_the_weightpress_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from weightpress import _threads
    ours = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "weightpress"]
    assert len(ours) == 1 and ours[0]["internal_api"] == "weightpress"
    assert ours[0]["filepath"] == _core.__file__ and ours[0]["num_threads"] == wp.get_num_threads()
    before = wp.get_num_threads()
    seen = []
    orig = _core.threshold

    def spy(*args):  # the count the kernel is actually given
        seen.append(args[-1])
        return orig(*args)

    _core.threshold = spy
    try:
        with threadpoolctl.threadpool_limits(1, user_api="weightpress"):
            assert wp.get_num_threads() == 1
            wp.soft_threshold(np.ones(10), 0.5)
            with wp.threads(2):  # an explicit context still wins
                wp.soft_threshold(np.ones(10), 0.5)
        assert wp.get_num_threads() == before and _threads._global is None  # default restored
        with threadpoolctl.threadpool_limits(1):  # every pool, weightpress's included
            wp.soft_threshold(np.ones(10), 0.5)
        if wp.has_openmp:
            with threadpoolctl.threadpool_limits(3, user_api="weightpress"):
                assert wp.get_num_threads() == 3
                wp.soft_threshold(np.ones(10), 0.5)
    finally:
        _core.threshold = orig
    assert seen == [1, 2 if wp.has_openmp else 1, 1] + ([3] if wp.has_openmp else [])
    wp.set_num_threads(2)
    try:  # a count set by set_num_threads is what threadpool_limits restores
        with threadpoolctl.threadpool_limits(1, user_api="weightpress"):
            assert wp.get_num_threads() == 1
        assert _threads._global == 2
    finally:
        wp.set_num_threads(None)


@pytest.mark.parametrize("method", ["auto", "quant"])
def test_calibrated_compress_is_the_same_for_any_blas_thread_count(tmp_path, method):
    """A calibrated compress gives the same bytes with BLAS on one thread and on two (a Dask
    worker runs with OPENBLAS_NUM_THREADS=1; issue 13: identical output for any number of
    workers). The 1024-input layer is large enough for OpenBLAS to thread its products and
    its Cholesky, which rounded differently per thread count before the factor and the sweep
    ran by fixed tiles."""
    import hashlib

    from threadpoolctl import threadpool_limits

    from helpers import correlated_inputs
    from weightpress.io.safetensors import write_safetensors
    from weightpress.model.compress import compress_model, open_source

    rng = np.random.default_rng(3)
    W = {"down.weight": (rng.standard_normal((64, 1024)) / 32).astype(np.float32),
         "up.weight": (rng.standard_normal((160, 96)) / 10).astype(np.float32)}
    X = {"down.weight": correlated_inputs(rng, 256, 1024, outliers=8).astype(np.float32),
         "up.weight": correlated_inputs(rng, 256, 96).astype(np.float32)}
    mp, cp = str(tmp_path / "m.safetensors"), str(tmp_path / "c.safetensors")
    write_safetensors(mp, W)
    write_safetensors(cp, X)
    digests = []
    for n in (1, 2):
        out = tmp_path / f"out{n}.wpz"
        with threadpool_limits(limits=n, user_api="blas"), open_source(mp) as src:
            compress_model(src, out, ratio=4, method=method, calibration=cp, min_size=16)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


_ENV_AFTER_IMPORT = """
import os, sys
before = dict(os.environ)
import weightpress
print(dict(os.environ) == before, os.environ.get("GOMP_SPINCOUNT"))
"""


@pytest.mark.parametrize("user", [None, "300000"])
def test_import_tunes_libgomp_spin_but_leaves_the_environment_as_it_was(user):
    # weightpress/__init__.py sets GOMP_SPINCOUNT=1000 while libgomp loads (its idle workers
    # otherwise spin for milliseconds against OpenBLAS's on a small machine) and restores the
    # environment: child processes see the user's, and a user's own setting is kept
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if user is not None:
        env["GOMP_SPINCOUNT"] = user
    r = subprocess.run([sys.executable, "-c", _ENV_AFTER_IMPORT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", str(user)]
