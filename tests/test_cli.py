"""The weightpress command line: main([...]) in process, one real subprocess, the demo."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from weightpress.cli import demo
from weightpress.cli import main
from weightpress.io.safetensors import SafetensorsSource, write_safetensors

MODEL = demo.model_path()


def test_help_everywhere(capsys):
    assert main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out
    for cmd in ("compress", "info", "decompress", "verify", "demo"):
        assert main([cmd, "--help"]) == 0
        assert "usage: weightpress " + cmd in capsys.readouterr().out


def test_compress_info_verify_decompress(tmp_path, capsys):
    out = tmp_path / "m.wpz"
    assert main(["compress", MODEL, "-o", str(out), "--ratio", "4", "--method", "lowrank"]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "lowrank" in text and "total" in text
    assert main(["info", str(out)]) == 0
    table = capsys.readouterr().out
    assert "fc3.weight" in table and "small (1280 < 4096 elements)" in table
    assert main(["verify", str(out), "--against", MODEL]) == 0
    assert "ok: 6 tensors" in capsys.readouterr().out
    for ext in ("safetensors", "npz"):
        dense = tmp_path / f"d.{ext}"
        assert main(["decompress", str(out), "-o", str(dense)]) == 0
        if ext == "npz":
            with np.load(dense) as z:
                assert z["fc1.weight"].shape == (256, 64) and z["fc1.bias"].dtype == np.float32
        else:
            d = SafetensorsSource(dense)
            orig = SafetensorsSource(MODEL)
            assert d.metadata == orig.metadata  # the source's metadata, not the container's
            np.testing.assert_array_equal(d["fc1.bias"], orig["fc1.bias"])
            err = np.linalg.norm(d["fc2.weight"] - orig["fc2.weight"]) / np.linalg.norm(orig["fc2.weight"])
            assert 0 < err < 1


def test_info_on_a_plain_model(capsys):
    assert main(["info", MODEL]) == 0
    out = capsys.readouterr().out
    assert "keep: small (1280 < 4096 elements)" in out and "fc2.weight" in out
    assert "not a weightpress container" in out


def test_nm_pattern_and_rules(tmp_path, capsys):
    out = tmp_path / "nm.wpz"
    assert main(["compress", MODEL, "-o", str(out), "--method", "nm", "--pattern", "2:4",
                 "--rules", "fc3.weight=nm;fc1*=skip", "-q"]) == 0
    table = capsys.readouterr()
    assert "fc1" not in table.out and "wrote" in table.err
    main(["info", str(out)])
    rows = {ln.split()[0]: ln.split()[2] for ln in capsys.readouterr().out.splitlines()[2:8]}
    assert rows["fc3.weight"] == "sparse" and rows["fc2.weight"] == "sparse"
    assert rows["fc1.weight"] == "dense"


def test_bf16_model_decompresses_to_bf16(tmp_path, capsys):
    W = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    src = tmp_path / "b.safetensors"
    write_safetensors(src, {"w": W, "b": W[0]}, dtypes={"w": "BF16", "b": "BF16"})
    assert main(["compress", str(src), "-o", str(tmp_path / "b.wpz"), "--error", "0.4", "-q"]) == 0
    assert main(["decompress", str(tmp_path / "b.wpz"), "-o", str(tmp_path / "d.safetensors")]) == 0
    d, s = SafetensorsSource(tmp_path / "d.safetensors"), SafetensorsSource(src)
    assert d.stored_dtypes == {"w": "BF16", "b": "BF16"}
    np.testing.assert_array_equal(d["b"], s["b"])
    assert np.linalg.norm(d["w"] - s["w"]) <= 0.41 * np.linalg.norm(s["w"])
    capsys.readouterr()


def test_verify_fails_with_exit_1_on_corruption(tmp_path, capsys):
    out = tmp_path / "m.wpz"
    main(["compress", MODEL, "-o", str(out), "--ratio", "2", "--method", "prune", "-q"])
    raw = bytearray(out.read_bytes())
    raw[-50] ^= 1
    out.write_bytes(bytes(raw))
    assert main(["verify", str(out)]) == 1
    assert "checksum" in capsys.readouterr().out


@pytest.mark.parametrize("args, msg", [
    (["compress", "missing.safetensors", "-o", "OUT", "--ratio", "2"], "(?i)no such"),
    (["compress", "BAD", "-o", "OUT", "--ratio", "2"], "past the end"),
    (["compress", "DIR", "-o", "OUT", "--ratio", "2"], "directory"),
    (["compress", MODEL, "-o", "OUT", "--ratio", "500"], "impossible"),
    (["compress", MODEL, "-o", "OUT", "--ratio", "0.5"], "ratio must be >= 1"),
    (["compress", MODEL, "-o", "OUT", "--rules", "fc*=melt", "--ratio", "2"], "action must be"),
    (["compress", MODEL, "-o", "NODIR/x.wpz", "--ratio", "2"], "does not exist"),
    (["compress", MODEL, "-o", "DIR", "--ratio", "2"], "is a directory"),
    (["verify", MODEL], "not a weightpress container"),
    (["decompress", "BAD", "-o", "OUT"], "past the end"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, args, msg):
    (tmp_path / "BAD.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "DIR").mkdir()
    names = {"BAD": "BAD.safetensors", "DIR": "DIR", "OUT": "OUT", "NODIR/x.wpz": "NODIR/x.wpz"}
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightpress: error:") and len(err.strip().splitlines()) == 1
    assert re.search(msg, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BAD.safetensors", "DIR"]


def test_usage_error_exit_2(capsys):
    assert main(["compress", MODEL]) == 2
    assert main(["frobnicate"]) == 2
    capsys.readouterr()


def test_subprocess_entry_point(tmp_path):
    bad = tmp_path / "bad.safetensors"
    write_safetensors(tmp_path / "ok.safetensors", {"w": np.ones((100, 100), np.float32)})
    bad.write_bytes((tmp_path / "ok.safetensors").read_bytes()[:-7])
    out = tmp_path / "o.wpz"
    r = subprocess.run([sys.executable, "-m", "weightpress.cli", "compress", str(bad), "-o", str(out),
                        "--ratio", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".wp-")]
    r = subprocess.run([sys.executable, "-m", "weightpress.cli", "compress",
                        str(tmp_path / "ok.safetensors"), "-o", str(out), "--error", "0.1", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and out.exists() and r.stdout == ""


def test_demo_runs(capsys, monkeypatch):
    lines = []
    res = demo.run(out=lines.append)
    assert "dense (original)" in "\n".join(lines) and any("lowrank 4x" in ln for ln in lines)
    base = res[0]["accuracy"]
    assert base > 0.95
    by = {r["setting"]: r for r in res}
    assert by["lowrank 2x"]["accuracy"] > base - 0.03 and by["lowrank 2x"]["ratio"] >= 1.98
    assert by["prune 2x"]["accuracy"] > base - 0.03
    # issue 6's target: >= 10x smaller with at most 1 point of accuracy lost, no retraining
    best = by["auto 10x +cal alloc f16"]
    assert best["ratio"] >= 10 and best["accuracy"] >= base - 0.01
    # data-aware beats weight-space at the same size
    assert by["prune 4x +cal"]["accuracy"] > by["prune 4x"]["accuracy"]
    # the command runs the same function (fewer settings here, to keep CI short)
    monkeypatch.setattr(demo, "SETTINGS", demo.SETTINGS[:1])
    assert main(["demo"]) == 0
    assert "prune 2x" in capsys.readouterr().out


def test_progress_bar_only_on_a_terminal(capsys):
    from weightpress.cli.main import _Progress
    _Progress()(1, 4, "fc1.weight")  # stderr is captured: not a terminal, nothing drawn
    assert capsys.readouterr().err == ""
    bar = _Progress(enabled=True)
    bar(1, 4, "fc1.weight")
    bar(4, 4, "writing")
    err = capsys.readouterr().err
    assert "[#######" in err and "1/4 " in err and "fc1.weight" in err and err.endswith("\r")


def test_npz_model(tmp_path, capsys):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", **{"dense/kernel": g.standard_normal((64, 128)).astype(np.float32),
                                    "dense/bias": np.zeros(128, np.float32)})
    out = tmp_path / "m.wpz"
    assert main(["compress", str(tmp_path / "m.npz"), "-o", str(out), "--ratio", "3",
                 "--layout", "in_out", "-q"]) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "d.npz")]) == 0
    with np.load(tmp_path / "d.npz") as z:
        assert sorted(z.files) == ["dense/bias", "dense/kernel"] and z["dense/kernel"].shape == (64, 128)
    assert main(["info", str(tmp_path / "m.npz")]) == 0
    assert "npz model" in capsys.readouterr().out
