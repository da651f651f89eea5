"""The ``weightpress`` command line.

Exit codes (scripts can rely on them):

- 0: success (``verify``: the file checked out);
- 1: failure (``verify`` found problems, or an unexpected internal error);
- 2: usage error or bad input (unknown option, missing or unreadable file, corrupt model,
  impossible target, output that cannot be written).

Errors print one line to stderr (``weightpress: error: ...``), no traceback; set
``WEIGHTPRESS_DEBUG=1`` to see it. Outputs are written atomically: a failed run leaves no file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._core import __version__
from ..compression.aware import time_apply
from ..compression.matrices import Dense
from ..io import save_model
from ..io.structure import write_from_skeleton
from ..model.capture import capture_onnx
from ..model.compress import compress_model, open_source, parse_rule, plan, source_nbytes
from ..model.container import Container, verify
from ..model.distributed import close as close_client
from ..model.distributed import connect, local_client
from ..model.export_hf import export_compressed_tensors
from ..model.export_onnx import export_onnx
from ..model.export_timing import time_onnx_model
from ..model.report import Report, human, printable
from .demo import run as run_demo
from .plots import plot_curves, require_matplotlib

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def __call__(self, i: int, n: int, what: str) -> None:
        if not self.enabled:
            return
        width = 30
        done = int(width * i / max(n, 1))
        bar = "#" * done + "." * (width - done)
        sys.stderr.write(f"\r[{bar}] {i}/{n} {time.perf_counter() - self.t0:5.1f}s {what[:40]:<40}")
        if i >= n:
            sys.stderr.write("\r" + " " * (width + 60) + "\r")
        sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weightpress",
        description="Compress the weight matrices of trained neural networks "
                    "(pruning, low rank, sparse + low rank) into a container file whose "
                    "layers still compute.",
        epilog="exit codes: 0 ok, 1 failure (verify found problems, internal error), "
               "2 usage error or bad input. Try: weightpress demo")
    p.add_argument("--version", action="version", version=f"weightpress {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("compress", help="compress a model file into a container",
                       description="Compress a model (safetensors, npz, and the formats of "
                                   "weightpress.io) into a .wpz container (safetensors + "
                                   "metadata). By default 2-D float matrices of at least "
                                   "--min-size elements are compressed; biases, norms and "
                                   "embeddings are kept as they are ('weightpress info MODEL' "
                                   "shows the plan and the reasons).")
    c.add_argument("model", help="input model file")
    c.add_argument("-o", "--output", required=True, help="output container (e.g. model.wpz)")
    tgt = c.add_mutually_exclusive_group()
    tgt.add_argument("--ratio", type=float, help="make the file R times smaller than the input")
    tgt.add_argument("--error", type=float,
                     help="relative error allowed per layer: ||W - W'||_F / ||W||_F, or with "
                          "--calibration the output error ||XW^T - XW'^T||_F / ||XW^T||_F")
    c.add_argument("--method", default="auto", choices=["auto", "prune", "lowrank", "nm", "slr", "code", "quant",
                                                      "lowrank-int8"],
                   help="auto: smallest form per layer for the budget, never bigger than dense; "
                        "prune: magnitude pruning to CSR; lowrank: truncated SVD; nm: N:M "
                        "pruning; slr: sparse + low rank; code: rows sparsely coded in a DCT "
                        "dictionary; quant: integer quantization (GPTQ with --calibration) at "
                        "the precision that fits, or at --bits/--group; lowrank-int8: truncated SVD "
                        "with int8 factors (per-row scales) (default: auto)")
    c.add_argument("--pattern", help="N:M pattern for --method nm (e.g. 2:4; then no target needed)")
    c.add_argument("--rank", type=int, help="fixed rank for --method lowrank")
    c.add_argument("--entropy", action="store_true",
                   help="zstd-code the packed integer codes of quantized layers where it saves "
                        "bytes (needs the zstandard package)")
    c.add_argument("--bits", type=int, help="--method quant: bits per weight, 2-8 (then no target needed)")
    c.add_argument("--group", type=int, help="--method quant with --bits: inputs per float16 scale "
                                             "(32, 64, 128; default one per output channel)")
    c.add_argument("--global", dest="scope", action="store_const", const="global", default="layer",
                   help="--method prune: one magnitude threshold across all layers")
    c.add_argument("--allocate", dest="scope", action="store_const", const="allocate",
                   help="with --ratio: split the byte budget across layers by their measured "
                        "error-vs-size curves instead of giving every layer the same ratio")
    c.add_argument("--calibration", metavar="FILE",
                   help=".npz or .safetensors mapping weight tensor names to that layer's input "
                        "activations (samples x in): data-aware methods (OBS pruning, whitened "
                        "low rank, activation-scaled sparse + low rank) and output-space errors")
    c.add_argument("--capture", metavar="INPUTS.npz",
                   help="ONNX models: sample model inputs (input name -> array); weightpress runs "
                        "the model in onnxruntime and uses each MatMul/Gemm weight's inputs as "
                        "calibration (needs weightpress[capture])")
    c.add_argument("--prefer", choices=["size", "speed"], default="size",
                   help="with --calibration and --method auto: 'speed' keeps, among the forms "
                        "that meet the budget, the one that runs fastest here (batch 32)")
    c.add_argument("--plot", metavar="DIR",
                   help="with --allocate: save each layer's error-vs-size curve and the chosen "
                        "point as PNG files in DIR (needs matplotlib: weightpress[plot])")
    c.add_argument("--rules", action="append", default=[], metavar="GLOB=ACTION[:k=v,..]",
                   help="override which tensors are compressed and how, first match wins; "
                        "ACTION is skip, prune, lowrank, nm, slr, code, quant or auto; options "
                        "ratio, error, rank, sparsity, pattern, bits, group, symmetric. Repeat, "
                        "or separate with ';'. E.g. '*.fc*=quant:bits=4,group=64', "
                        "--rules 'lm_head*=skip' --rules '*.q_proj.weight=lowrank:rank=64'")
    c.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], dest="value_dtype",
                   help="store compressed values and factors in this dtype (float16 or "
                        "bfloat16 halve float32 ones; errors are measured against the "
                        "original). Default: the weights' own (bfloat16 stays bfloat16)")
    c.add_argument("--min-size", type=int, default=4096,
                   help="leave matrices with fewer elements dense (default: 4096)")
    c.add_argument("--layout", choices=["out_in", "in_out"],
                   help="how layers use their weights: out_in = [out, in], y = x W^T (PyTorch); "
                        "in_out = [in, out], y = x W (Keras, ONNX). Default: from the format")
    c.add_argument("--timing", action="store_true",
                   help="time each compressed layer here against dense at batch 1 and 32 and "
                        "show it in the table (microseconds per call)")
    c.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    dist = c.add_mutually_exclusive_group()
    dist.add_argument("--workers", type=int, metavar="N",
                      help="spread the layers over a Dask LocalCluster of N worker processes "
                           "(one thread each); the output is the same file (needs "
                           "weightpress[dask])")
    dist.add_argument("--scheduler", metavar="ADDRESS|FILE",
                      help="use an existing Dask cluster: tcp://HOST:PORT or a scheduler file; "
                           "its workers must read the model (and calibration) at the same path")
    c.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its journal (OUTPUT.journal/, kept "
                        "beside the output until it is written); refused when the input or the "
                        "settings changed")

    i = sub.add_parser("info", help="per-layer table of a container (or of a model)",
                       description="Print name, shape, form, params, bytes, relative error and "
                                   "ratio per tensor of a container, and totals. For a plain "
                                   "model: its tensors and what compress would do with each.")
    i.add_argument("file", help="a .wpz container or a model file")
    i.add_argument("--timing", action="store_true",
                   help="also time each layer here, compressed and dense, at batch 1 and 32 "
                        "(microseconds per call), and, for a container of an ONNX model, the "
                        "whole model in onnxruntime dense vs exported (one thread)")

    d = sub.add_parser("decompress", help="write the dense weights back",
                       description="Decode every tensor to dense and write it (format from the "
                                   "output's extension: .safetensors, .npz, or the formats of "
                                   "weightpress.io, e.g. .onnx with --like).")
    d.add_argument("file", help="a .wpz container")
    d.add_argument("-o", "--output", required=True, help="output model file")
    d.add_argument("--like", help="original model to copy the structure from (e.g. ONNX)")

    x = sub.add_parser("export", help="a runnable model whose compressed layers run compressed",
                       description="With an ONNX --like: rewrite the graph so that low-rank "
                                   "layers run as two MatMuls and quantized ones through "
                                   "onnxruntime's MatMulNBits. With a Hugging Face model "
                                   "directory as --like: a compressed-tensors checkpoint for "
                                   "transformers. Other forms go back dense (the table says "
                                   "which and why).")
    x.add_argument("file", help="a .wpz container")
    x.add_argument("-o", "--output", required=True, help="output .onnx model (or directory)")
    x.add_argument("--like", help="the original ONNX model or HF model directory (default for "
                                  "ONNX: the graph the container keeps)")
    x.add_argument("--inputs", metavar="INPUTS.npz",
                   help="ONNX: sample model inputs (input name -> array) for the output check; "
                        "their first sample (its sequence length) is what the speed choices "
                        "time (default: made from the graph's inputs, dynamic sizes 8)")
    x.add_argument("--conv-quant", choices=["auto", "int8", "dequant", "dense"], default="auto",
                   help="quantized (and low rank + int8) Conv weights: int8 (an im2col product "
                        "through the integer MatMul kernels; DequantizeLinear -> Conv where the "
                        "conv has none), dequant (DequantizeLinear -> Conv: int8 in memory, "
                        "usually slower), dense, or auto (default: each conv timed alone at batch "
                        "1, int8 where no slower, and slower ones within half the time those "
                        "save, then the whole model against every conv dense)")
    x.add_argument("--lstm-quant", choices=["auto", "int8", "dense"], default="auto",
                   help="LSTMs with quantized weights: DynamicQuantizeLSTM (faster for wide "
                        "LSTMs, slower for narrow ones), dense, or auto (default: timed as "
                        "--conv-quant)")
    x.add_argument("--group-quant", choices=["auto", "int8", "nbits"], default="auto",
                   help="MatMuls quantized in groups or to 2-4 bits: integer MatMuls on int8 "
                        "weights, one per group (faster from a few rows on; 4-bit codes stay "
                        "4-bit in the file, a byte each in memory), MatMulNBits (packed codes, "
                        "least memory), or auto (default: the faster, timed at batch 1; "
                        "MatMulNBits wins for a few tokens, the integer MatMuls from about 32)")
    x.add_argument("--int8-weights", choices=["portable", "vnni"], default="portable",
                   help="integer MatMuls over full-range 8-bit codes: portable (default: exact "
                        "on every CPU: activations rounded to 7 bits, or uint8 weights in "
                        "groups and LSTMs) or vnni (8-bit activations over int8 weights: faster "
                        "and closer on CPUs with VNNI/AMX, wrong on x86 CPUs without VNNI such "
                        "as AMD Zen 1-3)")
    x.add_argument("--no-check", action="store_true",
                   help="skip the output check (by default the exported model runs beside the "
                        "container's computation on sample inputs, and layers whose integer "
                        "kernels put the outputs beyond the container's stated error compute "
                        "more exactly)")
    x.add_argument("--allow-slower", action="store_true",
                   help="keep every rewrite (by default the export is timed against the dense "
                        "model at batch 1 and, where slower, its smallest compressed layers "
                        "stay dense until it is no slower)")
    x.add_argument("--external-data", action="store_true",
                   help="weights in OUTPUT.data beside the graph (less resident memory in "
                        "onnxruntime; no 2 GB limit)")
    x.add_argument("--exact", action="store_true",
                   help="quantized products in float (default: onnxruntime's fast integer "
                        "kernels, activations rounded to 8 bits)")

    v = sub.add_parser("verify", help="decode everything and check it",
                       description="Check checksums, structure, shapes, dtypes and the stored "
                                   "error figures. Exit 0 if all is well, 1 if not.")
    v.add_argument("file", help="a .wpz container")
    v.add_argument("--against", metavar="MODEL", help="also recompute errors against the original")

    sub.add_parser("demo", help="compress the bundled digits model several ways",
                   description="Compress the bundled 64-256-128-10 digits MLP with several "
                               "methods and ratios; print accuracy and size for each.")
    return p


def _rules(texts: list[str]) -> list[Any]:
    return [parse_rule(t) for text in texts for t in text.split(";") if t.strip()]


def _cmd_compress(a: argparse.Namespace) -> int:
    opts: dict[str, Any] = {}
    if a.pattern:
        opts["pattern"] = a.pattern
    if a.rank is not None:
        opts["rank"] = a.rank
    if a.bits is not None:
        opts["bits"] = a.bits
    if a.group is not None:
        if a.bits is None:
            raise ValueError("--group needs --bits (e.g. --bits 4 --group 64)")
        opts["group"] = a.group
    rules = _rules(a.rules)
    _check_output(a.output, a.model)
    if a.plot and a.scope != "allocate":
        raise ValueError("--plot: the curves are measured by --allocate")
    if a.plot:
        require_matplotlib()
    calibration: Any = a.calibration
    if a.workers is not None and a.workers < 1:
        raise ValueError(f"--workers: expected a positive number of workers, got {a.workers}")
    if a.capture:
        if a.calibration:
            raise ValueError("--capture: give either --calibration or --capture")
        # activations streamed into X^T X batch by batch
        calibration = capture_onnx(a.model, _model_inputs(a.capture, "--capture"), stats=True)
    curves: dict[str, Any] = {}
    client = None
    if a.workers is not None:
        client = local_client(a.workers)
    elif a.scheduler:
        client = connect(a.scheduler)
    try:
        with open_source(a.model) as src:
            rep = compress_model(src, a.output, ratio=a.ratio, error=a.error, method=a.method,
                                 rules=rules, min_size=a.min_size, layout=a.layout,
                                 scope=a.scope, options=opts, value_dtype=a.value_dtype,
                                 progress=_Progress(), calibration=calibration,
                                 prefer=a.prefer, curves_out=curves, client=client,
                                 journal=True, resume=a.resume,
                                 coding="zstd" if a.entropy else None)
    finally:
        if client is not None:
            close_client(client)
    if a.plot:
        for path in plot_curves(curves, a.plot):
            print(f"plot: {path}", file=sys.stderr)
    if a.timing:
        with Container(a.output) as c:
            _add_timings(rep, c)
    if not a.quiet:
        print(rep.table())
    for note in rep.notes:
        print(f"note: {note}", file=sys.stderr)
    if rep.not_stored:
        print(f"weightpress: warning: {len(rep.not_stored)} tensor(s) of {a.model} have no "
              f"storable dtype and are not in the container (listed in it; decompress with "
              f"--like {a.model} keeps them): "
              f"{printable(', '.join(list(rep.not_stored)[:5]))}", file=sys.stderr)
    print(f"wrote {a.output}: {rep.file_bytes:,} bytes, {rep.ratio:.2f}x smaller than "
          f"{a.model} ({rep.source_bytes:,} bytes)", file=sys.stderr if a.quiet else sys.stdout)
    return EXIT_OK


def _add_timings(rep: Any, container: Any) -> None:
    """Time every compressed layer here against its dense form, at batch 1 and 32."""
    for r in rep.rows:
        if len(r.shape) == 2 and r.form != "dense":
            m = container.matrix(r.name)
            dense = Dense(m.toarray(), m.layout)
            r.times = {"b1": time_apply(m, 1), "b1 dense": time_apply(dense, 1),
                       "b32": time_apply(m, 32), "b32 dense": time_apply(dense, 32)}


def _timing_totals(rep: Any) -> str:
    """One line: the compressed layers' times summed, as one forward pass through them."""
    t: dict[str, float] = {}
    for r in rep.rows:
        for k, v in (getattr(r, "times", None) or {}).items():
            t[k] = t.get(k, 0.0) + v
    if not t:
        return "model: no compressed matrix to time"
    return "model (compressed layers, summed): " + ", ".join(
        f"batch {b}: {t[f'b{b}'] * 1e6:.0f} us vs dense {t[f'b{b} dense'] * 1e6:.0f} us "
        f"({t[f'b{b} dense'] / max(t[f'b{b}'], 1e-12):.2f}x)" for b in (1, 32))


def _cmd_info(a: argparse.Namespace) -> int:
    src = open_source(a.file)
    if isinstance(src, Container):
        with src:
            src.check_checksums()  # the table is only as good as the file: read it all once
            rep = Report.of_container(src)
            if a.timing:
                _add_timings(rep, src)
            print(rep.table())
            if a.timing:
                print(_timing_totals(rep))
                s = src.structure_info
                if s and s.get("kind") == "onnx" and importlib.util.find_spec("onnxruntime"):
                    print(time_onnx_model(src).line())
        return EXIT_OK
    with src:  # a plain model: its tensors and what 'compress' would do with each by default
        rows = [("tensor", "shape", "dtype", "bytes", "default plan")]
        for d in plan(src.info(), "auto"):
            st = printable(src.stored_dtypes.get(d.name) or d.dtype.name)
            rows.append((printable(d.name), "x".join(map(str, d.shape)) or "()", st,
                         human(source_nbytes(src, d.name, d.shape, d.dtype)),
                         "compress" if d.action != "skip" else f"keep: {printable(d.reason)}"))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for k, r in enumerate(rows):
        print("  ".join(c.rjust(w[i]) if i == 3 else c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
        if k == 0:
            print("  ".join("-" * x for x in w))
    skipped = getattr(src, "skipped", None) or {}
    for name, why in skipped.items():   # (not readable as arrays: 'compress' would not store them)
        print(f"{printable(name)}: not read ({printable(why)})")
    print(f"{src.format} model, {len(rows) - 1} tensors"
          + (f" and {len(skipped)} not read" if skipped else "") + ", not a weightpress container")
    return EXIT_OK


def _cmd_decompress(a: argparse.Namespace) -> int:
    _check_output(a.output, a.file, *([a.like] if a.like else []))
    with Container(a.file) as c:
        structure = c.structure() if a.like is None else None
        ext = os.path.splitext(a.output)[1].lower().lstrip(".")
        if structure is not None and ext == {"h5": "h5", "keras": "keras"}.get(structure[0], structure[0]) \
                or structure is not None and structure[0] == "h5" and ext == "hdf5":
                write_from_skeleton(a.output, structure[0], structure[1], c)
        else:
            wmap = c.source.get("weight_map")
            save_model(a.output, c, like=a.like, metadata=c.source_metadata,
                       shards=json.loads(wmap) if wmap else None)
        if c.not_stored and not a.like:
            print(f"weightpress: warning: {len(c.not_stored)} tensor(s) of the original were "
                  f"not stored and are missing from {a.output} (decompress with --like the "
                  f"original to keep them): {printable(', '.join(list(c.not_stored)[:5]))}",
                  file=sys.stderr)
    print(f"wrote {a.output}")
    return EXIT_OK


def _model_inputs(path: str, arg: str) -> dict[str, np.ndarray]:
    """Sample model inputs from an ``.npz`` (input name -> array)."""
    try:
        z = np.load(path)
    except (ValueError, EOFError) as e:
        raise ValueError(f"{arg}: {printable(path)}: not an .npz of arrays ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{arg}: {printable(path)}: a single array, not an .npz mapping the "
                         f"model's input names to arrays")
    with z:
        try:
            return {k: z[k] for k in z.files}
        except (ValueError, EOFError, OSError) as e:
            raise ValueError(f"{arg}: {printable(path)}: unreadable array ({e})") from None


def _cmd_export(a: argparse.Namespace) -> int:
    if a.like is not None and os.path.isdir(a.like):
        for r in export_compressed_tensors(a.file, a.output, a.like):
            print(f"{printable(r.name):<40} {r.form:<15} {r.how:<32} {r.note}")
        print(f"wrote {a.output} (compressed-tensors)")
        return EXIT_OK
    _check_output(a.output, a.file, *([a.like] if a.like else []))
    rows = export_onnx(a.file, a.output, a.like, compute="exact" if a.exact else "fast",
                       external_data=a.external_data, conv_quant=a.conv_quant,
                       lstm_quant=a.lstm_quant, group_quant=a.group_quant,
                       int8_weights=a.int8_weights, check=not a.no_check, never_slower=not a.allow_slower,
                       inputs=_model_inputs(a.inputs, "--inputs") if a.inputs else None)
    for r in rows:
        print(f"{printable(r.name):<32} {r.form:<15} {r.how:<40} {human(r.nbytes):>9}  {r.note}")
    if rows.output_error is not None:
        print(f"outputs vs the container's computation (sample inputs): {rows.output_error:.2e} "
              f"(stated error {rows.stated_error:.2e})")
    elif not a.no_check:
        print("outputs: no layer rounds its activations (float products, as the container "
              "computes), nothing to check")
    done = sum(r.compressed for r in rows)
    print(f"wrote {a.output}: {done} of {len(rows)} tensors run compressed, "
          f"{human(sum(r.nbytes for r in rows))} of weights (dense: {human(sum(r.dense_nbytes for r in rows))})")
    return EXIT_OK


def _cmd_verify(a: argparse.Namespace) -> int:
    original = None
    if a.against:
        original = open_source(a.against)
    res = verify(a.file, original, progress=_Progress())
    for p in res.problems:
        print(f"FAIL {printable(p)}")
    print(f"{'ok' if res.ok else 'FAILED'}: {res.checked} tensors checked, "
          f"{len(res.problems)} problem(s)")
    return EXIT_OK if res.ok else EXIT_FAIL


def _cmd_demo(a: argparse.Namespace) -> int:
    run_demo()
    return EXIT_OK


def _check_output(path: str, *inputs: str) -> None:
    """Fail early (before any work) when the output cannot or must not be written: it must be
    a regular file or a new path (never a directory, FIFO or device, which the atomic rename
    would replace), and must not be any input, however reached (symlinks, symlinked folders,
    hard links: compared by device and inode)."""
    if os.path.exists(path):
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
            raise ValueError(f"-o {path}: is {what}, not a regular file; give a file path")
        for inp in inputs:
            if os.path.exists(inp) and os.path.samefile(path, inp):
                raise ValueError(f"-o {path}: is the input {inp} (the same file); "
                                 f"write the output elsewhere")
    for inp in inputs:  # a new path can still name an input through a symlinked folder
        if os.path.realpath(path) == os.path.realpath(inp):
            raise ValueError(f"-o {path}: is the input {inp}; write the output elsewhere")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"output directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise PermissionError(f"output directory {d!r} is not writable")


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every temporary file is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def _install_signal_handlers() -> dict[int, Any]:
    """Route SIGTERM and SIGHUP through the same cleanup as SIGINT (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            old[sig] = signal.signal(sig, _raise_terminated)
    return old


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = _parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0)
    cmd = {"compress": _cmd_compress, "info": _cmd_info, "decompress": _cmd_decompress,
           "export": _cmd_export,
           "verify": _cmd_verify, "demo": _cmd_demo}[a.command]
    old_handlers = _install_signal_handlers()
    try:
        return cmd(a)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, _Terminated) else signal.SIGINT
        print(f"weightpress: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        out = getattr(a, "output", None)
        if a.command == "compress" and out and os.path.isdir(f"{out}.journal"):
            print(f"weightpress: the finished layers are kept in {printable(out)}.journal: rerun "
                  f"with --resume to continue, or delete it", file=sys.stderr)
        return 128 + int(signum)
    except (ValueError, TypeError, OSError, KeyError, ImportError) as e:
        if os.environ.get("WEIGHTPRESS_DEBUG"):
            raise
        msg = str(e) if not isinstance(e, OSError) or not e.filename else \
            f"{e.strerror or e}: {e.filename}"
        if isinstance(e, KeyError):
            msg = f"no tensor {e}"
        line = printable(msg.splitlines()[0]) if msg.strip() else type(e).__name__
        print(f"weightpress: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, for anything else
        if os.environ.get("WEIGHTPRESS_DEBUG"):
            raise
        print(f"weightpress: internal error: {type(e).__name__}: {printable(str(e))[:500]}",
              file=sys.stderr)
        return EXIT_FAIL
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
