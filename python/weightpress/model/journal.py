"""The journal of a ``compress`` run: what an interrupted run needs to finish later.

Beside the output ``OUT`` lives ``OUT.journal/``:

- ``manifest.json``: the journal's format, the hash of the run's settings (target, method,
  rules, layout, the plan of every tensor, the weightpress version and the calibration's
  identity) and the source's identity (per file: size, modification time and a SHA-256 of
  its first MiB, which holds a safetensors/npz header);
- ``layers.json``: every layer's budget (and the allocation's curves), written once the
  budgets are known, so a resumed run does not measure them again;
- ``layer-NNNNNN-KEY.safetensors``: one finished compressed layer (``KEY``: a hash of the
  budget it was built at, which the ratio search may change between tries), its stored arrays
  and its container entry, each written atomically (a file there is complete).

:meth:`Journal.start` with ``resume=True`` checks the manifest against the current input and
settings and refuses (``ValueError`` naming what changed) when they differ; the resumed run
then writes a file byte-identical to an uninterrupted one, because the container is assembled
in plan order from the same staged layers. The journal is removed when the output is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._core import __version__
from ..compression.storage import Budget
from ..io.safetensors import SafetensorsSource, write_safetensors
from .allocate import Candidate
from .container import Staged

__all__ = ["Journal", "journal_path", "source_identity"]

JOURNAL_FORMAT = "weightpress.journal/1"
_HEAD = 1 << 20  # bytes of each file hashed for its identity
_LAYER = re.compile(r"^layer-(\d{6})-([0-9a-f]{16})\.safetensors$")


def journal_path(out: str | os.PathLike[str]) -> str:
    return os.fspath(out) + ".journal"


def _file_identity(path: str) -> dict[str, Any]:
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_HEAD))
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "head_sha256": h.hexdigest()}


def source_identity(source: Any) -> list[dict[str, Any]]:
    """Size, modification time and head hash of every file the source reads."""
    path = getattr(source, "path", None)
    paths = [os.fspath(path)] if path else []
    wmap = getattr(source, "weight_map", None)  # a sharded checkpoint: the index and its shards
    if path and wmap:
        d = os.path.dirname(os.path.abspath(path))
        paths += [os.path.join(d, s) for s in dict.fromkeys(wmap.values())]
    if paths and os.path.isdir(paths[0]):
        paths = sorted(os.path.join(paths[0], f) for f in os.listdir(paths[0]))
    return [_file_identity(p) for p in paths if os.path.isfile(p)]


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.dtype):
        return x.str
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return repr(x)


def _calibration_identity(cal: Any) -> Any:
    """The calibration file's identity, or a hash of in-memory inputs/statistics."""
    if cal is None:
        return None
    path = getattr(cal, "path", None)
    if path:
        return _file_identity(path)
    h = hashlib.sha256()
    src = getattr(cal, "_src", cal)
    for name in sorted(src):
        v = src[name]
        h.update(name.encode())
        if hasattr(v, "hessian"):
            h.update(np.ascontiguousarray(v._h).tobytes())
            h.update(str(v.n_samples).encode())
        else:
            h.update(np.ascontiguousarray(np.asarray(v)).tobytes())
    return {"in_memory_sha256": h.hexdigest()}


class Journal:
    """A run's journal directory (see the module docstring). Use :meth:`start`."""

    def __init__(self, path: str, manifest: dict[str, Any], *, durable: bool = True):
        self.path = path
        self.manifest = manifest
        self.durable = durable  # layers fsync'd (a resumable run's; not a scratch store's)
        self.done: set[tuple[int, str]] = set()  # (index, key) of the recorded layers
        for f in os.listdir(path):
            m = _LAYER.match(f)
            if m:
                self.done.add((int(m.group(1)), m.group(2)))

    @classmethod
    def start(cls, out: str | os.PathLike[str], source: Any, *, settings: Mapping[str, Any],
              calibration: Any = None, resume: bool = False) -> "Journal":
        """Open the journal of ``out``: with ``resume`` an existing one is checked and kept,
        otherwise any old one is replaced by a new, empty one.

        Raises
        ------
        ValueError
            ``resume`` and the journal was written for another input or other settings, or
            the journal directory is not a weightpress journal.
        """
        path = journal_path(out)
        ident = source_identity(source)
        sett = _jsonable({**settings, "weightpress": __version__,
                          "calibration": _calibration_identity(calibration)})
        digest = hashlib.sha256(json.dumps(sett, sort_keys=True).encode()).hexdigest()
        manifest = {"format": JOURNAL_FORMAT, "settings_sha256": digest, "source": ident,
                    "settings": sett}
        old = cls._read_manifest(path)
        if resume and old is not None:
            why = cls._mismatch(old, manifest)
            if why:
                raise ValueError(f"--resume: the journal {path!r} was written for {why}; "
                                 f"run without --resume to start again")
            return cls(path, old)
        if os.path.lexists(path):
            if old is None:
                raise ValueError(f"output: {path!r} exists and is not a weightpress journal "
                                 f"(move it away)")
            shutil.rmtree(path)
        os.mkdir(path)
        _write_json(os.path.join(path, "manifest.json"), manifest)
        return cls(path, manifest)

    @staticmethod
    def _read_manifest(path: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) and m.get("format") == JOURNAL_FORMAT else None

    @staticmethod
    def _mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
        """Why a journal does not fit this run ('' when it does)."""
        o, n = old.get("source", []), new["source"]
        if [f.get("path") for f in o] != [f["path"] for f in n]:
            return "a different input file"
        for a, b in zip(o, n):
            for k, what in (("size", "size"), ("head_sha256", "header"), ("mtime_ns", "modification time")):
                if a.get(k) != b[k]:
                    return f"a different input: {b['path']} changed ({what} differs)"
        if old.get("settings_sha256") != new["settings_sha256"]:
            os_, ns = old.get("settings", {}), new["settings"]
            keys = sorted(k for k in set(os_) | set(ns) if os_.get(k) != ns.get(k))
            return f"different settings ({', '.join(keys) or 'settings'} differ)"
        return ""

    # -- budgets ---------------------------------------------------------------------------

    def save_budgets(self, plan: Any, curves: Mapping[str, Any] | None = None) -> None:
        """Record every layer's budget (and the allocation's curves, and what the budgeting
        changed in the decisions)."""
        rows = [{"name": ly.decision.name, "action": ly.decision.action,
                 "reason": ly.decision.reason, "orig_bytes": ly.orig_bytes,
                 "budget": None if ly.budget is None else list(ly.budget.pair()),
                 "threshold": ly.threshold, "form": ly.form,
                 "keep_dtype": None if ly.keep_dtype is None else np.dtype(ly.keep_dtype).str}
                for ly in plan.layers]
        cv = {n: {"candidates": [[c.nbytes, c.error, c.label] for c in v["candidates"]],
                  "chosen": v["chosen"]} for n, v in (curves or {}).items()}
        _write_json(os.path.join(self.path, "layers.json"),
                    {"src_bytes": plan.src_bytes, "notes": plan.notes,
                     "squeezable": plan.squeezable, "layer_ratio": plan.layer_ratio,
                     "layers": rows, "curves": cv})

    def restore_budgets(self, job: Any, Layer: Any, Budgeted: Any,
                        curves_out: dict[str, Any] | None = None) -> Any:
        """The ``Budgeted`` plan recorded by :meth:`save_budgets`, made of ``Layer``s (the
        classes of :mod:`~weightpress.model.compress`, which imports this module), its
        decisions ``job``'s updated as the budgeting left them; None when there is none."""
        try:
            with open(os.path.join(self.path, "layers.json"), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        rows = data["layers"]
        if [r["name"] for r in rows] != [d.name for d in job.decisions]:
            return None
        layers = []
        for d, r in zip(job.decisions, rows):
            d.action, d.reason = r["action"], r["reason"]
            b = r["budget"]
            layers.append(Layer(d, int(r["orig_bytes"]),
                                None if b is None else Budget(error=b[0], nbytes=b[1]),
                                r["threshold"], r["form"],
                                None if r["keep_dtype"] is None else np.dtype(r["keep_dtype"])))
        if curves_out is not None:
            curves_out.update({n: {"candidates": [Candidate(int(c[0]), float(c[1]), str(c[2]))
                                                  for c in v["candidates"]],
                                   "chosen": int(v["chosen"])}
                               for n, v in data.get("curves", {}).items()})
        return Budgeted(layers, int(data["src_bytes"]), list(data["notes"]),
                        int(data["squeezable"]), data["layer_ratio"])

    # -- finished layers -------------------------------------------------------------------

    @staticmethod
    def key(ly: Any, budget: Budget | None) -> str:
        """What a layer was built at (its budget after the ratio search's rescaling): a layer
        is reused only at the same one."""
        spec = {"name": ly.decision.name, "action": ly.decision.action,
                "budget": None if budget is None else list(budget.pair()),
                "threshold": ly.threshold, "form": ly.form}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _file(self, i: int, key: str) -> str:
        return os.path.join(self.path, f"layer-{i:06d}-{key}.safetensors")

    def has(self, i: int, key: str) -> bool:
        return (i, key) in self.done

    def record(self, i: int, key: str, st: Staged) -> None:
        """Keep a finished layer (atomically: the file is complete or absent)."""
        meta = {"name": st.name, "entry": json.dumps(st.entry), "dtypes": json.dumps(st.dtypes)}
        if st.alt is not None:  # (a first try's step up: recorded under its own key)
            meta["alt"] = json.dumps(st.alt)
        write_safetensors(self._file(i, key),
                          {r: np.ascontiguousarray(a) for r, a in st.parts.items()}, meta,
                          durable=self.durable)
        self.done.add((i, key))

    def load(self, i: int, key: str) -> Staged:
        """A layer recorded by :meth:`record`, exactly as it was staged."""
        src = SafetensorsSource(self._file(i, key))
        try:
            meta = src.metadata
            parts = {r: np.array(src[r]) for r in src.info()}
            entry = json.loads(meta["entry"])
            parts = {r: parts[r] for r in entry["parts"]}  # the entry's role order
            alt = json.loads(meta["alt"]) if "alt" in meta else None
            return Staged(meta["name"], entry, parts, json.loads(meta["dtypes"]), alt)
        finally:
            src.close()

    def remove(self) -> None:
        """Delete the journal (the output is complete)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path)


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
