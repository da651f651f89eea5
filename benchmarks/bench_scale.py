"""``compress --ratio 4`` of a sharded safetensors model, end to end, in one process and on a
2-worker Dask LocalCluster: wall time, peak RSS of every process, and whether the two outputs
are the same bytes (issue 13).

The model is synthetic and written by the benchmark, one tensor in memory at a time, as an
index file plus shards of at most 1 GiB: transformer blocks of d x d q/k/v/o and d x 4d, 4d x d
feed-forward weights (float32, a decaying spectrum plus noise, so both pruning and low rank
have something to find), with biases and norms. Full mode: d = 2048, 20 blocks = 1.0 B
parameters, about 4 GB (``WP_SCALE_PARAMS`` sets another size, e.g. ``2.5e8``); quick mode:
d = 64, 2 blocks. Each run is a fresh Python process, so its peak RSS is its own; the workers
report theirs, and how far each grew over its peak after the imports, in multiples of the
largest tensor (the issue's bound: 3x). ``WP_SCALE_METHOD`` picks the method (default ``auto``).
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
from _harness import peak_rss
from weightpress.model.compress import compress_model, open_source
from weightpress.model.distributed import close, local_client
if __name__ == "__main__":
    index, out, workers, method = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    def peak():  # this process's own high-water mark (workers import _harness too)
        return peak_rss()
    client = local_client(workers) if workers > 1 else None
    import weightpress.model.compress  # noqa: F401  (imports paid before the baselines)
    if client is not None:
        client.run(lambda: __import__("weightpress.model.compress"))
    def cpu():  # this process's CPU seconds (user + system)
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
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
    finally:
        if client is not None:
            close(client)
    # a worker the cluster replaced mid-run (lost, restarted) is a new process with a new
    # address: its peak says nothing of the layers it did not build; say so, not a low figure
    replaced = sorted(set(wpeak) ^ set(workers_base))
    print(json.dumps({"wall": wall, "client_rss": peak(), "client_base": base,
                      "workers_rss": [wpeak[k] for k in sorted(wpeak) if k in workers_base],
                      "workers_base": [workers_base[k] for k in sorted(wpeak) if k in workers_base],
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
        d = 2048 if params >= 5e8 else 1024
        blocks = max(1, round(params / (12 * d * d)))
    src = Synthetic(blocks, d)
    n_params = sum(int(np.prod(i.shape)) for i in src.info().values())
    largest = max(int(np.prod(i.shape)) * 4 for i in src.info().values())
    t = Table(f"compress --ratio 4 --method {method}: sharded safetensors, {n_params / 1e6:.3g} M "
              f"params ({n_params * 4 / 1e9:.3g} GB float32, {blocks} blocks of d={d}; largest "
              f"tensor {largest / 2**20:.0f} MiB)",
              ["run", "wall s", "CPU s client; workers", "peak RSS client MiB", "peak RSS workers MiB",
               "growth over imports, x largest (client; workers)", "ratio", "sha256"])
    with tempfile.TemporaryDirectory(dir=os.environ.get("WP_SCALE_DIR")) as tmp:
        index = os.path.join(tmp, "model.safetensors.index.json")
        t0 = time.perf_counter()
        write_sharded(index, src, max_shard_bytes=1 << 30)
        write_s = time.perf_counter() - t0
        for workers in (1, 2):
            out = os.path.join(tmp, f"out{workers}.wpz")
            r = subprocess.run([sys.executable, "-c", RUN, index, out, str(workers), method],
                               capture_output=True, text=True, check=False, env=child_env())
            if r.returncode != 0:
                raise RuntimeError(f"compress with {workers} worker(s) failed:\n{r.stderr[-2000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            label = "1 process" if workers == 1 else f"LocalCluster, {workers} workers"
            grow = [(res["client_rss"] - res["client_base"]) / largest] + [
                (p - b) / largest for p, b in zip(res["workers_rss"], res["workers_base"])]
            if res.get("replaced"):
                label += f" ({len(res['replaced'])} worker address(es) changed: replaced mid-run)"
            t.add(label, res["wall"], f"{res['client_cpu']:.0f}; {res['workers_cpu']:.0f}",
                  res["client_rss"] / 2**20,
                  " ".join(f"{x / 2**20:.0f}" for x in res["workers_rss"]) or "-",
                  f"{grow[0]:.2f}" + ("; " + " ".join(f"{g:.2f}" for g in grow[1:]) if grow[1:] else ""),
                  res["ratio"], _sha(out))
            os.unlink(out)
    t.print()
    print(f"(writing the shards took {write_s:.1f} s)")
