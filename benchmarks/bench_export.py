"""Runtime export: a transformer-shaped MLP dense vs exported, in onnxruntime and PyTorch.

The model: ``L`` residual blocks ``x + W2 gelu(W1 x + b1) + b2`` (d -> 4d -> d, the shape of a
transformer's MLP), run on ``(batch, seq, d)`` inputs (seq: ``WP_EXPORT_SEQ``, default 1: one token per sequence) at batch 1 and 32, one thread each
(``WP_EXPORT_THREADS``). Variants: dense; int8 (8-bit symmetric per-channel codes, 4x);
int4g128 (4-bit, groups of 128, about 7x); low rank at 4x. Each variant is measured in its own
process (so peak resident memory is the model's): latency (median), peak and final resident
memory above the process's baseline after imports, and file size. ONNX: ``weightpress export``
(MatMulNBits, fast int8 activations), both ONNX models with their weights in a ``.data`` file
beside the graph (``--external-data``: onnxruntime maps it); PyTorch: ``weightpress.torch.load_into`` (int8/int4
weight-only kernels, bfloat16 activations). Peak memory is the kernel's high-water mark
(VmHWM, reset after the imports) above the RSS after the imports; final is RSS after the runs.
PyTorch builds the dense module first (then load_into swaps layers), so its resident figures
keep the allocator's cache of the dense weights; "torch tensors MB" is what the module holds.

Containers come from ``compress_model`` (``method="quant"``: round to nearest; ``"lowrank"``
at ``ratio=4``).
Sizes: WP_EXPORT_D (768; quick: 128), WP_EXPORT_LAYERS (4; quick: 1).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
QUICK = os.environ.get("WP_BENCH_QUICK", "") not in ("", "0")
SEQ = int(os.environ.get("WP_EXPORT_SEQ", 1))


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _block_module(d: int, layers: int):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(d, 4 * d)
            self.down = torch.nn.Linear(4 * d, d)

        def forward(self, x):
            return x + self.down(torch.nn.functional.gelu(self.up(x)))

    return torch.nn.Sequential(*[Block() for _ in range(layers)]).eval()


def _time(fn, reps: int) -> float:
    """Best of ``reps`` calls: on a shared, loaded machine the fastest call is the figure that
    reproduces (the median moves with the neighbours' load)."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.min(ts))


def child(runtime: str, path: str, d: int, layers: int, threads: int, reps: int) -> dict:
    """One process, one model: baseline RSS after imports, then load, run, measure."""
    import torch
    import onnxruntime as ort
    torch.set_num_threads(threads)
    base = _rss_kb()
    _reset_peak()
    out = {}
    if runtime == "ort":
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        run = {b: (lambda x: (lambda: s.run(None, {name: x})))(
            np.random.default_rng(0).standard_normal((b, SEQ, d)).astype(np.float32)) for b in (1, 32)}
    else:
        from weightpress.torch import load_into
        with torch.device("meta"):
            m = _block_module(d, layers)
        m = m.to_empty(device="cpu")
        if path.endswith(".wpz"):
            load_into(m, path, sparse="auto")
        else:
            m.load_state_dict(torch.load(path, mmap=False))
        out["tensor_mb"] = sum(t.numel() * t.element_size()
                               for t in list(m.parameters()) + list(m.buffers())) / 2**20
        run = {}
        for b in (1, 32):
            x = torch.randn(b, SEQ, d)
            run[b] = (lambda x: (lambda: m(x)))(x)
    with torch.no_grad():
        for b in (1, 32):
            out[f"b{b}"] = _time(run[b], reps)
    out["peak_mb"] = (_peak_kb() - base) / 1024
    out["rss_mb"] = (_rss_kb() - base) / 1024
    return out


def _measure(runtime, path, d, layers, threads, reps):
    if QUICK:  # smoke test: in this process (memory figures meaningless), no interpreter starts
        return child(runtime, path, d, layers, threads, reps)
    cmd = [sys.executable, __file__, "--child", runtime, path, str(d), str(layers), str(threads), str(reps)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{runtime} {path}: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _containers(work: pathlib.Path, d: int, layers: int):
    """The model written by torch (state dict and ONNX), and the containers of each variant."""
    import torch
    import warnings
    from weightpress.io import open_model
    from weightpress.model.compress import compress_model
    from weightpress.model.export_onnx import export_onnx

    torch.manual_seed(0)
    m = _block_module(d, layers)
    pt = work / "dense.pt"
    torch.save(m.state_dict(), pt)
    onnx_path = work / "dense.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 2, d),), str(onnx_path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}})
    import onnx
    dense_ext = work / "dense_ext.onnx"   # weights in a .data file: onnxruntime maps it
    onnx.save_model(onnx.load(str(onnx_path)), str(dense_ext), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="dense_ext.onnx.data", size_threshold=1024)
    files = {"dense": {"ort": onnx_path, "ort_model": dense_ext, "torch": pt}}
    specs = {"int8": {"bits": 8}, "int4g128": {"bits": 4, "group": 128}}
    for label, opts in specs.items():
        for rt, src in (("ort", onnx_path), ("torch", pt)):
            wpz = work / f"{label}-{rt}.wpz"
            compress_model(open_model(str(src)), wpz, method="quant", options=opts, min_size=1024)
            files.setdefault(label, {})[rt] = wpz
    for rt, src in (("ort", onnx_path), ("torch", pt)):
        wpz = work / f"lowrank-{rt}.wpz"
        compress_model(open_model(str(src)), wpz, method="lowrank", ratio=4.0, min_size=1024)
        files.setdefault("lowrank 4x", {})[rt] = wpz
    for label in files:
        if label != "dense":
            out = work / f"{label.replace(' ', '_')}.onnx"
            export_onnx(files[label]["ort"], out, onnx_path, external_data=True)
            files[label]["ort_model"] = out
            files[label]["wpz"] = files[label]["torch"]
    return files


def run(quick: bool = False) -> None:
    import importlib.util
    from _harness import Table
    missing = [m for m in ("torch", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"\n## export: skipped (needs {', '.join(missing)})")
        return
    d = int(os.environ.get("WP_EXPORT_D", 128 if quick else 768))
    layers = int(os.environ.get("WP_EXPORT_LAYERS", 1 if quick else 4))
    threads = int(os.environ.get("WP_EXPORT_THREADS", 1))
    reps = 3 if quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        files = _containers(work, d, layers)
        res = {}
        for label, f in files.items():
            ort_path = f.get("ort_model", f["ort"])
            res[label] = {"ort": _measure("ort", str(ort_path), d, layers, threads, reps),
                          "torch": _measure("torch", str(f["torch"]), d, layers, threads, reps),
                          "onnx_mb": sum(p.stat().st_size for p in (ort_path, ort_path.with_name(
                              ort_path.name + ".data")) if p.exists()) / 2**20,
                          "wpz_mb": f["torch"].stat().st_size / 2**20}
    t = Table(f"export: {layers} MLP blocks d={d} (d->4d->d), input (batch, {SEQ}, d), {threads} thread(s); "
              f"best-of-{reps} ms per call (x dense), resident MB above the baseline after imports",
              ["variant", "onnx MB", "ORT b1", "ORT b32", "ORT peak", "ORT rss", "torch file MB",
               "torch b1", "torch b32", "torch peak", "torch rss", "torch tensors MB"])
    den = res["dense"]
    for label, r in res.items():
        def cell(rt, key, scale=1e3):
            v = r[rt][key] * scale
            ref = den[rt][key] * scale
            return f"{v:.3g} ({v / ref:.2f}x)" if label != "dense" and ref > 0 else f"{v:.3g}"
        t.add(label, f"{r['onnx_mb']:.2f}", cell("ort", "b1"), cell("ort", "b32"),
              cell("ort", "peak_mb", 1), cell("ort", "rss_mb", 1), f"{r['wpz_mb']:.2f}",
              cell("torch", "b1"), cell("torch", "b32"), cell("torch", "peak_mb", 1),
              cell("torch", "rss_mb", 1), cell("torch", "tensor_mb", 1))
    t.print()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        rt, path, d, layers, threads, reps = sys.argv[2:8]
        print(json.dumps(child(rt, path, int(d), int(layers), int(threads), int(reps))))
    else:
        sys.path.insert(0, str(HERE))
        run(quick=QUICK or "--quick" in sys.argv)
