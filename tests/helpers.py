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
    """A round-to-nearest ``Quantized`` matrix and its dense decode (``toarray``: what the
    container computes), for the export tests. Returns ``(matrix, W_hat)``."""
    from weightpress.compression.quant import quantize

    q = quantize(np.asarray(W, dtype=np.float32), bits, group or None, symmetric=symmetric,
                 layout=layout)
    return q, np.ascontiguousarray(q.toarray())


def twelve_layer_model(tmp_path):
    """Twelve small layers of three widths (64 x 48/64/80, float32) and their calibration
    inputs, written as safetensors; one ratio for all of them jumps over a target both ways,
    so the ratio search needs its three tries. Returns (model path, calibration path)."""
    from weightpress.io.safetensors import write_safetensors

    rng = np.random.default_rng(5)
    W, X = {}, {}
    for i in range(12):
        n_in = 48 + 16 * (i % 3)
        W[f"l{i}.weight"] = (rng.standard_normal((64, n_in)) / 8).astype(np.float32)
        X[f"l{i}.weight"] = correlated_inputs(rng, 200, n_in).astype(np.float32)
    mp, cp = str(tmp_path / "m.safetensors"), str(tmp_path / "c.safetensors")
    write_safetensors(mp, W)
    write_safetensors(cp, X)
    return mp, cp
