"""Data-aware compression of one layer to a budget, as a compressed matrix.

The counterpart of :mod:`weightpress.methods` when calibration statistics of the layer's
inputs exist: the same methods and budgets, but errors are *output-space* errors
``‖XWᵀ − XŴᵀ‖_F / ‖XWᵀ‖_F`` and the algorithms are the data-aware ones of
:mod:`weightpress.data_aware` (OBS pruning, whitened low-rank, activation-scaled sparse +
low-rank). Layout is handled here: the algorithms see ``W`` as ``[out, in]``.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import as_matrix
from ..linalg.memory import release_free_memory
from . import methods as M
from .._threads import blas_sequential
from .calibration import CalibrationStats, _quadratic_forms, output_error
from .storage import (QUANT_LADDER, Budget, Precision, lowrank_nbytes, nnz_for_bytes,
                      precisions_for_bytes, rank_for_bytes, value_itemsize)
from .quant import Quantized, gptq_many
from .matrices import CompressedMatrix, Dense, LowRank, Sparse, SparsePlusLowRank, store_as
from .data_aware import (_prune_obs, array_digest, lowrank_error_floor, lowrank_whitened,
                         prune_obs, quadratic_total, sparse_plus_lowrank, sweep_output_error)

__all__ = ["compress_aware", "layer_error", "known_error", "time_apply", "warm_quant",
           "remember_error", "weights_hash"]


# a ratio search's first try builds a quantized layer's step up only where its budget fits
# this many bits (model.compress: _steps_pay decides the same from the byte model)
STEP_BITS = 6

# joint sparsities tried below plain int2 when the codes are entropy-coded
_LOW_SPARSITY = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


def _oriented(W: np.ndarray, layout: str) -> np.ndarray:
    return W if layout == "out_in" else W.T


def _sparse(P: sp.csr_array, layout: str, od: np.dtype, storage: str | None) -> Sparse:
    A = P if layout == "out_in" else sp.csr_array(P.T)  # stored orientation
    A.sort_indices()
    return store_as(Sparse(A, layout, dtype=od), storage)  # type: ignore[return-value]


def _balanced(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale rank-1 terms so each column of A and row of B have equal norms (safe in fp16)."""
    a = np.linalg.norm(A, axis=0)
    b = np.linalg.norm(B, axis=1)
    c = np.sqrt(np.where((a > 0) & (b > 0), b / np.where(a > 0, a, 1), 1.0))
    return A * c, B / c[:, None]


def _lowrank(A: np.ndarray, B: np.ndarray, layout: str, od: np.dtype, storage: str | None) -> LowRank:
    A, B = _balanced(A, B)
    m = LowRank(A, B, "out_in", dtype=od) if layout == "out_in" else LowRank(B.T, A.T, layout, dtype=od)
    return store_as(m, storage)  # type: ignore[return-value]


class _Memo:
    """A bounded, thread-safe LRU map of small per-layer results (a few floats per key) that
    outlives one layer's statistics: a ratio search rebuilds every layer at a new budget
    (with freshly computed statistics), and what a precision's GPTQ costs and how far it
    errs is the same every time. Keys hash the weights and ``H``, so a hit is the same
    computation; memory stays a few hundred bytes per entry, never a layer's arrays."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = int(max_entries)
        self._d: OrderedDict[Any, dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> dict[str, float] | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: Any, value: dict[str, float]) -> None:
        with self._lock:
            self._d[key] = {**self._d.get(key, {}), **value}
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


_MEMO = _Memo()


def _h_key(stats: CalibrationStats) -> str:
    return array_digest(stats.hessian()) + f"/{stats.n_samples}"


def weights_hash(W: Any, layout: str = "out_in") -> str:
    """The hash :func:`compress_aware` keys a layer's cached results by (its ``[out, in]``
    weights' bytes); passed as ``options["_w_hash"]`` it is not computed again per call."""
    Wa = as_matrix(W, "W")
    return array_digest(_oriented(Wa, layout))


def remember_error(m: CompressedMatrix, error: float) -> None:
    """Record the exact output error a report measured for ``m`` (a calibrated quantized
    build): the same build in a later try of a ratio search takes it from :func:`known_error`."""
    k = getattr(m, "_wp_memo", None)
    if k is not None:
        _MEMO.put(k, {"exact": float(error)})


def layer_error(Wo: np.ndarray, m: CompressedMatrix, stats: CalibrationStats | None) -> float:
    """Relative output error (with stats) or weight error of ``m`` against ``Wo`` ([out, in],
    any float dtype: the errors are accumulated in float64 a block at a time). A matrix
    stored ``[out, in]`` is decoded a block of rows at a time."""
    if stats is None:
        return m.relative_error(Wo if m.layout == "out_in" else Wo.T)
    if m.layout == "out_in":
        return _output_error(Wo, m, stats)
    return _output_error(Wo, m.toarray().T, stats)


def _output_error(Wo: np.ndarray, W_hat: Any, stats: CalibrationStats) -> float:
    """:func:`~weightpress.compression.calibration.output_error`, its numerator in the same
    float64 blocks, its denominator ``tr(W H Wᵀ)`` the one :func:`compress_aware`'s builds
    share (:func:`~weightpress.compression.data_aware.quadratic_total`, kept on the statistics
    by the weights' hash: a sum of ``w_iᵀ H w_i ≥ 0`` over the rows, which float32 products
    give to ~1e-7 relative). A layer's builds and report then pay one ``out·in²`` product for
    it, and each exact pass one more (the numerator), not two."""
    Wa = np.asarray(Wo)
    if Wa.ndim != 2 or tuple(getattr(W_hat, "shape", ())) != Wa.shape:
        return output_error(Wa, W_hat, stats)  # (its errors for odd shapes)
    H = stats.hessian()
    den = _total(Wa, stats, array_digest(Wa))
    with blas_sequential():
        num, _ = _quadratic_forms(Wa, W_hat, H, False)
    if den <= 0:
        return 0.0 if num <= 0 else float("inf")
    return float(np.sqrt(max(num, 0.0) / den))


def _total(Wo: np.ndarray, stats: CalibrationStats, digest: str) -> float:
    """``tr(W H Wᵀ)`` of the ``[out, in]`` weights whose :func:`array_digest` is ``digest``,
    computed once per statistics."""
    key = ("qtotal", (int(Wo.shape[0]), int(Wo.shape[1])), str(Wo.dtype), digest)
    return stats.cached(key, lambda: quadratic_total(Wo, stats))


def known_error(m: CompressedMatrix, stats: CalibrationStats | None) -> float | None:
    """The output error :func:`compress_aware` measured for ``m`` with ``stats`` (None if none).
    The record is taken off ``m``: it holds the statistics (``H``, as large as the layer), which
    a kept result would otherwise keep alive through every later layer (issue 15)."""
    k = m.__dict__.pop("_wp_output_error", None) if hasattr(m, "__dict__") else None
    return k[1] if k is not None and k[0] is stats else None


def _builders(Wo: np.ndarray, stats: CalibrationStats, method: str, options: Mapping[str, Any],
              layout: str, od: np.dtype, storage: str | None, lean: bool = False
              ) -> dict[str, Callable[[float], CompressedMatrix]]:
    """Per form: nbytes -> the data-aware matrix of at most (about) that many bytes.
    ``lean``: one build at one byte budget (a ratio search's layer), so GPTQ keeps only the
    result that budget's choice builds, not every candidate precision (an error budget's
    bisection and allocation curves reuse the others)."""
    isz = value_itemsize(od, storage)
    stored_shape = Wo.shape if layout == "out_in" else Wo.shape[::-1]

    den: list[float] = []  # ‖XWᵀ‖², once per layer

    def total() -> float:
        # on the statistics, by the weights' hash: a kept layer's next build (a ratio
        # search's retry, the build after the allocation's curves) does not compute it again
        return _total(Wo, stats, w_key[2])

    def predicted(m: CompressedMatrix, num: float) -> CompressedMatrix:
        """Mark ``m`` with the relative output error its build measured (no product with H)."""
        if not den:
            den.append(total())
        m._wp_predicted = float(np.sqrt(max(num, 0.0) / den[0])) if den[0] > 0 else 0.0
        return m

    def prune_b(nb: float) -> CompressedMatrix:
        nnz = nnz_for_bytes(stored_shape, nb, isz)
        P, num = _prune_obs(Wo, stats, int(round((1.0 - nnz / max(1, Wo.size)) * Wo.size)),
                            (0, 0), 128, float(options.get("damp", 1e-2)), None)
        return predicted(_sparse(P, layout, od, storage), num) if storage is None and od == Wo.dtype \
            else _sparse(P, layout, od, storage)

    def lowrank_rank(nb: float) -> int:
        return min(min(Wo.shape), rank_for_bytes(stored_shape, nb, isz))

    def lowrank_b(nb: float) -> CompressedMatrix:
        r = lowrank_rank(nb)
        if r == 0:
            return _lowrank(np.zeros((Wo.shape[0], 0)), np.zeros((0, Wo.shape[1])), layout, od, storage)
        A, B, sig = lowrank_whitened(Wo, stats, rank=r, damp=float(options.get("damp", 1e-2)))
        m = _lowrank(A, B, layout, od, storage)
        if storage is None and od == Wo.dtype:
            if not den:
                den.append(total())
            # the kept share of ‖XWᵀ‖²: the rest is the output error (to the eigensolver's precision)
            predicted(m, den[0] - float(np.sum(sig.astype(np.float64) ** 2)))
        return m

    def slr_b(nb: float) -> CompressedMatrix:
        rmax = min(min(Wo.shape), rank_for_bytes(stored_shape, nb, isz))

        def build(r: int) -> CompressedMatrix:
            left = nb - lowrank_nbytes(stored_shape, r, isz)
            nnz = nnz_for_bytes(stored_shape, left, isz)
            S, A, B = sparse_plus_lowrank(Wo, r, 1.0 - nnz / max(1, Wo.size), stats, n_iter=10)
            return SparsePlusLowRank(_sparse(S, layout, od, storage), _lowrank(A, B, layout, od, storage))

        # the best rank by output error; no candidate is held while the next is built (the
        # build's residual, H and a held candidate were 3.4-4.3x the layer, issue 15): the
        # winner is kept if it was the last one built, else built again (deterministic: the
        # same matrix)
        ranks = sorted({rmax // 8, rmax // 4, rmax // 2} - {0}) or [0]
        best_r, best_e, last = ranks[0], np.inf, None
        for r in ranks:
            last = None
            release_free_memory()  # (the last candidate's arrays, before this rank's residual)
            cand = build(r)
            e = layer_error(Wo, cand, stats)
            if e < best_e:
                best_r, best_e, last = r, e, cand
            del cand
        return last if last is not None else build(best_r)

    def nm_b(nb: float) -> CompressedMatrix:
        return _sparse(prune_obs(Wo, stats, pattern=options.get("pattern", "2:4")), layout, od, storage)

    shape_oi = (int(Wo.shape[0]), int(Wo.shape[1]))
    fixed = M.precision_of(dict(options))
    # the cache key hashes W's bytes in place (tobytes() was one more copy of the layer)
    # (a caller that builds one layer at many budgets, an allocation curve, hashes it once:
    # options["_w_hash"], weights_hash of the same W and layout)
    w_key = (shape_oi, str(Wo.dtype), options.get("_w_hash") or array_digest(Wo))

    coding = options.get("coding")
    damp_q = float(options.get("damp", 1e-2))

    def memo_key(p: Precision, sparsity: float) -> tuple[Any, ...]:
        # the layer's weights, its statistics' H (hashed once per statistics) and the setting:
        # what GPTQ's result is a function of (it is deterministic for any thread count)
        return ("gptq", w_key, stats.cached(("h_key",), lambda: _h_key(stats)), p, sparsity,
                damp_q, str(od))

    def measure(settings: list[tuple[Precision, float]], best_only: bool = False,
                keep: list[set[tuple[Precision, float]]] | None = None) -> None:
        """GPTQ at every setting this layer's statistics have not cached yet, all with one
        factorisation of ``H`` (:func:`~weightpress.compression.quant.gptq_many`), each with
        the output error its own sweep measured (Σ e_c² less the dampening's share: no
        out·in² product with ``H`` per precision; the report measures the chosen form
        exactly). ``best_only``: of the settings measured here only the lowest-error result
        stays cached (a byte budget's build with plain codes needs no other; issue 15: the
        results of every candidate precision were held at once). ``keep``: groups of
        settings, of each only its lowest-error result stays cached (a first try's budget
        and its alternative's: at most two results held)."""
        todo = list(dict.fromkeys(ps for ps in settings
                                  if ("gptq", *ps, damp_q, w_key) not in stats._cache))
        if not todo:
            return
        if best_only:
            keep = [set(todo)]
        res = [np.zeros(Wo.shape[0]) for _ in todo]
        if not den:
            den.append(total())
        hd = np.diag(stats.hessian()).copy()  # (H holds its factor while the sweeps run)
        kept: dict[int, tuple[float, Any]] = {}  # group -> (error, key) of its result kept

        def each(i: int, q: Quantized) -> None:
            p, s = todo[i]
            num = sweep_output_error(Wo, q.rows, stats, damp_q, float(res[i].sum()), Wo.dtype, hd)
            e = float(np.sqrt(num / den[0])) if den[0] > 0 else 0.0
            _MEMO.put(memo_key(p, s), {"error": e, "nbytes": q.nbytes})
            q._wp_predicted = e
            key = ("gptq", p, s, damp_q, w_key)
            if keep is not None:  # only each group's lowest error is kept (first on ties)
                won = [g for g, members in enumerate(keep)
                       if (p, s) in members and (g not in kept or e < kept[g][0])]
                if not won:
                    return
                for g in won:
                    old = kept.get(g)
                    kept[g] = (e, key)
                    if old is not None and all(v[1] != old[1] for v in kept.values()):
                        stats._cache.pop(old[1], None)
            # every budget of one layer (bisection, allocation curves) shares these results
            stats.cached(key, lambda: q)

        gptq_many(Wo, stats, [(p.bits, p.group, p.symmetric, s or None) for p, s in todo],
                  damp=damp_q, row_errs=res, each=each)

    def gptq_at(p: Precision, sparsity: float) -> Quantized:
        measure([(p, sparsity)])
        q = copy.copy(stats._cache[("gptq", p, sparsity, damp_q, w_key)])
        if layout != "out_in":
            q.shape, q.layout = q.shape[::-1], layout
        q.dtype = od
        q._wp_memo = memo_key(p, sparsity)
        exact = (_MEMO.get(q._wp_memo) or {}).get("exact")
        if exact is not None:  # measured by an earlier report (a ratio search's retry)
            q._wp_output_error = (stats, exact)
        if coding is not None:
            q.set_coding(coding)  # on the copy: the cached one stays plain
        return q

    def candidates(nb: float) -> list[tuple[Precision, float]]:
        """The settings worth measuring for a budget of ``nb`` bytes."""
        if fixed is not None:
            return [(fixed, 0.0)]
        cands = [(p, 0.0) for p in precisions_for_bytes(shape_oi, nb)
                 or [min(QUANT_LADDER, key=lambda p: p.nbytes(shape_oi))]]
        if coding is not None:
            # coded streams are smaller than plain ones: larger precisions may fit, and below
            # plain int2 ternary (int2) or int3 codes with GPTQ-chosen zeros (SparseGPT's
            # joint mode), whose coded size falls with every zero
            cands += [(p, 0.0) for p in precisions_for_bytes(shape_oi, 2 * nb, top=3)
                      if (p, 0.0) not in cands]
            if nb < Precision(2).nbytes(shape_oi):
                cands += [(Precision(b), s) for b, grid in ((2, _LOW_SPARSITY), (3, _LOW_SPARSITY[2:]))
                          for s in grid]
        return cands

    def unmeasured(cands: list[tuple[Precision, float]], nb: float) -> list[tuple[Precision, float]]:
        """Of ``cands``, those a build must measure: with plain codes the ones that fit and
        whose error no earlier try recorded (the bytes are known without a build)."""
        if coding is not None:
            return cands
        return [(p, s) for p, s in cands if p.nbytes(shape_oi) <= nb
                and (_MEMO.get(memo_key(p, s)) or {}).get("error") is None]

    def choose(cands: list[tuple[Precision, float]], nb: float
               ) -> tuple[tuple[Precision, float], tuple[int, float]]:
        """The setting a budget of ``nb`` bytes builds, and its key: ``(0, error)`` when it
        fits, else ``(1, bytes)``."""
        best, best_key = None, (2, np.inf)
        for p, s in cands:  # the lowest output error that fits wins
            if coding is None:
                # plain codes: the bytes are known without a build, and an error measured by
                # an earlier try (the ratio search's retries rebuild every layer) is reused,
                # so only the winner is built again
                size = p.nbytes(shape_oi)
                if size > nb:
                    key: tuple[int, float] = (1, float(size))
                else:
                    known = (_MEMO.get(memo_key(p, s)) or {}).get("error")
                    key = (0, known if known is not None else _error(Wo, gptq_at(p, s), stats))
            else:
                q = gptq_at(p, s)
                key = (0, _error(Wo, q, stats)) if q.nbytes <= nb else (1, float(q.nbytes))
            if key < best_key:
                best, best_key = (p, s), key
        assert best is not None
        return best, best_key

    dense_bytes = Wo.size * isz
    alt = float(options.get("_alt") or 0.0)

    def quant_b(nb: float) -> CompressedMatrix:
        cands = candidates(nb)
        # a ratio search's first try (options["_alt"]): the choice at alt·nb bytes as well,
        # measured with the same factorisation, so the search can move this layer up a step
        # without building it again (plain codes, a budget below dense's only)
        # (from 6 bits up only: the step is then to the 8-bit precisions, nearly alike, and
        # one step a layer is the choice there is; below, precisions lie close in bytes and a
        # second ratio's try gives the search more to mix: --ratio 10 erred 10 % more)
        nb_alt = (nb * alt if alt > 1 and coding is None and fixed is None
                  and max(p.bits for p, _ in cands) >= STEP_BITS else 0.0)
        nb_alt = nb_alt if nb_alt < dense_bytes else 0.0
        acands = candidates(nb_alt) if nb_alt else []
        here, there = unmeasured(cands, nb), unmeasured(acands, nb_alt)
        if nb_alt and lean:
            measure(here + there, keep=[set(here), set(there)])
        else:
            measure(here, best_only=lean and coding is None)
        best, best_key = choose(cands, nb)
        q = gptq_at(*best)
        if best_key[0] == 0:
            q._wp_predicted = best_key[1]  # compress_aware's choice reuses it
        if nb_alt:
            up, up_key = choose(acands, nb_alt)
            if up_key[0] == 0 and up != best and (best_key[0] != 0 or up_key[1] < best_key[1]):
                qa = gptq_at(*up)
                qa._wp_predicted = up_key[1]  # type: ignore[attr-defined]
                # what compress(W, "quant", Budget(nbytes=nb_alt)) builds
                q._wp_alt = (nb_alt, qa)  # type: ignore[attr-defined]
        if (alt > 1 and coding is None and fixed is None and not hasattr(q, "_wp_alt")
                and all(p.nbytes(shape_oi) <= nb for p in QUANT_LADDER)):
            # every precision fits: the step up is to keep the layer dense
            q._wp_alt = (float(dense_bytes), None)  # type: ignore[attr-defined]
        return q

    def prefetch(budgets: list[float]) -> None:
        todo = []
        for nb in budgets:
            cs = candidates(nb)
            todo += unmeasured(cs, nb)
            if coding is None and not any(p.nbytes(shape_oi) <= nb for p, _ in cs):
                todo += cs  # nothing fits: quant_b builds the smallest precision, measured here too
        measure(todo)

    quant_b.prefetch = prefetch  # type: ignore[attr-defined]
    lowrank_b.rank = lowrank_rank  # type: ignore[attr-defined]
    lowrank_b.total = total  # type: ignore[attr-defined]  # (tr(W H Wᵀ), by the weights' hash)

    table = {"prune": {"sparse": prune_b}, "lowrank": {"lowrank": lowrank_b},
             "slr": {"sparse+lowrank": slr_b}, "nm": {"nm": nm_b}, "quant": {"quant": quant_b},
             "auto": {"sparse": prune_b, "lowrank": lowrank_b, "quant": quant_b}}
    if method == "code":  # sparse coding is weight-space; its error is still measured on outputs
        def code_b(nb: float) -> CompressedMatrix:
            return M.sparse_coded(Wo if layout == "out_in" else Wo.T, nbytes=nb, layout=layout,
                                  storage=storage)
        return {"code": code_b}
    if method not in table:
        raise ValueError(f"method: expected one of {', '.join(table)}, got {method!r}")
    return table[method]


def warm_quant(W: Any, stats: CalibrationStats, budgets: list[float], *,
               options: Mapping[str, Any] | None = None, layout: str = "out_in",
               storage: str | None = None) -> None:
    """Measure, with one factorisation of ``H``, every GPTQ precision that
    :func:`compress_aware` ``"quant"`` asks for at any of ``budgets`` (bytes): an allocation
    curve's levels then find them cached on ``stats``."""
    Wa = as_matrix(W, "W")
    _builders(_oriented(Wa, layout), stats, "quant", dict(options or {}), layout,
              M.out_dtype(W, Wa), storage)["quant"].prefetch(list(budgets))


def time_apply(m: CompressedMatrix, batch: int, repeat: int = 7) -> float:
    """Best-of-``repeat`` seconds of ``m.apply`` on a (batch, in) float32 input, here (the
    minimum: the least disturbed by other work on the machine)."""
    x = np.random.default_rng(0).standard_normal((batch, m.in_features)).astype(np.float32)
    m.apply(x)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        m.apply(x)
        ts.append(time.perf_counter() - t0)
    return float(np.min(ts))


def compress_aware(W: Any, stats: CalibrationStats, method: str = "auto", *,
                   error: float | None = None, nbytes: float | None = None,
                   options: Mapping[str, Any] | None = None, layout: str = "out_in",
                   storage: str | None = None, prefer: str = "size") -> CompressedMatrix:
    """Compress one layer using its input statistics.

    Parameters
    ----------
    W : array_like
        The stored weight (``[out, in]`` for ``layout="out_in"``, ``[in, out]`` for "in_out").
    stats : CalibrationStats
        Statistics of the layer's inputs (``in`` features).
    method : str
        ``prune`` (OBS), ``nm`` (OBS N:M, ``options["pattern"]``, default 2:4), ``lowrank``
        (whitened), ``slr`` (activation-scaled sparse + low-rank), ``quant`` (GPTQ at the
        precision that fits the budget best, or at ``options`` ``bits``/``group``/``symmetric``)
        or ``auto`` (pruning, low-rank or GPTQ quantization, whichever is better for the budget).
    error : float, optional
        Relative output error to meet with the fewest bytes; or
    nbytes : float, optional
        Byte budget to meet with the lowest output error.
    prefer : str
        ``"size"`` (default) or ``"speed"``: among the forms that meet the budget, the one whose
        layer runs fastest here at batch 32 (dense included when it fits).

    Returns
    -------
    CompressedMatrix
        Never bigger than dense: dense is returned when no form is smaller.
    """
    Wa = as_matrix(W, "W")
    od = M.out_dtype(W, Wa)
    opts = dict(options or {})
    if prefer not in ("size", "speed"):
        raise ValueError(f"prefer: expected 'size' or 'speed', got {prefer!r}")
    Wo = _oriented(Wa, layout)  # in its own dtype: float32 stays float32 (issue 15: memory)
    if stats.n_features != Wo.shape[1]:
        raise ValueError(f"calibration has {stats.n_features} input features but the layer takes "
                         f"{Wo.shape[1]} (W {Wa.shape}, layout {layout})")
    err, nb = Budget.of(error=error, nbytes=nbytes).pair()
    dense = Dense(Wa.astype(od, copy=False), layout)
    dense_bytes = Wa.size * value_itemsize(od, storage)
    builders = _builders(Wo, stats, method, opts, layout, od, storage, lean=nb is not None)
    if method == "quant" and M.precision_of(opts) is not None:
        return builders["quant"](dense_bytes)  # a precision the rule fixes is what it gets
    cands: list[tuple[CompressedMatrix, float]] = []
    order = list(enumerate(builders.items()))
    bounded = (nb is not None and prefer == "size" and SKIP_BOUNDED and "quant" in builders
               and not opts.get("_no_skip"))
    if bounded:
        # low rank last: it is not built when no matrix of its rank can err less than the
        # best of the others (_lowrank_loses), quantization most often. Pruning and
        # quantization keep their turn (each built with the least held: issue 15). The order
        # of the choice is kept: ties go to the form listed first, as when every form is
        # built in turn
        order = [o for o in order if o[1][0] != "lowrank"] + [o for o in order if o[1][0] == "lowrank"]
    index: dict[int, int] = {}  # id of a kept candidate -> its form's place in builders
    for pos, (form, build) in order:
        if nb is not None:
            if (bounded and form == "lowrank" and cands
                    and _lowrank_loses(Wo, stats, build.rank(min(nb, dense_bytes)),  # type: ignore[attr-defined]
                                       cands[0], nb, dense_bytes, build.total)):  # type: ignore[attr-defined]
                release_free_memory()  # (the floor's blocks' heap pages)
                continue
            m = build(min(nb, dense_bytes))
            cands.append((m, _error(Wo, m, stats)))
            index[id(m)] = pos
        elif form == "lowrank":  # the rank for an error budget comes straight from the spectrum
            A, B, _ = lowrank_whitened(Wo, stats, error=max(err, 1e-12) if err < 1 else 0.999,
                                       damp=float(opts.get("damp", 1e-2)))
            m = _lowrank(A, B, layout, od, storage)
            del A, B
            cands.append((m, layer_error(Wo, m, stats)))
        else:
            cands.append(_smallest_meeting(build, Wo, stats, err, dense_bytes))
        if prefer == "size" and len(cands) > 1:
            # only the best so far stays alive (issue 15: memory within 3x the layer); the
            # choice below is the same as over every candidate
            cands = [min(cands, key=lambda c: (_rank(c, nb, err, dense_bytes),
                                               index.get(id(c[0]), 0)))]
        m = None  # type: ignore[assignment]
        release_free_memory()  # (the dropped candidates' pages, before the next form is built)
    if nb is not None:
        fits = [(m, e) for m, e in cands if m.nbytes <= max(nb, 1)] or [min(cands, key=lambda c: c[0].nbytes)]
        if nb >= dense_bytes:
            fits.append((dense, 0.0))
    else:
        fits = [(m, e) for m, e in cands if e <= err * (1 + 1e-9)] or [(dense, 0.0)]
    fits = [(m, e) for m, e in fits if m.nbytes < dense_bytes or m is dense] or [(dense, 0.0)]
    if prefer == "speed":
        if (dense, 0.0) not in fits and (nb is None or dense_bytes <= nb):
            fits.append((dense, 0.0))
        best = min(fits, key=lambda c: time_apply(c[0], 32))
    elif nb is not None:
        best = min(fits, key=lambda c: c[1])
    else:
        best = min(fits, key=lambda c: c[0].nbytes)
    if best[0] is not dense and getattr(best[0], "_wp_predicted", None) is None:
        best[0]._wp_output_error = (stats, best[1])  # measured: the caller's report reuses it
    return best[0]


# compress_aware skips a candidate form only where a proven bound says it cannot win
# (_lowrank_loses); False builds every form (the tests compare both ways)
SKIP_BOUNDED = True


def _lowrank_loses(Wo: np.ndarray, stats: CalibrationStats, rank: int,
                   best: tuple[CompressedMatrix, float], nb: float, dense_bytes: int,
                   total: Callable[[], float]) -> bool:
    """Whether every matrix of rank ``rank`` errs (output error, squared) more than
    :data:`LOWRANK_MARGIN` times ``best`` (the best candidate so far at a byte budget ``nb``,
    fitting it): then the whitened low-rank candidate cannot be chosen.

    :func:`~weightpress.compression.data_aware.lowrank_error_floor` bounds the squared output
    error of any rank-r matrix from below (no spectrum of ``W L``). ``best``'s error is the one
    its build measured (an OBS/GPTQ sweep's own ``Σ e_c²``, equal to the exact output error in
    exact arithmetic and within 1e-3 of it in float32: tests/test_scale_reuse.py), or an
    exact pass's. A low-rank candidate the search would have built could then only have won
    with its predicted error undershooting its true one (at least the floor) by the margin,
    i.e. with a measured error larger than ``best``'s: the choice is the same or better."""
    e = float(best[1])
    if (rank <= 0 or 3 * (rank + 8) > min(Wo.shape)
            or _rank(best, nb, None, dense_bytes)[0] != 0):
        # (from a third of the full rank up the floor's products cost about what the
        # whitened spectrum does: the candidate is built)
        return False
    den = total()  # (``tr(W H Wᵀ)``: the denominator the candidates' errors were taken with)
    if not den > 0:
        return False
    return lowrank_error_floor(Wo, stats, rank) > LOWRANK_MARGIN * e * e * den


# how many times the best candidate's squared output error a rank's floor must exceed for
# compress_aware to skip whitened low rank (2x in the error: far beyond the sweeps' 1e-3)
LOWRANK_MARGIN = 4.0


def _rank(c: tuple[CompressedMatrix, float], nb: float | None, err: float | None,
          dense_bytes: int) -> tuple[int, float]:
    """Order of candidates that :func:`compress_aware`'s final choice (by size) agrees with:
    for a byte budget the fitting ones smaller than dense by error, then the fitting ones, then
    the rest by bytes; for an error budget the ones meeting it by bytes."""
    m, e = c
    if nb is not None:
        fits = m.nbytes <= max(nb, 1)
        return (0, e) if fits and m.nbytes < dense_bytes else (1 if fits else 2, float(m.nbytes))
    assert err is not None
    return (0, float(m.nbytes)) if e <= err * (1 + 1e-9) and m.nbytes < dense_bytes else (1, 0.0)


def _error(Wo: np.ndarray, m: CompressedMatrix, stats: CalibrationStats) -> float:
    """The output error the build measured (OBS sweeps, whitened spectra), else measured here.
    The report measures the chosen form once more against the original weights."""
    p = getattr(m, "_wp_predicted", None)
    return p if p is not None else layer_error(Wo, m, stats)


def _smallest_meeting(build: Callable[[float], CompressedMatrix], Wo: np.ndarray,
                      stats: CalibrationStats, err: float, dense_bytes: int
                      ) -> tuple[CompressedMatrix, float]:
    """The smallest matrix with error ≤ err: byte budgets on a log grid 2 % apart from
    dense/4096 to dense, searched by :func:`~weightpress.compression.methods.smallest_meeting`."""
    lo, hi = np.log(max(64.0, dense_bytes / 4096)), np.log(dense_bytes)
    steps = max(1, int(np.ceil((hi - lo) / 0.02)))

    def at(k: int) -> tuple[CompressedMatrix, float]:
        m = build(float(np.exp(lo + (hi - lo) * k / steps)))
        return m, _error(Wo, m, stats)

    return M.smallest_meeting(0, steps, at, lambda me: me[1] <= err)[1]
