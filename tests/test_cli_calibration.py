"""Calibration data through the command line: data-aware methods, allocation, plots, timing."""

import os
import re

import numpy as np
import pytest

from weightpress.cli import demo
from weightpress.compression.calibration import CalibrationStats, output_error
from weightpress.cli import main
from weightpress.model.compress import compress_model, parse_rule
from weightpress.model.container import Container
from weightpress.io.safetensors import SafetensorsSource

MODEL = demo.model_path()


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cal") / "cal.npz"
    np.savez(p, **demo.calibration())
    return str(p)


def test_calibration_gives_output_errors_and_meets_them(tmp_path, capsys, calib_file):
    out = tmp_path / "m.wpz"
    assert main(["compress", MODEL, "-o", str(out), "--error", "0.1", "--method", "prune",
                 "--calibration", calib_file]) == 0
    assert "out.err" in capsys.readouterr().out
    cal = demo.calibration()
    with Container(str(out)) as c, SafetensorsSource(MODEL) as src:
        for name in ("fc1.weight", "fc2.weight"):
            e = c.entries[name]
            W = np.asarray(src[name])
            st = CalibrationStats.from_inputs(cal[name])
            true = output_error(W, c.matrix(name).toarray(), st)
            assert e["output_error"] == pytest.approx(true, rel=1e-6, abs=1e-9)
            assert true <= 0.1 + 1e-6
            assert e["form"] == "sparse"


def test_allocation_uses_the_budget_and_beats_uniform(tmp_path, calib_file):
    cal = demo.calibration()
    rules = [parse_rule("*.weight=auto")]
    errs = {}
    with SafetensorsSource(MODEL) as src:
        for scope in ("layer", "allocate"):
            p = tmp_path / f"{scope}.wpz"
            rep = compress_model(src, str(p), ratio=8, method="lowrank", scope=scope,
                                 calibration=cal, rules=rules)
            assert rep.ratio >= 8 * 0.97  # within the header estimate
            errs[scope] = sum(r.output_error ** 2 for r in rep.rows if r.output_error is not None)
    assert errs["allocate"] < errs["layer"]


def test_plot_and_timing(tmp_path, capsys, calib_file):
    out, plots = tmp_path / "m.wpz", tmp_path / "plots"
    assert main(["compress", MODEL, "-o", str(out), "--ratio", "4", "--allocate",
                 "--calibration", calib_file, "--plot", str(plots), "-q"]) == 0
    pngs = sorted(os.listdir(plots))
    assert "allocation.png" in pngs and "fc1.weight.png" in pngs
    for f in pngs:
        with open(plots / f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["info", str(out), "--timing"]) == 0
    table = capsys.readouterr().out
    assert "b32 dense" in table
    row = next(ln for ln in table.splitlines() if ln.startswith("fc1.weight"))
    assert len(re.findall(r"\b\d+\b", row)) >= 4


def test_prefer_speed_meets_the_budget(tmp_path, calib_file):
    with SafetensorsSource(MODEL) as src:
        rep = compress_model(src, str(tmp_path / "s.wpz"), error=0.2, method="auto",
                             calibration=calib_file, prefer="speed")
    for r in rep.rows:
        if r.output_error is not None:
            assert r.output_error <= 0.2 + 1e-9


@pytest.mark.parametrize("bad, msg", [
    (lambda c: {**c, "fc1.weight": c["fc1.weight"][:, :10]}, "has 10 features per sample"),
    (lambda c: {**c, "fc1.weight": np.where(c["fc1.weight"] > 0.5, np.nan, c["fc1.weight"])}, "NaN"),
    (lambda c: {**c, "fc1.weight": c["fc1.weight"][:5]}, "too few calibration samples"),
])
def test_bad_calibration_is_rejected(tmp_path, capsys, bad, msg):
    p = tmp_path / "bad.npz"
    np.savez(p, **bad(demo.calibration()))
    out = tmp_path / "m.wpz"
    assert main(["compress", MODEL, "-o", str(out), "--ratio", "4", "--calibration", str(p)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not out.exists()
