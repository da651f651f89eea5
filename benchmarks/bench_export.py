"""Runtime export, "is it faster": each real architecture of the test corpus dense vs exported,
in onnxruntime and PyTorch, at batch 1 and 32, same thread count.

Architectures (tests/realmodels.py, built at run time with random weights, no downloads):
transformers BERT, GPT-2, ViT, T5 (``WP_EXPORT_HIDDEN``, default 256, 4 layers, MLP 4x: the
corpus's configs widened so layers are big enough to matter), ``bert-base``: BERT-base's
shapes written by transformers from its config at run time (hidden 768, 12 heads, MLP 3072,
vocabulary 30522; ``WP_EXPORT_BASE_LAYERS`` layers, default 4 of its 12; random weights),
where weights, not onnxruntime's own ~10 MB, dominate resident memory; the ResNet-18- and
MobileNetV3-style CNNs and the LSTM/GRU model in torch.nn, and a transformer-shaped MLP
(``mlp``: residual blocks d -> 4d -> d). Keras MobileNetV2 is not here: onnxruntime needs a
converter (tf2onnx) this project does not install, and it is not a PyTorch module.

Variants (containers from ``compress_model`` on the dense ``.onnx`` for onnxruntime and the
dense ``.pt`` state dict for PyTorch; default rules: embeddings, norms and biases kept):
``int8`` (8-bit symmetric per channel, 4x on the compressed layers), ``int4g128`` (4-bit,
groups of 128: about 7x), ``lowrank-int8`` (low rank with int8 factors, each layer 4x).
ONNX: ``export_onnx`` with its defaults (``compute="fast"``: DynamicQuantizeMatMul for
per-channel int8; for int4 groups MatMulNBits, or one per group over the 4-bit codes made
int8 at load when MatMulNBits is slower than dense, convs and LSTMs
quantized only where timed no slower; its output check makes the layers that put the outputs
beyond the container's stated error compensate their rounding; given this benchmark's batch-1
inputs, which its speed choices time too; ``never_slower``: an export
timed slower than dense at batch 1 gives its smallest compressed layers back dense, packed
int4 layers and quantized tables excepted), both dense
and exported models with their weights in a ``.data`` file beside the graph (onnxruntime maps
it); PyTorch: ``weightpress.torch.load_into`` into the module built with its parameters on the
meta device (so the dense weights are never allocated for the compressed variants), given the
batch-1 inputs: quantized layers take fbgemm's int8-activation product where it is faster
there, held to the container's stated error by its output check (the check's transient
memory is in the PyTorch peak).

onnxruntime's latency (``ORT b1``, ``ORT b32``) comes from one process per architecture that
holds the dense and every exported session and times them in interleaved rounds
(:func:`time_child`: best of ``reps`` calls each, the machine's load reaching all alike),
the dense model loaded twice: its row shows the second session against the first
(``again 1.02x``), how far apart the same graph reads, the noise of every ratio beside it.
Every other figure comes from its own process (fresh interpreter per model and runtime):
PyTorch's latency (best of ``reps`` calls), file size, and resident memory with the model
loaded and run at batch 1 (batch 32's activations are left out), in three columns for
onnxruntime:

- ``ORT peak``: the growth, VmHWM (reset after the imports; ru_maxrss where it cannot be reset)
  less the process's RSS after importing numpy, torch and onnxruntime (not weightpress: a
  deployment does not, and its import changes the C heap's behaviour), making the input
  arrays and giving the C heap's free pages back (``malloc_trim``: else the
  session's first megabytes reuse freed heap left resident by the imports, unseen), before
  the session is created: the model's memory in the runtime *plus*
  what onnxruntime allocates for any session and the code pages it runs (thread pool, kernel
  registry, arena: about 9.5 MB, which dominates a model of a few MB);
- ``ORT model``: that growth less onnxruntime's own (a one-node session measured the same
  way, in a process that imports and makes its inputs as the model's does before the
  baseline; printed in the title): the model's memory in the runtime, the figure that
  compression can change. Each process is fresh (dense and exported alike), so neither
  inherits the other's heap;
- ``ORT RSS``: the absolute VmHWM of the process (the interpreter, numpy, torch and
  onnxruntime's libraries included: about 56 MB before any session).

All three are printed; none is made to pass by leaving the others out; and the output's
relative L2 difference at batch 1 against the dense model and against the container's own
dense decode run in the same runtime (what the container says the model computes), next to
the container's stated error (its largest per-tensor relative error,
:mod:`weightpress.model.export_check`), which the export's own check holds the outputs to
("N more exact (check)": layers the check made compensate their activation rounding or
compute in float).

Environment: ``WP_EXPORT_ARCHS`` (comma list; default all), ``WP_EXPORT_THREADS`` (1),
``WP_EXPORT_HIDDEN`` (256), ``WP_EXPORT_REPS`` (20), ``WP_EXPORT_VARIANTS`` (comma list),
``WP_EXPORT_TORCH_INPUTS`` (``0``: ``load_into`` without the batch-1 inputs, so without its
int8-activation layers and output check: the behaviour before 2026-12-01),
``WP_EXPORT_ORT_OPTS``: onnxruntime session options for every session, dense, exported and
the floor's alike (:func:`_session_options`; default: onnxruntime's defaults).
``python benchmarks/run.py export`` (or ``--quick``: the MLP only, tiny, in-process).
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
import warnings

import numpy as np
from _harness import reset_peak  # (benchmarks/ is on the path: run.py, and every child's script)

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
QUICK = os.environ.get("WP_BENCH_QUICK", "") not in ("", "0")
ARCHS = ("mlp", "bert", "gpt2", "vit", "t5", "bert-base", "resnet", "mobilenet_v3", "lstm")
TRANSFORMERS = ("bert", "gpt2", "vit", "t5", "bert-base", "mlp")
# label -> (method, options, error): a size option, or a per-layer ratio option (the error
# only satisfies compress_model's "ratio or error" check: the rule's ratio sets each budget)
# embedding tables (and GPT-2's position table) quantized per row at 8 bits in every variant
# (the default rules keep embeddings): they run as GatherBlockQuantized / QuantEmbedding
EMBEDDING_RULES = ("*_embeddings.weight=quant:bits=8", "*.wte.weight=quant:bits=8",
                   "*.wpe.weight=quant:bits=8", "*.shared.weight=quant:bits=8")
VARIANTS = {"int8": ("quant", {"bits": 8}, None),
            "int4g128": ("quant", {"bits": 4, "group": 128}, None),
            "lowrank-int8": ("lowrank-int8", {"ratio": 4}, 1.0)}


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _peak_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- the architectures ----------------------------------------------------------------------

def _hidden() -> int:
    return int(os.environ.get("WP_EXPORT_HIDDEN", 64 if QUICK else 256))


def _base_layers() -> int:
    return int(os.environ.get("WP_EXPORT_BASE_LAYERS", 4))


def _hf_config(name: str):
    from transformers import BertConfig, GPT2Config, T5Config, ViTConfig
    h, L = _hidden(), 1 if QUICK else 4
    heads = max(1, h // 64)
    return {
        # BERT-base's shapes (hidden 768, 12 heads, MLP 3072, its 30522-token vocabulary and
        # 512 positions), fewer layers (WP_EXPORT_BASE_LAYERS, default 4) to keep the run short
        "bert-base": lambda: BertConfig(vocab_size=30522, hidden_size=768,
                                        num_hidden_layers=_base_layers(), num_attention_heads=12,
                                        intermediate_size=3072, max_position_embeddings=512),
        "bert": lambda: BertConfig(vocab_size=2048, hidden_size=h, num_hidden_layers=L,
                                   num_attention_heads=heads, intermediate_size=4 * h,
                                   max_position_embeddings=128),
        "gpt2": lambda: GPT2Config(n_embd=h, n_layer=L, n_head=heads, vocab_size=2048,
                                   n_positions=128, use_cache=False, bos_token_id=0,
                                   eos_token_id=0),
        "vit": lambda: ViTConfig(image_size=64, patch_size=8, hidden_size=h, num_hidden_layers=L,
                                 num_attention_heads=heads, intermediate_size=4 * h),
        "t5": lambda: T5Config(vocab_size=2048, d_model=h, d_kv=64, num_heads=heads, d_ff=4 * h,
                               num_layers=L, num_decoder_layers=L, use_cache=False),
    }[name]()


def _module(name: str):
    """A fresh module (weights initialised by the constructor) with positional inputs."""
    import torch
    if name in ("bert", "gpt2", "vit", "t5", "bert-base"):
        import transformers as tr
        cls = {"bert": tr.BertModel, "bert-base": tr.BertModel, "gpt2": tr.GPT2LMHeadModel, "vit": tr.ViTModel,
               "t5": tr.T5ForConditionalGeneration}[name]
        keys = {"vit": ("pixel_values",), "t5": ("input_ids", "decoder_input_ids")}.get(name, ("input_ids",))

        class Wrap(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = cls(_hf_config(name))

            def forward(self, *xs):
                kw = dict(zip(keys, xs))
                if name == "gpt2":  # without a mask transformers builds one with aten::diff,
                    kw["attention_mask"] = torch.ones_like(xs[0])   # which ONNX cannot export
                out = self.m(**kw, return_dict=True)
                return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state

        return Wrap().eval()
    if name == "mlp":
        d = 128 if QUICK else 768

        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.up = torch.nn.Linear(d, 4 * d)
                self.down = torch.nn.Linear(4 * d, d)

            def forward(self, x):
                return x + self.down(torch.nn.functional.gelu(self.up(x)))

        return torch.nn.Sequential(*[Block() for _ in range(1 if QUICK else 4)]).eval()
    import realmodels
    cls = realmodels._cnn_classes()[name]
    return (cls(width=32) if name == "resnet" else cls()).eval()


def _inputs(name: str, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if name in ("bert", "gpt2"):
        return [rng.integers(0, 2048, (batch, 32)).astype(np.int64)]
    if name == "bert-base":
        return [rng.integers(0, 30522, (batch, 32)).astype(np.int64)]
    if name == "t5":
        return [rng.integers(0, 2048, (batch, 32)).astype(np.int64),
                rng.integers(0, 2048, (batch, 8)).astype(np.int64)]
    if name == "vit":
        return [rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)]
    if name == "mlp":
        return [rng.standard_normal((batch, 1, 128 if QUICK else 768)).astype(np.float32)]
    if name == "lstm":
        return [rng.standard_normal((batch, 16, 16)).astype(np.float32)]
    return [rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)]


def _empty_module(name: str):
    """The module with its parameters allocated but never written (untouched pages are not
    resident) and its buffers as the constructor made them: what load_into fills."""
    import torch
    reg = torch.nn.Module.register_parameter

    def on_meta(self, pname, p):
        reg(self, pname, None if p is None else torch.nn.Parameter(p.to("meta"), p.requires_grad))

    torch.nn.Module.register_parameter = on_meta
    try:
        m = _module(name)
    finally:
        torch.nn.Module.register_parameter = reg
    bufs = {k: b for k, b in m.named_buffers()}
    m = m.to_empty(device="cpu")
    for k, b in bufs.items():
        owner, _, leaf = k.rpartition(".")
        (m.get_submodule(owner) if owner else m)._buffers[leaf] = b
    return m


# -- one measurement, in its own process ------------------------------------------------------

def _session_options(threads: int):
    """onnxruntime's session options for every session of the bench, dense and exported
    alike: ``threads`` intra-op threads, one inter-op, and ``WP_EXPORT_ORT_OPTS`` (comma list:
    ``level=disable|basic|extended|all``, ``arena=0``, ``pattern=0``, or a session config
    entry ``key=value``, e.g. ``session.disable_prepacking=1``)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    for item in filter(None, os.environ.get("WP_EXPORT_ORT_OPTS", "").split(",")):
        k, _, v = item.partition("=")
        if k == "level":
            so.graph_optimization_level = {
                "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[v]
        elif k == "arena":
            so.enable_cpu_mem_arena = v != "0"
        elif k == "pattern":
            so.enable_mem_pattern = v != "0"
        else:
            so.add_session_config_entry(k, v)
    return so


def _prelude(name: str | None, runtime: str = "ort") -> dict:
    """What every measuring process does before its baseline (the model's and the floor's
    alike): the imports (torch, onnxruntime; weightpress only for PyTorch, where the user's
    process imports it too: its import sets the C heap's mmap threshold, which changes how
    onnxruntime's freed buffers stay resident, so an onnxruntime process, like a user's
    deployment, does without it), the input arrays made (numpy's random generator loaded),
    and the C heap's free pages given back to the system (glibc ``malloc_trim``): the imports
    leave a few MB of freed heap resident, which the session's first allocations would reuse
    without growing the resident set (measured: 4-5 MB of a ResNet's weights hidden so, more
    of a small model's share than a large one's). None of it is the model's memory."""
    import ctypes
    import gc
    import torch  # noqa: F401
    import onnxruntime  # noqa: F401
    if runtime != "ort":
        import weightpress.torch  # noqa: F401
    feeds = {b: _inputs(name, b) for b in (1, 32)} if name else {}
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to give back
        pass
    return feeds


def _best_time(fn, reps: int) -> float:
    """Least seconds of ``reps`` calls of ``fn`` after one warm-up call (as
    :func:`weightpress.model.export_timing.best_time`, without importing weightpress into an
    onnxruntime process)."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def child(runtime: str, name: str, path: str, threads: int, reps: int) -> dict:
    import torch
    import onnxruntime as ort
    torch.set_num_threads(threads)
    feeds = _prelude(name, runtime)
    best_time = _best_time
    base = _rss_kb()
    reset_peak()
    out: dict = {}
    if runtime == "ort":
        s = ort.InferenceSession(path, _session_options(threads), providers=["CPUExecutionProvider"])
        names = [i.name for i in s.get_inputs()]
        run = {b: (lambda f: (lambda: s.run(None, dict(zip(names, f)))[0]))(feeds[b]) for b in feeds}
    else:
        m = _empty_module(name)
        if path.endswith(".wpz"):
            from weightpress.torch import load_into
            # the benchmark's inputs (batch 1) are what load_into's output check and speed
            # choices run on, as they are export_onnx's (see _files)
            # (WP_EXPORT_TORCH_INPUTS=0: without them, as before: float-activation kernels only)
            ins = None if os.environ.get("WP_EXPORT_TORCH_INPUTS") == "0" else \
                tuple(torch.from_numpy(x) for x in feeds[1])
            load_into(m, path, sparse="auto", inputs=ins)
        else:
            sd = torch.load(path, mmap=True, weights_only=True)
            m.load_state_dict(sd, strict=False, assign=True)
        out["tensor_mb"] = sum(t.numel() * t.element_size()
                               for t in list(m.parameters()) + list(m.buffers())) / 2**20
        run = {}
        for b in feeds:
            xs = [torch.from_numpy(x) for x in feeds[b]]
            run[b] = (lambda xs: (lambda: m(*xs)))(xs)
    with torch.no_grad():
        y1 = np.asarray(run[1]() if runtime == "ort" else run[1]().numpy(), np.float64)
        out["b1"] = best_time(run[1], reps)
        # resident high-water mark with the model loaded and run at batch 1 (batch 32's
        # activations would dominate it); then the high-water mark over everything
        out["peak_mb"] = (_peak_kb() - base) / 1024
        out["rss_mb"] = _peak_kb() / 1024
        out["b32"] = best_time(run[32], reps)
    out["peak_all_mb"] = (_peak_kb() - base) / 1024
    np.save(path + f".{runtime}.y1.npy", y1)
    return out


ROUNDS = 5


def time_child(name: str, paths: list[str], threads: int, reps: int) -> dict:
    """onnxruntime latency of the dense model and its exports side by side: one process holds
    every session; at each batch size ``ROUNDS`` rounds, in alternating order, each time each
    session's best of ``reps // ROUNDS`` calls (more for models of under a millisecond: a
    round of each lasts about 20 ms), the least over the rounds kept. A change of the machine's
    load then reaches dense and exported alike (separate processes, one after the other, read
    the same graph up to 8 % apart at 0.1 ms under load)."""
    import torch
    import onnxruntime as ort
    torch.set_num_threads(threads)
    feeds = _prelude(name)
    sess = [ort.InferenceSession(p, _session_options(threads), providers=["CPUExecutionProvider"])
            for p in paths]
    out: list[dict] = [{} for _ in paths]
    for b in (1, 32):
        runs = [(lambda s, f: (lambda: s.run(None, f)))(s, dict(zip([i.name for i in s.get_inputs()], feeds[b])))
                for s in sess]
        one = _best_time(runs[0], 3)
        calls = max(reps // ROUNDS, 1, min(200, int(0.02 / max(one, 1e-6))))
        best = [float("inf")] * len(runs)
        for r in range(ROUNDS):
            order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
            for i in order:
                best[i] = min(best[i], _best_time(runs[i], calls))
        for o, t in zip(out, best):
            o[f"b{b}"] = t
    return {"times": out}


def floor_child(path: str, threads: int) -> dict:
    """onnxruntime's own resident memory: a session of a one-node model (Identity) created and
    run, measured like :func:`child` (what every model's ORT peak includes whatever its size)."""
    import onnxruntime as ort
    _prelude("mlp")   # the same imports and input making as child's, before the baseline
    x = np.ones((1, 8), np.float32)
    base = _rss_kb()
    reset_peak()
    s = ort.InferenceSession(path, _session_options(threads), providers=["CPUExecutionProvider"])
    s.run(None, {"x": x})
    return {"peak_mb": (_peak_kb() - base) / 1024}


def _floor(work: pathlib.Path, threads: int) -> float:
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])])
    p = work / "floor.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    if QUICK:   # in-process: nothing to subtract
        return 0.0
    cmd = [sys.executable, __file__, "--floor", str(p), str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"])


def _times(name: str, paths: list[pathlib.Path], threads: int, reps: int) -> dict:
    if QUICK:
        return time_child(name, [str(p) for p in paths], threads, reps)
    cmd = [sys.executable, __file__, "--times", name, str(threads), str(reps), *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ort {name} times: {r.stderr.strip().splitlines()[-3:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _measure(runtime: str, name: str, path: pathlib.Path, threads: int, reps: int) -> dict:
    if QUICK:
        return child(runtime, name, str(path), threads, reps)
    cmd = [sys.executable, __file__, "--child", runtime, name, str(path), str(threads), str(reps)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{runtime} {name} {path.name}: {r.stderr.strip().splitlines()[-3:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- files ----------------------------------------------------------------------------------

def _int8_weights() -> str:
    """export_onnx's ``int8_weights`` for this machine, where the exported models run:
    "vnni" (full-range int8 weights) where it computes them exactly (x86 with VNNI or AMX, or
    not x86), else "portable". ``WP_EXPORT_INT8`` overrides."""
    from weightpress.model.export_onnx import full_int8_exact
    return os.environ.get("WP_EXPORT_INT8") or ("vnni" if full_int8_exact() else "portable")


def _size(p: pathlib.Path) -> int:
    return sum(q.stat().st_size for q in (p, p.with_name(p.name + ".data")) if q.exists())


def _files(name: str, work: pathlib.Path, variants: list[str]) -> dict:
    """dense .pt and .onnx (+ external data); per variant the containers and the export."""
    import onnx
    import torch
    from weightpress.io import open_model
    from weightpress.model.compress import compress_model
    from weightpress.model.container import Container
    from weightpress.model.export_onnx import export_onnx
    from weightpress.model.rules import parse_rule
    from weightpress.io import save_model

    torch.manual_seed(0)
    m = _module(name)
    if name in ("resnet", "mobilenet_v3"):
        import realmodels
        realmodels._randomize_bn(m)
    pt = work / f"{name}.pt"
    torch.save(m.state_dict(), pt)
    raw = work / f"{name}-raw.onnx"
    xs = tuple(torch.from_numpy(x) for x in _inputs(name, 2))
    names = [f"x{i}" for i in range(len(xs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, xs, str(raw), dynamo=False, input_names=names, output_names=["y"],
                          dynamic_axes={n: {0: "b"} for n in names}, opset_version=17)
    dense = work / f"{name}.onnx"
    onnx.save_model(onnx.load(str(raw)), str(dense), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=f"{name}.onnx.data", size_threshold=1024)
    files = {"dense": {"ort": dense, "torch": pt, "ort_bytes": _size(dense), "torch_bytes": pt.stat().st_size}}
    for v in variants:
        print(f"[{time.strftime('%H:%M:%S')}] {name} {v}: compress, export", file=sys.stderr, flush=True)
        method, opts, error = VARIANTS[v]
        f: dict = {}
        for rt, src in (("ort", raw), ("torch", pt)):
            wpz = work / f"{name}-{v}-{rt}.wpz"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compress_model(open_model(str(src)), wpz, method=method, options=dict(opts),
                               error=error, min_size=1024,
                               rules=[parse_rule(r) for r in EMBEDDING_RULES])
            f[f"{rt}_wpz"] = wpz
        out = work / f"{name}-{v}.onnx"
        # the benchmark's own inputs (batch 1 at its sequence length) are what the export's
        # output check and speed choices run on, as a user passes theirs (--inputs)
        rows = export_onnx(f["ort_wpz"], out, raw, external_data=True,
                           inputs=dict(zip(names, _inputs(name, 1))), int8_weights=_int8_weights())
        ref = work / f"{name}-{v}-decoded.onnx"
        with Container(f["ort_wpz"]) as c:
            save_model(ref, c, like=raw)
            f["stated_error"] = max((float(e.get("error", 0.0)) for e in c.entries.values()), default=0.0)
        f.update(ort=out, torch=f["torch_wpz"], ort_bytes=_size(out), ref=ref,
                 torch_bytes=f["torch_wpz"].stat().st_size,
                 how=sorted({r.how.split(" (")[0] for r in rows if r.form != "dense"}),
                 dense_layers=sum(r.how == "dense" and r.form != "dense" for r in rows),
                 checked=sum("stated error" in r.note for r in rows))
        files[v] = f
    return files


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run(quick: bool = False) -> None:
    import importlib.util
    from _harness import Table
    missing = [m for m in ("torch", "onnx", "onnxruntime", "transformers")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"\n## export: skipped (needs {', '.join(missing)})")
        return
    global QUICK
    QUICK = QUICK or quick
    archs = os.environ.get("WP_EXPORT_ARCHS", "mlp" if QUICK else ",".join(ARCHS)).split(",")
    threads = int(os.environ.get("WP_EXPORT_THREADS", 1))
    reps = 2 if QUICK else int(os.environ.get("WP_EXPORT_REPS", 20))
    want = os.environ.get("WP_EXPORT_VARIANTS", ",".join(VARIANTS)).split(",")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        floor = _floor(pathlib.Path(tmp), threads)
    t = Table(f"export: dense vs exported, {threads} thread(s), best of {reps} calls, ms (x dense); "
              f"peak = resident MB growth from after the imports (before the session) to after "
              f"loading and running at batch 1 (x dense); ORT model = ORT peak less onnxruntime's "
              f"own {floor:.1f} MB (a one-node session's peak); ORT RSS = the process's absolute "
              f"peak RSS, interpreter and libraries included; session options "
              f"{os.environ.get('WP_EXPORT_ORT_OPTS') or 'default'}; int8 weights "
              f"{_int8_weights()} (this CPU); load average {load:.1f}",
              ["model", "variant", "ORT file MB", "ORT b1", "ORT b32", "ORT peak", "ORT model",
               "ORT RSS", "torch file MB",
               "torch b1", "torch b32", "torch peak", "diff vs dense", "diff vs decode",
               "stated err", "ORT ops"])
    for name in archs:
        variants = [v for v in want if v in VARIANTS and (v != "int4g128" or name in TRANSFORMERS)]
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp)
            try:
                files = _files(name, work, variants)
            except Exception as e:  # an architecture that cannot be exported: say so, go on
                t.add(name, "-", f"not run: {type(e).__name__}: {str(e).splitlines()[0][:80]}",
                      *[""] * 13)
                continue
            res = {}
            for v, f in files.items():
                res[v] = {}
                for rt in ("ort", "torch"):
                    try:
                        res[v][rt] = _measure(rt, name, f[rt], threads, reps)
                    except RuntimeError as e:   # one runtime failing: say so, go on
                        print(f"{name} {v} {rt}: not run: {e}", file=sys.stderr)
                        res[v][rt] = dict.fromkeys(("b1", "b32", "peak_mb", "rss_mb"), float("nan"))
            ok = [v for v in files if res[v]["ort"]["b1"] == res[v]["ort"]["b1"]]
            try:   # ORT latency side by side (the per-process times are the memory runs')
                # the dense model twice: what the same graph reads apart (the noise)
                times = _times(name, [files[v]["ort"] for v in ok] + [files["dense"]["ort"]],
                               threads, reps)["times"]
                for v, tv in zip(ok, times):
                    res[v]["ort"].update(tv)
                res["dense"]["ort"]["again"] = times[-1]
            except RuntimeError as e:
                print(f"{name}: side-by-side times not run ({e}): per-process times shown",
                      file=sys.stderr)
            dense_y = np.load(str(files["dense"]["ort"]) + ".ort.y1.npy")
            for v, f in files.items():
                r, d = res[v], res["dense"]
                r["ort"]["model_mb"] = r["ort"]["peak_mb"] - floor

                def cell(rt, key, scale=1.0):
                    val, ref = r[rt][key] * scale, d[rt][key] * scale
                    if v == "dense" and key in r[rt].get("again", {}):   # the same graph again
                        return f"{val:.3g} (again {r[rt]['again'][key] * scale / val:.2f}x)"
                    return f"{val:.3g}" if v == "dense" or ref <= 0 else f"{val:.3g} ({val / ref:.2f}x)"

                def mb(rt):
                    val, ref = f[f"{rt}_bytes"] / 2**20, files["dense"][f"{rt}_bytes"] / 2**20
                    return f"{val:.2f}" if v == "dense" else f"{val:.2f} ({ref / val:.1f}x smaller)"

                if v == "dense" or r["ort"]["b1"] != r["ort"]["b1"]:   # dense, or ORT not run
                    diffs = ("", "", "", "")
                else:
                    y = np.load(str(f["ort"]) + ".ort.y1.npy")
                    import realmodels
                    feed = dict(zip([f"x{i}" for i in range(9)], _inputs(name, 1)))
                    y_ref = realmodels._ort(str(f["ref"]), feed)
                    diffs = (f"{_rel(y, dense_y):.2e}", f"{_rel(y, y_ref):.2e}",
                             f"{f['stated_error']:.2e}",
                             "+".join(f["how"]) + (f", {f['dense_layers']} dense" if f["dense_layers"] else "")
                             + (f", {f['checked']} more exact (check)" if f["checked"] else ""))
                t.add(name, v, mb("ort"), cell("ort", "b1", 1e3), cell("ort", "b32", 1e3),
                      cell("ort", "peak_mb"), cell("ort", "model_mb"), cell("ort", "rss_mb"),
                      mb("torch"), cell("torch", "b1", 1e3),
                      cell("torch", "b32", 1e3), cell("torch", "peak_mb"), *diffs)
        if name != archs[-1]:   # the table so far, as each architecture finishes (long runs)
            t.print()
            sys.stdout.flush()
    t.print()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--times":
        print(json.dumps(time_child(sys.argv[2], sys.argv[5:], int(sys.argv[3]), int(sys.argv[4]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--floor":
        print(json.dumps(floor_child(sys.argv[2], int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        rt, name, path, threads, reps = sys.argv[2:7]
        print(json.dumps(child(rt, name, path, int(threads), int(reps))))
    else:
        sys.path.insert(0, str(HERE))
        run(quick=QUICK or "--quick" in sys.argv)
