"""safetensors read/write without the safetensors package: round trips, bf16/fp16, bad files."""

import json
import os
import struct

import numpy as np
import pytest

from weightpress.io._base import FormatError
from weightpress.io.safetensors import (SafetensorsSource, bf16_to_f32, f32_to_bf16,
                                        write_safetensors)


def _raw(path, header, data=b""):
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def test_round_trip_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    t = {"f32": rng.standard_normal((3, 4)).astype(np.float32),
         "f64": rng.standard_normal(5),
         "f16": rng.standard_normal((2, 2)).astype(np.float16),
         "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
         "i8": np.array([-3, 4], np.int8), "u8": np.array([1, 255], np.uint8),
         "bool": np.array([True, False]), "scalar": np.float32(2.5).reshape(()),
         "empty": np.zeros((0, 3), np.float32)}
    p = tmp_path / "m.safetensors"
    size = write_safetensors(p, t, {"k": "v"})
    assert size == os.path.getsize(p)
    src = SafetensorsSource(p)
    assert src.metadata == {"k": "v"} and set(src) == set(t)
    for k, v in t.items():
        got = src[k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        np.testing.assert_array_equal(got, v)
    assert src.info()["f16"].dtype == np.float16


def test_bf16_against_reference(tmp_path):
    # bf16 bit patterns and their exact values
    bits = np.array([0x3F80, 0xC040, 0x0000, 0x8000, 0x7F80, 0x3E20, 0x0001], np.uint16)
    ref = np.array([1.0, -3.0, 0.0, -0.0, np.inf, 0.15625, 2.0**-133], np.float32)
    p = tmp_path / "b.safetensors"
    _raw(p, {"w": {"dtype": "BF16", "shape": [7], "data_offsets": [0, 14]}}, bits.tobytes())
    src = SafetensorsSource(p)
    assert src.stored_dtypes["w"] == "BF16" and src.info()["w"].dtype == np.float32
    np.testing.assert_array_equal(src["w"], ref)
    np.testing.assert_array_equal(np.signbit(src["w"]), np.signbit(ref))
    # writing float32 as BF16 rounds to nearest even and reads back identically
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 3.0e38], np.float32)
    q = tmp_path / "c.safetensors"
    write_safetensors(q, {"x": x}, dtypes={"x": "BF16"})
    got = SafetensorsSource(q)["x"]
    np.testing.assert_array_equal(got, [1.0, 1.0, 1 + 2**-6, -2.5, bf16_to_f32(f32_to_bf16(x))[4]])
    assert os.path.getsize(q) < 8 + 200 + 5 * 2 + 8


def test_f8_decoding(tmp_path):
    p = tmp_path / "f8.safetensors"
    _raw(p, {"a": {"dtype": "F8_E4M3", "shape": [3], "data_offsets": [0, 3]},
             "b": {"dtype": "F8_E5M2", "shape": [2], "data_offsets": [3, 5]}},
         bytes([0x38, 0x7E, 0xB8, 0x3C, 0x7C]))
    src = SafetensorsSource(p)
    np.testing.assert_array_equal(src["a"], [1.0, 448.0, -1.0])
    np.testing.assert_array_equal(src["b"], [1.0, np.inf])


def test_lazy_open_reads_only_the_header(tmp_path, monkeypatch):
    p = tmp_path / "big.safetensors"
    write_safetensors(p, {"a": np.ones((256, 256), np.float32), "b": np.zeros(3, np.float32)})
    reads = []
    real_open = open

    def spy(*args, **kw):
        f = real_open(*args, **kw)
        orig = f.read
        f.read = lambda n=-1: (reads.append(n), orig(n))[1]
        return f
    monkeypatch.setattr("builtins.open", spy)
    src = SafetensorsSource(p)
    assert -1 not in reads and sum(reads) < 1000
    assert src.info()["a"].shape == (256, 256)
    a = src["a"]
    assert not a.flags.writeable  # a read-only map, not a copy


def test_streams_a_lazy_mapping(tmp_path):
    class Lazy(dict):
        loads = 0

        def __getitem__(self, k):
            Lazy.loads += 1
            return np.full((4, 4), float(len(k)), np.float32)

        def info(self):
            return {k: ((4, 4), np.float32) for k in self.keys()}
    m = Lazy(a=None, bb=None)
    write_safetensors(tmp_path / "l.safetensors", m)
    assert Lazy.loads == 2  # each tensor loaded once: shapes came from info()
    np.testing.assert_array_equal(SafetensorsSource(tmp_path / "l.safetensors")["bb"], 2.0)


@pytest.mark.parametrize("content, match", [
    (b"", "only 0 bytes"),
    (struct.pack("<Q", 10**6) + b"{}", "past the end"),
    (struct.pack("<Q", 4) + b"{{{{", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "JSON object"),
])
def test_corrupt_headers(tmp_path, content, match):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=match):
        SafetensorsSource(p)


@pytest.mark.parametrize("entry, data, match", [
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, b"\0" * 8, "truncated"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, b"\0" * 8, "needs 16"),
    ({"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}, b"\0", "unknown dtype"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, b"\0" * 4, "non-negative"),
    ({"dtype": "F32", "shape": [1]}, b"\0" * 4, "data_offsets"),
])
def test_lying_headers(tmp_path, entry, data, match):
    p = tmp_path / "bad.safetensors"
    _raw(p, {"w": entry}, data)
    with pytest.raises(FormatError, match=match):
        SafetensorsSource(p)


def test_truncated_file_is_detected(tmp_path):
    p = tmp_path / "t.safetensors"
    write_safetensors(p, {"w": np.ones((10, 10), np.float32)})
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(FormatError, match="truncated"):
        SafetensorsSource(p)


def test_write_errors_leave_no_file(tmp_path):
    p = tmp_path / "o.safetensors"
    with pytest.raises(TypeError, match="cannot be stored"):
        write_safetensors(p, {"s": np.array(["a"])})
    with pytest.raises(ValueError, match="dtypes"):
        write_safetensors(p, {"x": np.ones(2, np.float32)}, dtypes={"x": "I4"})
    with pytest.raises(TypeError, match="metadata"):
        write_safetensors(p, {"x": np.ones(2)}, {"k": 1})
    assert list(tmp_path.iterdir()) == []
