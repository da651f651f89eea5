"""Compress a whole model: rules (which tensors), a target (ratio or error), a plan per tensor,
streaming into a container, and a report.

Flow: ``open_source(path)`` gives a lazy mapping name -> array; :func:`plan` decides per tensor
(compress with a method, or keep dense and why); :func:`compress_model` loads one tensor at a
time, compresses it to its byte or error budget and stages it in a
:class:`~weightpress.container.ContainerWriter`; the returned :class:`Report` is the per-layer
table.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._optional import require
from .._threads import _resolve as _resolve_threads
from .._validation import real_scalar
from ..compression import methods as M
from . import curves as C
from . import distributed as D
from .allocate import Candidate, allocate, size_aware_budgets
from ..compression.aware import (STEP_BITS, known_error, layer_error, remember_error, warm_quant,
                                 weights_hash)
from ..compression.registry import compress
from ..compression.calibration import CalibrationSet, check_calibration
from ..compression.matrices import CompressedMatrix, Dense
from ..compression.quant import Quantized
from ..compression.storage import (QUANT_LADDER, Budget, Precision, dense_nbytes, index_itemsize,
                                   lowrank_nbytes, sparse_nbytes, stored_itemsize, value_itemsize)
from ..compression.views import MatrixView
from ..linalg.memory import release_free_memory, release_rows
from ..io import open_model
from ..io.structure import skeleton_of
from ..io._base import TensorSource
from .container import FORMAT, Container, ContainerWriter, Staged, _compact, header_estimate, stage_tensor
from .journal import Journal
from .local_pool import PARALLEL_LAYER_BYTES, LockedSource, ahead_for, ordered_map
from .report import Report, Row
from .rules import (DEFAULT_MIN_SIZE, DEFAULT_RULES, Decision, Rule, _soft_kept, parse_rule, plan,
                    tensor_views)

__all__ = ["Rule", "parse_rule", "DEFAULT_RULES", "Decision", "plan", "compress_model",
           "compress_tensor", "Report", "open_source", "default_layout", "global_threshold",
           "Target", "Job", "prepare", "Layer", "Budgeted", "budget_layers", "execute",
           "source_nbytes", "stage_layer", "layer_curve"]

def default_layout(source: Any) -> str:
    """PyTorch-style ``[out, in]`` for safetensors/PyTorch/npz, ``[in, out]`` for Keras/ONNX."""
    fmt = getattr(source, "format", "")
    return "in_out" if fmt in ("keras", "onnx", "h5") else "out_in"


def compress_tensor(W: np.ndarray, method: str, *, error: float | None = None,
                    nbytes: float | None = None, options: Mapping[str, Any] | None = None,
                    layout: str = "out_in", orig_nbytes: int | None = None,
                    storage: str | None = None, calibration: Any = None,
                    prefer: str = "size") -> CompressedMatrix:
    """One matrix with one method to one budget (``error`` or ``nbytes``), a rule's
    ``options`` taking precedence (:func:`rule_budget`); weight-space, or data-aware with
    ``calibration`` statistics (:func:`weightpress.compression.registry.compress`)."""
    b = rule_budget(options or {}, W, error=error, nbytes=nbytes, orig_nbytes=orig_nbytes,
                    storage=storage)
    return compress(W, method, b, storage=storage, layout=layout, calibration=calibration,
                    options=options, prefer=prefer)


def rule_budget(options: Mapping[str, Any], W: np.ndarray, *, error: float | None = None,
                nbytes: float | None = None, orig_nbytes: int | None = None,
                storage: str | None = None) -> Budget | None:
    """The budget a tensor gets: a rule's ``error``, ``ratio`` (of ``orig_nbytes``, default
    ``W.nbytes``), ``rank`` or ``sparsity`` (as the bytes of that rank or of the kept entries)
    override the model-wide ``error``/``nbytes``; None when nothing sets one (a ``pattern`` or
    ``n_nonzero`` setting fixes the size)."""
    o = dict(options)
    shape = (int(W.shape[0]), int(W.shape[1]))
    isz = value_itemsize(W.dtype, storage)
    if "error" in o:
        return Budget(error=real_scalar(o["error"], "error", low=0.0))
    if "ratio" in o:
        base = W.nbytes if orig_nbytes is None else orig_nbytes
        return Budget.ratio(o["ratio"], base)
    if "rank" in o:
        r = int(o["rank"])
        if r < 0:
            raise ValueError(f"rank must be >= 0, got {r}")
        return Budget(nbytes=lowrank_nbytes(shape, min(r, min(shape)), isz))
    if "sparsity" in o:
        keep = W.size - int(round(real_scalar(o["sparsity"], "sparsity", low=0.0, high=1.0) * W.size))
        return Budget(nbytes=sparse_nbytes(shape, keep, isz))
    if "pattern" in o or "n_nonzero" in o or "bits" in o or (error is None and nbytes is None):
        return None
    return Budget(error=error, nbytes=nbytes)


def global_threshold(source: Mapping[str, np.ndarray], names: list[str], *,
                     keep: int | None = None, error: float | None = None) -> float:
    """One magnitude threshold across tensors: keep about ``keep`` entries in all, or drop at
    most ``error``² of the total energy. Streams the tensors once (a 32768-bin histogram of the
    magnitudes' float32 bit patterns: bins 1 % wide, so the result is that close)."""
    counts = np.zeros(1 << 16, np.int64)
    energy = np.zeros(1 << 16, np.float64)
    for n in names:
        a = np.abs(np.asarray(source[n], dtype=np.float32)).reshape(-1)
        b = (a.view(np.uint32) >> 15).astype(np.int64)
        counts += np.bincount(b, minlength=1 << 16)
        energy += np.bincount(b, weights=a.astype(np.float64) ** 2, minlength=1 << 16)
    # from the top bin down: cumulative kept count / kept energy
    kc = np.cumsum(counts[::-1])[::-1]
    if keep is not None:
        ok = np.nonzero(kc <= keep)[0]
    else:
        dropped = np.concatenate([[0.0], np.cumsum(energy)[:-1]])  # energy below each bin
        ok = np.nonzero(dropped <= (error or 0.0) ** 2 * energy.sum())[0][-1:]
    if ok.size == 0:
        return float("inf")
    edge = int(ok[0]) if keep is not None else int(ok[-1])
    return float(np.array([edge << 15], np.uint32).view(np.float32)[0])


def open_source(path: str | os.PathLike[str]) -> TensorSource:
    """Open a model file lazily: ``weightpress.io.open_model`` when available, else a small
    built-in reader for ``.safetensors`` and ``.npz``. A container opens as its decoded dense
    tensors (:class:`~weightpress.container.Container`)."""
    src = open_model(path)
    if src.metadata.get("format") == FORMAT:  # a container: its decoded dense tensors
        src.close()
        return Container(path)
    return src


def source_nbytes(source: Any, name: str, shape: tuple[int, ...], dt: np.dtype) -> int:
    """Bytes the source file spends on tensor ``name`` (in its stored dtype)."""
    stored = getattr(source, "stored_dtypes", {}).get(name)
    return dense_nbytes(shape, stored_itemsize(stored, dt))


_BF16 = ("BF16", "bfloat16")


def _value_itemsize(source: Any, d: Decision, vdt: np.dtype | None, bf16: bool) -> int:
    if bf16:
        return value_itemsize(np.float32, "BF16")
    if vdt is not None:
        return vdt.itemsize
    return stored_itemsize(getattr(source, "stored_dtypes", {}).get(d.name), d.dtype)


def _narrow(W: np.ndarray, dt: np.dtype, name: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        Wn = W.astype(dt)
    if np.isfinite(W).all() and not np.isfinite(Wn).all():
        raise ValueError(f"{name}: values overflow {dt} (largest |w| is {np.abs(W).max():.4g}); "
                         f"store it in its own dtype")
    return Wn


def compress_model(source: TensorSource, out: str | os.PathLike[str], *,
                   ratio: float | None = None, error: float | None = None,
                   method: str = "auto", rules: Iterable[Rule] = (),
                   min_size: int = DEFAULT_MIN_SIZE, layout: str | None = None,
                   scope: str = "layer", options: Mapping[str, Any] | None = None,
                   value_dtype: Any = None, calibration: Any = None, prefer: str = "size",
                   progress: Callable[[int, int, str], None] | None = None,
                   curves_out: dict[str, Any] | None = None, coding: str | None = None,
                   client: Any = None, journal: bool = False, resume: bool = False) -> Report:
    """Compress every tensor of ``source`` per :func:`plan` into the container ``out``.

    Parameters
    ----------
    source : TensorSource
        The model (see :func:`open_source`).
    out : str or os.PathLike
        The container to write (atomically: nothing is left behind on failure).
    ratio, error : float
        Exactly one: the container should be ``ratio`` times smaller than the source's tensor
        data (skipped tensors count at full size, so the compressed ones are squeezed harder),
        or every compressed tensor's relative weight error is at most ``error``.
    method : str
        ``prune``, ``nm``, ``lowrank``, ``slr`` or ``auto`` (smallest form per layer for the
        budget, never bigger than dense).
    options : Mapping, optional
        Method options for every compressed tensor (``rank``, ``sparsity``, ``pattern``),
        overridden by a matching rule's own options; with a size option the target may be
        omitted.
    value_dtype : numpy dtype or "bfloat16", optional
        Store the compressed tensors' values and factors in this float dtype (``float16`` or
        ``"bfloat16"`` halve float32 ones); errors are still measured against the original.
        Default: the tensor's own (bfloat16 for tensors the source stores as bfloat16).
    scope : str
        ``"layer"`` (each layer gets the same ratio or error), ``"global"`` (``prune`` only:
        one magnitude threshold for all compressed layers), or ``"allocate"`` (with ``ratio``:
        the byte budget is split across layers by their measured error-vs-size curves, so
        layers that compress cheaply give more; errors are output-space errors where
        calibration data exists).
    calibration : str, mapping or CalibrationSet, optional
        Inputs of the layers: a ``.npz``/``.safetensors`` file or mapping from *weight* tensor
        names to that layer's input activations ``(n_samples, in)`` (or ready
        :class:`~weightpress.calibration.CalibrationStats`). Layers with calibration use the
        data-aware methods (OBS pruning, whitened low-rank, activation-scaled sparse +
        low-rank) and ``error`` means the relative *output* error ``‖XWᵀ − XŴᵀ‖/‖XWᵀ‖``.
    prefer : str
        ``"size"`` or ``"speed"`` (data-aware ``auto``: among forms meeting the budget, the
        one that runs fastest here at batch 32).
    curves_out : dict, optional
        Filled with each layer's error-vs-size candidates and the chosen one (``allocate``).
    coding : str, optional
        ``"zstd"``: entropy-code the packed integer codes of quantized layers where that saves
        bytes (needs ``zstandard``); budgets count the uncoded size, so files come out smaller.
    client : distributed.Client, optional
        Spread the layers over a Dask cluster: every layer's curve (``allocate``) and build is
        one task; workers open ``source``'s file themselves (it needs a path they can read,
        and so does a calibration file) and send back the stored arrays, which are written
        here in plan order, so the file is byte-identical to the one made without a client.
        A layer whose task fails is retried (twice); progress counts finished layers.
    journal : bool
        Keep a journal beside the output (``out + ".journal"``, removed on success): the
        budgets and every finished layer, so an interrupted run can continue.
    resume : bool
        Continue from the journal of an interrupted run with the same input and settings
        (implies ``journal``); without a journal the run starts afresh.

    Raises
    ------
    ValueError
        Bad arguments, or a ratio the kept tensors make impossible (the message says the most
        that can be reached); ``resume`` with a journal written for another input or other
        settings (the message says which).
    """
    target = Target.of(ratio=ratio, error=error, method=method, scope=scope, options=options,
                       coding=coding,
                       value_dtype=value_dtype, prefer=prefer)
    cal = None
    if calibration is not None:
        cal = calibration if isinstance(calibration, CalibrationSet) else CalibrationSet(calibration)
    if not source.info():
        raise ValueError(f"{getattr(source, 'path', 'source')}: no tensors to compress "
                         f"(a checkpoint without weights?)")
    job = prepare(source, method, rules, min_size, layout)
    out = os.fspath(out)
    jr = None
    if journal or resume:
        jr = Journal.start(out, source, settings={
            "target": target, "method": method, "rules": list(rules), "min_size": min_size,
            "layout": job.layout, "decisions": job.decisions}, calibration=cal, resume=resume)
    try:
        plan_ = jr.restore_budgets(job, Layer, Budgeted, curves_out) if jr is not None else None
        if plan_ is None:
            plan_ = budget_layers(source, job, target, cal, curves_out, progress, client=client)
            if jr is not None:
                jr.save_budgets(plan_, curves_out)
        if target.ratio is None or not plan_.work:
            rep = execute(source, out, job, plan_, target, cal, progress, client=client,
                          journal=jr)
        else:
            # the search's tries keep every layer they build (the run's journal, else a
            # scratch one beside the output): a later try that asks a layer for a budget an
            # earlier one built it at (the mixed try: every layer at one of two tried
            # budgets) reads it back instead of building it again
            store = jr if jr is not None else _scratch_journal(out)
            steps = _steps_pay(job, plan_, target, cal)
            try:
                rep = _write_to_ratio(
                lambda path, lr, alt=None: execute(
                    source, path, job, plan_,
                    replace(target, alt=steps) if alt is True else target, cal, progress,
                    layer_ratio=lr, client=client, journal=store,
                    alt=alt if isinstance(alt, Mapping) else None),
                out, target.ratio, plan_, steps > 0)
            finally:
                if store is not jr:
                    store.remove()
    except (ValueError, TypeError):
        if jr is not None:  # bad input: a rerun cannot pick anything up, leave nothing behind
            jr.remove()
        raise
    if jr is not None:
        jr.remove()
    if target.error is not None and rep.file_bytes >= plan_.src_bytes:
        plan_.notes.append(f"the container ({rep.file_bytes} bytes) is not smaller than the input "
                           f"({plan_.src_bytes} bytes) at error {target.error:g}: loosen --error "
                           f"or use --ratio")
    rep.notes = plan_.notes
    return rep


def _scratch_journal(out: str) -> Journal:
    """A private, empty journal in a fresh directory beside ``out`` (removed by the caller):
    the finished layers of a ratio search's tries, on disk, not in memory; not fsync'd (a
    crash loses the run anyway: nothing reads them after it)."""
    d = tempfile.mkdtemp(prefix=".wp-layers-", dir=os.path.dirname(os.path.abspath(out)))
    return Journal(d, {}, durable=False)


@dataclass(frozen=True)
class Target:
    """The user's target for a whole model, checked once: ``ratio`` (file bytes) or ``error``
    (per layer), or only size options; how values are stored; how the budget is spread."""

    ratio: float | None
    error: float | None
    scope: str
    prefer: str
    options: dict[str, Any]
    value_dtype: np.dtype | None  # float values narrowed to this dtype (None: their own)
    bf16: bool                    # float32 values stored as bfloat16
    method: str = "auto"
    coding: str | None = None     # "zstd": entropy-coded integer codes
    # a ratio search's first try: calibrated quantized layers are also built at alt x their
    # byte budget (Staged.alt), which the search may take instead of a second try
    alt: float = 0.0

    @classmethod
    def of(cls, *, ratio: Any, error: Any, method: str, scope: str, options: Any,
           value_dtype: Any, prefer: str, coding: str | None = None) -> "Target":
        opts = dict(options or {})
        bf16 = isinstance(value_dtype, str) and value_dtype.lower() in ("bfloat16", "bf16")
        vdt = np.dtype(np.float32) if bf16 else (None if value_dtype is None else np.dtype(value_dtype))
        if vdt is not None and vdt.kind != "f":
            raise ValueError(f"value_dtype: expected a floating dtype (float16, bfloat16, float32), "
                             f"got {vdt}")
        sized = {"rank", "sparsity", "pattern", "bits"} & opts.keys()
        if (ratio is not None and error is not None) or (ratio is None and error is None and not sized):
            raise ValueError("give exactly one of ratio (e.g. 4) and error (e.g. 0.05), "
                             "or a size option (rank, sparsity, N:M pattern or bits)")
        if ratio is not None:
            ratio = real_scalar(ratio, "ratio", low=1.0)
        if error is not None:
            error = real_scalar(error, "error", low=0.0)
        if scope not in ("layer", "global", "allocate"):
            raise ValueError(f"scope: expected 'layer', 'global' or 'allocate', got {scope!r}")
        if scope == "global" and method != "prune":
            raise ValueError(f"scope='global' works with method 'prune', got {method!r}")
        if scope == "allocate" and ratio is None:
            raise ValueError("scope='allocate' splits a byte budget: give ratio")
        if prefer not in ("size", "speed"):
            raise ValueError(f"prefer: expected 'size' or 'speed', got {prefer!r}")
        if coding not in (None, "zstd"):
            raise ValueError(f"coding: expected None or 'zstd', got {coding!r}")
        if coding is not None:
            require("zstandard", "coding='zstd'")
        return cls(ratio, error, scope, prefer, opts, vdt, bf16, method, coding)


@dataclass
class Job:
    """What the model is and what happens to each tensor: the decisions (on matrix views of
    N-D weights), the views, tied names, the layout and the model's skeleton."""

    decisions: list[Decision]
    views: dict[str, MatrixView | None]
    aliases: dict[str, str]          # tied name -> the name whose storage it shares
    layout: str                      # the model-wide default
    layout_given: bool               # the user chose it (views then keep it)
    skeleton: tuple[str, bytes] | None
    shapes: dict[str, tuple[int, ...]]  # each tensor's own shape


def prepare(source: TensorSource, method: str = "auto", rules: Iterable[Rule] = (),
            min_size: int = DEFAULT_MIN_SIZE, layout: str | None = None) -> Job:
    """Plan every tensor of ``source`` (:func:`~weightpress.model.rules.plan` on the matrix
    each N-D weight is viewed as), store tied tensors once, and keep the model's skeleton."""
    infos = dict(source.info())
    views = tensor_views(source)
    user_rules = list(rules)
    pinfos = {n: (views[n].matrix_shape if views.get(n) is not None else inf.shape, inf.dtype)
              for n, inf in infos.items()}
    decisions = plan(pinfos, method, user_rules, min_size)
    aliases = {n: t for n, t in getattr(source, "aliases", {}).items() if t in infos}
    for d in decisions:
        v = views.get(d.name)
        if d.name in aliases:
            d.action, d.reason = "skip", f"tied to {aliases[d.name]}"
        elif (d.action != "skip" and v is not None and v.kind in ("bias", "embedding")
              and not any(r.matches(d.name) for r in user_rules)):
            d.action, d.reason = "skip", v.kind
    return Job(decisions, views, aliases, layout or default_layout(source), layout is not None,
               skeleton_of(source), {n: tuple(inf.shape) for n, inf in infos.items()})


@dataclass
class Layer:
    """One tensor's part of the job: its decision, its bytes in the source, and the budget
    it gets (a byte or error :class:`~weightpress.compression.storage.Budget`, a global pruning
    threshold, or an allocated form at a byte budget; none for kept tensors and size options),
    or the dtype a kept float tensor is stored in."""

    decision: Decision
    orig_bytes: int
    budget: Budget | None = None
    threshold: float | None = None
    form: str | None = None          # allocated form, built at budget.nbytes
    keep_dtype: np.dtype | None = None  # kept float tensor stored in this dtype


@dataclass
class Budgeted:
    """Every layer with its budget, and what the search did to reach the target."""

    layers: list[Layer]
    src_bytes: int
    notes: list[str]
    squeezable: int = 0              # source bytes of the tensors compressed
    layer_ratio: float | None = None  # how much each of them shrinks (ratio targets)

    @property
    def work(self) -> list[Layer]:
        return [ly for ly in self.layers if ly.decision.action != "skip"]


def budget_layers(source: TensorSource, job: Job, target: Target,
                  cal: CalibrationSet | None = None, curves_out: dict[str, Any] | None = None,
                  progress: Callable[[int, int, str], None] | None = None, *,
                  client: Any = None) -> Budgeted:
    """Give every tensor its budget: the whole-file ratio becomes per-layer byte budgets (the
    kept tensors, the model's skeleton and the container header paid first; when they leave too
    little room, kept floats go to float16 and then the tensors the default rules keep are
    compressed too, and the notes say so), a global threshold, or an allocation across layers.

    Raises
    ------
    ValueError
        A ratio the kept tensors and the header make impossible (the message names the largest
        kept tensor and gives the best reachable ratio).
    """
    decisions = job.decisions
    layers = {d.name: Layer(d, 0 if d.name in job.aliases
                            else source_nbytes(source, d.name, d.shape, d.dtype))
              for d in decisions}
    src_path = getattr(source, "path", "")
    src_bytes = getattr(source, "file_bytes", None) or (
        os.path.getsize(src_path) if os.path.isfile(src_path)
        else sum(ly.orig_bytes for ly in layers.values()))
    res = Budgeted(list(layers.values()), int(src_bytes), [])
    kept_floats = [d for d in decisions if d.action == "skip" and d.dtype.kind == "f"
                   and d.name not in job.aliases]
    if target.value_dtype is not None and not target.bf16:
        for d in kept_floats:
            layers[d.name].keep_dtype = target.value_dtype
    if target.error is not None:
        for ly in res.work:
            ly.budget = Budget(error=target.error)
    if target.ratio is None or not res.work and not kept_floats:
        _global(source, res.work, target, None)
        return res
    ratio = target.ratio
    extra = len(job.skeleton[1]) + 200 if job.skeleton else 0

    def room() -> tuple[float, float, int]:
        """Bytes left for the compressed tensors, bytes fixed, bytes compressed in the source."""
        kept = sum(dense_nbytes(ly.decision.shape, ly.keep_dtype.itemsize)
                   if ly.keep_dtype is not None else ly.orig_bytes
                   for ly in layers.values() if ly.decision.action == "skip")
        fixed = kept + header_estimate({d.name: d.action for d in decisions}) + extra
        return src_bytes / ratio - fixed, fixed, sum(ly.orig_bytes for ly in res.work)

    avail, fixed, squeezable = room()
    if avail <= 0 or squeezable / avail > 3 * ratio:  # too little room: kept floats to float16
        lowered = [d for d in kept_floats if d.dtype.itemsize > 2 and layers[d.name].keep_dtype is None]
        for d in lowered:
            layers[d.name].keep_dtype = np.dtype(np.float16)
        if lowered:
            res.notes.append(f"{len(lowered)} kept float tensors stored as float16 to reach "
                             f"ratio {ratio:g}")
        avail, fixed, squeezable = room()
    soft = [d for d in decisions if _soft_kept(d, job.views.get(d.name))]
    quantizing = target.method in ("auto", "quant")

    def kept_bytes(ds: list[Decision]) -> int:
        return sum(dense_nbytes(d.shape, layers[d.name].keep_dtype.itemsize)
                   if layers[d.name].keep_dtype is not None else layers[d.name].orig_bytes
                   for d in ds)

    if avail <= 0 or squeezable / avail > 3 * ratio:  # still: compress what the defaults keep
        chosen = soft
    elif quantizing and ratio > 2:
        # quantizing past what float16 gives: matrices only the defaults keep are quantized
        # too where, kept, they would take a large share of the file (embeddings: more than
        # EMBED_SHARE; small layers: more than SOFT_SHARE)
        emb = [d for d in soft if d.reason.startswith("embedding")]
        rest = [d for d in soft if not d.reason.startswith("embedding")]
        chosen = ((emb if kept_bytes(emb) > EMBED_SHARE * src_bytes / ratio else [])
                  + (rest if kept_bytes(rest) > SOFT_SHARE * src_bytes / ratio else []))
    else:
        chosen = []
    gentle: list[Decision] = []
    if chosen:
        # by quantization where the method allows (per row: the standard form of a lookup
        # table and of a small layer, whose few rows low rank and pruning serve badly)
        for d in chosen:
            if quantizing and d.reason.startswith("embedding"):
                gentle.append(d)
            d.action = "quant" if quantizing else target.method
            d.reason = f"compressed to reach ratio {ratio:g} (default: keep, {d.reason})"
            layers[d.name].keep_dtype = None
        res.notes.append(f"{len(chosen)} tensors the default rules keep were compressed to "
                         f"reach ratio {ratio:g}")
        avail, fixed, squeezable = room()
    if avail <= 0:
        big = max((d for d in decisions if d.action == "skip"), default=None,
                  key=lambda d: layers[d.name].orig_bytes)
        what = f"; the largest is {big.name} ({big.reason})" if big is not None else ""
        raise ValueError(f"ratio {ratio:g} is impossible: the tensors that cannot be "
                         f"compressed and the container's header take {int(fixed)} of "
                         f"{src_bytes} bytes{what}, so the best reachable ratio is below "
                         f"{src_bytes / fixed:.3g} (lower the ratio, or change --rules)")
    res.squeezable = squeezable
    res.layer_ratio = squeezable / avail if squeezable else 1.0
    fixed_q = _gentle_precision(gentle, job, avail)
    fixed_names = {d.name for d in gentle if "bits" in d.options}
    free = [ly for ly in res.work if ly.decision.name not in fixed_names]
    split = size_aware_budgets({ly.decision.name: int(np.prod(ly.decision.shape)) for ly in free},
                               {ly.decision.name: ly.orig_bytes for ly in free},
                               avail - fixed_q)
    for ly in res.work:
        ly.budget = Budget(nbytes=split.get(ly.decision.name, ly.orig_bytes / res.layer_ratio))
    if target.scope == "allocate" and res.work:
        orig = {ly.decision.name: ly.orig_bytes for ly in res.layers}
        opts = dict(target.options)
        if target.coding is not None and cal is not None:
            opts["coding"] = target.coding  # curves of coded sizes
        chosen = _allocate(source, [ly.decision for ly in res.work], orig, avail, job.layout,
                           cal, opts, target.value_dtype, target.bf16, curves_out,
                           progress, client)
        for ly in res.work:
            if ly.decision.name in chosen:
                ly.form, nb = chosen[ly.decision.name]
                ly.budget = Budget(nbytes=nb)
        return res
    _global(source, res.work, target, res.layer_ratio)
    return res


# precisions (bits, group) tried, in order, for the matrices the defaults keep when a ratio
# target quantizes them; the first whose bytes take at most GENTLE_SHARE of the room is used
GENTLE = ((8, 0), (4, 64))
GENTLE_SHARE = 0.5


def _gentle_precision(soft: list[Decision], job: Job, avail: float) -> int:
    """Embeddings only the defaults keep (kept because they tend to be sensitive) that a ratio
    target quantizes get a fixed, gentle precision, the standard one for them: int8 per row, else int4 in groups of 64, the first whose bytes stay within
    :data:`GENTLE_SHARE` of ``avail`` (none fits: they share the budget like the others).
    Sets their ``bits``/``group`` options; returns their bytes."""
    if not soft or avail <= 0:
        return 0
    shapes = {}
    for d in soft:
        v = job.views.get(d.name)
        lay = v.layout if v is not None and not job.layout_given else job.layout
        r, c = int(d.shape[0]), int(d.shape[1])
        shapes[d.name] = (r, c) if lay == "out_in" else (c, r)
    for bits, group in GENTLE:
        need = sum(Precision(bits, group if group < sh[1] else 0).nbytes(sh)
                   for sh in shapes.values())
        if need <= GENTLE_SHARE * avail:
            for d in soft:
                d.options = {**d.options, "bits": bits, **({"group": group} if group and
                                                            group < shapes[d.name][1] else {})}
            return need
    return 0


def _global(source: TensorSource, work: list[Layer], target: Target,
            layer_ratio: float | None) -> None:
    """``scope="global"``: one magnitude threshold for every pruned layer without options."""
    glob = [ly for ly in work if ly.decision.action == "prune" and not ly.decision.options]
    if target.scope != "global" or not glob:
        return
    names = [ly.decision.name for ly in glob]
    if layer_ratio is not None:
        ptr_bytes = sum(sparse_nbytes(ly.decision.shape, 0, 4) for ly in glob)
        entry = max(_value_itemsize(source, ly.decision, target.value_dtype, target.bf16)
                    + index_itemsize(ly.decision.shape[1]) for ly in glob)
        keep = int((sum(ly.orig_bytes for ly in glob) / layer_ratio - ptr_bytes) // entry)
        thr = global_threshold(source, names, keep=keep)
    else:
        thr = global_threshold(source, names, error=target.error)
    for ly in glob:
        ly.threshold = thr


def execute(source: TensorSource, out: str | os.PathLike[str], job: Job, budgeted: Budgeted,
            target: Target, cal: CalibrationSet | None = None,
            progress: Callable[[int, int, str], None] | None = None,
            layer_ratio: float | Mapping[str, float] | None = None, *, client: Any = None,
            journal: Journal | None = None,
            alt: Mapping[str, tuple[str, float]] | None = None) -> Report:
    """Build every layer to its budget, one source tensor in memory at a time (or one per Dask
    worker with ``client``: :func:`stage_layer` is the task), into the container ``out``
    (written atomically, in plan order, so the bytes do not depend on where layers were built);
    returns the per-layer report. ``layer_ratio`` rescales the byte budgets that came from the
    ratio (the ratio search's retries; a mapping gives each named layer its own). ``alt``
    maps layers to the form and byte budget of their first try's step up (``Staged.alt``:
    quantized, or dense), which they are built at instead. Layers the ``journal`` holds at the same
    budget are taken from it; new ones are recorded in it, with their step up when the try
    built one."""
    rows = []
    facts = {"name": os.path.basename(getattr(source, "path", "")),
             "format": getattr(source, "format", ""), "bytes": budgeted.src_bytes}
    if getattr(source, "weight_map", None):
        facts["weight_map"] = json.dumps(source.weight_map)
    n = len(budgeted.layers)
    tasks = {}  # index -> (layer, budget, view, layout): what building it needs
    for i, ly in enumerate(budgeted.layers):
        d = ly.decision
        if d.name in job.aliases:
            continue
        view = job.views.get(d.name)
        tlayout = view.layout if view is not None and not job.layout_given else job.layout
        if d.action == "skip":
            tlayout = view.layout if view else job.layout
        budget = ly.budget
        lr = layer_ratio.get(d.name) if isinstance(layer_ratio, Mapping) else layer_ratio
        if (lr is not None and budgeted.layer_ratio and ly.threshold is None
                and budget is not None and budget.nbytes is not None
                and (ly.form is None or ly.form != "dense")):
            # every byte budget follows the retry, allocated ones too (their form is kept)
            budget = Budget(nbytes=budget.nbytes * budgeted.layer_ratio / lr)
        if alt is not None and d.name in alt:  # the step up its first try built
            budget = Budget(nbytes=alt[d.name][1])
            ly = replace(ly, form=alt[d.name][0], budget=budget)
        tasks[i] = (ly, budget, view, tlayout)
    keys = {i: journal.key(t[0], t[1]) for i, t in tasks.items()} if journal is not None else {}
    done = {i for i in tasks if journal is not None and journal.has(i, keys[i])}
    todo = [i for i in tasks if i not in done]
    local = todo
    if client is not None:  # tensors kept as they are are read here, not sent back and forth
        local = [i for i in todo if tasks[i][0].decision.action == "skip"]
        remote = [i for i in todo if tasks[i][0].decision.action != "skip"]
        fresh = iter(D.map_layers(client, build_task, source, [tasks[i] for i in remote], target,
                                  cal, [budgeted.layers[i].decision.name for i in remote], n,
                                  n - len(remote), progress))
    else:
        fresh = _local_stages(source, tasks, todo, target, cal, n, progress)
    here = set(local) if client is not None else set()
    alternatives: dict[str, dict[str, Any]] = {}
    with ContainerWriter(out, facts, source_metadata=getattr(source, "metadata", None)) as w:
        if job.skeleton is not None:
            w.set_structure(*job.skeleton)
        for i, (ly, _, view, _) in tasks.items():
            d = ly.decision
            if i in done:
                st = journal.load(i, keys[i])  # type: ignore[union-attr]
            elif i in here:
                st = stage_layer(source, *tasks[i], target, None)
            else:
                st = next(fresh)
                if journal is not None and d.action != "skip":
                    journal.record(i, keys[i], st)
                    if st.alt is not None and st.alt_staged is not None:
                        journal.record(i, journal.key(replace(ly, form=st.alt["form"]),
                                                      Budget(nbytes=st.alt["budget"])),
                                       st.alt_staged)
                st.alt_staged = None
            if st.alt is not None and target.alt:  # (a first try's report only)
                alternatives[d.name] = st.alt
            e = w.add_staged(st)
            del st  # (its arrays are in the scratch file now)
            if client is not None and e["bytes"] >= _TRIM_BYTES:
                # a layer received from a worker: its frames' heap pages go back to the
                # system before the next one arrives (glibc keeps freed blocks under its
                # moving mmap threshold: the client crept up ~1x a layer over a 1 B run)
                release_free_memory()
            reshaped = view is not None and view.is_reshape
            rows.append(Row(d.name, tuple(view.shape) if view is not None else d.shape,
                            (e.get("label") or e["form"]) + (f" ({view.describe()})" if reshaped else ""),
                            e["params"], e["bytes"], e["orig_bytes"], e["error"], e["reason"],
                            e.get("output_error")))
        for name, tied in job.aliases.items():
            e = w.add_alias(name, tied)
            rows.append(Row(name, job.shapes[name], "tied", 0, 0, 0, e["error"], e["reason"]))
        # what the reader left out (no dtype to hold it) is listed in the container and the
        # report, never dropped in silence
        skipped = {str(k): str(v) for k, v in (getattr(source, "skipped", None) or {}).items()}
        w.not_stored.update(skipped)
        if progress is not None:
            progress(n, n, "writing")
    rep = Report(rows, w.file_bytes, budgeted.src_bytes, not_stored=skipped,
                 alternatives=alternatives)
    rep.compressed_bytes = sum(e["bytes"] for e in w.entries.values()
                               if e["method"] not in ("keep", "tied"))
    return rep


# a received layer of at least this many stored bytes is followed by a heap trim (execute)
_TRIM_BYTES = 1 << 20


def _local_stages(source: TensorSource, tasks: Mapping[int, Any], todo: list[int], target: Target,
                  cal: CalibrationSet | None, n: int,
                  progress: Callable[[int, int, str], None] | None) -> Iterator[Staged]:
    """:func:`stage_layer` of every layer of ``todo``, in order: side by side on this process's
    threads (one each, :func:`~weightpress.model.local_pool.ordered_map`) when every layer is
    at most :data:`~weightpress.model.local_pool.PARALLEL_LAYER_BYTES`, else one at a time on
    all of them. The same bytes either way."""
    workers = min(_resolve_threads(None), len(todo))
    if workers < 2 or any(tasks[i][0].orig_bytes > PARALLEL_LAYER_BYTES for i in todo):
        for i in todo:
            yield stage_layer(source, *tasks[i], target, _stats(cal, tasks[i][0]), i, n, progress)
        return
    src = LockedSource(source)
    lock = threading.Lock()

    def one(i: int) -> Staged:
        with lock:  # (a CalibrationSet computes and keeps statistics for one caller at a time)
            st = _stats(cal, tasks[i][0])
        return stage_layer(src, *tasks[i], target, st)  # type: ignore[arg-type]

    def announced() -> Iterator[int]:
        for i in todo:
            if progress is not None:
                progress(i, n, tasks[i][0].decision.name)
            yield i

    yield from ordered_map(one, announced(), workers,
                           ahead_for(max(tasks[i][0].orig_bytes for i in todo)),
                           cost=lambda i: _layer_cost(tasks[i][0].decision, tasks[i][3],
                                                      cal is not None
                                                      and tasks[i][0].decision.name in cal))


def _layer_cost(d: Decision, layout: str, calibrated: bool) -> float:
    """A layer's build time, up to a constant, to start the longest first: its weights,
    times its inputs where it is calibrated (the OBS/GPTQ sweeps and the products with ``H``
    cost ``out · in²``); 0 for a layer kept as it is."""
    if d.action == "skip" or len(d.shape) < 2:
        return 0.0
    n = float(np.prod(d.shape, dtype=np.float64))
    # inputs: all but the first axis ([out, in, kh, kw]), or all but the last ([in, out],
    # Keras' [kh, kw, in, out])
    n_in = n / float(d.shape[0] if layout == "out_in" else d.shape[-1])
    return n * (1.0 + n_in / 64.0) if calibrated else n


def _stats(cal: CalibrationSet | None, ly: Layer) -> Any:
    """The layer's calibration statistics, or None."""
    d = ly.decision
    if d.action == "skip" or cal is None or d.name not in cal:
        return None
    return cal[d.name]


def stage_layer(source: TensorSource, ly: Layer, budget: Budget | None, view: MatrixView | None,
                layout: str, target: Target, stats: Any, i: int = 0, n: int = 0,
                progress: Callable[[int, int, str], None] | None = None) -> Staged:
    """One tensor built to ``budget`` (or kept) and prepared for the container: the unit of
    work of :func:`execute` and of a Dask worker (the same arguments give the same bytes in
    any process)."""
    d = ly.decision
    if progress is not None:
        progress(i, n, d.name)
    W = source[d.name]
    stored = getattr(source, "stored_dtypes", {}).get(d.name) or None
    if d.action == "skip":
        A = np.asarray(W)
        reason = d.reason
        if ly.keep_dtype is not None and A.dtype != ly.keep_dtype:
            A = _narrow(A, ly.keep_dtype, d.name)
            reason = f"{reason}; stored as {A.dtype}"
        return stage_tensor(d.name, A, layout=layout, stored_dtype=stored,
                            orig_bytes=ly.orig_bytes, method="keep", reason=reason,
                            original=W if A.dtype != np.asarray(W).dtype else None,
                            dtype=W.dtype)
    if _compact(np.asarray(W)) is not None:
        # an expanded (stride-0) tensor: stored once as it is, never materialised
        return stage_tensor(d.name, np.asarray(W), layout=layout, stored_dtype=stored,
                            orig_bytes=ly.orig_bytes, method="keep",
                            reason="expanded view (stride 0), stored once")
    Wa = np.asarray(W)
    if view is not None and view.is_reshape:
        Wa = view.to_matrix(np.ascontiguousarray(Wa))
    if stats is not None:
        check_calibration(stats, d.name, d.shape, layout)
    try:
        m, reason = _build_layer(Wa, ly, budget, stats, target, layout, stored)
    except ValueError as err:  # name the tensor ("W contains NaN or Inf" alone does not)
        if repr(d.name) in str(err) or f"{d.name}:" in str(err):
            raise
        raise ValueError(f"tensor {d.name!r}: {err}") from None
    up = getattr(m, "_wp_alt", None)
    if up is not None:
        del m._wp_alt  # type: ignore[attr-defined]  # (not held with the chosen build)
    st = _staged(d.name, m, Wa, stored, ly, reason, view, W.dtype, layout, target, stats)
    if up is not None and stats is not None and (up[1] is None or up[1].nbytes < ly.orig_bytes):
        # the first try's step up (quantized, or dense when every precision fits), staged as
        # execute(..., alt=...) builds it
        form = "quant" if up[1] is not None else "dense"
        if up[1] is None:
            m, reason = _build_layer(Wa, replace(ly, form=form), Budget(nbytes=up[0]), stats,
                                     target, layout, stored)
        else:
            m, reason = up[1], d.reason
        sa = _staged(d.name, m, Wa, stored, ly, reason, view, W.dtype, layout, target, stats)
        st.alt = {"form": form, "budget": float(up[0]), "bytes": int(sa.entry["bytes"]),
                  "error": float(sa.entry["output_error"])}
        st.alt_staged = sa
    release_rows(Wa)  # the layer is done: a file's pages are not held through the next one
    if ly.orig_bytes >= _TRIM_BYTES:
        # and the heap's free pages, the build's, go back before the next layer (every
        # thread's arena: a Dask worker's task thread has its own, which glibc trims only
        # from its top)
        release_free_memory()
    return st


def _staged(name: str, m: CompressedMatrix, Wa: np.ndarray, stored: str | None, ly: Layer,
            reason: str, view: MatrixView | None, dtype: Any, layout: str, target: Target,
            stats: Any) -> Staged:
    """``m`` staged, with its exact output error where there are statistics."""
    st = stage_tensor(name, m, original=Wa, stored_dtype=stored, orig_bytes=ly.orig_bytes,
                      method=ly.decision.action, reason=reason,
                      view=view if view is not None and view.is_reshape else None, dtype=dtype)
    if stats is not None:
        Wo = Wa if layout == "out_in" else Wa.T
        exact = target.value_dtype is None and not target.bf16
        e = known_error(m, stats)  # (taken off m either way: it holds stats)
        e = e if exact else None
        if isinstance(m, Dense) and m.W is Wa:
            e = 0.0  # the layer as it is (what the pass gives: W − Ŵ is 0 exactly)
        if e is None:
            e = layer_error(Wo, m, stats)
            if exact:
                remember_error(m, e)  # a ratio search's next try may build the same form
        st.entry["output_error"] = e
    release_rows(Wa)  # the layer is done: a file's pages are not held through the next one
    return st


def _write_to_ratio(write: Callable[..., Report], out: str, ratio: float,
                    budgeted: Budgeted, steps: bool = True) -> Report:
    """Write, measure the file, and rewrite with the measured overhead until the file ratio
    is within 1 % below to 3 % above ``ratio`` (at most 6 tries; the first usually is: each
    try reads every tensor again, one at a time); keep the closest file at or above
    0.97·ratio. Raises ValueError (naming the best ratio reached) when none gets there.

    Once one try's file is too big and another's too small, the layers' own sizes and errors
    in those two tries (their reports) say what mixing them gives: the next try builds each
    layer at one of its two budgets (:func:`_mix`), which lands within a layer's step of the
    target where the forms' sizes move in steps (quantization's precisions) and bisecting
    one ratio for all layers keeps jumping over it.

    The first try (``write(path, layer_ratio, True)``, when ``steps``) also stages each
    calibrated quantized layer one step up (``Report.alternatives``, recorded in the journal); when its file is too
    small, the next try moves layers up that step (:func:`_mix_up`, ``write(path,
    layer_ratio, {name: (form, budget)})``): its layers are all in the journal already, so
    the target is met with one try's builds where the steps allow."""
    d = os.path.dirname(os.path.abspath(out))
    src_bytes, squeezable = budgeted.src_bytes, budgeted.squeezable
    layer_ratio: Any = budgeted.layer_ratio
    best: tuple[float, str, Report] | None = None
    tmps = []
    target = src_bytes / ratio
    try:
        lo = hi = None  # layer ratios known to give a file too big / too small
        reps: dict[float, Report] = {}
        mixed = False
        up: Any = True if steps else None  # the first try stages the steps up
        after_up = None  # the layer ratio the search goes on with if the steps up miss
        for _ in range(6):
            fd, tmp = tempfile.mkstemp(prefix=".wp-try-", suffix=".tmp", dir=d)
            os.close(fd)
            tmps.append(tmp)
            rep = write(tmp, layer_ratio, up)
            r = src_bytes / rep.file_bytes
            if r >= 0.97 * ratio and (best is None or abs(r - ratio) < abs(best[0] - ratio)):
                best = (r, tmp, rep)
            if 0.99 * ratio <= r <= 1.03 * ratio:  # aim close; >= 0.97 R is the promise
                break
            if isinstance(up, Mapping):  # the steps up missed the window: search on (a
                # second ratio's budgets may land closer than the steps; MiniLM-sized with
                # d=64, 4.20x here against 4.06x after two more tries)
                up, layer_ratio = None, after_up
                continue
            first, up = up is True, None
            if isinstance(layer_ratio, Mapping):  # a mix that missed the window
                if best is not None and best[1] == tmp:
                    break  # within a layer's step of the target: as close as the forms go
                assert lo is not None and hi is not None
                layer_ratio = float(np.sqrt(lo * hi))  # (mispredicted: bisect as before)
                continue
            cur = layer_ratio or 1.0
            reps[cur] = rep
            if r < ratio:
                lo = cur if lo is None else max(lo, cur)
            else:
                hi = cur if hi is None else min(hi, cur)
            if lo is not None and hi is not None:
                mix = None if mixed else _mix(reps[lo], reps[hi], lo, hi, target)
                mixed = True
                # each layer at its own side of the bracket; else bisect between the misses
                layer_ratio = mix if mix is not None else float(np.sqrt(lo * hi))
                continue
            spent = rep.compressed_bytes
            left = target - (rep.file_bytes - spent)
            if left <= 0 or spent <= 0:
                break
            asked = squeezable / cur
            layer_ratio = squeezable / max(asked * left / spent, 1.0)  # the forms' shortfall, scaled
            if first and r > ratio and rep.alternatives:
                moved = _mix_up(rep, target)
                if moved:  # the first try's layers, some a step up: no new builds
                    up, after_up, layer_ratio = moved, layer_ratio, cur
        if best is None:
            got = src_bytes / rep.file_bytes
            raise ValueError(f"ratio {ratio:g} is not reached: the best file written was "
                             f"{got:.3g}x smaller (the forms cannot shrink further); lower the "
                             f"ratio or change --rules")
        os.replace(best[1], out)
        best[2].file_bytes = os.path.getsize(out)
        return best[2]
    finally:
        for t in tmps:
            with contextlib.suppress(OSError):
                os.unlink(t)


def _steps_pay(job: Job, budgeted: Budgeted, target: Target, cal: Any) -> float:
    """How far up the first try should build each quantized layer's step (the factor on its
    byte budget; 0: no steps). Steps pay when the calibrated quantized layers, each at the
    largest precision its budget fits, would leave more of the file unused than the ratio's
    window allows (3 %), so that a file within it needs more bytes than one try gives
    (--ratio 4 on float32: int8 needs a little more than a quarter); otherwise the first try
    usually lands in the window and steps would be built for nothing. The factor is what the
    search's second try would ask of every layer to fill those bytes (at least
    :data:`ALT_STEP`). Decided from the budgets and shapes alone (the byte model), before
    anything is built."""
    if (not ALT_STEP or cal is None or target.ratio is None or not budgeted.squeezable
            or target.bf16):
        return 0.0
    unused = total = 0.0
    for ly in budgeted.work:
        d = ly.decision
        nb = ly.budget.nbytes if ly.budget is not None else None
        if (nb is None or d.name not in cal
                or not _may_step(ly, target, {**target.options, **d.options})):
            continue
        view = job.views.get(d.name)
        lay = view.layout if view is not None and not job.layout_given else job.layout
        r, c = int(d.shape[0]), int(d.shape[1])
        shape = (r, c) if lay == "out_in" else (c, r)
        nb = min(float(nb), float(ly.orig_bytes))
        fit = [p for p in QUANT_LADDER if p.nbytes(shape) <= nb]
        if fit and max(p.bits for p in fit) >= STEP_BITS:  # (quant_b steps only there)
            unused += nb - max(p.nbytes(shape) for p in fit)
            total += nb
    if unused <= (1 - 1 / 1.03) * budgeted.src_bytes / target.ratio:
        return 0.0
    return max(ALT_STEP, total / (total - unused))


def _mix_up(rep: Report, target: float) -> dict[str, tuple[str, float]] | None:
    """Layers of a first try whose file (``rep``) is too small that move one step up
    (``rep.alternatives``), by the most error removed per byte added (``size · error²``,
    output errors: the allocation's objective), while the file stays within ``target``
    bytes; name -> the step's form and byte budget. None when none moves."""
    moves = []
    for r in rep.rows:
        a = rep.alternatives.get(r.name)
        if a is None:
            continue
        extra = int(a["bytes"]) - r.nbytes
        e = r.output_error if r.output_error is not None else r.error
        gain = float(np.prod(r.shape)) * (e ** 2 - float(a["error"]) ** 2)
        if extra > 0 and gain > 0:
            moves.append((-gain / extra, r.name, extra))
    room = target - rep.file_bytes
    moves.sort()
    chosen = {}
    for _, name, extra in moves:
        if extra <= room:
            a = rep.alternatives[name]
            chosen[name] = (str(a.get("form", "quant")), float(a["budget"]))
            room -= extra
    return chosen or None


def _mix(big: Report, small: Report, lo: float, hi: float, target: float
         ) -> dict[str, float] | None:
    """Per-layer ratios mixing two tries (``big``'s file too big at layer ratio ``lo``,
    ``small``'s too small at ``hi``): every layer starts at ``hi``; layers move to ``lo``
    by the most error removed per byte added (``params · error²``, output errors where
    calibration gave them: the allocation's objective) while the file stays within
    ``target`` bytes. The same budget builds the same bytes, so the file is predicted to the
    header's few bytes. None when the reports do not pair up or nothing moves."""
    rows_b = {r.name: r for r in big.rows}
    if set(rows_b) != {r.name for r in small.rows}:
        return None
    moves = []
    for r in small.rows:
        rb = rows_b.get(r.name)
        if rb is None:
            return None
        extra = rb.nbytes - r.nbytes
        if extra <= 0:
            continue
        es = r.output_error if r.output_error is not None else r.error
        eb = rb.output_error if rb.output_error is not None else rb.error
        gain = r.params * (es ** 2 - eb ** 2)
        moves.append((-gain / extra, r.name, extra))
    room = target - small.file_bytes
    if not moves or room <= 0:
        return None
    moves.sort()
    chosen = {r.name: hi for r in small.rows}
    for _, name, extra in moves:
        if extra <= room:
            chosen[name] = lo
            room -= extra
    return chosen if any(v == lo for v in chosen.values()) else None


def _build_layer(Wa: np.ndarray, ly: Layer, budget: Budget | None, stats: Any, target: Target,
                 layout: str, stored: str | None) -> tuple[CompressedMatrix, str]:
    """One layer's compressed matrix at its budget, never bigger than what it replaces."""
    d = ly.decision
    Wv = Wa if target.value_dtype is None else _narrow(Wa, target.value_dtype, d.name)
    bf16 = target.bf16 or (target.value_dtype is None and (stored or "") in _BF16
                           and Wa.dtype == np.float32)
    storage = "BF16" if bf16 else None
    options = {**target.options, **d.options}
    if target.coding is not None:
        options["coding"] = target.coding  # quantization sizes coded streams
    error, nb = budget.pair() if budget is not None else (None, None)
    if (target.alt and stats is not None and nb is not None and error is None
            and storage is None and _may_step(ly, target, options)):
        options["_alt"] = target.alt  # its step up too (stage_layer stages it)
    if stats is not None and ly.orig_bytes > PARALLEL_LAYER_BYTES:
        # no low-rank skip for large layers: the floor's sketch, held beside the best
        # candidate, took a 2048² layer's calibrated auto --ratio 4 resident peak from 2.82x
        # to 2.95x the tensor (bench_memory; its traced peak fell, 2.45x -> 2.38x)
        options["_no_skip"] = True
    if ly.threshold is not None:
        m: CompressedMatrix = M.magnitude_prune(Wv, threshold=ly.threshold, layout=layout,
                                                storage=storage)
    elif ly.form is not None:
        m = _build(Wv, stats, ly.form, nb or 0.0, layout, storage, options)
    else:
        m = compress_tensor(Wv, d.action, error=error, nbytes=nb, options=options, layout=layout,
                            orig_nbytes=ly.orig_bytes, storage=storage, calibration=stats,
                            prefer=target.prefer)
    if target.coding is not None and isinstance(m, Quantized):
        m.set_coding(target.coding)
    if m.nbytes >= ly.orig_bytes:
        return Dense(Wa, layout), f"{d.action} would take {m.nbytes} bytes, dense is smaller"
    return m, d.reason


# options that set a layer's size themselves (rule_budget): no step up for those
_SIZED = frozenset(("error", "ratio", "rank", "sparsity", "pattern", "n_nonzero", "bits"))


def _may_step(ly: Layer, target: Target, options: Mapping[str, Any]) -> bool:
    """Whether a ratio search's first try may build this layer's step up (``Staged.alt``),
    the one test :func:`_steps_pay` (before anything is built) and :func:`_build_layer` (as
    it builds) both apply: auto or quant, sized by the search alone (no form, threshold or
    size option of its own), plain values (no value dtype or coding) at ``prefer="size"``,
    and small: the step's GPTQ result and its staged copy are held beside the layer's (a
    2048² layer's calibrated auto --ratio 4 peaked at 3.02x the tensor with them, over issue
    15's 3x; 2.80 without)."""
    return (ly.orig_bytes <= PARALLEL_LAYER_BYTES and ly.form is None and ly.threshold is None
            and ly.decision.action in ("auto", "quant") and target.value_dtype is None
            and target.coding is None and target.prefer == "size"
            and not _SIZED.intersection(options))

# the first try of a ratio search also builds calibrated quantized layers at at least this many
# times their byte budget (their step up: the next precisions, which a budget between two of
# them leaves unused; _steps_pay); the search then moves layers up, by the most error removed
# per byte, to fill the file instead of trying every layer again at a second ratio. 0: never
ALT_STEP = 1.1

# kept small matrices whose bytes exceed this share of the file a ratio target asks for are
# quantized too (below it they barely change what the others get); embeddings (often the most
# sensitive tensors: a lookup table or the input projection) only beyond EMBED_SHARE
SOFT_SHARE = 0.02
EMBED_SHARE = 1 / 3


# -- data-aware and allocated compression ------------------------------------------------------

# byte levels (fractions of the dense tensor) tried when measuring a layer's error-vs-size curve
CURVE_LEVELS = tuple(float(1.25 ** -k) for k in range(1, 18))  # 1/1.25 ... 1/44, 25% apart


def _forms_for(method: str) -> tuple[str, ...]:
    return {"prune": ("prune",), "lowrank": ("lowrank",), "slr": ("slr",), "nm": ("nm",),
            "code": ("code",), "quant": ("quant",), "lowrank-int8": ("lowrank-int8",),
            "auto": ("prune", "lowrank", "quant")}[method]


def _build(W: np.ndarray, stats: Any, form: str, nbytes: float, layout: str, storage: str | None,
           options: Mapping[str, Any]) -> CompressedMatrix:
    """One allocated form at one byte budget: data-aware with stats, weight-space without."""
    if form == "dense":
        return Dense(W, layout)
    opts = {k: v for k, v in options.items()
            if k in ("pattern", "damp", "dictionary", "coding", "_w_hash")}
    return compress(W, form, Budget(nbytes=nbytes), storage=storage, layout=layout,
                    calibration=stats, options=opts)


# byte levels of OBS pruning's curve (with calibration): every other level of CURVE_LEVELS,
# 56 % apart (curves.obs_curve: one factor, one self-measuring sweep per level; an N:M pattern
# is built and measured). The other built forms (sparse + low rank, coding, quantization) use
# CURVE_LEVELS; the one-pass curves use 48 levels (curves.py)
MEASURED_LEVELS = CURVE_LEVELS[::2]


def layer_curve(Wa: np.ndarray, d: Decision, orig_bytes: int, layout: str, stats: Any,
                options: Mapping[str, Any], vdt: Any, want_bf16: bool) -> list[Candidate]:
    """One layer's error-vs-size candidates for :func:`~weightpress.model.allocate.allocate`
    (dense first). Magnitude pruning and (whitened) low rank come from one sort or one SVD
    (:mod:`~weightpress.model.curves`), OBS pruning from one factor and one self-measuring
    sweep per level of :data:`MEASURED_LEVELS` (:func:`~weightpress.model.curves.obs_curve`); the
    other forms are built and measured at :data:`CURVE_LEVELS`. Labels are ``"form@budget"``: the byte budget that rebuilds it."""
    Wv = Wa if vdt is None else _narrow(Wa, vdt, d.name)
    storage = "BF16" if want_bf16 else None
    Wo = Wa if layout == "out_in" else Wa.T
    cands = [Candidate(orig_bytes, 0.0, "dense")]
    isz = value_itemsize(Wv.dtype, storage)
    stored_shape = (int(Wa.shape[0]), int(Wa.shape[1]))
    opts = {**options, **d.options}
    for form in _forms_for(d.action):
        pts: list[tuple[int, float, float]] | None = None
        if form == "prune" and stats is None:
            pts = C.prune_curve(np.asarray(Wa, np.float64), Wv, storage, stored_shape, isz,
                                orig_bytes)
        elif form == "lowrank" and stats is None:
            pts = C.lowrank_curve(np.asarray(Wa, np.float64), stored_shape, isz, orig_bytes)
        elif form == "lowrank":
            Wvo = Wv if layout == "out_in" else Wv.T
            pts = C.whitened_curve(Wvo, stats, stored_shape, isz, orig_bytes)
        elif form == "prune" and "pattern" not in opts:
            Wvo = Wv if layout == "out_in" else Wv.T
            pts = C.obs_curve(Wvo, stats, stored_shape, isz, orig_bytes, MEASURED_LEVELS,
                              float(opts.get("damp", 1e-2)))
        if pts is not None:
            cands += [Candidate(nb, e, f"{form}@{b:.0f}") for nb, e, b in pts if nb < orig_bytes]
            continue
        levels = MEASURED_LEVELS if form == "prune" else CURVE_LEVELS  # OBS sweeps are dear
        if form == "quant" and stats is not None:
            # the weights hashed once for every level's build (their cached results' key)
            opts = {**opts, "_w_hash": weights_hash(Wv, layout)}
            # every level's candidate precisions with one factorisation of H (then cached)
            warm_quant(Wv, stats, [orig_bytes * lv for lv in levels], layout=layout,
                       storage=storage, options={k: v for k, v in opts.items()
                                                 if k in ("damp", "coding", "_w_hash")})
        for nb in [orig_bytes * lv for lv in levels]:
            m = _build(Wv, stats, form, nb, layout, storage, opts)
            if m.form == "dense" or m.nbytes >= orig_bytes:
                continue
            # quantized candidates name their precision after '#' (plots draw one curve each)
            prec = f"#{m.name}" if form == "quant" and isinstance(getattr(m, "name", None), str) else ""
            cands.append(Candidate(m.nbytes, _curve_error(Wo, m, stats, form, vdt is None and not want_bf16),
                                   f"{form}@{nb:.0f}{prec}"))
            if form == "nm":
                break
    return cands


def _curve_error(Wo: np.ndarray, m: CompressedMatrix, stats: Any, form: str, own: bool) -> float:
    """A built curve point's error: calibrated quantization's is the one its GPTQ sweep
    measured (or a report's exact one; :mod:`~weightpress.compression.aware`), the same
    precision at several levels measured once, no ``out·in²`` pass per level; others (and
    values narrowed to another dtype, ``own`` False) are measured here."""
    if stats is not None and own and form == "quant":
        e = known_error(m, stats)
        if e is None:
            e = getattr(m, "_wp_predicted", None)
        if e is not None:
            return float(e)
    return layer_error(Wo, m, stats)


def _allocate(source: Any, work: list[Decision], orig: Mapping[str, int], budget: float,
              layout: str, cal: Any, options: Mapping[str, Any], vdt: Any, want_bf16: bool,
              curves_out: dict[str, Any] | None,
              progress: Callable[[int, int, str], None] | None,
              client: Any = None) -> dict[str, tuple[str, float]]:
    """Measure every layer's error-vs-size curve (:func:`layer_curve`; one Dask task per layer
    with ``client``), then split ``budget`` bytes across layers
    (:func:`weightpress.allocate.allocate`). Returns name -> (form, nbytes) to build."""
    curves: dict[str, list[Candidate]] = {}
    if client is not None:
        for d, cands in zip(work, D.map_curves(client, curve_task, source, work, orig, layout, cal,
                                               options, vdt, want_bf16, progress)):
            curves[d.name] = cands
    else:
        lock = threading.Lock()
        src: Any = source
        workers = min(_resolve_threads(None), len(work))
        if workers >= 2 and all(orig[d.name] <= PARALLEL_LAYER_BYTES for d in work):
            src = LockedSource(source)  # small layers side by side, as execute builds them

        def one(i: int) -> list[Candidate]:
            d = work[i]
            with lock:  # (a CalibrationSet serves one caller at a time)
                stats = cal[d.name] if cal is not None and d.name in cal else None
            return layer_curve(np.asarray(src[d.name]), d, orig[d.name], layout, stats, options,
                               vdt, want_bf16)

        def announced() -> Iterator[int]:
            for i, d in enumerate(work):
                if progress is not None:
                    progress(i, len(work), f"measuring {d.name}")
                yield i

        run = (ordered_map(one, announced(), workers,
                           ahead_for(max(orig[d.name] for d in work)),
                           cost=lambda i: _layer_cost(work[i], layout,
                                                      cal is not None and work[i].name in cal))
               if src is not source else map(one, announced()))
        for d, cands in zip(work, run):
            curves[d.name] = cands
    choice = allocate(curves, int(budget))
    if curves_out is not None:
        curves_out.update({n: {"candidates": curves[n], "chosen": i} for n, i in choice.items()})
    out = {}
    for n, i in choice.items():
        lab = curves[n][i].label
        form, _, nb = lab.partition("@")
        nb = nb.partition("#")[0]
        out[n] = (form, float(nb) if nb else float(orig[n]))
    return out


# -- Dask tasks (model.distributed submits them; a worker opens the files itself) --------------

def build_task(path: str, ly: Layer, budget: Budget | None, view: MatrixView | None,
               layout: str, target: Target, cal: Any) -> Staged:
    """Task: one layer built and staged (:func:`stage_layer`) from the model at ``path``."""
    src = D.worker_open(path, open_source)
    return stage_layer(src, ly, budget, view, layout, target,
                       D.worker_stats(cal, ly.decision.name) if ly.decision.action != "skip"
                       else None)


def curve_task(path: str, d: Decision, orig_bytes: int, layout: str, cal: Any,
               options: Mapping[str, Any], vdt: Any, want_bf16: bool) -> list[Candidate]:
    """Task: one layer's error-vs-size curve (:func:`layer_curve`)."""
    src = D.worker_open(path, open_source)
    return layer_curve(np.asarray(src[d.name]), d, orig_bytes, layout,
                       D.worker_stats(cal, d.name), options, vdt, want_bf16)
