"""Find the tensors of an ONNX file by scanning its protobuf wire format, without parsing it.

Parsing a ModelProto with the ``onnx`` package copies every embedded tensor into memory (up to
ONNX's 2 GB). This scanner walks the file's bytes instead (memory-mapped), descending only into
the messages that can hold weights — ModelProto.graph, GraphProto.initializer/node,
NodeProto.attribute, AttributeProto.t/g/graphs — and skipping everything else by its length.
For each tensor it records the byte range of its ``raw_data`` (which the reader then
memory-maps) and of the whole TensorProto (decoded with ``onnx`` only when the data sits in
typed fields or an external file). Names and order match :func:`.onnx_graph.collect_tensors`.
"""

from __future__ import annotations

import collections
import mmap
import os
from dataclasses import dataclass, field

from ._base import FormatError, check_shape, unique_name

# field numbers (onnx.proto)
_MODEL_IR, _MODEL_GRAPH, _MODEL_META = 1, 7, 14
_GRAPH_NODE, _GRAPH_INIT = 1, 5
_NODE_OUTPUT, _NODE_OPTYPE, _NODE_ATTR, _NODE_DOMAIN = 2, 4, 5, 7
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_GRAPHS = 1, 5, 6, 11
_T_DIMS, _T_DTYPE, _T_NAME, _T_RAW, _T_EXTERNAL, _T_LOCATION = 1, 2, 8, 9, 13, 14
_T_TYPED = {4, 5, 6, 7, 10, 11}


@dataclass
class WireTensor:
    """Where one TensorProto lies in the file, and what its header says."""

    start: int
    end: int
    dims: tuple[int, ...] = ()
    data_type: int = 0
    raw: tuple[int, int] | None = None  # (offset, length) of raw_data
    external: bool = False
    typed: bool = False


@dataclass
class _Graph:
    inits: list[tuple[str, WireTensor]] = field(default_factory=list)
    consts: list[tuple[str, WireTensor]] = field(default_factory=list)
    subgraphs: list[tuple[int, int]] = field(default_factory=list)


class _Scanner:
    def __init__(self, buf: mmap.mmap, path: str):
        self.b, self.path = buf, path

    def fail(self, why: str) -> FormatError:
        return FormatError(f"{self.path}: not a valid ONNX model ({why})")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        b = self.b
        while True:
            if pos >= end or shift > 63:
                raise self.fail(f"truncated or overlong varint at byte {pos}")
            byte = b[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7

    def fields(self, start: int, end: int):  # type: ignore[no-untyped-def]
        """Yield (field number, wire type, value) where value is an int or a (start, end) range."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            num, wt = key >> 3, key & 7
            if num == 0:
                raise self.fail(f"field number 0 at byte {pos}")
            if wt == 0:
                val, pos = self.varint(pos, end)
                yield num, wt, val
            elif wt == 2:
                n, pos = self.varint(pos, end)
                if pos + n > end:
                    raise self.fail(f"field {num} runs past its message (byte {pos}+{n} > {end})")
                yield num, wt, (pos, pos + n)
                pos += n
            elif wt in (1, 5):
                pos += 8 if wt == 1 else 4
                if pos > end:
                    raise self.fail("truncated fixed-size field")
            else:
                raise self.fail(f"wire type {wt} at byte {pos}")

    def text(self, rng: tuple[int, int]) -> str:
        try:
            return bytes(self.b[rng[0]:rng[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"a name is not UTF-8 at byte {rng[0]}") from None

    def tensor(self, rng: tuple[int, int]) -> tuple[str, WireTensor]:
        t = WireTensor(*rng)
        name, dims = "", []
        for num, wt, val in self.fields(*rng):
            if num == _T_DIMS:
                if wt == 2:  # packed
                    p, e = val
                    while p < e:
                        d, p = self.varint(p, e)
                        dims.append(d)
                else:
                    dims.append(val)
            elif num == _T_DTYPE and wt == 0:
                t.data_type = val
            elif num == _T_NAME and wt == 2:
                name = self.text(val)
            elif num == _T_RAW and wt == 2:
                t.raw = (val[0], val[1] - val[0])
            elif num == _T_EXTERNAL:
                t.external = True
            elif num == _T_LOCATION and wt == 0:
                t.external = t.external or val == 1
            elif num in _T_TYPED:
                t.typed = True
        if any(d >= 2**63 for d in dims):
            raise self.fail(f"negative dimension in tensor {name!r}")
        t.dims = check_shape(dims, 1, f"{self.path}: tensor {name!r}")
        return name, t

    def node(self, rng: tuple[int, int], g: _Graph) -> None:
        op = domain = ""
        outputs: list[str] = []
        value: WireTensor | None = None
        for num, wt, val in self.fields(*rng):
            if wt != 2:
                continue
            if num == _NODE_OPTYPE:
                op = self.text(val)
            elif num == _NODE_DOMAIN:
                domain = self.text(val)
            elif num == _NODE_OUTPUT:
                outputs.append(self.text(val))
            elif num == _NODE_ATTR:
                attr_name, t = "", None
                for anum, awt, aval in self.fields(*val):
                    if awt != 2:
                        continue
                    if anum == _ATTR_NAME:
                        attr_name = self.text(aval)
                    elif anum == _ATTR_T:
                        t = self.tensor(aval)[1]
                    elif anum in (_ATTR_G, _ATTR_GRAPHS):
                        g.subgraphs.append(aval)
                if attr_name == "value" and t is not None:
                    value = t
        if op == "Constant" and domain in ("", "ai.onnx") and outputs and value is not None:
            g.consts.append((outputs[0], value))

    def graph(self, rng: tuple[int, int]) -> _Graph:
        g = _Graph()
        for num, wt, val in self.fields(*rng):
            if wt != 2:
                continue
            if num == _GRAPH_INIT:
                g.inits.append(self.tensor(val))
            elif num == _GRAPH_NODE:
                self.node(val, g)
        return g


def scan_onnx(path: str) -> tuple[dict[str, WireTensor], dict[str, str]]:
    """(name -> WireTensor for every initializer and Constant value, subgraphs included;
    the model's metadata_props).

    Raises FormatError when the bytes are not a well-formed ModelProto with a graph.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FormatError(f"{path}: empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            s = _Scanner(buf, path)
            graph, ir, meta = None, 0, {}
            for num, wt, val in s.fields(0, len(buf)):
                if num == _MODEL_GRAPH and wt == 2:
                    graph = val
                elif num == _MODEL_IR and wt == 0:
                    ir = val
                elif num == _MODEL_META and wt == 2:
                    kv = {n: s.text(v) for n, w, v in s.fields(*val) if w == 2}
                    meta[kv.get(1, "")] = kv.get(2, "")
            if graph is None or ir <= 0:
                raise FormatError(f"{path}: not an ONNX model (no graph or IR version)")
            out: dict[str, WireTensor] = {}
            counters: dict[str, int] = {}
            queue = collections.deque([graph])
            while queue:
                g = s.graph(queue.popleft())
                for name, t in g.inits + g.consts:
                    out[unique_name(out, name, counters)] = t
                queue.extend(g.subgraphs)
            return out, meta
