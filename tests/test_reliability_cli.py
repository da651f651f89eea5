"""The command line as a hostile or unlucky user meets it (issue 15): it never writes onto its
input, never into a special file, never leaves temp files after a signal, checks checksums
on every read, and says one clear line for every bad input."""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from weightpress.cli import main
from weightpress.io.safetensors import write_safetensors
from weightpress.model.container import Container


def _model(path, n=2, size=(128, 64), seed=0, extra=None):
    rng = np.random.default_rng(seed)
    t = {f"l{i}.weight": rng.standard_normal(size).astype(np.float32) for i in range(n)}
    t.update(extra or {})
    write_safetensors(path, t)
    return t


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- never onto the input ------------------------------------------------------------------------
def test_output_symlink_to_input_refused(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    _model(m)
    before = m.read_bytes()
    link = tmp_path / "l.safetensors"
    link.symlink_to(m)
    code, _, err = _run(capsys, "compress", link, "-o", m, "--ratio", "2")
    assert code == 2 and "input" in err and len(err.strip().splitlines()) == 1
    assert m.read_bytes() == before
    code, _, err = _run(capsys, "compress", m, "-o", link, "--ratio", "2")
    assert code == 2 and m.read_bytes() == before and link.is_symlink()


def test_output_through_symlinked_directory_refused(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    m = d / "m.safetensors"
    _model(m)
    before = m.read_bytes()
    (tmp_path / "d2").symlink_to(d, target_is_directory=True)
    code, _, err = _run(capsys, "compress", m, "-o", tmp_path / "d2" / "m.safetensors", "--ratio", "2")
    assert code == 2 and "input" in err
    assert m.read_bytes() == before


def test_decompress_onto_its_container_refused(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    _model(m)
    c = tmp_path / "m.wpz"
    assert _run(capsys, "compress", m, "-o", c, "--ratio", "2")[0] == 0
    before = c.read_bytes()
    link = tmp_path / "c.safetensors"
    link.symlink_to(c)
    code, _, err = _run(capsys, "decompress", c, "-o", link)
    assert code == 2 and "input" in err
    assert c.read_bytes() == before and link.is_symlink()


def test_output_fifo_refused(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    _model(m)
    fifo = tmp_path / "out.wpz"
    os.mkfifo(fifo)
    code, _, err = _run(capsys, "compress", m, "-o", fifo, "--ratio", "2")
    assert code == 2 and "-o" in err and "regular file" in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the node is still the node
    code, _, err = _run(capsys, "compress", m, "-o", tmp_path, "--ratio", "2")
    assert code == 2 and "-o" in err


def test_output_device_refused(tmp_path, capsys):
    """A device node as -o (as root, -o /dev/null used to replace the system's /dev/null with
    a regular file): tried on a private node, never on the real one."""
    m = tmp_path / "m.safetensors"
    _model(m)
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("creating a device node needs root")
    code, _, err = _run(capsys, "compress", m, "-o", dev, "--ratio", "2")
    assert code == 2 and "-o" in err
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


# -- checksums ---------------------------------------------------------------------------------
def _corrupt(path):
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    # the middle of a compressed tensor's stored array (format 2: most share the blob)
    key = next(k for k in header if k.endswith(("::data", "::left", "::packed", "::quant.packed",
                                                "__weightpress_blob__")))
    b, e = header[key]["data_offsets"]
    for i in range(4):
        raw[8 + n + (b + e) // 2 + i] ^= 0x77
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("command", ["decompress", "info", "compress"])
def test_corrupt_container_detected_on_every_read(tmp_path, capsys, command):
    m = tmp_path / "m.safetensors"
    _model(m)
    c = tmp_path / "m.wpz"
    assert _run(capsys, "compress", m, "-o", c, "--ratio", "3")[0] == 0
    _corrupt(c)
    out = tmp_path / "o.safetensors"
    argv = {"decompress": ["decompress", c, "-o", out], "info": ["info", c],
            "compress": ["compress", c, "-o", tmp_path / "again.wpz", "--ratio", "2"]}[command]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "checksum" in err
    assert not out.exists() and not (tmp_path / "again.wpz").exists()
    assert _run(capsys, "verify", c)[0] == 1


# -- ordinary inputs that crashed ----------------------------------------------------------------
def test_zero_d_tensors_round_trip(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    t = _model(m, extra={"bn.num_batches_tracked": np.array(7, np.int64),
                         "step": np.array(2.5, np.float32)})
    c = tmp_path / "m.wpz"
    assert _run(capsys, "compress", m, "-o", c, "--ratio", "2")[0] == 0
    assert _run(capsys, "verify", c)[0] == 0
    for ext in ("safetensors", "npz", "pt"):
        out = tmp_path / f"back.{ext}"
        code, _, err = _run(capsys, "decompress", c, "-o", out)
        assert code == 0, err
        from weightpress.io import open_model
        with open_model(out) as back:
            assert back["bn.num_batches_tracked"].shape == ()
            assert back["bn.num_batches_tracked"] == 7
            assert back["step"].shape == () and back["step"] == np.float32(2.5)
            np.testing.assert_array_equal(np.asarray(back["l0.weight"]).shape, t["l0.weight"].shape)


@pytest.mark.parametrize("argv", [["--error", "0.5"], ["--error", "1.0"],
                                  ["--method", "lowrank", "--rank", "0"], ["--ratio", "2"]])
def test_thin_and_empty_tensors(tmp_path, capsys, argv):
    m = tmp_path / "m.safetensors"
    rng = np.random.default_rng(3)
    write_safetensors(m, {"thin.weight": rng.standard_normal((8192, 1)).astype(np.float32),
                          "empty.weight": np.zeros((0, 64), np.float32),
                          "w.weight": rng.standard_normal((128, 64)).astype(np.float32)})
    c = tmp_path / "m.wpz"
    code, _, err = _run(capsys, "compress", m, "-o", c, "--min-size", "1", *argv)
    assert code == 0, err
    assert _run(capsys, "verify", c)[0] == 0
    with Container(c) as cc:
        assert cc["empty.weight"].shape == (0, 64) and cc["thin.weight"].shape == (8192, 1)


def test_non_float_matrices_kept(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    _model(m, extra={"position_ids": np.arange(512, dtype=np.int64).reshape(1, 512),
                     "mask": np.ones((128, 128), dtype=bool)})
    c = tmp_path / "m.wpz"
    code, _, err = _run(capsys, "compress", m, "-o", c, "--ratio", "2")
    assert code == 0, err
    with Container(c) as cc:
        np.testing.assert_array_equal(cc["position_ids"], np.arange(512).reshape(1, 512))
    assert _run(capsys, "verify", c)[0] == 0


def test_big_endian_npz(tmp_path, capsys):
    rng = np.random.default_rng(4)
    W = rng.standard_normal((128, 64)).astype(np.float32)
    m = tmp_path / "be.npz"
    np.savez(m, w=W.astype(">f4"))
    c = tmp_path / "be.wpz"
    code, _, err = _run(capsys, "compress", m, "-o", c, "--error", "0.3")
    assert code == 0, err
    assert _run(capsys, "verify", c, "--against", m)[0] == 0


def test_expanded_tensor_compress_stays_small(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    p = tmp_path / "exp.pt"
    torch.save({"w": torch.randn(1, 2048).expand(4096, 2048)}, p)
    assert p.stat().st_size < 64 << 10
    c = tmp_path / "exp.wpz"
    code, _, err = _run(capsys, "compress", p, "-o", c, "--error", "0.5")
    assert code == 0, err
    assert c.stat().st_size < 64 << 10  # stored once, not 32 MiB
    with Container(c) as cc:
        assert cc["w"].shape == (4096, 2048)


# -- messages ------------------------------------------------------------------------------------
def test_nan_message_names_tensor(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    W = np.ones((128, 64), np.float32)
    W[3, 4] = np.nan
    write_safetensors(m, {"blocks.3.attn.weight": W})
    code, _, err = _run(capsys, "compress", m, "-o", tmp_path / "o.wpz", "--ratio", "2")
    assert code == 2 and "blocks.3.attn.weight" in err


def test_verify_plain_model_says_not_a_container(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    p = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, p)
    code, _, err = _run(capsys, "verify", p)
    assert code == 2 and "not a weightpress container" in err


def test_no_tensors_exit_2(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    p = tmp_path / "empty.pt"
    torch.save({"epoch": 3, "lr": 0.1}, p)
    out = tmp_path / "o.wpz"
    code, _, err = _run(capsys, "compress", p, "-o", out, "--ratio", "2")
    assert code == 2 and "no tensors" in err
    assert not out.exists()


def test_corrupt_tensor_not_reported_as_ratio(tmp_path, capsys):
    """A PyTorch tensor reaching past its storage is a corrupt file, not an impossible ratio."""
    torch = pytest.importorskip("torch")
    p = tmp_path / "m.pt"
    torch.save({"w": torch.randn(64, 64)}, p)
    import zipfile
    q = tmp_path / "bad.pt"
    with zipfile.ZipFile(p) as zin, zipfile.ZipFile(q, "w") as zout:
        for zi in zin.infolist():
            data = zin.read(zi)
            if zi.filename.endswith("/data/0"):
                data = data[:1024]  # the storage lost most of its bytes
            zout.writestr(zi, data)
    code, _, err = _run(capsys, "compress", q, "-o", tmp_path / "o.wpz", "--ratio", "4")
    assert code == 2 and "impossible" not in err and "storage" in err


def test_control_characters_in_names_escaped(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    rng = np.random.default_rng(5)
    evil = "x\x1b[2J\nforged  row\x07"
    # 96x96: large enough that --ratio 1.5 is reachable past the container's header
    write_safetensors(m, {evil: rng.standard_normal((96, 96)).astype(np.float32)})
    code, out, _ = _run(capsys, "info", m)
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "forged" in out and not any(line.startswith("forged") for line in out.splitlines())
    c = tmp_path / "m.wpz"
    code, out, _ = _run(capsys, "compress", m, "-o", c, "--error", "0.5", "--min-size", "16")
    assert code == 0 and "\x1b" not in out
    assert not any(line.startswith("forged") for line in out.splitlines())
    code, out, _ = _run(capsys, "info", c)
    assert code == 0 and "\x1b" not in out
    assert not any(line.startswith("forged") for line in out.splitlines())


def test_n_threads_out_of_range_clean_value_error():
    import weightpress as wp
    x = np.ones(10)
    with pytest.raises(ValueError, match="n_threads"):
        wp.soft_threshold(x, 0.5, n_threads=2**31)
    with pytest.raises(ValueError, match="out of range"):
        wp.set_num_threads(2**40)


# -- signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_leaves_no_temp_files(tmp_path, sig):
    m = tmp_path / "in" / "m.safetensors"
    m.parent.mkdir()
    _model(m, n=40, size=(384, 384))
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "m.wpz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "weightpress", "compress", str(m), "-o", str(out),
                             "--method", "lowrank", "--error", "0.01", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name.startswith(".wp-") for p in outdir.iterdir()):
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "compress finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    # nothing but the resume journal, which is named and announced (no hidden temp files)
    left = list(outdir.iterdir())
    assert [p.name for p in left] in ([], ["m.wpz.journal"]), (sig, left, err[-300:])
    if left:
        assert b"--resume" in err
        assert not any(f.name.startswith(".") for f in left[0].rglob("*")), list(left[0].rglob("*"))


def test_onnx_unstorable_initializers_not_dropped_silently(tmp_path, capsys):
    """ONNX string (and float8/int4 where the reader has no dtype for them) initializers used
    to vanish: no row, lost at decompress. Now they are listed in the container, reported,
    warned about, and kept when decompressing with --like the original."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(6)
    W = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "W")
    labels = helper.make_tensor("labels", TensorProto.STRING, [2], [b"cat", b"dog"])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])],
                          [W, labels])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g), str(src))
    c = tmp_path / "m.wpz"
    code, out, err = _run(capsys, "compress", src, "-o", c, "--ratio", "2")
    assert code == 0, err
    assert "labels" in err and "not in the container" in err
    assert "not stored: labels" in out
    with Container(c) as cc:
        assert "labels" in cc.not_stored
    code, out, _ = _run(capsys, "info", c)
    assert "not stored: labels" in out
    back = tmp_path / "back.onnx"
    code, _, err = _run(capsys, "decompress", c, "-o", back, "--like", src)
    assert code == 0, err
    m = onnx.load(str(back))
    lab = next(t for t in m.graph.initializer if t.name == "labels")
    assert list(lab.string_data) == [b"cat", b"dog"]
    code, _, err = _run(capsys, "decompress", c, "-o", tmp_path / "back.safetensors")
    assert code == 0 and "labels" in err and "missing" in err
