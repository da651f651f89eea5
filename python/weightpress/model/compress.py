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
import fnmatch
import os
import tempfile
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validation import real_scalar
from ..compression import methods as M
from .allocate import Candidate, allocate
from ..compression.aware import compress_aware, layer_error
from ..compression.calibration import CalibrationSet, check_calibration
from ..compression.matrices import CompressedMatrix, Dense
from ..compression.storage import (dense_nbytes, index_itemsize, lowrank_nbytes, rank_for_bytes,
                                   sparse_nbytes, stored_itemsize, value_itemsize)
from ..io import open_model
from ..compression.views import MatrixView, matrix_view
from ..io._base import TensorInfo, TensorSource
from .container import FORMAT, Container, ContainerWriter, header_estimate
from .report import Report, Row

__all__ = ["Rule", "parse_rule", "DEFAULT_RULES", "Decision", "plan", "compress_model",
           "compress_tensor", "Report", "open_source", "default_layout", "global_threshold"]

ACTIONS = ("skip",) + M.METHODS
DEFAULT_MIN_SIZE = 4096


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a glob on tensor names) -> ``action`` (``skip`` or a method) with options.

    Options override the global target for matching tensors: ``ratio``, ``error``, ``rank``,
    ``sparsity``, ``pattern`` (N:M).
    """

    pattern: str
    action: str
    options: tuple[tuple[str, Any], ...] = ()
    reason: str = "user rule"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


_OPT_TYPES = {"ratio": float, "error": float, "rank": int, "sparsity": float, "pattern": str}


def parse_rule(text: str) -> Rule:
    """Parse ``GLOB=ACTION[:key=value,...]``, e.g. ``"*.attn.*=lowrank:rank=32"``, ``"lm_head*=skip"``.

    Raises
    ------
    ValueError
        Malformed text, unknown action or option, or a bad option value.
    """
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"rule: expected 'GLOB=ACTION[:key=value,...]', got {text!r}")
    pat, _, rest = text.partition("=")
    action, _, opts = rest.partition(":")
    action = action.strip()
    if not pat.strip() or action not in ACTIONS:
        raise ValueError(f"rule {text!r}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    options = []
    for item in filter(None, (o.strip() for o in opts.split(","))):
        k, eq, v = item.partition("=")
        if not eq or k not in _OPT_TYPES:
            raise ValueError(f"rule {text!r}: option must be one of {', '.join(_OPT_TYPES)} "
                             f"as key=value, got {item!r}")
        try:
            options.append((k, _OPT_TYPES[k](v)))
        except ValueError:
            raise ValueError(f"rule {text!r}: option {k} needs a "
                             f"{_OPT_TYPES[k].__name__}, got {v!r}") from None
    return Rule(pat.strip(), action, tuple(options), reason=f"rule {text}")


# Tensors left as they are unless a user rule says otherwise (checked after user rules).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|[._/])(bias|b)$|bias", "bias"),
    (r"embed|wte|wpe|tok_emb|word_emb|position_emb|shared\.weight", "embedding"),
    (r"norm|(^|[._/])ln(_?\w*)?([._/]|$)|layer_?norm|rms", "normalization"),
)


@dataclass
class Decision:
    """What happens to one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    action: str                     # "skip" or a method name
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def plan(infos: Mapping[str, Any], method: str = "auto", rules: Iterable[Rule] = (),
         min_size: int = DEFAULT_MIN_SIZE) -> list[Decision]:
    """Decide per tensor: compress (with which method and options) or keep, with the reason.

    User ``rules`` are tried first (first match wins); then the defaults: tensors that are
    not 2-D, not floating point, smaller than ``min_size`` elements, or named like a bias,
    an embedding or a normalization are kept.
    """
    if method not in M.METHODS:
        raise ValueError(f"method: expected one of {', '.join(M.METHODS)}, got {method!r}")
    rules = list(rules)
    out = []
    for name, inf in infos.items():
        shape, dt = tuple(inf[0]), np.dtype(inf[1])
        d = Decision(name, shape, dt, method)
        user = next((r for r in rules if r.matches(name)), None)
        if user is not None:
            d.action, d.reason, d.options = user.action, user.reason, dict(user.options)
            if d.action != "skip" and (len(shape) != 2 or dt.kind != "f"):
                d.action, d.reason = "skip", f"{user.reason}, but not a 2-D float matrix"
        elif len(shape) != 2:
            d.action, d.reason = "skip", f"{len(shape)}-D tensor, not a matrix"
        elif dt.kind != "f":
            d.action, d.reason = "skip", f"{dt} tensor, not floating point"
        else:
            for rx, why in DEFAULT_RULES:
                if re.search(rx, name, flags=re.IGNORECASE):
                    d.action, d.reason = "skip", why
                    break
            else:
                size = int(np.prod(shape))
                if size < min_size:
                    d.action, d.reason = "skip", f"small ({size} < {min_size} elements)"
        out.append(d)
    return out


def default_layout(source: Any) -> str:
    """PyTorch-style ``[out, in]`` for safetensors/PyTorch/npz, ``[in, out]`` for Keras/ONNX."""
    fmt = getattr(source, "format", "")
    return "in_out" if fmt in ("keras", "onnx", "h5") else "out_in"


def compress_tensor(W: np.ndarray, method: str, *, error: float | None = None,
                    nbytes: float | None = None, options: Mapping[str, Any] | None = None,
                    layout: str = "out_in", orig_nbytes: int | None = None,
                    storage: str | None = None) -> CompressedMatrix:
    """One matrix with one method to one budget (``error`` or ``nbytes``).

    ``options`` (from a rule) override the budget: ``error``, ``ratio`` (of ``orig_nbytes``,
    default ``W.nbytes``), ``rank``, ``sparsity``, ``pattern``. ``storage="BF16"`` stores the
    values as bfloat16 (and budgets them at 2 bytes).
    """
    o = dict(options or {})
    if "error" in o:
        error, nbytes = o["error"], None
    elif "ratio" in o:
        base = W.nbytes if orig_nbytes is None else orig_nbytes
        error, nbytes = None, base / real_scalar(o["ratio"], "ratio", low=1.0)
    kw: dict[str, Any] = {"layout": layout, "storage": storage}
    if method == "prune":
        if "sparsity" in o:
            return M.magnitude_prune(W, sparsity=o["sparsity"], **kw)
        return M.magnitude_prune(W, error=error, nbytes=nbytes, **kw)
    if method == "nm":
        return M.nm_prune(W, o.get("pattern"), error=None if "pattern" in o else error,
                          nbytes=None if "pattern" in o else nbytes, **kw)
    if method == "lowrank":
        if "rank" in o:
            return M.low_rank(W, int(o["rank"]), **kw)
        return M.low_rank(W, error=error, nbytes=nbytes, **kw)
    if method == "slr":
        return M.auto(W, error=error, nbytes=nbytes, forms=("sparse+lowrank",), **kw)
    if method == "code":
        if "n_nonzero" in o:
            return M.sparse_coded(W, n_nonzero=int(o["n_nonzero"]), dictionary=o.get("dictionary", "dct"), **kw)
        return M.sparse_coded(W, error=error, nbytes=nbytes, dictionary=o.get("dictionary", "dct"), **kw)
    return M.auto(W, error=error, nbytes=nbytes, **kw)


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


def tensor_views(source: Any) -> dict[str, MatrixView | None]:
    """Each tensor's matrix view (conv and recurrent weights as the matrix their layer
    multiplies by; ONNX views from the operator that reads the initializer)."""
    fmt = getattr(source, "format", "")
    uses: dict[str, Any] = {}
    if fmt == "onnx":
        from ..io.structure import onnx_uses
        try:
            uses = onnx_uses(source.path)
        except (ImportError, ValueError):
            uses = {}
    return {n: matrix_view(n, inf.shape, source_format=fmt, uses=uses.get(n))
            for n, inf in source.info().items()}


# keep-reasons of the default rules the ratio search may override (never a user rule's)
_SOFT = ("bias", "embedding", "normalization", "small")


def _soft_kept(d: Decision, view: MatrixView | None) -> bool:
    return (d.action == "skip" and d.reason.startswith(_SOFT) and view is not None
            and d.dtype.kind == "f" and view.kind != "bias")


def compress_model(source: TensorSource, out: str | os.PathLike[str], *,
                   ratio: float | None = None, error: float | None = None,
                   method: str = "auto", rules: Iterable[Rule] = (),
                   min_size: int = DEFAULT_MIN_SIZE, layout: str | None = None,
                   scope: str = "layer", options: Mapping[str, Any] | None = None,
                   value_dtype: Any = None, calibration: Any = None, prefer: str = "size",
                   progress: Callable[[int, int, str], None] | None = None,
                   curves_out: dict[str, Any] | None = None) -> Report:
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

    Raises
    ------
    ValueError
        Bad arguments, or a ratio the kept tensors make impossible (the message says the most
        that can be reached).
    """
    options = dict(options or {})
    want_bf16 = isinstance(value_dtype, str) and value_dtype.lower() in ("bfloat16", "bf16")
    vdt = np.dtype(np.float32) if want_bf16 else (None if value_dtype is None else np.dtype(value_dtype))
    if vdt is not None and vdt.kind != "f":
        raise ValueError(f"value_dtype: expected a floating dtype (float16, bfloat16, float32), "
                         f"got {vdt}")
    sized = {"rank", "sparsity", "pattern"} & options.keys()
    if (ratio is not None and error is not None) or (ratio is None and error is None and not sized):
        raise ValueError("give exactly one of ratio (e.g. 4) and error (e.g. 0.05), "
                         "or a size option (rank, sparsity or N:M pattern)")
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
    cal = None
    if calibration is not None:
        cal = calibration if isinstance(calibration, CalibrationSet) else CalibrationSet(calibration)
    infos: dict[str, TensorInfo] = dict(source.info())
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
    layout_given = layout
    layout = layout or default_layout(source)
    orig = {d.name: 0 if d.name in aliases else source_nbytes(source, d.name, d.shape, d.dtype)
            for d in decisions}
    total = sum(orig.values())
    src_path = getattr(source, "path", "")
    src_bytes = getattr(source, "file_bytes", None) or (
        os.path.getsize(src_path) if os.path.isfile(src_path) else total)
    from ..io.structure import skeleton_of
    skeleton = skeleton_of(source)
    notes: list[str] = []
    # kept float tensors: stored in value_dtype when given, else their own dtype (the ratio
    # search may lower it to float16, then compress them too, and says so)
    kept_dtype: dict[str, np.dtype] = {}
    if vdt is not None and not want_bf16:
        kept_dtype = {d.name: vdt for d in decisions if d.action == "skip"
                      and d.dtype.kind == "f" and d.name not in aliases}

    def kept_bytes() -> int:
        return sum(dense_nbytes(d.shape, kept_dtype[d.name].itemsize) if d.name in kept_dtype
                   else orig[d.name] for d in decisions if d.action == "skip")

    layer_ratio = None
    budget = 0.0
    extra = len(skeleton[1]) + 200 if skeleton else 0
    if ratio is not None:
        def state() -> tuple[float, float, int]:
            header = header_estimate({d.name: d.action for d in decisions}) + extra
            kb = kept_bytes()
            return src_bytes / ratio - kb - header, kb + header, header
        budget, fixed, header = state()
        squeezable = sum(orig[d.name] for d in decisions if d.action != "skip")
        # too little room for the compressed tensors: kept floats to float16, then compress them
        if budget <= 0 or squeezable / budget > 3 * ratio:
            lowered = [d for d in decisions if d.action == "skip" and d.dtype.kind == "f"
                       and d.dtype.itemsize > 2 and d.name not in aliases and d.name not in kept_dtype]
            for d in lowered:
                kept_dtype[d.name] = np.dtype(np.float16)
            if lowered:
                notes.append(f"{len(lowered)} kept float tensors stored as float16 to reach "
                             f"ratio {ratio:g}")
            budget, fixed, header = state()
            squeezable = sum(orig[d.name] for d in decisions if d.action != "skip")
        if budget <= 0 or squeezable / budget > 3 * ratio:
            soft = [d for d in decisions if _soft_kept(d, views.get(d.name))]
            for d in soft:
                d.action, d.reason = method, f"compressed to reach ratio {ratio:g} (default: keep, {d.reason})"
                kept_dtype.pop(d.name, None)
            if soft:
                notes.append(f"{len(soft)} tensors the default rules keep were compressed to "
                             f"reach ratio {ratio:g}")
            budget, fixed, header = state()
            squeezable = sum(orig[d.name] for d in decisions if d.action != "skip")
        if budget <= 0:
            big = max((d for d in decisions if d.action == "skip"), default=None,
                      key=lambda d: orig[d.name])
            what = f"; the largest is {big.name} ({big.reason})" if big is not None else ""
            raise ValueError(f"ratio {ratio:g} is impossible: the tensors that cannot be "
                             f"compressed and the container's header take {int(fixed)} of "
                             f"{src_bytes} bytes{what}, so the best reachable ratio is below "
                             f"{src_bytes / fixed:.3g} (lower the ratio, or change --rules)")
        layer_ratio = squeezable / budget if squeezable else 1.0
    work = [d for d in decisions if d.action != "skip"]
    thr = None
    glob = [d for d in work if d.action == "prune" and not d.options] if scope == "global" else []
    if glob:
        names = [d.name for d in glob]
        if ratio is not None:
            ptr_bytes = sum(sparse_nbytes(d.shape, 0, 4) for d in glob)
            entry = max(_value_itemsize(source, d, vdt, want_bf16) + index_itemsize(d.shape[1])
                        for d in glob)
            keep = int((sum(orig[n] for n in names) / layer_ratio - ptr_bytes) // entry)
            thr = global_threshold(source, names, keep=keep)
        else:
            thr = global_threshold(source, names, error=error)
    chosen = None
    if scope == "allocate" and work:
        chosen = _allocate(source, work, orig, budget, layout, cal, options, vdt, want_bf16,
                           curves_out, progress)
    facts = {"name": os.path.basename(src_path), "format": getattr(source, "format", ""),
             "bytes": src_bytes}
    if getattr(source, "weight_map", None):
        import json
        facts["weight_map"] = json.dumps(source.weight_map)

    def write(path: str, layer_ratio: float | None) -> Report:
      rows = []
      with ContainerWriter(path, facts, source_metadata=getattr(source, "metadata", None)) as w:
        if skeleton is not None:
            w.set_structure(*skeleton)
        for i, d in enumerate(decisions):
            if progress is not None:
                progress(i, len(decisions), d.name)
            if d.name in aliases:
                continue
            W = source[d.name]
            stored = getattr(source, "stored_dtypes", {}).get(d.name) or None
            view = views.get(d.name)
            if d.action == "skip":
                A = np.asarray(W)
                reason = d.reason
                if d.name in kept_dtype and A.dtype != kept_dtype[d.name]:
                    A = _narrow(A, kept_dtype[d.name], d.name)
                    reason = f"{reason}; stored as {A.dtype}"
                e = w.add(d.name, A, layout=view.layout if view else layout, stored_dtype=stored,
                          orig_bytes=orig[d.name], method="keep", reason=reason,
                          original=W if A.dtype != np.asarray(W).dtype else None, dtype=W.dtype)
            else:
                Wa = np.asarray(W)
                if view is not None and view.is_reshape:
                    Wa = view.to_matrix(np.ascontiguousarray(Wa))
                tlayout = view.layout if view is not None and layout_given is None else layout
                Wv = Wa if vdt is None else _narrow(Wa, vdt, d.name)
                bf16 = want_bf16 or (vdt is None and (stored or "") in _BF16 and Wa.dtype == np.float32)
                storage = "BF16" if bf16 else None
                stats = None
                if cal is not None and d.name in cal:
                    stats = cal[d.name]
                    check_calibration(stats, d.name, d.shape, tlayout)
                if thr is not None and d in glob:
                    m: CompressedMatrix = M.magnitude_prune(Wv, threshold=thr, layout=tlayout,
                                                            storage=storage)
                elif chosen is not None and d.name in chosen:
                    form, nbc = chosen[d.name]
                    m = _build(Wv, stats, form, nbc, tlayout, storage, {**options, **d.options})
                else:
                    nb = None if layer_ratio is None else orig[d.name] / layer_ratio
                    if stats is not None:
                        m = _aware(Wv, stats, d.action, error, nb, {**options, **d.options},
                                   tlayout, storage, orig[d.name], prefer)
                    else:
                        m = compress_tensor(Wv, d.action, error=error, nbytes=nb,
                                            options={**options, **d.options}, layout=tlayout,
                                            orig_nbytes=orig[d.name], storage=storage)
                reason = d.reason
                if m.nbytes >= orig[d.name]:  # never bigger than what it replaces
                    reason = f"{d.action} would take {m.nbytes} bytes, dense is smaller"
                    m = Dense(Wa, tlayout)
                e = w.add(d.name, m, original=Wa, stored_dtype=stored, orig_bytes=orig[d.name],
                          method=d.action, reason=reason,
                          view=view if view is not None and view.is_reshape else None,
                          dtype=W.dtype)
                if stats is not None:
                    Wo = Wa if tlayout == "out_in" else Wa.T
                    e["output_error"] = layer_error(Wo.astype(np.float64), m, stats)
                del Wa, Wv, m
            del W
            shape = tuple(view.shape) if view is not None else d.shape
            rows.append(Row(d.name, shape, e["form"] + (f" ({view.describe()})" if view is not None
                                                         and view.is_reshape else ""),
                            e["params"], e["bytes"], e["orig_bytes"], e["error"], e["reason"],
                            e.get("output_error")))
        for n, t in aliases.items():
            e = w.add_alias(n, t)
            rows.append(Row(n, tuple(infos[n].shape), "tied", 0, 0, 0, e["error"], e["reason"]))
        if progress is not None:
            progress(len(decisions), len(decisions), "writing")
      r = Report(rows, w.file_bytes, src_bytes)
      r.compressed_bytes = sum(e["bytes"] for e in w.entries.values() if e["method"] not in ("keep", "tied"))
      return r

    out = os.fspath(out)
    if ratio is None or not work:
        rep = write(out, layer_ratio)
    else:
        rep = _write_to_ratio(write, out, ratio, src_bytes, budget, layer_ratio, squeezable)
    if error is not None and rep.file_bytes >= src_bytes:
        notes.append(f"the container ({rep.file_bytes} bytes) is not smaller than the input "
                     f"({src_bytes} bytes) at error {error:g}: loosen --error or use --ratio")
    rep.notes = notes
    return rep


def _write_to_ratio(write: Callable[[str, float | None], Report], out: str, ratio: float,
                    src_bytes: int, budget: float, layer_ratio: float | None,
                    squeezable: int) -> Report:
    """Write, measure the file, and rewrite with the measured overhead until the file ratio
    is within 3 % of ``ratio`` (at most 6 tries); keep the closest file at or above 0.97·ratio.
    Raises ValueError (naming the best ratio reached) when none gets there."""
    d = os.path.dirname(os.path.abspath(out))
    best: tuple[float, str, Report] | None = None
    tmps = []
    target = src_bytes / ratio
    try:
        lo = hi = None  # layer ratios known to give a file too big / too small
        for _ in range(6):
            fd, tmp = tempfile.mkstemp(prefix=".wp-try-", suffix=".tmp", dir=d)
            os.close(fd)
            tmps.append(tmp)
            rep = write(tmp, layer_ratio)
            r = src_bytes / rep.file_bytes
            if r >= 0.97 * ratio and (best is None or abs(r - ratio) < abs(best[0] - ratio)):
                best = (r, tmp, rep)
            if 0.97 * ratio <= r <= 1.03 * ratio:
                break
            cur = layer_ratio or 1.0
            if r < ratio:
                lo = cur if lo is None else max(lo, cur)
            else:
                hi = cur if hi is None else min(hi, cur)
            if lo is not None and hi is not None:
                layer_ratio = float(np.sqrt(lo * hi))  # bisect between a miss on each side
                continue
            spent = rep.compressed_bytes
            room = target - (rep.file_bytes - spent)
            if room <= 0 or spent <= 0:
                break
            asked = squeezable / cur
            layer_ratio = squeezable / max(asked * room / spent, 1.0)  # the forms' shortfall, scaled
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


# -- data-aware and allocated compression ------------------------------------------------------

# byte levels (fractions of the dense tensor) tried when measuring a layer's error-vs-size curve
CURVE_LEVELS = tuple(float(1.25 ** -k) for k in range(1, 18))  # 1/1.25 ... 1/44, 25% apart


def _forms_for(method: str) -> tuple[str, ...]:
    return {"prune": ("prune",), "lowrank": ("lowrank",), "slr": ("slr",), "nm": ("nm",),
            "code": ("code",), "auto": ("prune", "lowrank")}[method]


def _build(W: np.ndarray, stats: Any, form: str, nbytes: float, layout: str, storage: str | None,
           options: Mapping[str, Any]) -> CompressedMatrix:
    """One form at one byte budget: data-aware with stats, weight-space without."""
    if form == "dense":
        return Dense(W, layout)
    if stats is not None:
        return compress_aware(W, stats, form, nbytes=nbytes, options=options, layout=layout,
                              storage=storage)
    return compress_tensor(W, form, nbytes=nbytes, layout=layout, storage=storage,
                           options={k: v for k, v in options.items() if k == "pattern"})


def _aware(W: np.ndarray, stats: Any, method: str, error: float | None, nb: float | None,
           options: Mapping[str, Any], layout: str, storage: str | None, orig_nbytes: int,
           prefer: str) -> CompressedMatrix:
    """Data-aware compression with a rule's options mapped onto a budget."""
    o = dict(options)
    isz = value_itemsize(W.dtype, storage)
    shape = (int(W.shape[0]), int(W.shape[1]))
    if "error" in o:
        error, nb = real_scalar(o["error"], "error", low=0.0), None
    elif "ratio" in o:
        error, nb = None, orig_nbytes / real_scalar(o["ratio"], "ratio", low=1.0)
    elif "rank" in o:
        error, nb = None, lowrank_nbytes(shape, int(o["rank"]), isz)
    elif "sparsity" in o:
        keep = W.size - int(round(real_scalar(o["sparsity"], "sparsity", low=0.0, high=1.0) * W.size))
        error, nb = None, sparse_nbytes(shape, keep, isz)
    elif "pattern" in o:
        method, error, nb = "nm", None, float(W.nbytes)
    return compress_aware(W, stats, method, error=error, nbytes=nb, options=o, layout=layout,
                          storage=storage, prefer=prefer)


def _allocate(source: Any, work: list[Decision], orig: Mapping[str, int], budget: float,
              layout: str, cal: Any, options: Mapping[str, Any], vdt: Any, want_bf16: bool,
              curves_out: dict[str, Any] | None,
              progress: Callable[[int, int, str], None] | None) -> dict[str, tuple[str, float]]:
    """Measure every layer's error-vs-size curve, then split ``budget`` bytes across layers
    (:func:`weightpress.allocate.allocate`). Returns name -> (form, nbytes) to build."""
    curves: dict[str, list[Candidate]] = {}
    for i, d in enumerate(work):
        if progress is not None:
            progress(i, len(work), f"measuring {d.name}")
        Wa = np.asarray(source[d.name])
        Wv = Wa if vdt is None else _narrow(Wa, vdt, d.name)
        storage = "BF16" if want_bf16 else None
        stats = cal[d.name] if cal is not None and d.name in cal else None
        Wo = (Wa if layout == "out_in" else Wa.T).astype(np.float64)
        cands = [Candidate(orig[d.name], 0.0, "dense")]
        isz = value_itemsize(Wv.dtype, storage)
        for form in _forms_for(d.action):
            budgets = [orig[d.name] * lv for lv in CURVE_LEVELS]
            if form == "lowrank":  # every rank up to 48 of them: factors are cheap to resize
                rmax = min(min(d.shape), rank_for_bytes(d.shape, orig[d.name], isz))
                ranks = np.unique(np.geomspace(1, max(rmax, 1), num=48).astype(int))
                budgets = [float(lowrank_nbytes(d.shape, int(r), isz)) for r in ranks]
            for nb in budgets:
                m = _build(Wv, stats, form, nb, layout, storage, {**options, **d.options})
                if m.form == "dense" or m.nbytes >= orig[d.name]:
                    continue
                cands.append(Candidate(m.nbytes, layer_error(Wo, m, stats), f"{form}@{nb:.0f}"))
                if form == "nm":
                    break
        curves[d.name] = cands
        del Wa, Wv
    choice = allocate(curves, int(budget))
    if curves_out is not None:
        curves_out.update({n: {"candidates": curves[n], "chosen": i} for n, i in choice.items()})
    out = {}
    for n, i in choice.items():
        lab = curves[n][i].label
        form, _, nb = lab.partition("@")
        out[n] = (form, float(nb) if nb else float(orig[n]))
    return out
