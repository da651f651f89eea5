"""Capture calibration inputs by running an ONNX model in onnxruntime (optional dependency).

For every ``MatMul`` whose second input is a stored weight (an initializer or a ``Constant``)
and every ``Gemm`` with a stored ``B``, the tensor flowing into the node's first input is the
layer's input. weightpress exposes those tensors as extra graph outputs, runs the model on the
sample inputs the user gives, and returns ``weight name -> inputs (n_samples, in)``: exactly
the mapping ``compress --calibration`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._optional import require
from ..compression.calibration import CalibrationStats

__all__ = ["capture_onnx"]


def capture_onnx(model: str | os.PathLike[str], inputs: Mapping[str, Any],
                 *, batch: int = 256, stats: bool = False) -> dict[str, Any]:
    """Run ``model`` on ``inputs`` (model input name -> array, samples along axis 0) and
    return each weight's layer inputs, flattened to ``(n, in)``; with ``stats``, their
    :class:`~weightpress.compression.calibration.CalibrationStats` instead, accumulated batch
    by batch (memory holds one batch of activations and each layer's ``XᵀX``, never all the
    samples; weights fed by the same tensor share one object).

    Parameters
    ----------
    model : path
        The ONNX file.
    inputs : mapping
        Sample inputs for the model's graph inputs (all of them), in batches of any size.
    batch : int
        Samples per onnxruntime call (memory bound).

    Raises
    ------
    ValueError
        onnx/onnxruntime missing, an input missing or misnamed, or no weight found.
    """
    onnx = require("onnx", "capturing activations")
    ort = require("onnxruntime", "capturing activations")
    m = onnx.load(os.fspath(model))
    stored = {i.name for i in m.graph.initializer}
    stored |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    targets: dict[str, str] = {}
    for node in m.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in stored:
            targets[node.input[1]] = node.input[0]
        elif node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in stored:
            attrs = {a.name: a for a in node.attribute}
            if "transA" in attrs and attrs["transA"].i:
                continue  # inputs are transposed: not samples x features
            targets[node.input[1]] = node.input[0]
    if not targets:
        raise ValueError(f"{os.fspath(model)}: no MatMul/Gemm with a stored weight to calibrate")
    graph_inputs = [i.name for i in m.graph.input if i.name not in stored]
    missing = set(graph_inputs) - set(inputs)
    if missing:
        raise ValueError(f"inputs: missing model input(s) {sorted(missing)} (the model takes {graph_inputs})")
    extra = set(inputs) - set(graph_inputs)
    if extra:
        raise ValueError(f"inputs: {sorted(extra)} are not inputs of the model (it takes {graph_inputs})")
    outs = sorted(set(targets.values()))
    have = {o.name for o in m.graph.output}
    for name in outs:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: np.asarray(v) for k, v in inputs.items()}
    n = {len(v) for v in feeds.values()}
    if len(n) != 1:
        raise ValueError(f"inputs: every input needs the same number of samples, got {sorted(n)}")
    total = n.pop()
    chunks: dict[str, list[np.ndarray]] = {o: [] for o in outs}
    acc: dict[str, CalibrationStats] = {}
    for s in range(0, total, max(1, int(batch))):
        res = sess.run(outs, {k: v[s:s + batch] for k, v in feeds.items()})
        for o, r in zip(outs, res):
            r = np.asarray(r)
            if not stats:
                chunks[o].append(r)
                continue
            if r.ndim < 2:
                raise ValueError(f"{os.fspath(model)}: activation {o!r} has shape {r.shape}, "
                                 f"not (samples, features)")
            if o not in acc:
                acc[o] = CalibrationStats(int(r.shape[-1]))
            acc[o].update(r)
    if stats:
        return {w: acc[a] for w, a in targets.items()}
    acts = {o: np.concatenate(c, axis=0) for o, c in chunks.items()}
    return {w: acts[a].reshape(-1, acts[a].shape[-1]) for w, a in targets.items()}
