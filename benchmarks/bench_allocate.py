"""``compress --allocate`` on a MiniLM-sized synthetic transformer (6 blocks of 384x384
q/k/v/o, 1536x384 and 384x1536 weights, float32) with and without calibration, and the plain
per-layer ratio for reference: wall time end to end through the command line's code path
(issue 13: allocate with calibration <= 30 s on 2 cores, without --allocate <= 5 s)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from _harness import Table
from weightpress.io.safetensors import write_safetensors
from weightpress.model.compress import compress_model, open_source

NAMES = ("attention.self.query", "attention.self.key", "attention.self.value",
         "attention.output.dense", "intermediate.dense", "output.dense")


def _inputs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Correlated features with a decaying spectrum and a few outlier channels."""
    C = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.8)[:, None]
    X = rng.standard_normal((n, d)) @ C
    X[:, rng.choice(d, max(1, d // 64), replace=False)] *= 20
    return X.astype(np.float32)


def write_model(dirname: str, *, blocks: int = 6, d: int = 384, ff: int = 1536,
                samples: int = 512, seed: int = 0) -> tuple[str, str]:
    """A BERT-like weight file and its per-layer calibration inputs; returns both paths."""
    rng = np.random.default_rng(seed)
    W, X = {}, {}
    for b in range(blocks):
        for n in NAMES:
            shape = {"intermediate.dense": (ff, d), "output.dense": (d, ff)}.get(n, (d, d))
            # trained-like weights: a decaying spectrum plus noise
            k = min(shape)
            U = rng.standard_normal((shape[0], k)) / np.sqrt(shape[0])
            V = rng.standard_normal((k, shape[1])) / np.sqrt(shape[1])
            s = np.arange(1, k + 1) ** -0.5
            w = (U * s) @ V + 0.02 * rng.standard_normal(shape) / np.sqrt(shape[1])
            name = f"encoder.layer.{b}.{n}.weight"
            W[name] = w.astype(np.float32)
            W[f"encoder.layer.{b}.{n}.bias"] = np.zeros(shape[0], np.float32)
            X[name] = _inputs(rng, samples, shape[1])
    mp, cp = os.path.join(dirname, "model.safetensors"), os.path.join(dirname, "calib.safetensors")
    write_safetensors(mp, W)
    write_safetensors(cp, X)
    return mp, cp


def _time(model: str, out: str, **kw: object) -> float:
    t0 = time.perf_counter()
    with open_source(model) as src:
        compress_model(src, out, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def run(quick: bool) -> None:
    t = Table("compress a MiniLM-sized model (6 x [4 x 384x384, 1536x384, 384x1536]), wall s",
              ["run", "seconds"])
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            mp, cp = write_model(tmp, blocks=1, d=64, ff=128, samples=64)
        else:
            mp, cp = write_model(tmp)
        out = os.path.join(tmp, "out.wpz")
        for label, kw in [("--ratio 4", {"ratio": 4}),
                          ("--ratio 4 --calibration", {"ratio": 4, "calibration": cp}),
                          ("--ratio 4 --allocate", {"ratio": 4, "scope": "allocate"}),
                          ("--ratio 4 --allocate --calibration",
                           {"ratio": 4, "scope": "allocate", "calibration": cp}),
                          ("--ratio 1.3 --allocate --calibration",
                           {"ratio": 1.3, "scope": "allocate", "calibration": cp})]:
            t.add(label, _time(mp, out, **kw))
    t.print()
