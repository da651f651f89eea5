"""weightpress.io: format detection, open_model/save_model, .npz/.npy, bad files.

Format-specific suites: test_io_pytorch.py, test_io_onnx.py, test_io_keras.py.
"""

import io
import os
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from weightpress.io import FormatError, TensorSource, detect_format, open_model, save_model
from weightpress.io._dtypes import bf16_bits_to_float32, float32_to_bf16_bits
from weightpress.io.npz import NpzSource


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "layer0.weight": rng.standard_normal((8, 5)).astype(np.float32),
        "layer0.bias": rng.standard_normal(8).astype(np.float16),
        "emb": rng.standard_normal((3, 4)),
        "steps": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
    }


def _assert_same(src, ref):
    assert sorted(src) == sorted(ref)
    for k, v in ref.items():
        got = src[k]
        assert got.dtype == v.dtype, k
        assert got.shape == v.shape, k
        np.testing.assert_array_equal(got, v)


# -- bf16 ------------------------------------------------------------------------------------
def test_bf16_round_trip_and_rounding():
    x = np.array([1.0, -2.5, 3.140625, 1e-3, np.inf, -np.inf, 0.0, 65504.0], np.float32)
    bits = float32_to_bf16_bits(x)
    # reference: bf16 is the top half of float32; these values are chosen exactly representable
    # except 1e-3, which must round to nearest even
    np.testing.assert_array_equal(bf16_bits_to_float32(bits)[[0, 1, 2, 4, 5, 6]], x[[0, 1, 2, 4, 5, 6]])
    u = np.float32(1e-3).view(np.uint32)
    lo, hi = u >> 16, (u >> 16) + 1
    want = lo if (u & 0xFFFF) < 0x8000 else hi
    assert bits[3] == want
    # a tie rounds to even: 1 + 2^-8 sits halfway between two bf16 values
    tie = np.array([1.0 + 2.0**-8], np.float32)
    assert bf16_bits_to_float32(float32_to_bf16_bits(tie))[0] == 1.0
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


# -- npz / npy -------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_written_by_numpy(tmp_path, compressed):
    ref = _tensors()
    p = tmp_path / "m.npz"
    (np.savez_compressed if compressed else np.savez)(p, **ref)
    assert detect_format(p) == "npz"
    with open_model(p) as src:
        assert isinstance(src, NpzSource)
        assert src.info()["layer0.weight"].shape == (8, 5)
        _assert_same(src, ref)
        assert isinstance(src["layer0.weight"], np.memmap) != compressed


def test_npz_round_trip_keeps_dtypes_and_fortran(tmp_path):
    ref = _tensors()
    ref["fortran"] = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    save_model(tmp_path / "o.npz", ref)
    with open_model(tmp_path / "o.npz") as src:
        _assert_same(src, ref)
    with np.load(tmp_path / "o.npz") as z:  # numpy reads what we write
        np.testing.assert_array_equal(z["layer0.bias"], ref["layer0.bias"])
    # a lazy source streams into another file
    with open_model(tmp_path / "o.npz") as src:
        save_model(tmp_path / "p.npz", src)
    with open_model(tmp_path / "p.npz") as src:
        _assert_same(src, ref)


def test_npy(tmp_path):
    a = np.arange(20, dtype=np.float16).reshape(4, 5)
    np.save(tmp_path / "w.npy", a)
    with open_model(tmp_path / "w.npy") as src:
        assert list(src) == ["w"]
        assert isinstance(src["w"], np.memmap)
        np.testing.assert_array_equal(src["w"], a)
    save_model(tmp_path / "x.npy", {"x": a})
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), a)
    assert np.load(tmp_path / "x.npy").dtype == np.float16
    with pytest.raises(ValueError, match="one array"):
        save_model(tmp_path / "y.npy", {"a": a, "b": a})


def test_npz_listing_is_lazy(tmp_path, monkeypatch):
    """Listing names and shapes must not read any tensor data."""
    p = tmp_path / "big.npz"
    np.savez(p, a=np.ones((100, 100)), b=np.zeros(7))
    import numpy.lib.format as fmt

    def boom(*a, **k):
        raise AssertionError("tensor data read while listing")

    monkeypatch.setattr(fmt, "read_array", boom)
    monkeypatch.setattr(np, "memmap", boom)
    with open_model(p) as src:
        assert dict(src.info()) == {"a": ((100, 100), np.dtype("f8")), "b": ((7,), np.dtype("f8"))}
        with pytest.raises(AssertionError, match="while listing"):
            src["a"]


def test_object_arrays_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="Python objects"):
        open_model(tmp_path / "o.npz")
    np.save(tmp_path / "o.npy", np.array([None], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="Python objects"):
        open_model(tmp_path / "o.npy")
    with pytest.raises(TypeError, match="numeric"):
        save_model(tmp_path / "x.npz", {"s": np.array(["a"])})


# -- detection and bad input ---------------------------------------------------------------
def test_detect_by_magic_not_extension(tmp_path):
    with open(tmp_path / "model.bin", "wb") as f:  # misleading extension
        np.savez(f, a=np.ones(2))
    assert detect_format(tmp_path / "model.bin") == "npz"
    np.save(tmp_path / "x.npy", np.ones(2))
    os.rename(tmp_path / "x.npy", tmp_path / "x.dat")
    assert detect_format(tmp_path / "x.dat") == "npy"


@pytest.mark.parametrize("fmt", ["npz", "npy"])
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_truncated_files(tmp_path, fmt, cut):
    p = tmp_path / f"m.{fmt}"
    if fmt == "npz":
        np.savez(p, a=np.ones((50, 50)), b=np.ones(10))
    else:
        np.save(p, np.ones((50, 50)))
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError, match=str(p.name)), open_model(p) as src:
        for k in src:
            np.asarray(src[k]).sum()


def test_npz_lying_header(tmp_path):
    """A .npy member whose header promises more data than the member holds."""
    p = tmp_path / "lie.npz"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ones(10))
    raw = buf.getvalue().replace(b"(10,)", b"(99,)")
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", raw)
    with pytest.raises(FormatError, match="header says"):
        open_model(p)
    # a shape whose element count wraps around int64 (2**62 * 4 = 2**64 -> 0) must not pass the
    # size check against a member holding no data
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (2**62, 4)})
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", head.getvalue())
    with pytest.raises(FormatError, match="header says|too large"):
        open_model(p)


def test_unknown_and_odd_paths(tmp_path):
    (tmp_path / "junk.xyz").write_bytes(b"hello world, not a model at all")
    with pytest.raises(FormatError, match="unknown model format"):
        open_model(tmp_path / "junk.xyz")
    (tmp_path / "empty.xyz").write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        open_model(tmp_path / "empty.xyz")
    with pytest.raises(FormatError, match="directory"):
        open_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_model(tmp_path / "missing.npz")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(FormatError, match="zip archive"):
        open_model(tmp_path / "other.zip")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(FormatError, match="bad.npz"):
        open_model(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="format"):
        open_model(tmp_path / "junk.xyz", format="tflite")
    os.mkfifo(tmp_path / "pipe.npz")  # reading would block forever: refused up front
    for fmt in (None, "npz", "pytorch", "onnx"):
        with pytest.raises(FormatError, match="not a regular file"):
            open_model(tmp_path / "pipe.npz", format=fmt)
    with pytest.raises(FormatError, match="directory"):
        open_model(tmp_path, format="npz")


def test_save_errors_leave_no_partial_output(tmp_path):
    good = {"a": np.ones(3)}
    out = tmp_path / "out.npz"
    save_model(out, good)
    before = out.read_bytes()

    class Failing(dict):
        def __getitem__(self, k):
            if k == "b":
                raise RuntimeError("decompression failed midway")
            return super().__getitem__(k)

    with pytest.raises(RuntimeError, match="midway"):
        save_model(out, Failing(a=np.ones(1000), b=np.ones(3)))
    assert out.read_bytes() == before  # old file untouched
    assert sorted(os.listdir(tmp_path)) == ["out.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="directory"):
        save_model(tmp_path, good, format="npz")
    with pytest.raises(ValueError, match="output format"):
        save_model(tmp_path / "noext", good)

    class Container(NpzSource):  # a source of a format save_model cannot write
        format = "weightpress"

    with Container(out) as c, pytest.raises(ValueError, match="output format"):
        save_model(tmp_path / "noext", c)
    with pytest.raises(FileNotFoundError):
        save_model(tmp_path / "no" / "such" / "dir.npz", good)
    with pytest.raises(TypeError, match="mapping"):
        save_model(tmp_path / "x.npz", [np.ones(2)])


def test_open_model_returns_tensor_source(tmp_path):
    np.savez(tmp_path / "a.npz", w=np.ones(2))
    src = open_model(tmp_path / "a.npz", format="npz")
    assert isinstance(src, TensorSource) and src.format == "npz" and len(src) == 1
    assert "a.npz" in repr(src)
    src.close()


def test_bf16_against_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(5000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 5000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)]).astype(np.float32)
    ref = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(float32_to_bf16_bits(x), ref.view(np.uint16))
    np.testing.assert_array_equal(bf16_bits_to_float32(ref.view(np.uint16)), ref.astype(np.float32))


def _sample_files(d):
    """One small file per format (those whose library is installed): name -> path."""
    files = {}
    np.savez(d / "a.npz", w=np.ones((20, 20)), b=np.arange(5.0))
    np.savez_compressed(d / "c.npz", w=np.ones((20, 20)))
    np.save(d / "a.npy", np.ones((10, 10)))
    save_model(d / "t.pt", {"w": np.ones((10, 10), np.float32), "h": np.ones(4, np.float16)})
    files.update(npz=d / "a.npz", npz_deflated=d / "c.npz", npy=d / "a.npy", pytorch=d / "t.pt")
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        pass
    else:
        g = helper.make_graph(
            [helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(np.ones(3, np.float32), "c"))],
            "g", [], [helper.make_tensor_value_info("C", onnx.TensorProto.FLOAT, [3])],
            initializer=[numpy_helper.from_array(np.ones((6, 6), np.float32), "W")])
        onnx.save(helper.make_model(g), d / "m.onnx")
        files["onnx"] = d / "m.onnx"
    try:
        import h5py
    except ImportError:
        pass
    else:
        with h5py.File(d / "k.h5", "w") as f:
            f["layers/dense/vars/0"] = np.ones((6, 6), np.float32)
            f.create_dataset("layers/dense/vars/1", data=np.ones(6), compression="gzip")
        with zipfile.ZipFile(d / "k.keras", "w") as zf:
            zf.writestr("config.json", "{}")
            zf.write(d / "k.h5", "model.weights.h5")
        files.update(h5=d / "k.h5", keras=d / "k.keras")
    return files


@pytest.mark.parametrize("kind", ["npz", "npz_deflated", "npy", "pytorch", "onnx", "h5", "keras"])
def test_random_damage_gives_format_error_or_data(tmp_path, kind):
    """Flipped, zeroed or cut bytes: the reader either returns arrays or raises FormatError."""
    files = _sample_files(tmp_path)
    if kind not in files:
        pytest.skip(f"library for {kind} not installed")
    data = files[kind].read_bytes()
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    p = tmp_path / ("damaged" + files[kind].suffix)
    for _ in range(40):
        b = bytearray(data)
        mode = rng.integers(3)
        if mode == 0:
            for i in rng.integers(0, len(b), rng.integers(1, 9)):
                b[i] = rng.integers(256)
        elif mode == 1:
            b = b[: rng.integers(len(b))]
        else:
            i = int(rng.integers(len(b)))
            b[i:i + 64] = bytes(len(b[i:i + 64]))
        p.write_bytes(bytes(b))
        try:
            with open_model(p) as src:
                for k in src:
                    np.asarray(src[k]).sum()
        except FormatError:
            pass


def test_npy_header_cut_mid_dict(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    raw = bytearray((tmp_path / "a.npy").read_bytes())
    raw[60:70] = b"#" * 10  # comment out the closing brace
    (tmp_path / "a.npy").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="not a valid .npy"):
        open_model(tmp_path / "a.npy")


# -- safetensors (reader/writer live in weightpress.io.safetensors) and conversions ------------
def test_safetensors_through_dispatch_and_conversions(tmp_path):
    st = pytest.importorskip("weightpress.io.safetensors")
    ref = {"w": np.array([[1.5, -2.0], [0.25, 3.0]], np.float32), "h": np.arange(3, dtype=np.float16),
           "i": np.arange(4, dtype=np.int64)}
    st.write_safetensors(tmp_path / "a.safetensors", ref, metadata={"origin": "test"}, dtypes={"w": "BF16"})
    assert detect_format(tmp_path / "a.safetensors") == "safetensors"
    with open_model(tmp_path / "a.safetensors") as src:
        assert src.format == "safetensors"
        save_model(tmp_path / "b.pt", src)  # bf16 stays bf16 across formats
        save_model(tmp_path / "b.npz", src)  # npz has no bf16: float32
        save_model(tmp_path / "same.safetensors", {k: src[k] for k in src}, like=src)
        save_model(tmp_path / "nometa.safetensors", src)  # metadata is copied only from like=
    with open_model(tmp_path / "b.pt") as pt:
        assert pt.stored_dtypes == {"w": "BF16", "h": "F16", "i": "I64"}
        save_model(tmp_path / "c.safetensors", pt)
    for p in ("b.pt", "b.npz", "c.safetensors", "same.safetensors"):
        with open_model(tmp_path / p) as src:
            for k, v in ref.items():
                assert src[k].dtype == v.dtype, (p, k)
                np.testing.assert_array_equal(src[k], v)
    with open_model(tmp_path / "c.safetensors") as src:
        assert src.stored_dtypes["w"] == "BF16"
    with open_model(tmp_path / "same.safetensors") as src:
        assert src.stored_dtypes["w"] == "BF16" and src.metadata == {"origin": "test"}
    with open_model(tmp_path / "nometa.safetensors") as src:
        assert src.metadata == {} and src.stored_dtypes["w"] == "BF16"


def test_stored_dtype_names_are_one_vocabulary(tmp_path):
    """Every reader spells stored dtypes as safetensors does (the container's vocabulary)."""
    ref = {"f": np.ones(2, np.float32), "h": np.ones(2, np.float16), "i": np.arange(2), "b": np.array([True])}
    save_model(tmp_path / "a.npz", ref)
    save_model(tmp_path / "a.pt", ref)
    for p in ("a.npz", "a.pt"):
        with open_model(tmp_path / p) as src:
            assert src.stored_dtypes == {"f": "F32", "h": "F16", "i": "I64", "b": "BOOL"}, p


# -- property: any numeric tensors survive a round trip through every writable format -------
_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8,
           np.bool_, np.complex64]
_arrays = st.sampled_from(_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
_models = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True), _arrays,
                          min_size=1, max_size=4)


@given(tensors=_models, fmt=st.sampled_from(["npz", "pt", "h5"]))
def test_round_trip_property(tmp_path_factory, tensors, fmt):
    if fmt == "h5":
        pytest.importorskip("h5py")
        tensors = {k.replace(".", "_"): v for k, v in tensors.items()}  # h5 paths: no clash a/a.b
    p = tmp_path_factory.mktemp("rt") / f"m.{fmt}"
    save_model(p, tensors)
    with open_model(p) as src:
        assert sorted(src) == sorted(tensors)
        for k, v in tensors.items():
            got = src[k]
            assert got.dtype == v.dtype and got.shape == v.shape, k
            np.testing.assert_array_equal(got, v)
