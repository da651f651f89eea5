"""``compress --ratio 4`` of a sharded safetensors model, end to end, in one process and on a
2-worker Dask LocalCluster: wall time, peak RSS of every process, and whether the two outputs
are the same bytes (issue 13).

The model is synthetic and written by the benchmark, one tensor in memory at a time, as an
index file plus shards of at most 1 GiB: transformer blocks of d x d q/k/v/o and d x 4d, 4d x d
feed-forward weights (float32, a decaying spectrum plus noise, so both pruning and low rank
have something to find), with biases and norms. Full mode: d = 2048, 20 blocks = 1.0 B
parameters, about 4 GB (``WP_SCALE_PARAMS`` sets another size: from ``1e8`` up the layers are
the same d = 2048 ones, fewer blocks, so the per-process memory figures are comparable; below it
d = 1024); quick mode: d = 64, 2 blocks. ``WP_SCALE_RUNS`` picks the runs by worker count
(default ``1,2``: one process, then a 2-worker LocalCluster). ``WP_SCALE_METHOD`` picks the
method (default ``auto``).

Each run is a fresh Python process, so its peak RSS is its own; the client and every worker
report theirs, and how far each grew over its baseline, in multiples of the largest tensor
(the issue's bound: 3x). The baseline, the same in every process: the resident set after the
imports, OpenBLAS's per-thread buffers (a few level-3 products) and the same compress of the
same layout at 1/8 the width (1/64 the bytes of every tensor: code pages mapped in, the
allocator's and Dask's state), with the peak reset there through /proc/self/clear_refs (as
benchmarks/bench_memory.py does). Those fixed costs are printed in their own column; nothing
that grows with the tensors (their pages, the builds, results in flight) is in them.
``WP_SCALE_PROBE=DIR`` records where each process's peak is reached (benchmarks/_rssprobe.py;
slow: for diagnosis, not timing; ``WP_SCALE_PROBE_TRACE=1`` adds tracemalloc's live sites,
``WP_SCALE_PROBE_WORKERS=0`` probes the client only).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _harness import Table, child_env
from weightpress.io._base import TensorInfo, TensorSource
from weightpress.io.shards import write_sharded

NAMES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")


class Synthetic(TensorSource):
    """The model, made tensor by tensor on demand (seeded by name: the same every time)."""

    format = "synthetic"

    def __init__(self, blocks: int, d: int):
        super().__init__("")
        self.d, self._info = d, {}
        for b in range(blocks):
            for n in NAMES:
                shape = {"mlp.up": (4 * d, d), "mlp.down": (d, 4 * d)}.get(n, (d, d))
                self._info[f"h.{b}.{n}.weight"] = TensorInfo(shape, np.dtype(np.float32))
                self._info[f"h.{b}.{n}.bias"] = TensorInfo((shape[0],), np.dtype(np.float32))
            self._info[f"h.{b}.norm.weight"] = TensorInfo((d,), np.dtype(np.float32))

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        shape = self._info[name].shape
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
        if len(shape) == 1:
            return (rng.standard_normal(shape) * 0.02).astype(np.float32)
        k = min(shape) // 8  # a decaying rank-k part plus full-rank noise
        U = rng.standard_normal((shape[0], k), dtype=np.float32)
        V = rng.standard_normal((k, shape[1]), dtype=np.float32)
        W = (U * (np.arange(1, k + 1, dtype=np.float32) ** -0.5)) @ V / np.float32(np.sqrt(shape[1]))
        W += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.3 / np.sqrt(shape[1]))
        return W


RUN = r"""
import json, os, sys, time
import numpy as np
from _harness import peak_rss
from weightpress.model.compress import compress_model, open_source
from weightpress.model.distributed import close, local_client
def peak():  # this process's own high-water mark (VmHWM; workers import _harness too)
    return peak_rss()
def rss():  # this process's resident set now
    import _harness
    return _harness.resident()
def warm_blas():  # OpenBLAS's per-thread buffers, paid before the baseline (as bench_memory)
    import _harness
    return _harness.warm_blas()
def reset():  # the high-water mark back to the resident set now; False where it cannot
    import _harness
    return _harness.reset_peak()
def cpu():  # this process's CPU seconds (user + system)
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
if __name__ == "__main__":
    index, out, workers, method, warm_index = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                               sys.argv[4], sys.argv[5])
    client = local_client(workers) if workers > 1 else None
    import weightpress.model.compress  # noqa: F401  (imports paid before the baselines)
    if client is not None:
        client.run(lambda: __import__("weightpress.model.compress"))
    # The baseline of every process (the client and each worker) leaves out its fixed costs,
    # reported on their own: the imports, OpenBLAS's per-thread buffers, and what the same
    # compress of a model of the same layout at 1/8 the width (1/64 the bytes of every
    # tensor) leaves resident: code pages mapped in, the allocator's heap in the state a
    # run's later layers see, Dask's connections and their buffers. Then the peak is reset to
    # the resident set; growth is the peak over the run minus that, so whatever the run holds
    # in proportion to the tensors (inputs' pages, builds, results in flight) is counted.
    def rss_all():
        return rss(), (client.run(rss) if client is not None else {})
    c0, w0 = rss_all()
    blas = warm_blas()
    wblas = client.run(warm_blas) if client is not None else {}
    c1, w1 = rss_all()
    with open_source(warm_index) as src:
        compress_model(src, out + ".warm", ratio=4, method=method, client=client)
    os.unlink(out + ".warm")
    c2, w2 = rss_all()
    ok = reset() and all((client.run(reset) if client is not None else {}).values())
    if not ok:
        print("bench_scale: could not reset the peak (/proc/self/clear_refs): the baselines "
              "are the high-water marks after the warm-ups", file=sys.stderr)
    probe = os.environ.get("WP_SCALE_PROBE")
    if probe:  # where each process's peak is reached (benchmarks/_rssprobe.py; slow)
        import _rssprobe
        from distributed import wait
        trace = bool(os.environ.get("WP_SCALE_PROBE_TRACE"))  # tracemalloc's sites too
        _rssprobe.install(trace=trace)
        if client is not None and os.environ.get("WP_SCALE_PROBE_WORKERS", "1") != "0":
            client.run(_rssprobe.install, trace=trace)  # the event loop's thread, later ones
            wait([client.submit(_rssprobe.install, trace=trace, pure=False, workers=[a])  # the task thread
                  for a in client.scheduler_info()["workers"]])
    base = peak()
    workers_base = client.run(peak) if client is not None else {}
    workers_cpu0 = client.run(cpu) if client is not None else {}
    cpu0 = cpu()
    t0 = time.perf_counter()
    try:
        with open_source(index) as src:
            rep = compress_model(src, out, ratio=4, method=method, client=client)
        wall = time.perf_counter() - t0
        client_cpu = cpu() - cpu0
        wpeak = client.run(peak) if client is not None else {}
        wcpu = client.run(cpu) if client is not None else {}
        workers_cpu = sum(v - workers_cpu0.get(k, 0.0) for k, v in wcpu.items())
        if probe:
            _rssprobe.write(probe)
            if client is not None and os.environ.get("WP_SCALE_PROBE_WORKERS", "1") != "0":
                client.run(_rssprobe.write, probe)
    finally:
        if client is not None:
            close(client)
    # a worker the cluster replaced mid-run (lost, restarted) is a new process with a new
    # address: its peak says nothing of the layers it did not build; say so, not a low figure
    replaced = sorted(set(wpeak) ^ set(workers_base))
    keep = [k for k in sorted(wpeak) if k in workers_base]
    print(json.dumps({"wall": wall, "client_rss": peak(), "client_base": base,
                      "workers_rss": [wpeak[k] for k in keep],
                      "workers_base": [workers_base[k] for k in keep],
                      "client_fixed": [c0, blas, c2 - c1],
                      "workers_fixed": [[w0[k], wblas[k], w2[k] - w1[k]] for k in keep],
                      "reset": ok,
                      "replaced": replaced, "client_cpu": client_cpu, "workers_cpu": workers_cpu,
                      "ratio": rep.ratio, "bytes": rep.file_bytes}))
"""


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def run(quick: bool) -> None:
    method = os.environ.get("WP_SCALE_METHOD", "auto")
    if quick:
        blocks, d = 2, 64
    else:
        params = float(os.environ.get("WP_SCALE_PARAMS", "1e9"))
        d = 2048 if params >= 1e8 else 1024  # 1e8 and up: the 1 B model's layers, fewer blocks
        blocks = max(1, round(params / (12 * d * d)))
    src = Synthetic(blocks, d)
    n_params = sum(int(np.prod(i.shape)) for i in src.info().values())
    largest = max(int(np.prod(i.shape)) * 4 for i in src.info().values())
    t = Table(f"compress --ratio 4 --method {method}: sharded safetensors, {n_params / 1e6:.3g} M "
              f"params ({n_params * 4 / 1e9:.3g} GB float32, {blocks} blocks of d={d}; largest "
              f"tensor {largest / 2**20:.0f} MiB)",
              ["run", "wall s", "CPU s client; workers", "peak RSS client MiB", "peak RSS workers MiB",
               "fixed MiB: imports/BLAS/warm-up (client; workers)",
               "growth over baseline, x largest (client; workers)", "ratio", "sha256"])
    with tempfile.TemporaryDirectory(dir=os.environ.get("WP_SCALE_DIR")) as tmp:
        index = os.path.join(tmp, "model.safetensors.index.json")
        t0 = time.perf_counter()
        write_sharded(index, src, max_shard_bytes=1 << 30)
        write_s = time.perf_counter() - t0
        # the warm-up model: the same layout at 1/8 the width (see RUN; quick mode: the same
        # width, whose tensors are too small for ratio 4 at 1/8 of it)
        warm_index = os.path.join(tmp, "warm", "model.safetensors.index.json")
        os.mkdir(os.path.dirname(warm_index))
        write_sharded(warm_index, Synthetic(2, d // 8 if d >= 1024 else d), max_shard_bytes=1 << 30)
        runs = [int(w) for w in os.environ.get("WP_SCALE_RUNS", "1,2").split(",")]
        for workers in runs:
            out = os.path.join(tmp, f"out{workers}.wpz")
            r = subprocess.run([sys.executable, "-c", RUN, index, out, str(workers), method,
                                warm_index],
                               capture_output=True, text=True, check=False, env=child_env())
            if r.returncode != 0:
                raise RuntimeError(f"compress with {workers} worker(s) failed:\n{r.stderr[-2000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            label = "1 process" if workers == 1 else f"LocalCluster, {workers} workers"
            grow = [(res["client_rss"] - res["client_base"]) / largest] + [
                (p - b) / largest for p, b in zip(res["workers_rss"], res["workers_base"])]
            def fixed(f: list[int]) -> str:
                return "/".join(f"{x / 2**20:.0f}" for x in f)
            fixed_col = fixed(res["client_fixed"]) + (
                "; " + " ".join(fixed(f) for f in res["workers_fixed"]) if res["workers_fixed"] else "")
            if not res["reset"]:
                label += " (peak not reset: baseline = high-water mark after the warm-ups)"
            if res.get("replaced"):
                label += f" ({len(res['replaced'])} worker address(es) changed: replaced mid-run)"
            t.add(label, res["wall"], f"{res['client_cpu']:.0f}; {res['workers_cpu']:.0f}",
                  res["client_rss"] / 2**20,
                  " ".join(f"{x / 2**20:.0f}" for x in res["workers_rss"]) or "-", fixed_col,
                  f"{grow[0]:.2f}" + ("; " + " ".join(f"{g:.2f}" for g in grow[1:]) if grow[1:] else ""),
                  res["ratio"], _sha(out))
            os.unlink(out)
    t.print()
    print(f"(writing the shards took {write_s:.1f} s)")
    print("growth: the process's peak resident set over the run (VmHWM) minus its resident set "
          "at the start of the run, after the fixed costs (imports: resident set after the "
          "imports; BLAS: OpenBLAS's per-thread buffers; warm-up: what the same compress of "
          "the same layout at 1/8 the width left resident: code pages, allocator and Dask "
          "state), the peak reset there (/proc/self/clear_refs)")
