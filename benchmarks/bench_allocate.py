"""``compress --allocate`` on a MiniLM-sized synthetic transformer (6 blocks of 384x384
q/k/v/o, 1536x384 and 384x1536 weights, float32) with and without calibration, and the plain
per-layer ratio for reference: wall time end to end through the command line's code path
(issue 13: allocate with calibration <= 30 s on 2 cores, without --allocate <= 5 s), and the
process's CPU time (user + system), steadier than wall time on a shared machine.

``WP_ALLOCATE_ONLY='--ratio 4 --calibration|--ratio 1.3 --calibration'`` makes only those
runs; ``WP_ALLOCATE_BLOCKS=N`` writes N MiniLM-sized blocks instead of 6."""

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


CONFIGS = [("--ratio 4", {"ratio": 4}),
           ("--ratio 4 --calibration", {"ratio": 4, "calibration": True}),
           ("--ratio 1.3 --calibration", {"ratio": 1.3, "calibration": True}),
           ("--ratio 4 --allocate", {"ratio": 4, "scope": "allocate"}),
           ("--ratio 4 --allocate --calibration", {"ratio": 4, "scope": "allocate", "calibration": True}),
           ("--ratio 1.3 --allocate --calibration",
            {"ratio": 1.3, "scope": "allocate", "calibration": True})]


class Work:
    """Counts of the expensive steps of a calibrated run (for the quick-mode check): GPTQ
    runs, exact output-error passes (``out·in²`` products with ``H``), tries of the ratio
    search."""

    def __init__(self) -> None:
        self.gptq = self.output_error = self.tries = 0
        self._undo: list[tuple[object, str, object]] = []

    def __enter__(self) -> "Work":
        from weightpress.compression import aware
        from weightpress.model import compress as mc

        def wrap(mod: object, name: str, field: str, count: object = lambda *a: 1) -> None:
            real = getattr(mod, name)

            def counted(*a: object, **k: object) -> object:
                setattr(self, field, getattr(self, field) + count(*a))  # type: ignore[operator]
                return real(*a, **k)
            self._undo.append((mod, name, real))
            setattr(mod, name, counted)
        if hasattr(aware, "gptq_many"):  # one factorisation, several precisions: count those
            wrap(aware, "gptq_many", "gptq", lambda W, stats, settings: len(settings))
        else:
            wrap(aware, "gptq", "gptq")
        # an exact output-error pass: aware's own (denominator once per layer) or calibration's
        wrap(aware, "_output_error" if hasattr(aware, "_output_error") else "output_error",
             "output_error")
        wrap(mc, "execute", "tries")
        return self

    def __exit__(self, *exc: object) -> None:
        for mod, name, real in reversed(self._undo):
            setattr(mod, name, real)
        self._undo.clear()


def _cpu() -> float:
    """This process's user + system CPU seconds (all its threads)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run(model: str, out: str, **kw: object) -> tuple[float, object]:
    from weightpress.compression import aware
    if hasattr(aware, "_MEMO"):
        aware._MEMO.clear()  # every configuration starts cold (the memo outlives one call)
    t0 = time.perf_counter()
    with open_source(model) as src:
        rep = compress_model(src, out, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - t0, rep


def quality(model: str, calib: str, out: str) -> tuple[float, float, float]:
    """Of the container ``out`` against the model: the relative output error on the
    calibration inputs, as the parameter-weighted RMS over the compressed layers (the
    allocation's objective) and the largest one, and the weight error's weighted RMS: the
    same yardstick for every configuration, calibrated or not."""
    from weightpress.compression.calibration import CalibrationSet, output_error
    from weightpress.model.container import Container

    cal = CalibrationSet(calib)
    num_o = num_w = tot = 0.0
    worst = 0.0
    with open_source(model) as src, Container(out) as c:
        for name in cal:
            W = np.asarray(src[name], dtype=np.float64)
            Wh = np.asarray(c[name], dtype=np.float64)
            eo = output_error(W, Wh, cal[name])
            ew = float(np.linalg.norm(W - Wh) / np.linalg.norm(W))
            num_o += W.size * eo ** 2
            num_w += W.size * ew ** 2
            tot += W.size
            worst = max(worst, eo)
    cal.close()
    return float(np.sqrt(num_o / tot)), worst, float(np.sqrt(num_w / tot))


# quick-mode check (CI): the calibrated runs must not fall back to paying per budget. Bounds
# per compressed layer and try of the ratio search, about twice what they take now, so a
# regression to an exact output-error pass per curve point or per quantization precision
# (what made --allocate --calibration 330-870 s, issue 13) fails loudly. The first try also
# measures and stages each quantized layer's step up (its budget's 3 candidate precisions
# and 3 more, 2 exact passes); the try that takes steps up builds nothing, later ones as
# before (at most 3 precisions and 1 exact pass a layer)
MAX_OUTPUT_ERRORS_PER_LAYER_TRY = 2
MAX_OUTPUT_ERRORS_FIRST_TRY = 4
MAX_GPTQ_PER_LAYER_TRY = 4   # the first try's, and the curves' (allocate) once per layer:
MAX_GPTQ_FIRST_TRY = 12
MAX_GPTQ_PER_CURVE = 40


def run(quick: bool) -> None:
    nb = 1 if quick else int(os.environ.get("WP_ALLOCATE_BLOCKS", "6"))
    t = Table(f"compress a MiniLM-sized model ({nb} x [4 x 384x384, 1536x384, 384x1536]), wall s; "
              "quality of every result on the calibration inputs (output error: "
              "parameter-weighted RMS and max over the layers)",
              ["run", "seconds", "CPU s", "ratio", "output err RMS", "output err max",
               "weight err RMS", "tries", "GPTQ runs", "exact output-error passes"])
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        # WP_ALLOCATE_BLOCKS: fewer MiniLM-sized blocks for a side-by-side on a busy machine
        blocks = 1 if quick else int(os.environ.get("WP_ALLOCATE_BLOCKS", "6"))
        if quick:
            mp, cp = write_model(tmp, blocks=1, d=64, ff=128, samples=64)
        else:
            mp, cp = write_model(tmp, blocks=blocks)
        out = os.path.join(tmp, "out.wpz")
        n_layers = len(NAMES) * blocks
        # WP_ALLOCATE_ONLY: the runs to make, their labels separated by '|' (default all)
        only = [x.strip() for x in os.environ.get("WP_ALLOCATE_ONLY", "").split("|") if x.strip()]
        for label, kw in CONFIGS:
            if only and label not in only:
                continue
            kw = {**kw, "calibration": cp} if kw.get("calibration") else kw
            with Work() as w:
                c0 = _cpu()
                sec, rep = _run(mp, out, **kw)
                cpu = _cpu() - c0
            rms, worst, wrms = quality(mp, cp, out)
            t.add(label, sec, cpu, rep.ratio, rms, worst, wrms, w.tries, w.gptq, w.output_error)
            if "calibration" in kw:
                later = max(0, w.tries - 1)
                if w.output_error > (MAX_OUTPUT_ERRORS_FIRST_TRY
                                     + MAX_OUTPUT_ERRORS_PER_LAYER_TRY * later) * n_layers:
                    failures.append(f"{label}: {w.output_error} exact output-error passes for "
                                    f"{n_layers} layers x {w.tries} tries")
                curves = MAX_GPTQ_PER_CURVE if kw.get("scope") == "allocate" else 0
                if w.gptq > (curves + MAX_GPTQ_FIRST_TRY + MAX_GPTQ_PER_LAYER_TRY * later) * n_layers:
                    failures.append(f"{label}: {w.gptq} GPTQ runs for {n_layers} layers")
    t.print()
    if failures:
        raise SystemExit("bench_allocate: the calibrated path regressed:\n  " + "\n  ".join(failures))
