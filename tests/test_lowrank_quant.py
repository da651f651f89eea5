"""weightpress.compression.lowrank_quant: low rank with int8 factors (per-row scales)."""

import numpy as np
import pytest

from weightpress.compression.lowrank_quant import (LowRankQuant, lowrank_int8, lowrank_int8_nbytes,
                                                   rank_for_int8_bytes)
from weightpress.compression.matrices import from_parts
from weightpress.compression.methods import auto, low_rank
from weightpress.compression.registry import compress
from weightpress.compression.storage import Budget, quant_nbytes


def _lowrankish(m, n, r, seed=0, noise=0.01):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / np.sqrt(r)
    return (W + noise * rng.standard_normal((m, n))).astype(np.float32)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_bytes_products_and_parts(layout):
    W = _lowrankish(72, 40, 6)
    m = lowrank_int8(W, rank=6, layout=layout)
    out, inn = (72, 40) if layout == "out_in" else (40, 72)
    assert m.shape == W.shape and m.rank == 6 and m.form == "lowrank-int8"
    assert m.nbytes == lowrank_int8_nbytes((out, inn), 6) == \
        quant_nbytes((6, inn), 8) + quant_nbytes((out, 6), 8)
    assert m.nbytes == sum(p.nbytes for p in m.parts().values())
    D = m.toarray().astype(np.float64)
    U, V = m.factors(np.float64)
    np.testing.assert_allclose(U @ V, D if layout == "out_in" else D.T, rtol=0, atol=1e-6)
    x = np.random.default_rng(1).standard_normal((5, m.in_features)).astype(np.float32)
    ref = x.astype(np.float64) @ (D.T if layout == "out_in" else D)
    np.testing.assert_allclose(m.apply(x), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    X = np.random.default_rng(2).standard_normal((W.shape[0], 3))
    Y = D.T @ X
    np.testing.assert_allclose(m.matmul(X, transpose=True), Y, rtol=0, atol=1e-5 * np.abs(Y).max())
    np.testing.assert_allclose(m.rows(3, 9), D[3:9], rtol=0, atol=1e-6 * np.abs(D).max())
    m2 = from_parts(m.form, m.parts(), m.shape, layout)
    assert isinstance(m2, LowRankQuant) and np.array_equal(m2.toarray(), m.toarray())
    assert m.relative_error(W) < 0.03


def test_budgets_and_rank_search():
    W = _lowrankish(96, 64, 8)
    for nb in (0, 300, 1000, 6144, 40000):
        r = rank_for_int8_bytes((96, 64), nb)
        assert lowrank_int8_nbytes((96, 64), r) <= max(nb, lowrank_int8_nbytes((96, 64), 0)) or r == 0
        if r < 64:
            assert lowrank_int8_nbytes((96, 64), r + 1) > nb
    m = lowrank_int8(W, nbytes=W.nbytes / 4)
    assert m.nbytes <= W.nbytes / 4
    e = lowrank_int8(W, error=0.02)
    assert e.relative_error(W) <= 0.02 and lowrank_int8(W, rank=e.rank - 1).relative_error(W) > 0.02
    # at the same bytes, int8 factors hold more rank than float32 ones: lower error here
    f = low_rank(W, nbytes=W.nbytes / 8)
    q = compress(W, "lowrank-int8", Budget(nbytes=W.nbytes / 8))
    assert q.nbytes <= W.nbytes / 8 and q.relative_error(W) < f.relative_error(W)
    assert compress(W, "lowrank-int8", options={"rank": 5}).rank == 5


def _decaying(m, n, power, seed=0):
    """A matrix with singular values i^-power (slow decay: low rank needs many of them)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return ((U * np.arange(1, n + 1) ** -power) @ V.T).astype(np.float32)


def test_auto_considers_it_where_low_rank_comes_near():
    for power in (1.0, 0.7):  # low rank best / quant+sparse best among the float forms
        W = _decaying(256, 192, power)
        nb = W.nbytes / 12
        without = auto(W, nbytes=nb, forms=("sparse", "lowrank", "sparse+lowrank", "quant", "float16"))
        a = auto(W, nbytes=nb)
        assert a.form == "lowrank-int8" and a.nbytes <= nb, (power, a.form)
        assert a.relative_error(W) < 0.8 * without.relative_error(W)
    W = _decaying(256, 192, 1.0)
    b = auto(W, error=0.12)
    assert b.form == "lowrank-int8" and b.relative_error(W) <= 0.12
    assert b.nbytes < auto(W, error=0.12, forms=("lowrank", "quant")).nbytes
    # where quantization is far better, no second SVD is spent on it
    Wq = np.random.default_rng(3).standard_normal((128, 96)).astype(np.float32)
    assert auto(Wq, nbytes=Wq.nbytes / 4).form.startswith("quant")


def test_bad_parts():
    W = _lowrankish(40, 32, 4)
    m = lowrank_int8(W, rank=4)
    p = m.parts()
    with pytest.raises(ValueError, match="missing"):
        from_parts(m.form, {k: v for k, v in p.items() if k != "second.qmeta"}, m.shape)
    bad = dict(p, **{"first.scales": p["first.scales"][:3]})
    with pytest.raises(ValueError):
        from_parts(m.form, bad, m.shape)
    with pytest.raises(ValueError, match="exactly one"):
        lowrank_int8(W)
