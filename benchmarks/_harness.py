"""Tiny benchmark harness: side-by-side timings, ratios, and memory-bandwidth fractions.

Every bench_*.py module defines ``run(quick: bool) -> None`` and uses :func:`timeit` and
:class:`Table`. ``python benchmarks/run.py`` runs them all; ``--quick`` shrinks every problem
so the whole suite runs in seconds (CI uses it as a smoke test, so benchmarks cannot rot).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

QUICK = os.environ.get("WP_BENCH_QUICK", "") not in ("", "0")


def settle(seconds: float = 0.25) -> None:
    """Let other libraries' spinning BLAS threads go idle before the next timing.

    SciPy's and NumPy's OpenBLAS pools keep spinning for 0.1-0.2 s after a call and take the
    second core from whatever runs next; sleeping first makes every contestant start equal.
    """
    if not QUICK:
        time.sleep(seconds)


def timeit(fn: Callable[[], Any], *, repeat: int = 7, min_time: float = 0.2,
           warmup: int = 1) -> tuple[float, Any]:
    """Median seconds per call of fn() and its last result.

    Runs `warmup` untimed calls, then `repeat` timed samples; each sample loops fn until it
    lasts at least `min_time`/`repeat` seconds (so microsecond kernels are measured too).
    """
    result = None
    if QUICK:
        t0 = time.perf_counter()
        result = fn()
        return time.perf_counter() - t0, result
    for _ in range(warmup):
        result = fn()
    settle()
    samples = []
    per = min_time / repeat
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            n = 0
            t0 = time.perf_counter()
            while True:
                result = fn()
                n += 1
                el = time.perf_counter() - t0
                if el >= per:
                    break
            samples.append(el / n)
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(samples), result


def peak_rss() -> int:
    """This process's own peak resident set in bytes: ``VmHWM`` from /proc/self/status, or
    ``ru_maxrss`` where there is no /proc (that one is inherited across fork/exec, so a child
    started by a big parent reports the parent's peak). Child scripts import it with the
    benchmarks folder on PYTHONPATH (:func:`child_env`)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Set this process's high-water mark (``VmHWM``) back to its resident set now
    (``/proc/self/clear_refs``), so that a warm-up's own arrays cannot hide later growth under
    an earlier peak; False where it cannot (no /proc, or not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resident() -> int:
    """This process's resident set now, in bytes (``VmRSS``, /proc/self/status)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def warm_blas() -> int:
    """Make OpenBLAS (NumPy's, and SciPy's, which the engine calls) allocate each thread's
    work buffer, which it does on its first level-3 call: a fixed cost of the process, the
    same for any tensor size, paid before a memory baseline. Returns the resident growth."""
    from scipy.linalg import blas as _b

    r0 = resident()
    for t in (np.float32, np.float64):
        x = np.ones((1024, 1024), t)
        x @ x
        (_b.sgemm if t == np.float32 else _b.dgemm)(1.0, x, x)
        (_b.ssyrk if t == np.float32 else _b.dsyrk)(1.0, x)
    del x
    return resident() - r0


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's child process: this one's, with the benchmarks folder
    on PYTHONPATH (so the child, and Dask workers it starts, can import this module)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def interleaved_best(fns: list[Callable[[], Any]], *, budget: float = 2.0, max_rounds: int = 25,
                     pause: float = 0.0) -> list[float]:
    """Least seconds per call of each fn, called in turn round after round (so that a busy
    spell of a shared machine hits every contestant alike), until `budget` seconds or
    `max_rounds` rounds; at least 3 rounds. `pause` sleeps before each call (let other
    libraries' spinning threads go idle: see :func:`settle`).
    """
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    if QUICK:
        return [_once(f) for f in fns]
    t_start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (rounds < max_rounds and time.perf_counter() - t_start < budget):
        for i, f in enumerate(fns):
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
        rounds += 1
    return best


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_BW: dict[str, float] = {}


def _parallel_copy(dst: np.ndarray, src: np.ndarray, n_threads: int) -> None:
    """np.copyto split over n_threads Python threads (NumPy releases the GIL while copying)."""
    import threading

    d, s = dst.reshape(-1), src.reshape(-1)
    bounds = [s.size * i // n_threads for i in range(n_threads + 1)]
    ts = [threading.Thread(target=np.copyto, args=(d[a:b], s[a:b]))
          for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def memory_bandwidth(kind: str = "reused", n_threads: int = 2) -> float:
    """Measured memory bandwidth in bytes/s, STREAM-copy style with `n_threads` threads: the
    best of several copies of a 256 MiB array, counting one read and one write stream.

    kind="reused" copies into an existing array; kind="fresh" into a newly allocated one each
    time (page faults included: what a kernel without ``out=`` pays).
    """
    key = f"{kind}/{n_threads}"
    if key not in _BW:
        n = (4 << 20) if QUICK else (32 << 20)
        a = np.ones(n)
        b = np.empty_like(a)
        b.fill(0)
        best = float("inf")
        for _ in range(2 if QUICK else 6):
            if kind == "fresh":
                b = np.empty_like(a)
            t0 = time.perf_counter()
            _parallel_copy(b, a, n_threads)
            best = min(best, time.perf_counter() - t0)
            del b
            b = np.empty_like(a) if kind == "fresh" else np.zeros_like(a)
        _BW[key] = 2 * a.nbytes / best
    return _BW[key]


def read_bandwidth(n_threads: int = 2) -> float:
    """Measured read bandwidth in bytes/s with `n_threads` threads: the best of several
    read-only reductions (XOR of 64-bit words, weightpress's ``_core.read_probe``) over an array
    twice the last-level cache (at least 256 MiB), so it comes from memory, not cache.

    The right yardstick for kernels that mostly read (SpMV, GEMV, prune's count pass): a copy
    also writes, and NumPy's own reductions (sum, max) are compute-bound below it.
    """
    key = f"read/{n_threads}"
    if key not in _BW:
        from weightpress import _core

        nbytes = (32 << 20) if QUICK else max(256 << 20, 2 * last_level_cache())
        a = np.ones(nbytes // 8, np.uint64)
        _core.read_probe(a, n_threads)
        best = float("inf")
        for _ in range(2 if QUICK else 8):
            t0 = time.perf_counter()
            _core.read_probe(a, n_threads)
            best = min(best, time.perf_counter() - t0)
        _BW[key] = a.nbytes / best
    return _BW[key]


def last_level_cache() -> int:
    """Bytes of the largest CPU cache (0 where unknown): the engine's own lookup (sysfs, then
    sysconf), the one its SpMV uses to tell matrices in cache from larger ones."""
    from weightpress import _core

    return int(_core.cache_bytes(0))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


class Table:
    """Rows of results printed as an aligned text table."""

    def __init__(self, title: str, columns: list[str]):
        self.title, self.columns, self.rows = title, columns, []

    def add(self, *values: Any) -> None:
        self.rows.append([_fmt(v) for v in values])

    def print(self) -> None:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        print(f"\n## {self.title}" + ("  [quick mode: timings meaningless]" if QUICK else ""))
        print("  ".join(c.ljust(w) for c, w in zip(self.columns, widths)))
        print("  ".join("-" * w for w in widths))
        for r in self.rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def ms(seconds: float) -> float:
    return seconds * 1e3
