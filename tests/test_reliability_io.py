"""Hostile and unlucky model files (issue 15): each reader answers FormatError or reads the file
right, in time and memory bounded by the file."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from weightpress.io import FormatError, open_model
from weightpress.io.safetensors import write_safetensors


def _safetensors(path, header: dict | str, data: bytes = b"") -> None:
    raw = header if isinstance(header, str) else json.dumps(header)
    raw_b = raw.encode()
    path.write_bytes(struct.pack("<Q", len(raw_b)) + raw_b + data)


# -- recursion and overflow ----------------------------------------------------------------------
def test_safetensors_deeply_nested_header_is_format_error(tmp_path):
    p = tmp_path / "deep.safetensors"
    _safetensors(p, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match="nests too deeply|not valid JSON"):
        open_model(p)


@pytest.mark.parametrize("shape", [[0, 2**64], [0, 2**63 - 1], [2**40, 2**40, 0]])
def test_safetensors_overflowing_shape_is_format_error(tmp_path, shape):
    p = tmp_path / "big.safetensors"
    _safetensors(p, {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    with pytest.raises(FormatError, match="too large|shape"):
        open_model(p)


def test_onnx_overflowing_dims_is_format_error(tmp_path):
    # TensorProto{dims: 0, dims: 2**62, dims: 8, data_type: 1, name: "w", raw_data: ""}
    def varint(v):
        out = bytearray()
        while True:
            b, v = v & 0x7F, v >> 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)
    t = (b"\x08" + varint(0) + b"\x08" + varint(2**62) + b"\x08" + varint(8) + b"\x10\x01"
         + b"\x42\x01w" + b"\x4a\x00")
    g = b"\x2a" + varint(len(t)) + t
    p = tmp_path / "big.onnx"
    p.write_bytes(b"\x08\x07" + b"\x3a" + varint(len(g)) + g)
    with pytest.raises(FormatError, match="too large"):
        open_model(p)


def test_pytorch_deep_tuple_key_does_not_crash(tmp_path):
    """A dict key nested a million tuples deep: hashing it overflowed the C stack (SIGSEGV),
    and a shallower one made str() raise RecursionError past open_model."""
    for depth in (3000, 1_000_000):
        pkl = b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."
        p = tmp_path / f"deep{depth}.pt"
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
        code = ("import sys; from weightpress.io import open_model, FormatError\n"
                "try:\n    open_model(sys.argv[1])\nexcept FormatError as e:\n"
                "    print('FormatError', e); sys.exit(0)\nprint('opened'); sys.exit(3)")
        r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, (depth, r.returncode, r.stdout, r.stderr[-500:])
        assert "FormatError" in r.stdout


def test_safetensors_overlapping_ranges_rejected(tmp_path):
    p = tmp_path / "overlap.safetensors"
    _safetensors(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))
    with pytest.raises(FormatError, match="overlap"):
        open_model(p)
    # adjacent ranges and empty tensors sharing an offset are fine
    _safetensors(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "e": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))
    with open_model(p) as m:
        assert m["b"].shape == (4,) and m["e"].shape == (0,)


# -- byte order ----------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_big_endian_npz_read_native(tmp_path, compressed):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((16, 8)).astype(np.float32)
    p = tmp_path / "be.npz"
    (np.savez_compressed if compressed else np.savez)(p, w=W.astype(">f4"), i=np.arange(5, dtype=">i8"))
    with open_model(p) as m:
        assert m.info()["w"].dtype == np.dtype("float32") and m.info()["w"].dtype.isnative
        a = m["w"]
        assert a.dtype.isnative and a.dtype == np.float32
        np.testing.assert_array_equal(a, W)
        assert m["i"].dtype.isnative
        np.testing.assert_array_equal(m["i"], np.arange(5))


def test_big_endian_npy_read_native(tmp_path):
    W = np.arange(12, dtype=">f8").reshape(3, 4)
    p = tmp_path / "be.npy"
    np.save(p, W)
    with open_model(p) as m:
        a = m["be"]
        assert a.dtype.isnative and m.info()["be"].dtype.isnative
        np.testing.assert_array_equal(a, np.arange(12.0).reshape(3, 4))


def test_big_endian_h5_read_native(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "be.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("w", data=np.arange(6, dtype=">f4").reshape(2, 3))
    with open_model(p) as m:
        a = m["w"]
        assert a.dtype.isnative and m.info()["w"].dtype.isnative
        np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3))


# -- time: linear name handling ------------------------------------------------------------------
def test_onnx_many_equal_names_linear_time(tmp_path):
    """60k initializers all named "w": the old `while key in out` de-duplication was
    quadratic (a 600 KB file took about 70 minutes)."""
    t = b"\x08\x01\x10\x01\x42\x01w\x4a\x04" + bytes(4)
    init = b"\x2a" + bytes([len(t)]) + t
    g = init * 60_000

    def varint(v):
        out = bytearray()
        while True:
            b, v = v & 0x7F, v >> 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)
    p = tmp_path / "dup.onnx"
    p.write_bytes(b"\x08\x07\x3a" + varint(len(g)) + g)
    t0 = time.perf_counter()
    with open_model(p) as m:
        names = list(m)
    assert time.perf_counter() - t0 < 10
    assert len(names) == 60_000 and len(set(names)) == 60_000
    assert names[:3] == ["w", "w#2", "w#3"] and names[-1] == "w#60000"


def test_pytorch_shared_subdicts_linear_time(tmp_path):
    """A checkpoint whose dicts share sub-dicts (one pickle memo entry referenced many times)
    lists exponentially many colliding names from a tiny file: bounded and linear now."""
    torch = pytest.importorskip("torch")
    t = torch.zeros(1)
    d: dict = {"a": t}
    levels = [d]
    for _ in range(25):  # "a.a.a..." reached through every split of the dots: 2**k paths
        nxt = {"a": levels[-1]}
        if len(levels) > 1:
            nxt["a.a"] = levels[-2]
        levels.append(nxt)
    p = tmp_path / "dag.pt"
    torch.save(levels[-1], p)
    assert p.stat().st_size < 5000
    t0 = time.perf_counter()
    try:
        with open_model(p) as m:
            n = len(m)
        assert n > 1000
    except FormatError as e:
        assert "too large" in str(e)
    assert time.perf_counter() - t0 < 10


# -- memory: bounded by the file ----------------------------------------------------------------
def _zip_bomb(path, member: str, n: int, extra: dict | None = None) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(member, "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(n >> 20):
                f.write(chunk)
        for k, v in (extra or {}).items():
            zf.writestr(k, v)


def test_pytorch_pickle_zip_bomb_refused_without_inflating(tmp_path):
    p = tmp_path / "bomb.pt"
    _zip_bomb(p, "archive/data.pkl", 200 << 20)
    assert p.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="zip bomb"):
            open_model(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def test_npz_compressed_member_bomb_refused(tmp_path):
    head = io.BytesIO()
    n = 160 << 20
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                                "shape": (n // 4,)})
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("w.npy", "w", force_zip64=True) as f:
            f.write(head.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(n >> 20):
                f.write(chunk)
    with open_model(p) as m:  # listing reads headers only
        assert m.info()["w"].shape == (n // 4,)
        tracemalloc.start()
        try:
            with pytest.raises(FormatError, match="zip bomb"):
                m["w"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 32 << 20


def test_keras_bad_member_leaves_no_temp_file(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    p = tmp_path / "bad.keras"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"not an hdf5 file at all" * 1000)
    with pytest.raises(FormatError):
        open_model(p)
    assert os.listdir(tmpdir) == []
    # a weights member claiming far more than the archive could hold is refused before unpacking
    _zip_bomb(p, "model.weights.h5", 200 << 20, {"config.json": "{}"})
    with pytest.raises(FormatError, match="zip bomb"):
        open_model(p)
    assert os.listdir(tmpdir) == []


def test_write_safetensors_broadcast_view_not_materialised(tmp_path):
    """A stride-0 (expanded) tensor is written in chunks, never copied whole."""
    big = np.broadcast_to(np.arange(2048, dtype=np.float32), (16384, 2048))  # 128 MiB logical
    p = tmp_path / "b.safetensors"
    tracemalloc.start()
    try:
        write_safetensors(p, {"w": big})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, peak  # two 16 MiB chunks at most
    with open_model(p) as m:
        got = m["w"]
        assert got.shape == (16384, 2048)
        np.testing.assert_array_equal(got[::1000], big[::1000])


def test_safetensors_header_of_many_empty_tensors_stays_near_file_size(tmp_path):
    """Issue 15: a header of many empty tensors made the reader hold ~40x the header (a dict
    per entry, a tuple copy of each shape, a dtype object per tensor). Now each entry is a
    compact tuple as soon as it is parsed and the reader keeps one TensorInfo and one offset."""
    import json
    import struct
    import tracemalloc

    from weightpress.io import open_model

    n = 20_000
    head = json.dumps({f"model.layers.{i}.attention.some_long_name.weight":
                       {"dtype": "F32", "shape": [0, 64], "data_offsets": [0, 0]}
                       for i in range(n)}).encode()
    head += b" " * (-len(head) % 8)
    p = tmp_path / "empty.safetensors"
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    size = p.stat().st_size
    tracemalloc.start()
    try:
        m = open_model(p)
        info = m.info()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(info) == n and info[f"model.layers.{n - 1}.attention.some_long_name.weight"].shape == (0, 64)
    assert m["model.layers.7.attention.some_long_name.weight"].shape == (0, 64)
    assert held < 5 * size, f"held {held / size:.1f}x the file"
    assert peak < 8 * size, f"peak {peak / size:.1f}x the file"


def test_randomized_svd_on_csr_with_decreasing_indptr_is_a_value_error():
    """Found by scripts/hostile_probe.py: SciPy's canonical-format scan ran on the broken
    indptr first and failed in C++ (RuntimeError: vector::_M_default_append)."""
    import scipy.sparse as sp

    import weightpress as wp

    A = sp.random(20, 12, density=0.3, format="csr", random_state=0).copy()  # format unknown
    A.indptr[5] = A.indptr[6] + 1
    with pytest.raises(ValueError, match="indptr"):
        wp.randomized_svd(A, 2, seed=0)
    with pytest.raises(ValueError, match="indptr"):
        wp.svt(A, 0.5, seed=0)
