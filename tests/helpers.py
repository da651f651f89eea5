"""Shared test data and checks (imported by the test files: ``from helpers import ...``)."""

from __future__ import annotations

import numpy as np

# Tolerance of a computed result against a float64 reference, by dtype (scaled by problem size
# where cancellation matters).
EPS = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def assert_close(got, ref, dtype=None, factor: float = 10.0) -> None:
    """``got`` equals ``ref`` to the dtype's tolerance, scaled by the largest |ref| + 1."""
    tol = EPS[np.dtype(dtype if dtype is not None else np.asarray(got).dtype)]
    scale = np.abs(ref).max(initial=0) + 1
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol * scale * factor)


def planted_lowrank(m=48, n=40, r=6, noise=0.05, dtype=np.float32, seed=0) -> np.ndarray:
    """A rank-``r`` matrix plus ``noise`` times Gaussian noise."""
    g = np.random.default_rng(seed)
    W = g.standard_normal((m, r)) @ g.standard_normal((r, n)) + noise * g.standard_normal((m, n))
    return W.astype(dtype)


def correlated_inputs(rng, n, d, outliers=4) -> np.ndarray:
    """Layer inputs like a transformer's: correlated features with a decaying spectrum, and a
    few outlier channels 20x larger."""
    C = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.8)[:, None]
    X = rng.standard_normal((n, d)) @ C
    X[:, rng.choice(d, outliers, replace=False)] *= 20
    return X


def rtn_quant(W, bits=4, group=0, symmetric=True, layout="out_in"):
    """A ``"quant"`` matrix in the container's stored format (packed little-endian codes, float16
    scales, uint8 zero points; see weightpress.model._packed), quantized here in NumPy so the
    exports can be tested against an independent decode. Returns ``(matrix, W_hat)``."""
    from weightpress.compression.matrices import CompressedMatrix, _setup

    W = np.asarray(W, dtype=np.float32)
    M = W if layout == "out_in" else W.T
    out, inn = M.shape
    g = inn if not group or group >= inn else group
    ng = -(-inn // g)
    gi = np.arange(inn) // g
    top = (1 << bits) - 1
    lo = np.stack([M[:, gi == j].min(axis=1) for j in range(ng)], axis=1)
    hi = np.stack([M[:, gi == j].max(axis=1) for j in range(ng)], axis=1)
    if symmetric:
        s = (np.maximum(np.abs(lo), np.abs(hi)) / ((1 << (bits - 1)) - 1)).astype(np.float16)
        z = np.full((out, ng), 1 << (bits - 1), np.uint8)
    else:
        s = ((hi - lo) / top).astype(np.float16)
        z = np.clip(np.round(-lo / np.maximum(s.astype(np.float32), 1e-12)), 0, top).astype(np.uint8)
    s = np.where(s == 0, np.float16(1e-3), s)
    sf = s.astype(np.float32)[:, gi]
    u = np.clip(np.round(M / sf) + z[:, gi], 0, top).astype(np.uint8)
    M_hat = sf * (u.astype(np.float32) - z[:, gi])
    bitsq = ((u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(out, inn * bits)
    packed = np.packbits(bitsq, axis=1, bitorder="little")
    meta = np.array([bits, group or 0, int(symmetric), 0], np.int32)
    parts = {"packed": packed, "scales": s, "qmeta": meta}
    if not symmetric:
        parts["zeros"] = z
    W_hat = M_hat if layout == "out_in" else M_hat.T

    class _Q(CompressedMatrix):
        form = "quant"

        def parts(self):
            return parts

        @property
        def n_params(self):
            return int(W.size)

        def rows(self, a, b):
            return np.array(W_hat[a:b])

        def toarray(self):
            return np.array(W_hat)

    q = _Q()
    _setup(q, W.shape, np.float32, layout)
    return q, np.ascontiguousarray(W_hat)
