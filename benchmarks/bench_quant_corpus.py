"""weightpress ``--ratio 4`` / ``--ratio 8`` against plain round-to-nearest quantization of
every tensor, on the real-architecture corpus of the tests (models written by torch,
transformers and keras at run time, random weights) and on the bundled digits MLP (trained):
the relative output difference ``‖y − y₀‖ / ‖y₀‖`` to the original model on a fixed input,
side by side with the whole-file ratio each reaches.

Baselines (ten lines of NumPy, as a user would write them): every float tensor of two or more
dimensions quantized along its first axis, viewed as ``(shape[0], -1)``:
``int8``: symmetric int8, one float32 scale per row (per output channel for PyTorch layouts;
Keras and GPT-2's Conv1D keep outputs last, so there it is per input channel);
``int4-g64``: symmetric int4, one float16 scale per 64 values. Other tensors stay as they are.
Their file ratio is the source's bytes over the quantized bytes (no container header).

weightpress runs as ``compress --ratio R --dtype float16 --entropy zstd`` (:data:`WP`): float
values and kept floats in float16, integer codes entropy-coded; everything else default
(default rules: 1-D tensors kept; small matrices and embeddings kept unless they would take a
large share of the file, then quantized: see ``budget_layers``).

Bits, not only forms, decide these rows: at ``--ratio 4`` the whole file has 8 bits per float32
weight, and the container's header and the kept 1-D tensors take 2-5 % of it on these small
models, while int8 with float16 row scales needs 8.1-8.25 bits on their 64-128-wide rows
(entropy coding does not close that gap on random weights: zstd gives 7.8-8.1 bits with the
scales). The int8 baseline spends those bits: its ratio is 3.6-3.9x. Add ``--per-layer`` to
print weightpress's forms and errors per tensor for each model.

Run: ``python benchmarks/bench_quant_corpus.py [--quick] [--per-layer] [model ...]``
(``--quick``: the digits MLP and two real models).
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# one format per architecture
MODELS = (("bert", "safetensors"), ("gpt2", "safetensors"), ("vit", "safetensors"),
          ("t5", "safetensors"), ("resnet", "pt"), ("mobilenet_v3", "pt"), ("convzoo", "pt"),
          ("lstm", "pt"), ("mobilenet_v2", "keras"))
QUICK_MODELS = (("bert", "safetensors"), ("resnet", "pt"))
WP: dict[str, Any] = {"value_dtype": "float16", "coding": "zstd"}
PER_LAYER = False  # --per-layer: print each compressed tensor's form and errors


def rtn(tensors: Mapping[str, np.ndarray], bits: int, group: int | None) -> tuple[dict[str, np.ndarray], int]:
    """Round-to-nearest of every float tensor of ndim >= 2: (dequantized tensors, their bytes)."""
    out, nbytes = {}, 0
    q = (1 << (bits - 1)) - 1
    for k, a in tensors.items():
        a = np.asarray(a)
        if a.dtype.kind != "f" or a.ndim < 2 or a.size == 0:
            out[k] = a
            nbytes += a.nbytes
            continue
        M = a.reshape(a.shape[0], -1).astype(np.float64)
        if group:
            pad = -M.shape[1] % group
            G = np.pad(M, ((0, 0), (0, pad))).reshape(M.shape[0], -1, group)
            s = (np.abs(G).max(axis=2, keepdims=True) / q).astype(np.float16).astype(np.float64)
            s[s == 0] = 1
            D = (np.clip(np.rint(G / s), -q - 1, q) * s).reshape(M.shape[0], -1)[:, :M.shape[1]]
            nbytes += (M.size * bits + 7) // 8 + s.size * 2
        else:
            s = np.abs(M).max(axis=1, keepdims=True) / q
            s[s == 0] = 1
            D = np.clip(np.rint(M / s), -q - 1, q) * s
            nbytes += (M.size * bits + 7) // 8 + s.size * 4
        out[k] = D.reshape(a.shape).astype(a.dtype)
    return out, nbytes


def _rel(y: np.ndarray, y0: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(y, np.float64) - y0) / max(np.linalg.norm(y0), 1e-30))


def _digits() -> tuple[str, Callable[[Mapping[str, np.ndarray]], np.ndarray], dict[str, Any]]:
    from weightpress.cli import demo
    x, _ = demo.test_data()

    def run(t: Mapping[str, np.ndarray]) -> np.ndarray:
        return _digits_logits(t, x)

    return demo.model_path(), run, {"calibration": demo.calibration()}


def _digits_logits(t: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x
    for i, n in enumerate(("fc1", "fc2", "fc3")):
        h = h @ np.asarray(t[f"{n}.weight"], np.float32).T + np.asarray(t[f"{n}.bias"], np.float32)
        if i < 2:
            h = np.maximum(h, 0)
    return h


def compare(path: str, run_tensors: Callable[[Mapping[str, np.ndarray]], np.ndarray],
            src_bytes: int, tmp: str, extra: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Output differences and file ratios: weightpress --ratio 4 and 8 (``extra`` keyword
    arguments of compress_model, e.g. calibration) and the two round-to-nearest baselines."""
    from weightpress.model.compress import compress_model, open_source
    from weightpress.model.container import Container

    with open_source(path) as src:
        orig = {k: np.array(src[k]) for k in src}
        y0 = np.asarray(run_tensors(orig), np.float64)
        res: dict[str, float] = {}
        for r in (4, 8):
            out = os.path.join(tmp, f"r{r}.wpz")
            rep = compress_model(src, out, ratio=r, **{**WP, **dict(extra or {})})
            if PER_LAYER:
                print(f"-- {os.path.basename(path)} --ratio {r}")
                for row in rep.rows:
                    if row.form != "dense" or "compressed" in (row.reason or ""):
                        oe = f" out.err {row.output_error:.4f}" if row.output_error is not None else ""
                        print(f"   {row.name:55s} {row.form:34s} {row.nbytes:>9,} B "
                              f"err {row.error:.4f}{oe}")
            with Container(out) as c:
                dense = {k: np.array(c[k]) for k in c}
            res[f"wp{r}"] = _rel(run_tensors(dense), y0)
            res[f"wp{r}_ratio"] = src_bytes / os.path.getsize(out)
    for key, bits, group in (("int8", 8, None), ("int4g64", 4, 64)):
        t, nb = rtn(orig, bits, group)
        res[key] = _rel(run_tensors(t), y0)
        res[f"{key}_ratio"] = src_bytes / nb
    return res


def _file_bytes(path: str) -> int:
    if path.endswith(".index.json"):
        import json
        with open(path) as f:
            shards = set(json.load(f)["weight_map"].values())
        d = os.path.dirname(path)
        return os.path.getsize(path) + sum(os.path.getsize(os.path.join(d, s)) for s in shards)
    return os.path.getsize(path)


def run(quick: bool = False, names: list[str] | None = None) -> list[tuple[str, dict[str, float]]]:
    import realmodels
    from _harness import Table

    models = QUICK_MODELS if quick else MODELS
    if names:
        models = tuple(m for m in MODELS if m[0] in names)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wp-qcorpus-") as root:
        path, fn, extra = _digits()
        for label, kw in (("digits MLP (trained)", {}), ("digits MLP +cal", extra)):
            rows.append((label, compare(path, fn, os.path.getsize(path), root, kw)))
        for name, fmt in models:
            m = realmodels.build(name, fmt, root)
            rows.append((f"{name} ({fmt})", compare(m.path, m.run_tensors, _file_bytes(m.path), root)))
    t = Table("output difference to the original, ||y - y0|| / ||y0|| (file ratio); "
              "wp --ratio 4 must beat int8 RTN, --ratio 8 must beat int4-g64 RTN",
              ["model", "wp 4x", "int8 RTN", "4x wins", "wp 8x", "int4g64 RTN", "8x wins"])
    for label, r in rows:
        t.add(label, f"{r['wp4']:.3e} ({r['wp4_ratio']:.2f}x)", f"{r['int8']:.3e} ({r['int8_ratio']:.2f}x)",
              "yes" if r["wp4"] < r["int8"] else "NO",
              f"{r['wp8']:.3e} ({r['wp8_ratio']:.2f}x)", f"{r['int4g64']:.3e} ({r['int4g64_ratio']:.2f}x)",
              "yes" if r["wp8"] < r["int4g64"] else "NO")
    t.print()
    return rows


if __name__ == "__main__":
    PER_LAYER = "--per-layer" in sys.argv
    args = [a for a in sys.argv[1:] if a not in ("--quick", "--per-layer")]
    run(quick="--quick" in sys.argv, names=args or None)
