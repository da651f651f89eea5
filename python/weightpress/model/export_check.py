"""Checking an exported ONNX model against the container's own computation.

*The container's stated error* (what an exported model's outputs are held to): the largest
relative error the container records for any of its tensors, ``max_t ‖W_t − Ŵ_t‖_F / ‖W_t‖_F``
(each entry's ``error``). The container says its model computes with weights that far from the
originals; the export may run that model in other kernels, but the outputs it hands over must
stay within that same relative distance of the container's computation:

    ‖y_exported − y_container‖₂ / ‖y_container‖₂  ≤  stated error

for every floating-point output, where ``y_container`` is the original graph with the
container's dense decode in place of its weights, run by onnxruntime without graph
optimizations (float32 kernels only), and ``y_exported`` the exported graph as a user runs it
(default optimizations). Sample inputs: the caller's (e.g. calibration inputs), or made from
the graph's declared inputs like the timing's (:func:`sample_feed`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._optional import require
from .container import Container

__all__ = ["stated_error", "sample_feed", "output_error", "run_model", "expose", "CHECK_MARGIN"]

# an output check (ONNX export, PyTorch load with sample inputs) holds the sample inputs' error
# to this fraction of the stated error: other inputs than the samples may do a little worse
CHECK_MARGIN = 0.8

_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
# ops an id passes through unchanged on its way to an embedding's Gather
_PASS = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def least_count(n: int, error: Callable[[int], float], target: float) -> tuple[int, float]:
    """The least ``k`` of ``1..n`` with ``error(k) <= target`` (``error`` falls as ``k``
    grows: the ``k`` layers adding the most made exact), found by doubling ``k`` (1, 2, 4, …)
    then bisecting (at most 3 more calls): ``(k, error(k))``; ``(n, error(n))`` when none is
    within. Each ``k`` tried is one call of ``error`` (a model exported or run): the ONNX
    export's output check and ``load_into``'s share it."""
    errs: dict[int, float] = {}

    def err(k: int) -> float:
        if k not in errs:
            errs[k] = error(k)
        return errs[k]

    k, lo, hi = 1, 0, -1
    while hi < 0:
        k = min(k, n)
        if err(k) <= target or k == n:
            hi = k
        else:
            lo, k = k, 2 * k
    for _ in range(3):
        if hi - lo <= 1 or errs[hi] > target:
            break
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if err(mid) <= target else (mid, hi)
    return hi, errs[hi]


def stated_error(c: Container) -> float:
    """The container's stated error: the largest relative Frobenius error of its tensors."""
    return max((float(e.get("error", 0.0) or 0.0) for e in c.entries.values()), default=0.0)


def _table_rows(graph: Any, name: str) -> int | None:
    """Rows of the smallest initializer table that input ``name`` indexes through ``Gather``
    (directly or through casts and reshapes); None when it indexes none."""
    inits = {t.name: t for t in graph.initializer}
    best, todo, seen = None, [name], set()
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        for n in graph.node:
            if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == cur \
                    and n.input[0] in inits and len(inits[n.input[0]].dims) >= 1:
                v = int(inits[n.input[0]].dims[0])
                best = v if best is None else min(best, v)
            elif n.op_type in _PASS and n.input and n.input[0] == cur:
                todo.extend(o for o in n.output if o)
    return best


def sample_feed(session: Any, batch: int, graph: Any = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for ``session`` from its declared inputs: a dynamic first dimension is ``batch``,
    other dynamic dimensions 8; floating inputs standard normal; integer inputs that index an
    embedding table of ``graph`` (a Gather over an initializer) uniform ids below its rows,
    integer inputs named like a mask ones, other integer inputs zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        if i.type not in _TYPES:
            raise ValueError(f"input {i.name!r}: type {i.type} has no generated value")
        dims = [d if isinstance(d, int) and d > 0 else (batch if k == 0 else 8)
                for k, d in enumerate(i.shape)]
        dt = np.dtype(_TYPES[i.type])
        rows = _table_rows(graph, i.name) if graph is not None and dt.kind in "iu" else None
        if dt.kind == "f":
            out[i.name] = rng.standard_normal(dims).astype(dt)
        elif rows:
            out[i.name] = rng.integers(0, rows, dims).astype(dt)
        elif "mask" in i.name.lower():
            out[i.name] = np.ones(dims, dt)
        else:
            out[i.name] = np.zeros(dims, dt)
    return out


def session(path: str | os.PathLike[str], optimize: bool = True) -> Any:
    """An onnxruntime CPU session of ``path`` on one thread (deterministic), with the default
    graph optimizations, or none (``optimize=False``: float32 kernels as the graph says)."""
    ort = require("onnxruntime", "checking the exported model's outputs (check=False skips it)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def run_model(path: str | os.PathLike[str], feed: Mapping[str, np.ndarray],
              optimize: bool = True) -> dict[str, np.ndarray]:
    """Every output of the model at ``path`` for ``feed`` (name -> array)."""
    s = session(path, optimize)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, dict(feed))))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf")
    nb = float(np.linalg.norm(b64))
    d = float(np.linalg.norm(a64 - b64))
    return d / nb if nb > 0 else (0.0 if d == 0 else float("inf"))


def output_error(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                 names: Any = None) -> float:
    """Largest relative L2 difference over the floating-point outputs in ``names`` (default:
    all of ``ref``); integer outputs must be equal (else infinite)."""
    worst = 0.0
    for n in (ref if names is None else names):
        r = np.asarray(ref[n])
        if r.dtype.kind == "f":
            worst = max(worst, _rel(got[n], r))
        elif not np.array_equal(np.asarray(got[n]), r):
            return float("inf")
    return worst


def expose(src: str | os.PathLike[str], dst: str | os.PathLike[str], names: Mapping[str, int]) -> list[str]:
    """Write ``dst``: the model ``src`` (external data stays where it is: ``dst`` goes in the
    same directory) with the intermediate values ``names`` (name -> ONNX element type) added
    to its outputs; returns the names added."""
    onnx = require("onnx", "checking the exported model's outputs")
    m = onnx.load_model(os.fspath(src), load_external_data=False)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    made = {o for n in m.graph.node for o in n.output}
    added = [n for n in names if n not in have and n in made]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, names[n], None) for n in added)
    with open(dst, "wb") as f:
        f.write(m.SerializeToString())
    return added
