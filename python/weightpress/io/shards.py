"""Sharded checkpoints: ``model.safetensors.index.json`` and ``pytorch_model.bin.index.json``.

The index is JSON ``{"metadata": {...}, "weight_map": {tensor name: shard file name}}``; the
shards sit beside it. :class:`ShardedSource` opens each shard lazily through its own reader and
lists the tensors in the index's order; :func:`write_sharded` writes the shards (safetensors or
PyTorch, from the index's name) and the index, each atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._base import FormatError, TensorInfo, TensorSource, atomic_write
from .pytorch import write_pytorch
from .safetensors import write_safetensors

__all__ = ["ShardedSource", "write_sharded", "is_index"]

_MAX_INDEX = 64 * 1024 * 1024


def is_index(path: str) -> bool:
    return os.fspath(path).endswith(".index.json")


def _shard_format(path: str) -> str:
    base = os.path.basename(path)
    if ".safetensors" in base:
        return "safetensors"
    if ".bin" in base or ".pt" in base or ".pth" in base:
        return "pytorch"
    raise ValueError(f"{path}: expected a model.safetensors.index.json or "
                     "pytorch_model.bin.index.json")


def _shard_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
        raise FormatError(f"{where}: shard file name {name!r} is not a plain file name")
    return name


class ShardedSource(TensorSource):
    """A sharded checkpoint (its index file) as one lazy mapping name -> array."""

    def __init__(self, path: str | os.PathLike[str],
                 open_model: Callable[[str, str], TensorSource]):
        """``open_model(path, format)`` opens one shard (weightpress.io.open_model)."""
        super().__init__(path)
        if os.path.getsize(self.path) > _MAX_INDEX:
            raise FormatError(f"{self.path}: index file too large")
        try:
            with open(self.path, encoding="utf-8") as f:
                index = json.load(f)
            wmap = index["weight_map"]
            if not isinstance(wmap, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{self.path}: malformed shard index ({e})") from None
        self.format = _shard_format(self.path)
        d = os.path.dirname(os.path.abspath(self.path))
        self.weight_map = {str(k): _shard_name(v, self.path) for k, v in wmap.items()}
        self._shards: dict[str, TensorSource] = {}
        self._info: dict[str, TensorInfo] = {}
        self._where: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        try:
            for shard in dict.fromkeys(self.weight_map.values()):
                src = open_model(os.path.join(d, shard), self.format)
                self._shards[shard] = src
                if not self.metadata:
                    self.metadata = dict(src.metadata)
            for name, shard in self.weight_map.items():
                src = self._shards[shard]
                if name not in src.info():
                    raise FormatError(f"{self.path}: tensor {name!r} is not in shard {shard}")
                self._info[name] = src.info()[name]
                self._where[name] = shard
                if name in src.stored_dtypes:
                    self.stored_dtypes[name] = src.stored_dtypes[name]
                alias = getattr(src, "aliases", {}).get(name)
                if alias is not None and self.weight_map.get(alias) == shard:
                    self.aliases[name] = alias
        except BaseException:
            self.close()
            raise
        self.file_bytes = os.path.getsize(self.path) + sum(
            os.path.getsize(os.path.join(d, s)) for s in self._shards)

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        return self._shards[self._where[name]][name]

    def close(self) -> None:
        for s in getattr(self, "_shards", {}).values():
            s.close()


class _Subset(TensorSource):
    def __init__(self, parent: Mapping[str, np.ndarray], names: list[str]):
        super().__init__(getattr(parent, "path", ""))
        self._parent, self._names = parent, names
        self.format = getattr(parent, "format", "?")
        pinfo = parent.info() if isinstance(parent, TensorSource) else None
        self._info = {n: (pinfo[n] if pinfo is not None else
                          TensorInfo(np.shape(parent[n]), np.asarray(parent[n]).dtype)) for n in names}
        self.stored_dtypes = {n: v for n, v in getattr(parent, "stored_dtypes", {}).items() if n in self._info}

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        return self._parent[name]


def write_sharded(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], *,
                  weight_map: Mapping[str, str] | None = None, max_shard_bytes: int = 5 << 30,
                  metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as shards beside the index file `path` (its name says safetensors or
    PyTorch), grouped as `weight_map` says, else in order into shards of at most
    `max_shard_bytes`."""
    path = os.fspath(path)
    fmt = _shard_format(path)
    d = os.path.dirname(os.path.abspath(path))
    names = list(tensors)
    if weight_map is None or set(weight_map) != set(names):
        stem = "model" if fmt == "safetensors" else "pytorch_model"
        ext = "safetensors" if fmt == "safetensors" else "bin"
        groups: list[list[str]] = [[]]
        size = 0
        for n in names:
            nb = int(np.asarray(tensors[n]).nbytes)
            if groups[-1] and size + nb > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(n)
            size += nb
        k = len(groups)
        weight_map = {n: f"{stem}-{i + 1:05d}-of-{k:05d}.{ext}" for i, g in enumerate(groups) for n in g}
    files: dict[str, list[str]] = {}
    for n in names:
        files.setdefault(_shard_name(weight_map[n], path), []).append(n)
    total = 0
    for shard, members in files.items():
        sub = _Subset(tensors, members)
        total += sum(i.nbytes for i in sub.info().values())
        out = os.path.join(d, shard)
        if fmt == "safetensors":
            write_safetensors(out, sub, metadata=metadata or None)
        else:
            write_pytorch(out, sub)
    with atomic_write(path, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(weight_map)}, f, indent=2)
