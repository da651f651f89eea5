"""Where an onnxruntime session's resident memory goes, dense vs exported (issue 12's memory
figure, explained rather than re-measured).

For each model of :mod:`bench_export` (``WP_EXPORT_ARCHS``, ``WP_EXPORT_VARIANTS``,
``WP_EXPORT_HIDDEN`` as there) the dense ``.onnx`` and each export are loaded, each in a fresh
process made exactly as ``bench_export``'s (same imports, inputs and ``malloc_trim`` before the
baseline), and the growth is split by what holds it, from ``/proc/self/smaps`` before the session
and after a batch-1 run:

- ``anon``: anonymous memory (the C heap, onnxruntime's arena, initializers read from the
  ``.data`` file, pre-packed weight copies, activations);
- ``ort code``: pages of onnxruntime's shared library touched (its code and data: the same
  for any model that runs the same kernels);
- ``.data``: pages of the model's external-data file mapped by onnxruntime;
- ``other``: every other mapping (other libraries' pages).

``peak`` is VmHWM's growth (as bench_export's ``ORT peak``), the transient included. Beside
each: the graph's initializer bytes (by the op that reads them), and the same session with
``session.disable_prepacking=1`` (diagnostic only, both sides alike: the difference is what the
pre-packed copies cost) and without the arena. The floor (a one-node Identity session) is
split the same way: what any model pays.

``python benchmarks/ort_memory.py`` (env as bench_export; default ``bert`` int8;
``WP_ORT_MEMORY_OPTS``: the option sets, ``;``-separated, ``""`` the defaults).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_export as be  # noqa: E402
from _harness import reset_peak  # noqa: E402


def _smaps(model_dir: str) -> dict[str, float]:
    """Resident kB by category, this process, now."""
    out: collections.Counter[str] = collections.Counter()
    cat = "other"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss", "Size")) and ":" not in head[0]:
                path = head[5].strip() if len(head) > 5 else ""
                if path in ("", "[heap]") or path.startswith("[anon"):
                    cat = "anon"
                elif "onnxruntime" in path and ".so" in path:
                    cat = "ort code"
                elif path.startswith(model_dir):
                    cat = ".data"
                else:
                    cat = "other"
            elif line.startswith("Rss:"):
                out[cat] += int(line.split()[1])
    return {k: v / 1024 for k, v in out.items()}


def child(path: str, name: str, opts: str) -> dict:
    import onnxruntime as ort
    os.environ["WP_EXPORT_ORT_OPTS"] = opts
    feeds = be._prelude(name)
    d = os.path.dirname(os.path.abspath(path))
    before = _smaps(d)
    base = be._rss_kb()
    reset_peak()
    s = ort.InferenceSession(path, be._session_options(1), providers=["CPUExecutionProvider"])
    after_load = _smaps(d)
    names = [i.name for i in s.get_inputs()]
    if name == "floor":
        s.run(None, {"x": np.ones((1, 8), np.float32)})
    else:
        s.run(None, dict(zip(names, feeds[1])))
    after = _smaps(d)
    keys = sorted(set(before) | set(after))
    return {"peak": (be._peak_kb() - base) / 1024,
            "load": {k: after_load.get(k, 0) - before.get(k, 0) for k in keys},
            "run": {k: after.get(k, 0) - before.get(k, 0) for k in keys}}


def _measure(path: pathlib.Path, name: str, opts: str = "") -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", str(path), name, opts],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def initializers(path: pathlib.Path) -> dict[str, float]:
    """MB of the graph's initializers by the op type(s) that read them (and by dtype)."""
    import onnx
    from onnx import numpy_helper  # noqa: F401
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    readers: dict[str, set[str]] = collections.defaultdict(set)
    for n in g.node:
        for i in n.input:
            readers[i].add(n.op_type)
    out: collections.Counter[str] = collections.Counter()
    for t in g.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        size = n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if t.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.INT4):
            size = (n + 1) // 2
        key = "+".join(sorted(readers[t.name])) or "(unread)"
        out[f"{key} {onnx.TensorProto.DataType.Name(t.data_type).lower()}"] += size
    return {k: v / 2**20 for k, v in out.most_common()}


# the option sets each model is loaded with (diagnostic; "" = onnxruntime's defaults), ";"-separated
OPTS = os.environ.get("WP_ORT_MEMORY_OPTS", ";session.disable_prepacking=1;arena=0").split(";")


def _fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in sorted(d.items()) if abs(v) >= 0.005)


def main() -> None:
    import onnx
    from onnx import TensorProto, helper
    archs = os.environ.get("WP_EXPORT_ARCHS", "bert").split(",")
    variants = os.environ.get("WP_EXPORT_VARIANTS", "int8").split(",")
    print(f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])])
        fl = work / "floor.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(fl))
        f = _measure(fl, "floor")
        print(f"floor (Identity): peak {f['peak']:.2f} MB; after load {_fmt(f['load'])}; after run {_fmt(f['run'])}")
        for name in archs:
            files = be._files(name, work, variants)
            for v, fs in files.items():
                p = fs["ort"]
                print(f"\n{name} {v}: file {fs['ort_bytes'] / 2**20:.2f} MB")
                print("  initializers MB: " + ", ".join(f"{k} {x:.2f}" for k, x in initializers(p).items()))
                for opts in OPTS:
                    r = _measure(p, name, opts)
                    print(f"  [{opts or 'default options'}] peak {r['peak']:.2f} MB; "
                          f"after load {_fmt(r['load'])}; after run {_fmt(r['run'])}")
                    sys.stdout.flush()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")))
    else:
        main()
