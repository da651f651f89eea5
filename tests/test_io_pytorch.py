"""PyTorch zip checkpoints without torch: layout, views, dtypes, nesting, and safety.

Fixtures are written the way ``torch.save`` writes them (a protocol-2 ``data.pkl`` whose tensors
reduce to ``torch._utils._rebuild_tensor_v2`` over persistent ``('storage', torch.XStorage, key,
'cpu', numel)`` ids, one stored zip member per storage) by a pickler in this file that needs no
torch. When torch is installed, the same checks also run against files real torch writes and
reads (``TORCH`` tests); CI does not install torch.
"""

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from weightpress.io import FormatError, detect_format, open_model, save_model
from weightpress.io._dtypes import float32_to_bf16_bits

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


# -- a torch-free writer of torch's exact layout ----------------------------------------------
class _Global:
    """A reference to a global by module and name, pickled as a GLOBAL opcode."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *a):  # pickle insists a reduce function be callable
        raise AssertionError


class _Storage:
    def __init__(self, kind, key, data):
        self.kind, self.key, self.data = kind, key, data


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

    def __reduce_ex__(self, proto):
        return (_Global("torch._utils", "_rebuild_tensor_v2"), self.args)


class _TorchPickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_marker(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = save_marker

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            numel = obj.data.size
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", numel)
        return None


_KINDS = {np.dtype("f4"): "FloatStorage", np.dtype("f2"): "HalfStorage", np.dtype("f8"): "DoubleStorage",
          np.dtype("i8"): "LongStorage", np.dtype("?"): "BoolStorage", np.dtype("u2"): "BFloat16Storage"}


def write_torch_layout(path, obj, storages, prefix="archive", pickle_bytes=None):
    """Write `obj` (holding _Tensor/_Storage) as torch.save does; storages: key -> (kind, flat array)."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pickle_bytes if pickle_bytes is not None else buf.getvalue())
        zf.writestr(f"{prefix}/byteorder", "little")
        for s in storages:
            zf.writestr(f"{prefix}/data/{s.key}", s.data.tobytes())
        zf.writestr(f"{prefix}/version", "3\n")
        zf.writestr(f"{prefix}/.data/serialization_id", "0123456789")


def _contig(arr, key):
    kind = _KINDS[arr.dtype]
    st = _Storage(kind, key, arr.reshape(-1))
    strides = [int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim)]
    return st, _Tensor(st, 0, arr.shape, strides)


def test_state_dict_layout_views_and_dtypes(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    h = rng.standard_normal(5).astype(np.float16)
    idx = np.arange(3, dtype=np.int64)
    bf = np.array([1.5, -2.0, 0.15625, 294912.0], np.float32)  # exact in bf16
    sw, tw = _contig(w, "0")
    sh, th = _contig(h, "1")
    si, ti = _contig(idx, "2")
    sb, tb = _contig(float32_to_bf16_bits(bf), "3")
    transposed = _Tensor(sw, 0, (6, 4), (1, 6))  # w.T shares w's storage
    window = _Tensor(sw, 8, (2, 2), (6, 2))  # w[1:3, 2::2]: offset 8 = row 1, col 2
    sd = collections.OrderedDict([("fc.weight", tw), ("fc.half", th), ("steps", ti), ("bf", tb),
                                  ("fc.weight_t", transposed), ("window", window)])
    p = tmp_path / "model.pt"
    write_torch_layout(p, sd, [sw, sh, si, sb])
    assert detect_format(p) == "pytorch"
    with open_model(p) as src:
        assert list(src) == list(sd)
        assert src.info()["fc.half"] == ((5,), np.dtype("f2"))
        np.testing.assert_array_equal(src["fc.weight"], w)
        assert src["fc.half"].dtype == np.float16
        np.testing.assert_array_equal(src["fc.half"], h)
        np.testing.assert_array_equal(src["steps"], idx)
        assert src["bf"].dtype == np.float32 and src.stored_dtypes["bf"] == "BF16"
        np.testing.assert_array_equal(src["bf"], bf)
        np.testing.assert_array_equal(src["fc.weight_t"], w.T)
        np.testing.assert_array_equal(src["window"], w[1:3, 2::2])


def test_expanded_view_is_not_materialized(tmp_path):
    """torch keeps expand()ed tensors as stride-0 views; so do we (no copy of 1e12 elements)."""
    row = np.arange(4, dtype=np.float32)
    st = _Storage("FloatStorage", "0", row)
    huge = _Tensor(st, 0, (10**12, 4), (0, 1))
    write_torch_layout(tmp_path / "e.pt", {"e": huge}, [st])
    with open_model(tmp_path / "e.pt") as src:
        e = src["e"]
        assert e.shape == (10**12, 4) and e.strides == (0, 4) and not e.flags.writeable
        np.testing.assert_array_equal(e[123456789], row)


class _TensorV3(_Tensor):
    """How torch pickles dtypes without a typed storage class (uint16/32/64, float8)."""

    def __init__(self, storage, offset, shape, stride, dtype):
        super().__init__(storage, offset, shape, stride)
        self.args = (*self.args, _Global("torch", dtype))

    def __reduce_ex__(self, proto):
        return (_Global("torch._utils", "_rebuild_tensor_v3"), self.args)


class _UntypedStorage(_Storage):
    pass


class _V3Pickler(_TorchPickler):
    dispatch = dict(_TorchPickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _UntypedStorage):  # numel counts bytes
            return ("storage", _Global("torch.storage", "UntypedStorage"), obj.key, "cpu", obj.data.nbytes)
        return super().persistent_id(obj)


def test_rebuild_tensor_v3_uint_and_float8(tmp_path):
    u16 = np.array([0, 7, 65535], np.uint16)
    codes = np.array([0x38, 0xBC, 0x7E, 0x7F, 0x01], np.uint8)  # e4m3fn: 1, -1.5, 448, nan, 2**-9
    su = _UntypedStorage("u", "0", u16.view(np.uint8))
    sf = _UntypedStorage("u", "1", codes)
    obj = {"u16": _TensorV3(su, 1, (2,), (1,), "uint16"), "f8": _TensorV3(sf, 0, (5,), (1,), "float8_e4m3fn")}
    buf = io.BytesIO()
    _V3Pickler(buf, protocol=2).dump(obj)
    write_torch_layout(tmp_path / "v3.pt", None, [su, sf], pickle_bytes=buf.getvalue())
    with open_model(tmp_path / "v3.pt") as src:
        assert src.stored_dtypes == {"u16": "U16", "f8": "F8_E4M3"}
        np.testing.assert_array_equal(src["u16"], u16[1:])
        assert src["f8"].dtype == np.float32
        np.testing.assert_array_equal(src["f8"], [1.0, -1.5, 448.0, np.nan, 2.0**-9])
    buf = io.BytesIO()
    _V3Pickler(buf, protocol=2).dump({"x": _TensorV3(sf, 0, (1,), (1,), "float4_e2m1fn_x2")})
    write_torch_layout(tmp_path / "f4.pt", None, [sf], pickle_bytes=buf.getvalue())
    with pytest.raises(FormatError, match="float4_e2m1fn_x2"):
        open_model(tmp_path / "f4.pt")


def test_float8_tables_against_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from weightpress.io._dtypes import f8_to_float32

    codes = np.arange(256, dtype=np.uint8)
    for kind, ref_dt in (("float8_e4m3fn", ml_dtypes.float8_e4m3fn), ("float8_e5m2", ml_dtypes.float8_e5m2)):
        np.testing.assert_array_equal(f8_to_float32(codes, kind), codes.view(ref_dt).astype(np.float32))


def test_nested_checkpoint_flattened_with_dots(tmp_path):
    a = np.ones((2, 2), np.float32)
    sa, ta = _contig(a, "0")
    ckpt = {"epoch": 7, "lr": 0.1, "state_dict": collections.OrderedDict(w=ta),
            "optimizer": {"state": {0: {"momentum": ta}}, "param_groups": [{"lr": 0.1}]},
            "history": [ta, "text"]}
    p = tmp_path / "ckpt.pth"
    write_torch_layout(p, ckpt, [sa], prefix="ckpt")
    with open_model(p) as src:
        assert sorted(src) == ["history.0", "optimizer.state.0.momentum", "state_dict.w"]
        np.testing.assert_array_equal(src["state_dict.w"], a)


def test_storages_are_memory_mapped_and_listing_is_lazy(tmp_path, monkeypatch):
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    sw, tw = _contig(w, "0")
    p = tmp_path / "m.pt"
    write_torch_layout(p, {"w": tw}, [sw])
    calls = []
    real = np.memmap
    monkeypatch.setattr(np, "memmap", lambda *a, **k: calls.append(a) or real(*a, **k))
    with open_model(p) as src:
        assert src.info()["w"].shape == (8, 8)
        assert calls == []  # the header alone
        out = src["w"]
        assert len(calls) == 1 and np.shares_memory(out, out.base)
        np.testing.assert_array_equal(out, w)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.call", "torch.nn.Module"])
def test_malicious_pickle_refused(tmp_path, payload):
    module, name = payload.rsplit(".", 1)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce_ex__(self, proto):
            return (_Global(module, name), (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    write_torch_layout(p, {"x": Evil()}, [])
    with pytest.raises(FormatError, match=f"refused global {module}.{name}"):
        open_model(p)
    assert not marker.exists()


def test_real_os_system_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pt"
    write_torch_layout(p, None, [], pickle_bytes=pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(FormatError, match=r"refused global (posix|nt|os)\.system"):
        open_model(p)


@pytest.mark.parametrize("target", [b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
                                    b"ccollections\nOrderedDict\n", b"ctorch\nTensor\n"])
def test_pickle_cannot_patch_allowed_objects(tmp_path, target):
    """BUILD on an allow-listed global would let a file rewrite it for every later load."""
    state = b"N}X\x04\x00\x00\x00nameX\x0d\x00\x00\x00DoubleStoragesX\x08\x00\x00\x00__code__K\x01s\x86"
    p = tmp_path / "patch.pt"
    write_torch_layout(p, None, [], pickle_bytes=b"\x80\x02" + target + state + b"b.")
    with pytest.raises(FormatError, match="patch.pt"):
        open_model(p)
    w = np.arange(4, dtype=np.float32)
    sw, tw = _contig(w, "0")
    write_torch_layout(tmp_path / "ok.pt", {"w": tw}, [sw])
    with open_model(tmp_path / "ok.pt") as src:  # nothing was patched
        assert src["w"].dtype == np.float32
        np.testing.assert_array_equal(src["w"], w)


def test_harmless_leaves_pass(tmp_path):
    """numpy scalars, bytes (protocol 2: _codecs.encode) and dtype/Size globals beside weights."""
    w = np.ones(3, np.float32)
    sw, tw = _contig(w, "0")
    ckpt = {"best_acc": np.float64(0.93), "step": np.int64(7), "tag": b"\x00\xffbytes",
            "size": _Global("torch", "Size"), "dtype": _Global("torch", "float32"), "model": {"w": tw}}
    write_torch_layout(tmp_path / "leaves.pt", ckpt, [sw])
    with open_model(tmp_path / "leaves.pt") as src:
        assert list(src) == ["model.w"]
        np.testing.assert_array_equal(src["model.w"], w)


@pytest.mark.parametrize("case", ["offset", "stride", "missing", "pid", "garbage", "truncated_pickle"])
def test_corrupt_checkpoints(tmp_path, case):
    w = np.ones(6, np.float32)
    sw = _Storage("FloatStorage", "0", w)
    t = {"offset": _Tensor(sw, 4, (3,), (1,)), "stride": _Tensor(sw, 0, (3,), (3,)),
         "missing": _Tensor(_Storage("FloatStorage", "9", w), 0, (6,), (1,))}.get(case, _Tensor(sw, 0, (6,), (1,)))
    p = tmp_path / "bad.pt"
    raw = None
    if case == "pid":
        raw = b"\x80\x02(X\x03\x00\x00\x00abct" + b"Q."
    elif case == "garbage":
        raw = b"\x80\x02\xff\xfe\xfd"
    elif case == "truncated_pickle":
        buf = io.BytesIO()
        _TorchPickler(buf, protocol=2).dump({"w": t})
        raw = buf.getvalue()[:-10]
    write_torch_layout(p, {"w": t}, [sw], pickle_bytes=raw)
    with pytest.raises(FormatError, match="bad.pt"), open_model(p) as src:
        for k in src:
            src[k]


def test_legacy_and_truncated_and_torchscript(tmp_path):
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x80\x02}q\x00.")
    with pytest.raises(FormatError, match="legacy"):
        open_model(legacy)
    w = np.ones((30, 30), np.float32)
    sw, tw = _contig(w, "0")
    p = tmp_path / "m.pt"
    write_torch_layout(p, {"w": tw}, [sw])
    data = p.read_bytes()
    for cut in (0.3, 0.7, 0.95):
        p.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(FormatError, match="m.pt"):
            open_model(p)
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as zf:
        zf.writestr("script/constants.pkl", b"")
        zf.writestr("script/code/__torch__.py", b"")
    with pytest.raises(FormatError, match="TorchScript"):
        open_model(tmp_path / "script.pt")


def test_write_read_round_trip(tmp_path):
    ref = {"a.weight": np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32),
           "a.bias": np.arange(5, dtype=np.float16), "n": np.array(3, np.int64),
           "flag": np.array([True, False]), "d": np.linspace(0, 1, 4), "z": np.zeros((0, 2), np.float32)}
    save_model(tmp_path / "o.pt", ref)
    with open_model(tmp_path / "o.pt") as src:
        for k, v in ref.items():
            assert src[k].dtype == v.dtype and src[k].shape == v.shape, k
            np.testing.assert_array_equal(src[k], v)
        # storages are 64-byte aligned, as torch writes them
        from weightpress.io._zip import member_data_offset

        zi = src._zf.getinfo("archive/data/0")
        assert member_data_offset(src.path, zi) % 64 == 0
    with pytest.raises(TypeError, match="PyTorch"):
        save_model(tmp_path / "c.pt", {"u": np.ones(2, np.uint32)})


def test_bf16_written_back_as_bf16(tmp_path):
    bf = np.array([1.0, 2.5, -0.5], np.float32)
    sb, tb = _contig(float32_to_bf16_bits(bf), "0")
    write_torch_layout(tmp_path / "b.pt", {"b": tb}, [sb])
    with open_model(tmp_path / "b.pt") as src:
        save_model(tmp_path / "b2.pt", {"b": src["b"] * 2}, like=src)
    with open_model(tmp_path / "b2.pt") as out:
        assert out.stored_dtypes["b"] == "BF16"
        np.testing.assert_array_equal(out["b"], bf * 2)


# -- against real torch, when installed --------------------------------------------------------
@needs_torch
def test_TORCH_reads_what_torch_saves(tmp_path):
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    sd = net.state_dict()
    sd["half"] = torch.randn(3, 2, generator=g).half()
    sd["bf16"] = torch.randn(7, generator=g).bfloat16()
    sd["t"] = sd["0.weight"].t()
    sd["v"] = sd["0.weight"][1:3, ::2]
    sd["u16"] = torch.arange(5).to(torch.uint16)
    sd["f8"] = torch.randn(4, generator=g).to(torch.float8_e4m3fn)
    torch.save({"model": sd, "epoch": 3, "best": np.float64(0.5), "shape": torch.Size([2]),
                "dtype": torch.float16, "blob": b"\x00\x01", "p": torch.nn.Parameter(torch.ones(2))},
               tmp_path / "real.pt")
    with open_model(tmp_path / "real.pt") as src:
        assert sorted(src) == sorted([f"model.{k}" for k in sd] + ["p"])
        np.testing.assert_array_equal(src["p"], np.ones(2, np.float32))
        for k, v in sd.items():
            ref = v.float().numpy() if v.dtype in (torch.bfloat16, torch.float8_e4m3fn) else v.numpy()
            got = src[f"model.{k}"]
            assert got.dtype == ref.dtype and got.shape == ref.shape
            np.testing.assert_array_equal(got, ref)
    torch.save(net, tmp_path / "whole.pt")  # pickles the Module class: must be refused
    with pytest.raises(FormatError, match="refused global torch.nn"):
        open_model(tmp_path / "whole.pt")


@needs_torch
def test_TORCH_loads_what_we_write(tmp_path):
    sd = {"w": np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32),
          "h": np.ones(2, np.float16), "i": np.arange(3)}
    sd["flag"] = np.array([True, False])
    save_model(tmp_path / "ours.pt", sd)
    got = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert isinstance(got, collections.OrderedDict) and list(got) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k].numpy(), v)
        assert got[k].numpy().dtype == v.dtype
    # bf16 written back as bf16 when the original stored it so
    torch.save({"b": torch.tensor([1.0, -2.5, 0.375]).bfloat16()}, tmp_path / "bf.pt")
    with open_model(tmp_path / "bf.pt") as src:
        save_model(tmp_path / "bf2.pt", {"b": src["b"] * 2}, like=src)
    b = torch.load(tmp_path / "bf2.pt", weights_only=True)["b"]
    assert b.dtype == torch.bfloat16
    np.testing.assert_array_equal(b.float().numpy(), [2.0, -5.0, 0.75])
    write_torch_layout(tmp_path / "fixture.pt", *_fixture_for_torch())
    got = torch.load(tmp_path / "fixture.pt", weights_only=True)  # our fixture is torch's layout
    np.testing.assert_array_equal(got["w"].numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


def _fixture_for_torch():
    st, t = _contig(np.arange(6, dtype=np.float32).reshape(2, 3), "0")
    return collections.OrderedDict(w=t), [st]
