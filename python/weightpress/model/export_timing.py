"""Whole-model timing of a container in onnxruntime: the dense model (the container's decode in
the original graph) against the exported one (:func:`~weightpress.model.export_onnx.export_onnx`),
at batch 1 and 32, same thread count; what ``weightpress info --timing`` prints per model.

Inputs are made from the graph's declared inputs: a dynamic first dimension is the batch, other
dynamic dimensions are 8; floating inputs are standard normal, integer ones zero (a valid token
id or index in any model).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field


from .._optional import require
from ..io import save_model
from ..io.structure import write_from_skeleton
from .container import Container
from ..io.onnx_graph import _load_proto
from .export_check import sample_feed
from .export_onnx import best_time, export_onnx

__all__ = ["ModelTiming", "time_onnx_model", "best_time"]


@dataclass
class ModelTiming:
    """Seconds per call (best of ``reps``) and file bytes, dense vs exported."""

    dense: dict[int, float] = field(default_factory=dict)      # batch -> seconds
    exported: dict[int, float] = field(default_factory=dict)
    dense_bytes: int = 0
    exported_bytes: int = 0
    threads: int = 1
    compressed_layers: int = 0
    dense_layers: int = 0                                       # compressed in the file, dense here

    def line(self) -> str:
        parts = [f"batch {b}: {self.exported[b] * 1e3:.3g} ms vs dense {self.dense[b] * 1e3:.3g} ms "
                 f"({self.dense[b] / max(self.exported[b], 1e-12):.2f}x)" for b in sorted(self.dense)]
        return (f"model (onnxruntime, {self.threads} thread{'s' if self.threads > 1 else ''}): "
                + ", ".join(parts) + f"; file {self.exported_bytes:,} vs {self.dense_bytes:,} bytes; "
                f"{self.compressed_layers} layers run compressed, {self.dense_layers} decoded to dense")


def time_onnx_model(container: str | os.PathLike[str] | Container,
                    like: str | os.PathLike[str] | None = None, *, batches: tuple[int, ...] = (1, 32),
                    threads: int = 1, reps: int = 10) -> ModelTiming:
    """Time the whole model dense vs exported in onnxruntime (see the module docstring).

    ``like``: the original ONNX model; default: the graph the container keeps.

    Raises
    ------
    ValueError
        The container holds no ONNX graph and no ``like`` is given, or an input cannot be made.
    """
    ort = require("onnxruntime", "timing a model in onnxruntime")
    c = container if isinstance(container, Container) else Container(container)
    with tempfile.TemporaryDirectory(prefix="wp-timing-") as tmp:
        dense = os.path.join(tmp, "dense.onnx")
        if like is None:
            s = c.structure()
            if s is None or s[0] != "onnx":
                raise ValueError("like: the container keeps no ONNX graph; give the original model")
            write_from_skeleton(dense, "onnx", s[1], c)
        else:
            save_model(dense, c, like=like)
        out = os.path.join(tmp, "exported.onnx")
        rows = export_onnx(c, out, dense)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        t = ModelTiming(threads=threads, dense_bytes=os.path.getsize(dense),
                        exported_bytes=os.path.getsize(out),
                        compressed_layers=sum(r.compressed for r in rows),
                        dense_layers=sum(r.form != "dense" and not r.compressed for r in rows))
        graph = _load_proto(dense, external=False).graph
        for path, into in ((dense, t.dense), (out, t.exported)):
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            for b in batches:
                into[b] = best_time(functools.partial(sess.run, None, sample_feed(sess, b, graph)), reps)
            sess = None  # the dense session's memory is given back before the exported one loads
    return t
