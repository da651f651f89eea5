"""The pickle inside PyTorch zip checkpoints, read and written without torch.

Reading goes through :class:`SafeUnpickler`, whose ``find_class`` knows a short allow-list of
globals (the tensor rebuild functions, ``collections.OrderedDict``, the storage classes, torch
dtypes, and a few harmless leaf values such as numpy scalars) and maps each to a constructor of
ours; any other global raises :class:`FormatError` naming it, so no code from the file ever
runs. Every object of ours refuses the pickle's BUILD opcode, so a file cannot rewrite the
allow-listed objects for later loads. Tensors come out as :class:`TensorRef` (storage key,
dtype, offset, shape, strides) that the reader maps lazily.

Writing emits the protocol-2 byte stream ``torch.save`` produces for a flat state dict (an
``OrderedDict`` of ``_rebuild_tensor_v2`` calls on persistent storages), opcode by opcode.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from ._base import FormatError, check_shape

# storage class name -> (numpy dtype, stored dtype name); bf16 is read as uint16 bits.
STORAGE_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "FloatStorage": (np.dtype("<f4"), "float32"),
    "DoubleStorage": (np.dtype("<f8"), "float64"),
    "HalfStorage": (np.dtype("<f2"), "float16"),
    "BFloat16Storage": (np.dtype("<u2"), "bfloat16"),
    "LongStorage": (np.dtype("<i8"), "int64"),
    "IntStorage": (np.dtype("<i4"), "int32"),
    "ShortStorage": (np.dtype("<i2"), "int16"),
    "CharStorage": (np.dtype("i1"), "int8"),
    "ByteStorage": (np.dtype("u1"), "uint8"),
    "BoolStorage": (np.dtype("?"), "bool"),
    "ComplexFloatStorage": (np.dtype("<c8"), "complex64"),
    "ComplexDoubleStorage": (np.dtype("<c16"), "complex128"),
    "UntypedStorage": (np.dtype("u1"), "untyped"),  # bytes; _rebuild_tensor_v3 gives the dtype
}
# torch dtype -> (numpy dtype of the stored bits, stored name), for _rebuild_tensor_v3, which
# torch uses for dtypes without a typed storage class (uint16/32/64, float8)
V3_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "uint16": (np.dtype("<u2"), "uint16"), "uint32": (np.dtype("<u4"), "uint32"),
    "uint64": (np.dtype("<u8"), "uint64"), "float8_e4m3fn": (np.dtype("u1"), "float8_e4m3fn"),
    "float8_e5m2": (np.dtype("u1"), "float8_e5m2"),
}
V3_DTYPES.update({v[1]: v for k, v in STORAGE_DTYPES.items() if k != "UntypedStorage"})
_NUMPY_TO_STORAGE = {v[0].newbyteorder("<") if v[0].itemsize > 1 else v[0]: k
                     for k, v in STORAGE_DTYPES.items() if k not in ("BFloat16Storage", "UntypedStorage")}


class _Sealed:
    """Our objects refuse the pickle's BUILD opcode, so a file cannot rewrite their fields."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise FormatError(f"the pickle tries to set state on a {type(self).__name__}; refused")


class StorageType(_Sealed):
    """Stand-in for ``torch.FloatStorage`` and friends: just the name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class Storage(_Sealed):
    """A persistent storage record: zip member key, element dtype, element count."""

    __slots__ = ("dtype", "key", "numel", "stored")

    def __init__(self, key: str, dtype: np.dtype, stored: str, numel: int):
        self.key, self.dtype, self.stored, self.numel = key, dtype, stored, numel


class TensorRef(_Sealed):
    """A tensor as the pickle describes it; no data is read until the reader maps it."""

    __slots__ = ("offset", "shape", "storage", "strides")

    def __init__(self, storage: Storage, offset: int, shape: tuple[int, ...],
                 strides: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides


def _ints(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(type(v) is int for v in x):
        raise FormatError(f"tensor {what} must be a tuple of ints, got {type(x).__name__}")
    return tuple(x)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    if not isinstance(storage, Storage) or storage.stored == "untyped":
        raise FormatError("_rebuild_tensor_v2 called on something that is not a typed storage")
    if type(offset) is not int or offset < 0:
        raise FormatError(f"tensor storage offset must be a non-negative int, got {offset!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides) or any(s < 0 for s in shape) or any(s < 0 for s in strides):
        raise FormatError(f"tensor size {shape!r:.200} / stride {strides!r:.200} are inconsistent")
    check_shape(shape, storage.dtype.itemsize, "tensor size")
    return TensorRef(storage, offset, shape, strides)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any,
                       dtype: Any, *_rest: Any) -> TensorRef:
    if not isinstance(storage, Storage) or storage.stored != "untyped":
        raise FormatError("_rebuild_tensor_v3 called on something that is not an untyped storage")
    if not isinstance(dtype, TorchDType):
        raise FormatError("_rebuild_tensor_v3 without a torch dtype")
    if dtype.name not in V3_DTYPES:
        raise FormatError(f"tensor dtype torch.{dtype.name} is not supported")
    np_dt, stored = V3_DTYPES[dtype.name]
    typed = Storage(storage.key, np_dt, stored, storage.numel // np_dt.itemsize)
    return _rebuild_tensor_v2(typed, offset, size, stride)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
    return _rebuild_tensor_v2(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise FormatError("_rebuild_parameter called on something that is not a tensor")
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, hooks: Any, state: Any) -> TensorRef:
    if state:
        raise FormatError("a Parameter with extra Python state in the pickle; refused")
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRef:
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE) or func not in _REBUILDERS:
        raise FormatError("tensor subclass in the pickle refused (only Tensor and Parameter)")
    if not isinstance(args, tuple):
        raise FormatError("_rebuild_from_type_v2: arguments must be a tuple")
    return func(*args)


class TorchDType(_Sealed):
    """Stand-in for a ``torch.<dtype>`` global (used by _rebuild_tensor_v3; else a leaf)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _TypeMarker(_Sealed):
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Fn(_Sealed):
    """A constructor the pickle may call; sealed, so BUILD cannot patch our functions."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_V2, _V1, _PARAM = _Fn(_rebuild_tensor_v2), _Fn(_rebuild_tensor), _Fn(_rebuild_parameter)
_V3 = _Fn(_rebuild_tensor_v3)
_REBUILDERS = (_V2, _V1, _PARAM, _V3)
_TENSOR_TYPE = _TypeMarker("torch.Tensor")
_PARAMETER_TYPE = _TypeMarker("torch.nn.parameter.Parameter")

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _V2,
    ("torch._utils", "_rebuild_tensor"): _V1,
    ("torch._utils", "_rebuild_tensor_v3"): _V3,
    ("torch._utils", "_rebuild_parameter"): _PARAM,
    ("torch._utils", "_rebuild_parameter_with_state"): _Fn(_rebuild_parameter_with_state),
    ("torch._tensor", "_rebuild_from_type_v2"): _Fn(_rebuild_from_type_v2),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
}
_ALLOWED.update({("torch", k): StorageType(k) for k in STORAGE_DTYPES})
_ALLOWED[("torch.storage", "UntypedStorage")] = _ALLOWED[("torch", "UntypedStorage")]
_ALLOWED.update({("torch", k): TorchDType(k) for k in (
    *V3_DTYPES, "float", "double", "half", "long", "int", "short", "bfloat16", "complex64",
    "complex128", "float8_e4m3fnuz", "float8_e5m2fnuz", "uint8", "int8", "bool")})


class Leaf(_Sealed):
    """A harmless non-tensor value (numpy scalar, torch.Size, device, dtype, bytes): kept opaque.

    Checkpoints carry these beside the weights (``best_acc`` as a numpy float, ...). They are
    never tensors, so the reader only needs the pickle to get past them: the constructor stores
    nothing, and state set by BUILD (numpy dtypes have some) is dropped.
    """

    __slots__ = ("kind",)

    def __init__(self, kind: str):
        self.kind = kind

    def __setstate__(self, state: Any) -> None:
        pass


class _LeafFactory(_Sealed):
    __slots__ = ("kind",)

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, *args: Any) -> Leaf:
        return Leaf(self.kind)


_LEAVES = [("_codecs", "encode"), ("torch", "Size"), ("torch", "device"), ("numpy", "dtype"),
           ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")]
_ALLOWED.update({key: _LeafFactory(".".join(key)) for key in _LEAVES})


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storage persistent ids."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise FormatError(
                f"{self.source}: refused global {module}.{name} in the pickle "
                "(only tensors and plain containers are loaded)"
            ) from None

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError(f"{self.source}: unknown persistent id {str(pid)[:80]!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, StorageType):
            raise FormatError(f"{self.source}: persistent id names no storage type")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise FormatError(f"{self.source}: malformed storage record {str(pid)[:80]!r}")
        dtype, stored = STORAGE_DTYPES[stype.name]
        return Storage(key, dtype, stored, numel)


MAX_TUPLE_DEPTH = 100
_TUPLE_OPS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def check_nesting(raw: bytes, source: str, limit: int = MAX_TUPLE_DEPTH) -> None:
    """FormatError if the pickle builds tuples nested deeper than `limit`, or stores into a memo
    index larger than the pickle itself.

    Hashing a tuple recurses in C without a depth guard, so a deep tuple used as a dict key
    (a 1 MB pickle of a million nested 1-tuples) crashes the interpreter by stack overflow
    while unpickling. This walks the opcodes once (linear, nothing is built), tracking how deep
    each stack entry's tuples nest; lists and dicts are not hashable, so they count as depth 0.
    """
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[Any, int] = {}
    try:
        for op, arg, _pos in pickletools.genops(raw):
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
                continue
            before = op.stack_before
            items: list[int] = []
            if pickletools.markobject in before:
                m = marks.pop()
                items = stack[m:]
                del stack[m:]
                n_below = before.index(pickletools.markobject)
            else:
                n_below = len(before)
            if n_below:
                top = stack[-n_below:]
                del stack[-n_below:]
                if name in _PUT_OPS or name == "MEMOIZE" or name == "DUP":
                    items = top
                else:
                    items = items + top if name in _TUPLE_OPS else items
            if name in _TUPLE_OPS:
                depth = 1 + max(items, default=0)
                if depth > limit:
                    raise FormatError(f"{source}: pickle nests tuples more than {limit} deep")
                stack.append(depth)
            elif name in _PUT_OPS or name == "MEMOIZE":
                if name in _PUT_OPS and (not isinstance(arg, int) or not 0 <= arg <= len(raw)):
                    # the C unpickler sizes its memo table by the largest index: one opcode
                    # with index 10^9 asks for gigabytes (found by fuzzing); a real pickle
                    # numbers its memo entries from 0, fewer than its bytes
                    raise FormatError(f"{source}: pickle memo index {str(arg)[:20]} out of range")
                v = items[-1] if items else 0
                memo[arg if name in _PUT_OPS else len(memo)] = v
                stack.append(v)
            elif name in _GET_OPS:
                stack.append(memo.get(arg, 0))
            elif name == "DUP":
                stack.extend([items[-1] if items else 0] * 2)
            else:
                stack.extend([0] * len(op.stack_after))
            if name == "STOP":
                break
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed opcodes: the unpickler says it better
        del e


def load_pickle(data: Any, source: str) -> Any:
    """Unpickle `data` (a binary stream) safely; any failure is a FormatError naming `source`."""
    def load() -> Any:
        if isinstance(data, io.BytesIO):
            check_nesting(data.getvalue(), source)
        return SafeUnpickler(data, source).load()

    return as_format_error(load, source)


def as_format_error(load: Callable[[], Any], source: str) -> Any:
    """``load()``, with any failure of an unpickler turned into one FormatError naming
    `source` (the zip and the legacy PyTorch readers share it)."""
    try:
        return load()
    except FormatError as e:
        msg = str(e)
        raise FormatError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except RecursionError:
        raise FormatError(f"{source}: pickle nests too deeply") from None
    except Exception as e:  # noqa: BLE001 - any pickle failure means a corrupt file
        raise FormatError(f"{source}: corrupt pickle ({type(e).__name__}: {e})") from None


# -- writing -------------------------------------------------------------------------------
class _Writer:
    """Protocol-2 pickle opcodes, enough for an OrderedDict of tensors."""

    def __init__(self) -> None:
        self.b = io.BytesIO()
        self.b.write(b"\x80\x02")

    def global_(self, module: str, name: str) -> None:
        self.b.write(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def str_(self, s: str) -> None:
        raw = s.encode("utf-8")
        self.b.write(b"X" + struct.pack("<I", len(raw)) + raw)

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.b.write(b"K" + struct.pack("<B", v))
        elif 0 <= v < 65536:
            self.b.write(b"M" + struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            self.b.write(b"J" + struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.b.write(b"\x8a" + struct.pack("<B", len(raw)) + raw)

    def int_tuple(self, vals: tuple[int, ...]) -> None:
        self.b.write(b"(")
        for v in vals:
            self.int_(v)
        self.b.write(b"t")

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.b.write(b")R")


def state_dict_pickle(entries: list[tuple[str, str, int, tuple[int, ...]]]) -> bytes:
    """data.pkl bytes for ``OrderedDict(name -> tensor)``.

    `entries` holds (name, storage class name, storage key, shape) for each tensor, each on its
    own contiguous storage of ``prod(shape)`` elements at offset 0.
    """
    w = _Writer()
    w.empty_ordered_dict()
    w.b.write(b"(")
    for name, storage, key, shape in entries:
        numel = math.prod(shape)
        strides = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        w.str_(name)
        w.global_("torch._utils", "_rebuild_tensor_v2")
        w.b.write(b"((")
        w.str_("storage")
        w.global_("torch", storage)
        w.str_(str(key))
        w.str_("cpu")
        w.int_(numel)
        w.b.write(b"tQ")  # TUPLE, BINPERSID
        w.int_(0)
        w.int_tuple(shape)
        w.int_tuple(strides)
        w.b.write(b"\x89")  # requires_grad=False
        w.empty_ordered_dict()  # backward hooks
        w.b.write(b"tR")
    w.b.write(b"u.")
    return w.b.getvalue()


def storage_name(dtype: np.dtype) -> str:
    """torch storage class for a NumPy dtype (TypeError if torch has none)."""
    d = np.dtype(dtype)
    key = d.newbyteorder("<") if d.itemsize > 1 else d
    try:
        return _NUMPY_TO_STORAGE[key]
    except KeyError:
        raise TypeError(f"dtype {d} has no PyTorch storage type") from None
