"""The container under hostile and unlucky input (issue 15): checksums on every read, 0-D and
empty tensors, non-float matrices, big-endian and expanded (stride-0) arrays."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from weightpress.compression.matrices import Dense
from weightpress.io import FormatError
from weightpress.io.safetensors import write_safetensors
from weightpress.model.container import Container, ContainerWriter, verify
from weightpress.compression import methods as M


def _flip_data_byte(path, name_part: str) -> None:
    """Flip 4 bytes inside the stored array whose key contains `name_part`."""
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name, _, role = name_part.partition("::")
    with Container(path) as c:  # small arrays live in the blob (format 2)
        spec = c.entries[name]["parts"][role or "values"]
        at = c._blob_at.get((name, role or "values"))
    if isinstance(spec, list):
        b0 = header["__weightpress_blob__"]["data_offsets"][0] + at[0]
        b, e = b0, b0 + int(np.prod(spec[1])) * {"F32": 4, "F16": 2, "U8": 1, "I32": 4}.get(spec[0], 8)
    else:
        b, e = header[spec]["data_offsets"]
    assert e - b >= 4
    pos = 8 + n + b + (e - b) // 2 - 2
    for i in range(4):
        raw[pos + i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _small_container(path, rng):
    W = rng.standard_normal((64, 48)).astype(np.float32)
    with ContainerWriter(path) as w:
        w.add("fc.weight", M.magnitude_prune(W, sparsity=0.5), original=W)
        w.add("fc.bias", rng.standard_normal(64).astype(np.float32))
    return W


def test_checksum_checked_on_every_read(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "c.wpz"
    _small_container(p, rng)
    _flip_data_byte(p, "fc.weight::data")
    with Container(p) as c:
        with pytest.raises(FormatError, match="checksum"):
            c["fc.weight"]
        with pytest.raises(FormatError, match="checksum"):
            c.matrix("fc.weight")
        c["fc.bias"]  # the intact tensor still reads
    with Container(p, verify_checksums=False) as c:  # the opt-out, for speed
        c["fc.weight"]
    assert not verify(p).ok


def test_checksum_dense_part(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "c.wpz"
    _small_container(p, rng)
    _flip_data_byte(p, "fc.bias")
    with Container(p) as c, pytest.raises(FormatError, match="checksum"):
        c["fc.bias"]


@pytest.mark.parametrize("value", [np.float32(3.5), np.int64(7), np.float64(-1.25)])
def test_zero_d_round_trip(tmp_path, value):
    p = tmp_path / "c.wpz"
    with ContainerWriter(p) as w:
        w.add("bn.num_batches_tracked", np.asarray(value))
    with Container(p) as c:
        assert c.info()["bn.num_batches_tracked"].shape == ()
        got = c["bn.num_batches_tracked"]
        assert got.shape == () and got.dtype == np.asarray(value).dtype
        assert got == value
    assert verify(p).ok


@pytest.mark.parametrize("shape", [(8192, 1), (0, 64), (64, 0), (0,), (3, 0, 2)])
def test_empty_and_thin_tensors(tmp_path, shape):
    rng = np.random.default_rng(2)
    W = rng.standard_normal(shape).astype(np.float32)
    p = tmp_path / "c.wpz"
    with ContainerWriter(p) as w:
        w.add("w", W)
        if len(shape) == 2:
            w.add("p", M.magnitude_prune(W, sparsity=0.5) if W.size else Dense(W), original=W)
    with Container(p) as c:
        np.testing.assert_array_equal(c["w"], W)
        assert c["w"].shape == shape
    assert verify(p).ok


def test_non_float_matrix_kept(tmp_path):
    p = tmp_path / "c.wpz"
    ids = np.arange(512, dtype=np.int64).reshape(1, 512)
    mask = np.tril(np.ones((64, 64), dtype=bool))
    with ContainerWriter(p) as w:
        w.add("position_ids", ids)
        w.add("mask", mask)
    with Container(p) as c:
        np.testing.assert_array_equal(c["position_ids"], ids)
        np.testing.assert_array_equal(c["mask"], mask)
    assert verify(p).ok


def test_big_endian_array_stored_native(tmp_path):
    W = np.arange(12, dtype=">f4").reshape(3, 4)
    p = tmp_path / "c.wpz"
    with ContainerWriter(p) as w:
        w.add("w", W)
    with Container(p) as c:
        got = c["w"]
        assert got.dtype.isnative
        np.testing.assert_array_equal(got, W)
    assert verify(p).ok


def test_expanded_tensor_stored_once(tmp_path):
    """A stride-0 (expanded) tensor is stored as its one row, and comes back with its shape."""
    row = np.arange(4096, dtype=np.float32)
    big = np.broadcast_to(row, (4096, 4096))  # 64 MiB logical, 16 KiB stored
    p = tmp_path / "c.wpz"
    with ContainerWriter(p) as w:
        w.add("expanded", big)
    assert p.stat().st_size < 64 << 10
    with Container(p) as c:
        got = c["expanded"]
        assert got.shape == (4096, 4096)
        np.testing.assert_array_equal(got[4095], row)
    assert verify(p).ok


def test_not_a_container_message(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, p)
    with pytest.raises(FormatError, match="not a weightpress container"):
        verify(p)
    q = tmp_path / "plain.safetensors"
    write_safetensors(q, {"w": np.zeros(3, np.float32)})
    with pytest.raises(FormatError, match="not a weightpress container"):
        Container(q)


def test_deep_metadata_json_is_format_error(tmp_path):
    p = tmp_path / "c.wpz"
    write_safetensors(p, {"w": np.zeros(3, np.float32)},
                      metadata={"format": "weightpress.container", "format_version": "1",
                                "tensors": "[" * 50_000 + "]" * 50_000})
    with pytest.raises(FormatError):
        Container(p)


# -- the writer, driven by hypothesis ------------------------------------------------------------
_dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.float16])
_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


class WriterMachine(RuleBasedStateMachine):
    """Add any mix of tensors (0-D, empty, non-float, big-endian, compressed, expanded), close,
    and the file reads back exactly, verifies, and a flipped byte is always caught."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="wp-writer-")
        self.n = 0
        self.expect: dict[str, np.ndarray] = {}
        self._new()

    def _new(self):
        import os
        self.path = os.path.join(self.dir, f"c{self.n}.wpz")
        self.n += 1
        self.w = ContainerWriter(self.path)
        self.expect = {}

    @rule(shape=_shapes, dtype=_dtypes, big_endian=st.booleans(), seed=st.integers(0, 99))
    def add_dense(self, shape, dtype, big_endian, seed):
        a = (np.random.default_rng(seed).standard_normal(shape) * 10).astype(dtype)
        if big_endian and a.dtype.itemsize > 1:
            a = a.astype(a.dtype.newbyteorder(">"))
        name = f"t{len(self.expect)}"
        self.w.add(name, a)
        self.expect[name] = np.asarray(a)

    @rule(rows=st.integers(1, 12), cols=st.integers(1, 12), sparsity=st.floats(0, 1),
          seed=st.integers(0, 99))
    def add_pruned(self, rows, cols, sparsity, seed):
        W = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
        m = M.magnitude_prune(W, sparsity=sparsity)
        name = f"t{len(self.expect)}"
        self.w.add(name, m, original=W)
        self.expect[name] = m.toarray()

    @rule(rows=st.integers(1, 50), cols=st.integers(1, 8))
    def add_expanded(self, rows, cols):
        a = np.broadcast_to(np.arange(cols, dtype=np.float32), (rows, cols))
        name = f"t{len(self.expect)}"
        self.w.add(name, a)
        self.expect[name] = np.array(a)

    @rule()
    def close_and_check(self):
        self.w.close()
        with Container(self.path) as c:
            assert list(c) == list(self.expect)
            for k, v in self.expect.items():
                got = c[k]
                assert got.shape == v.shape, (k, got.shape, v.shape)
                np.testing.assert_array_equal(got, v)
        assert verify(self.path).ok
        self._corrupt_and_check()
        self._new()

    def _corrupt_and_check(self):
        with open(self.path, "rb") as f:
            raw = bytearray(f.read())
        (n,) = struct.unpack("<Q", raw[:8])
        if len(raw) > 8 + n:  # some payload: flip its last byte; a read must notice
            raw[-1] ^= 0xFF
            with open(self.path, "wb") as f:
                f.write(bytes(raw))
            with pytest.raises(FormatError, match="checksum"):  # on opening (the header) or reading
                with Container(self.path) as c:
                    for k in c:
                        c[k]

    @invariant()
    def no_file_before_close(self):
        import os
        assert not os.path.exists(self.path)

    def teardown(self):
        import shutil
        self.w.abort()
        shutil.rmtree(self.dir, ignore_errors=True)


TestWriterMachine = WriterMachine.TestCase
TestWriterMachine.settings = settings(max_examples=25, stateful_step_count=8, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
