"""``weightpress demo``: compress the bundled digits MLP several ways, report accuracy and size.

The model (``data/digits_mlp.safetensors``, trained by ``scripts/train_digits.py``) is a
64-256-128-10 ReLU network in PyTorch layout; inference runs in NumPy through each compressed
layer's :meth:`~weightpress.compressed.CompressedMatrix.apply`, straight from the container.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..io.safetensors import SafetensorsSource
from ..model.compress import compress_model, parse_rule
from ..model.container import Container
from ..model.report import human

__all__ = ["model_path", "test_data", "accuracy", "run", "SETTINGS", "HEADLINE", "HEADLINE_10X", "HEADLINE_20X"]

LAYERS = ("fc1", "fc2", "fc3")

# (label, compress_model keyword arguments)
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("prune 2x", {"method": "prune", "ratio": 2}),
    ("prune 4x", {"method": "prune", "ratio": 4}),
    ("prune 4x global", {"method": "prune", "ratio": 4, "scope": "global"}),
    ("nm 2:4", {"method": "nm", "options": {"pattern": "2:4"}}),
    ("lowrank 2x", {"method": "lowrank", "ratio": 2}),
    ("lowrank 4x", {"method": "lowrank", "ratio": 4}),
    ("lowrank 8x", {"method": "lowrank", "ratio": 8}),
    ("auto 4x", {"method": "auto", "ratio": 4}),
    ("auto 8x", {"method": "auto", "ratio": 8}),
    ("auto error 0.2", {"method": "auto", "error": 0.2}),
    ("prune 8x f16", {"method": "prune", "ratio": 8, "value_dtype": "float16"}),
    ("lowrank 8x f16", {"method": "lowrank", "ratio": 8, "value_dtype": "float16"}),
    # data-aware (calibration: the layers' inputs on 512 training images, never test ones)
    ("prune 4x +cal", {"method": "prune", "ratio": 4, "calibration": "bundled"}),
    ("lowrank 4x +cal", {"method": "lowrank", "ratio": 4, "calibration": "bundled"}),
    ("auto 10x +cal alloc f16", {"method": "auto", "ratio": 10, "scope": "allocate",
                                 "calibration": "bundled", "value_dtype": "float16",
                                 "rules": "*.weight=auto"}),
    # integer quantization: round to nearest, and GPTQ at the precision each budget allows
    ("quant int8", {"method": "quant", "options": {"bits": 8}}),
    ("quant int4g64", {"method": "quant", "options": {"bits": 4, "group": 64}}),
    ("quant 10.5x +cal", {"method": "quant", "ratio": 10.5, "calibration": "bundled",
                          "rules": "*.weight=quant"}),
    ("quant 12x +cal zstd", {"method": "quant", "ratio": 12, "calibration": "bundled",
                             "rules": "*.weight=quant", "coding": "zstd"}),
    # default rules from here on: the ratio search quantizes the 1,280-weight output layer too
    # (kept, it would take a quarter of the file) and gives it more bits per weight than the
    # big layers (model.allocate.size_aware_budgets)
    ("auto 10x +cal", {"method": "auto", "ratio": 10.3, "calibration": "bundled"}),
    # 20x: GPTQ ternary codes with joint sparsity, entropy-coded, in a compact container
    ("quant 20x +cal zstd f16", {"method": "quant", "ratio": 20.3, "calibration": "bundled",
                                 "coding": "zstd", "value_dtype": "float16"}),
)
# the headline figures (tests/test_quant.py asserts them)
HEADLINE = SETTINGS[-4]
HEADLINE_10X = SETTINGS[-2]
HEADLINE_20X = SETTINGS[-1]


def model_path() -> str:
    """Path of the bundled model file."""
    return str(resources.files("weightpress.cli") / "data" / "digits_mlp.safetensors")


def test_data() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test split: ``x`` float32 in [0, 1] (pixels / 16), ``y`` int labels."""
    with np.load(str(resources.files("weightpress.cli") / "data" / "digits_test.npz")) as z:
        return z["x"].astype(np.float32) / 16.0, z["y"].astype(np.int64)


def calibration() -> dict[str, np.ndarray]:
    """Each weight's layer inputs on the bundled calibration images (512 training digits),
    computed with the original model: what a user would capture with a forward hook."""
    src = SafetensorsSource(model_path())
    W = {n: np.asarray(src[n]) for n in src}
    with np.load(str(resources.files("weightpress.cli") / "data" / "digits_calib.npz")) as z:
        h = z["x"].astype(np.float32) / 16.0
    cal = {}
    for i, n in enumerate(LAYERS):
        cal[f"{n}.weight"] = h
        h = h @ W[f"{n}.weight"].T + W[f"{n}.bias"]
        if i < len(LAYERS) - 1:
            h = np.maximum(h, 0)
    return cal


def accuracy(layer: Callable[[str, np.ndarray], np.ndarray], bias: Callable[[str], np.ndarray],
             x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the MLP whose layer ``name`` maps ``h`` to ``layer(name, h) + bias(name)``."""
    h = x
    for i, n in enumerate(LAYERS):
        h = layer(f"{n}.weight", h) + bias(f"{n}.bias")
        if i < len(LAYERS) - 1:
            h = np.maximum(h, 0)
    return float(np.mean(np.argmax(h, axis=1) == y))


def _one_blas_thread() -> Any:
    """Single-threaded BLAS for the demo's tiny matrices: waking BLAS thread pools costs far
    more than these products (10x on a busy 2-core box)."""
    return threadpool_limits(limits=1, user_api="blas")


def run(settings: Any = None, out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Compress the bundled model with each setting (default :data:`SETTINGS`); print and
    return accuracy and sizes."""
    with _one_blas_thread():
        return _run(SETTINGS if settings is None else settings, out)


def _run(settings: Any, out: Callable[[str], None]) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    x, y = test_data()
    src = SafetensorsSource(model_path())
    W = {n: np.asarray(src[n]) for n in src}
    base_bytes = os.path.getsize(src.path)
    base = accuracy(lambda n, h: h @ W[n].T, W.__getitem__, x, y)
    out(f"digits MLP 64-256-128-10 ({sum(v.size for v in W.values()):,} params, "
        f"{human(base_bytes)}), {len(y)} held-out test digits")
    out(f"{'setting':<24} {'file':>10} {'ratio':>7} {'accuracy':>9} {'forms'}")
    out(f"{'dense (original)':<24} {human(base_bytes):>10} {1.0:>6.2f}x {base:>9.2%}")
    results = [{"setting": "dense", "bytes": base_bytes, "ratio": 1.0, "accuracy": base}]
    with tempfile.TemporaryDirectory(prefix="wp-demo-") as d:
        for k, (label, kw) in enumerate(settings):
            path = os.path.join(d, f"{k}.wpz")
            kw = dict(kw)
            if kw.get("coding") and importlib.util.find_spec("zstandard") is None:
                out(f"{label:<24} (skipped: needs zstandard: pip install 'weightpress[zstd]')")
                continue
            if kw.get("calibration") == "bundled":
                kw["calibration"] = calibration()
            if isinstance(kw.get("rules"), str):
                kw["rules"] = [parse_rule(t) for t in kw["rules"].split(";")]
            rep = compress_model(src, path, **kw)
            c = Container(path)
            mats = {n: c.matrix(n) for n in c if n.endswith(".weight")}
            acc = accuracy(lambda n, h: mats[n].apply(h), c.__getitem__, x, y)
            forms = ",".join(sorted({r.form for r in rep.rows if r.name.endswith("weight")}))
            out(f"{label:<24} {human(rep.file_bytes):>10} {rep.ratio:>6.2f}x {acc:>9.2%} {forms}")
            results.append({"setting": label, "bytes": rep.file_bytes, "ratio": rep.ratio,
                            "accuracy": acc})
            c.close()
    out(f"({time.perf_counter() - t0:.1f} s; ratio = original file / container file; biases, "
        "and fc3 (1,280 weights) up to 2x, kept dense by the default rules; +cal = data-aware "
        "methods with calibration inputs, alloc = bytes split across layers by measured curves)")
    return results
