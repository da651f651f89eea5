"""Budgets across layers: choose one compression setting per layer so that the whole model
meets a size budget with the least total error (or a total-error budget with the fewest bytes).

Each layer offers candidates ``(bytes, error)`` measured on that layer (its error-vs-size
curve). The total cost is ``Σ weight_l · error_l²`` (squared relative errors weighted, by
default, by the layer's share of parameters). Greedy steps along each layer's lower convex hull,
best marginal gain per byte first, solve the Lagrangian relaxation of this knapsack exactly at
every hull vertex, which is the standard way rate-distortion budgets are split.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Candidate", "allocate", "size_aware_budgets"]


@dataclass(frozen=True)
class Candidate:
    """One way to store one layer: its size in bytes and its relative error."""

    nbytes: int
    error: float
    label: str = ""


def _hull(cands: Sequence[Candidate], weight: float) -> list[int]:
    """Indices of the lower convex hull of (bytes, weight·error²), by increasing bytes, each
    strictly better in cost than the one before."""
    order = sorted(range(len(cands)), key=lambda i: (cands[i].nbytes, cands[i].error))
    pts: list[int] = []
    for i in order:
        c = weight * cands[i].error ** 2
        if pts and c >= weight * cands[pts[-1]].error ** 2:
            continue  # more bytes, no less error: never worth it
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            xa, ya = cands[a].nbytes, weight * cands[a].error ** 2
            xb, yb = cands[b].nbytes, weight * cands[b].error ** 2
            # b is above the segment a -> i: drop it
            if (yb - ya) * (cands[i].nbytes - xa) >= (c - ya) * (xb - xa):
                pts.pop()
            else:
                break
        pts.append(i)
    return pts


def allocate(curves: Mapping[str, Sequence[Candidate]], max_bytes: int,
             weights: Mapping[str, float] | None = None) -> dict[str, int]:
    """Pick one candidate index per layer with total bytes ≤ `max_bytes`, minimising
    ``Σ weight · error²``.

    Parameters
    ----------
    curves : mapping layer name -> candidates
        Every layer needs at least one candidate (include the uncompressed form).
    max_bytes : int
        The budget for all these layers together.
    weights : mapping, optional
        Importance of each layer's squared error (default 1).

    Returns
    -------
    dict
        layer name -> index into its candidate list.

    Raises
    ------
    ValueError
        If even the smallest candidate of every layer exceeds the budget (the message says by
        how much), or a layer has no candidates.
    """
    weights = dict(weights or {})
    hulls: dict[str, list[int]] = {}
    for name, cands in curves.items():
        if not cands:
            raise ValueError(f"layer {name!r} has no candidates")
        hulls[name] = _hull(cands, float(weights.get(name, 1.0)))
    pos = {n: 0 for n in hulls}
    used = sum(curves[n][h[0]].nbytes for n, h in hulls.items())
    if used > max_bytes:
        raise ValueError(f"budget of {max_bytes} bytes is impossible: the smallest setting of every "
                         f"layer needs {used} bytes ({used / max(max_bytes, 1):.2f}x the budget)")
    heap: list[tuple[float, str]] = []

    def push(n: str) -> None:
        h, p = hulls[n], pos[n]
        if p + 1 < len(h):
            a, b = curves[n][h[p]], curves[n][h[p + 1]]
            w = float(weights.get(n, 1.0))
            gain = w * (a.error ** 2 - b.error ** 2) / max(b.nbytes - a.nbytes, 1)
            heapq.heappush(heap, (-gain, n))

    for n in hulls:
        push(n)
    while heap:
        _, n = heapq.heappop(heap)
        h, p = hulls[n], pos[n]
        extra = curves[n][h[p + 1]].nbytes - curves[n][h[p]].nbytes
        if used + extra > max_bytes:
            continue  # this layer's next step does not fit; cheaper steps of others may
        used += extra
        pos[n] = p + 1
        push(n)
    choice = {n: hulls[n][pos[n]] for n in hulls}
    # Fill what the hull steps left: any candidate (hull or not) that lowers a layer's cost
    # within the remaining bytes, best cost reduction first, until none fits.
    while True:
        best = None
        for n, cands in curves.items():
            w = float(weights.get(n, 1.0))
            cur = cands[choice[n]]
            for i, c in enumerate(cands):
                extra = c.nbytes - cur.nbytes
                gain = w * (cur.error ** 2 - c.error ** 2)
                if gain > 0 and used + extra <= max_bytes and (best is None or gain > best[0]):
                    best = (gain, n, i, extra)
        if best is None:
            return choice
        _, n, i, extra = best
        choice[n] = i
        used += extra


def total(curves: Mapping[str, Sequence[Candidate]], choice: Mapping[str, int],
          weights: Mapping[str, float] | None = None) -> tuple[int, float]:
    """(total bytes, Σ weight·error²) of a choice."""
    w = dict(weights or {})
    b = sum(curves[n][i].nbytes for n, i in choice.items())
    c = float(np.sum([w.get(n, 1.0) * curves[n][i].error ** 2 for n, i in choice.items()]))
    return b, c


# Extra bits per weight a layer gets for each halving of its size below the reference (the
# closed form below) start only this many bits in: layers of about the same size (attention
# and MLP matrices of one transformer) keep equal ratios; much smaller ones (a classifier
# head, a first convolution) get more bits.
SMALL_DEADZONE_BITS = 0.5
SMALL_MAX_EXTRA_BITS = 6.0


def size_aware_budgets(sizes: Mapping[str, int], orig_bytes: Mapping[str, int],
                       total: float) -> dict[str, float]:
    """Split ``total`` bytes across layers for a uniform ratio target, protecting small layers.

    The objective :func:`allocate` minimises, ``Σ error_l²`` with every layer's relative error
    counting the same, has a closed form under the high-rate model of quantization
    (``error_l² ∝ 4^(−bits_l)``, the same constant for every layer): the optimum gives layer
    ``l`` with ``n_l`` weights ``bits_l = c − ½·log2(n_l)`` bits per weight. A tiny layer's
    extra bits cost almost nothing in total, while at an equal ratio its error would count
    as much as a large layer's. Here only the layers smaller than the byte-weighted median
    size ``n_ref`` get that bonus, ``½·log2(n_ref / n_l)`` bits less
    :data:`SMALL_DEADZONE_BITS` (at most :data:`SMALL_MAX_EXTRA_BITS`), so models of
    similar-sized layers keep equal ratios; the others share what is left in proportion to
    their bytes. No layer gets more than its own bytes, and the bonuses take at most half of
    ``total``.

    Parameters
    ----------
    sizes : mapping layer name -> number of weights
    orig_bytes : mapping layer name -> bytes it has uncompressed
    total : float
        Bytes for all these layers together.

    Returns
    -------
    dict
        layer name -> byte budget (they sum to ``total`` unless every layer is capped at its
        own bytes).

    Examples
    --------
    >>> b = size_aware_budgets({"big": 32768, "head": 1280}, {"big": 131072, "head": 5120}, 6800)
    >>> round(b["big"] + b["head"]), b["head"] / 5120 > 2 * b["big"] / 131072
    (6800, True)
    """
    names = [n for n in sizes if orig_bytes.get(n, 0) > 0]
    if not names or total <= 0:
        return {n: 0.0 for n in sizes}
    n = np.array([max(int(sizes[k]), 1) for k in names], np.float64)
    o = np.array([float(orig_bytes[k]) for k in names])
    order = np.argsort(n, kind="stable")
    cum = np.cumsum(o[order])
    n_ref = float(n[order][int(np.searchsorted(cum, 0.5 * cum[-1]))])
    extra_bits = np.clip(0.5 * np.log2(n_ref / n) - SMALL_DEADZONE_BITS, 0.0, SMALL_MAX_EXTRA_BITS)
    bonus = n * extra_bits / 8.0
    if bonus.sum() > 0.5 * total:
        bonus *= 0.5 * total / bonus.sum()
    capped = np.zeros(len(names), bool)
    out = np.zeros(len(names))
    for _ in range(len(names) + 1):  # layers that reach their own bytes drop out
        free = ~capped
        left = total - o[capped].sum()
        share = left - bonus[free].sum()
        if share <= 0:  # the bonuses alone fill it: scale them into what is left
            out[free] = bonus[free] * max(left, 0.0) / max(bonus[free].sum(), 1e-300)
        else:
            out[free] = bonus[free] + o[free] * share / o[free].sum()
        out[capped] = o[capped]
        over = free & (out > o)
        if not over.any():
            break
        capped |= over
    return {k: float(v) for k, v in zip(names, out)} | {k: 0.0 for k in sizes if k not in names}
