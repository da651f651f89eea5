"""Weight-space methods (weightpress.compression.methods) and the one entry point
(weightpress.compression.registry): budgets met and tight, the right form chosen, dtypes kept."""

import numpy as np
import pytest

from helpers import planted_lowrank as _planted
from weightpress.compression import methods as M
RNG = np.random.default_rng(42)

@pytest.mark.parametrize("err", [0.05, 0.2, 0.5])
def test_error_budgets_are_met_and_tight(err):
    W = _planted()
    p = M.magnitude_prune(W, error=err)
    assert p.relative_error(W) <= err
    # one entry fewer would break the budget: the fewest entries were kept
    fewer = M.magnitude_prune(W, sparsity=1 - (p.nnz - 1) / W.size)
    assert fewer.relative_error(W) > err
    lr = M.low_rank(W, error=err)
    assert lr.relative_error(W) <= err * (1 + 1e-5)
    if lr.rank > 0:
        assert M.low_rank(W, lr.rank - 1).relative_error(W) > err
    slr = M.sparse_plus_low_rank(W, 2, error=err)
    assert slr.relative_error(W) <= err * (1 + 1e-5)


@pytest.mark.parametrize("ratio", [2, 4, 10])
def test_byte_budgets_are_met(ratio):
    W = _planted(64, 96)
    nb = W.nbytes / ratio
    for m in (M.magnitude_prune(W, nbytes=nb), M.low_rank(W, nbytes=nb),
              M.nm_prune(W, nbytes=nb), M.auto(W, nbytes=nb),
              M.sparse_plus_low_rank(W, 2, nbytes=nb)):
        if m.form == "sparse" and m.nnz in (0, W.size // 8):  # nothing, or 1:8, the least N:M
            continue
        assert m.nbytes <= nb, (m, nb)


def test_auto_picks_the_right_form_and_never_grows():
    W_low = _planted(80, 80, r=4, noise=1e-4)
    assert M.auto(W_low, error=0.01).form in ("lowrank", "lowrank-int8")  # int8 factors: smaller
    W_sparse = np.zeros((80, 80), np.float32)
    W_sparse[RNG.integers(0, 80, 60), RNG.integers(0, 80, 60)] = 1.0
    assert M.auto(W_sparse, error=0.01).form == "sparse"
    noise = RNG.standard_normal((40, 40)).astype(np.float32)
    for err in (0.0, 1e-3, 0.01):
        m = M.auto(noise, error=err)
        assert m.nbytes <= noise.nbytes
        assert m.relative_error(noise) <= err + 1e-6
    assert M.auto(noise, error=0.0).form == "dense"
    assert M.auto(noise, nbytes=noise.nbytes * 2).form == "dense"
    tiny = np.ones((1, 1), np.float32)
    assert M.auto(tiny, nbytes=1).nbytes <= tiny.nbytes


def test_sparse_plus_low_rank_recovers_planted():
    g = np.random.default_rng(3)
    L = g.standard_normal((60, 3)) @ g.standard_normal((3, 50))
    S = np.zeros((60, 50))
    S.flat[g.choice(S.size, 40, replace=False)] = 20 * g.choice([-1, 1], 40)
    m = M.sparse_plus_low_rank(L + S, 3, error=0.01, iterations=10)
    assert m.relative_error(L + S) <= 0.01
    assert m.sparse.nnz <= 2 * 40  # alternation finds the spikes
    one_shot = M.sparse_plus_low_rank(L + S, 3, error=0.01, iterations=0)
    assert one_shot.sparse.nnz > 2 * m.sparse.nnz


def test_nm_pattern_and_method_checks():
    W = _planted(16, 32)
    m = M.nm_prune(W, "2:4")
    dense = m.toarray().reshape(16, 8, 4)
    assert ((dense != 0).sum(axis=2) <= 2).all() and m.nnz == 16 * 16
    with pytest.raises(ValueError, match="exactly one"):
        M.magnitude_prune(W, sparsity=0.5, error=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        M.low_rank(W)


@pytest.mark.parametrize("fn", [lambda W: M.magnitude_prune(W, sparsity=0.5),
                                lambda W: M.low_rank(W, 3), lambda W: M.nm_prune(W, "2:4"),
                                lambda W: M.auto(W, nbytes=W.nbytes / 3),
                                lambda W: M.sparse_plus_low_rank(W, 2, error=0.5)])
def test_float16_stays_float16(fn):
    W = _planted(32, 32).astype(np.float16)
    m = fn(W)
    assert m.dtype == np.float16 and m.toarray().dtype == np.float16
    assert all(p.dtype in (np.float16, np.uint8, np.uint16, np.int32) for p in m.parts().values())
    assert m.matmul(np.ones((32, 2), np.float32)).dtype == np.float32


def test_uses_randomized_svd_when_available(monkeypatch):
    calls = []

    def fake(A, rank=None, *, tol=None, seed=None, **kw):  # exact, truncated like the real one
        calls.append((rank, tol))
        if tol is not None and tol < 1e-3:
            import warnings
            warnings.warn("tol not reached", RuntimeWarning)
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        r = rank if rank is not None else M._rank_for_error(s, float(np.sum(s**2)), tol)
        return U[:, :r].astype(A.dtype), s[:r].astype(A.dtype), Vt[:r].astype(A.dtype)
    monkeypatch.setattr(M, "randomized_svd", fake)
    W = _planted(60, 50)
    assert M.low_rank(W, 4).rank == 4 and calls[-1] == (4, None)
    m = M.low_rank(W, error=0.1)
    assert calls[-1] == (None, 0.1) and m.relative_error(W) <= 0.1 * (1 + 1e-5)
    assert M.low_rank(W, error=1e-4).relative_error(W) <= 1e-4  # warned -> exact SVD instead
    assert M.auto(W, error=0.1).relative_error(W) <= 0.1 * (1 + 1e-5)
    assert M.low_rank(W, 0).rank == 0 and M.low_rank(W, error=1.0).rank == 0
