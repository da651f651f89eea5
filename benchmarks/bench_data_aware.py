"""Data-aware compression of transformer-sized layers at half the parameters: output-space
error of magnitude pruning and truncated SVD (weight-space) against OBS pruning, whitened SVD
and activation-scaled sparse + low-rank (calibrated), on inputs with realistic structure:
correlated features with a decaying spectrum and a few outlier channels (as in LLM activations).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

import weightpress as wp
from _harness import Table, ms, timeit
from weightpress.compression.calibration import CalibrationStats, output_error
from weightpress.compression.data_aware import lowrank_whitened, prune_obs, rank_for_params, sparse_plus_lowrank


def _inputs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    C = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.8)[:, None]
    X = rng.standard_normal((n, d)) @ C
    X[:, rng.choice(d, max(1, d // 64), replace=False)] *= 20
    return X.astype(np.float32)


def run(quick: bool) -> None:
    shapes = [(1536, 384), (384, 1536)] if not quick else [(96, 48)]
    n = 4096 if not quick else 256
    t = Table("output error ||XW^T - XW'^T|| / ||XW^T|| at half the parameters (lower is better; "
              "x = best weight-space / best data-aware)",
              ["W (out x in)", "magnitude", "trunc SVD", "OBS prune", "whitened SVD", "S+L scaled",
               "x better", "OBS ms", "whitened ms"])
    rng = np.random.default_rng(0)
    for out_f, in_f in shapes:
        W = (rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)).astype(np.float32)
        st = CalibrationStats.from_inputs(_inputs(rng, n, in_f))
        half = W.size // 2
        r = rank_for_params(W.shape, half)
        U, s, Vt = sla.svd(W.astype(np.float64), full_matrices=False)
        e_mag = output_error(W, wp.prune(W, sparsity=0.5), st)
        e_svd = output_error(W, (U[:, :r] * s[:r]) @ Vt[:r], st)
        t_obs, P = timeit(lambda: prune_obs(W, st, sparsity=0.5), repeat=1, min_time=0)
        t_wh, (A, B, _) = timeit(lambda: lowrank_whitened(W, st, rank=r), repeat=1, min_time=0)
        r_sl = r // 4
        S, A2, B2 = sparse_plus_lowrank(W, r_sl, 1 - (half - r_sl * (out_f + in_f)) / W.size, st)
        e_obs, e_wh = output_error(W, P, st), output_error(W, A @ B, st)
        e_sl = output_error(W, S.toarray() + A2 @ B2, st)
        t.add(f"{out_f}x{in_f}", e_mag, e_svd, e_obs, e_wh, e_sl, min(e_mag, e_svd) / min(e_obs, e_wh, e_sl),
              ms(t_obs), ms(t_wh))
    t.print()
