"""Issue 11's comparison on a couple of models (the full table: benchmarks/bench_quant_corpus.py):
weightpress ``--ratio 4`` keeps outputs closer to the original than per-channel int8
round-to-nearest, ``--ratio 8`` closer than int4-g64 round-to-nearest, on the trained digits MLP
 and at 8x on a ResNet-style network written by
PyTorch. (On the random-weight BERT and at 4x on the ResNet it does not yet: see the table.)"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

pytest.importorskip("zstandard")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_quant_corpus as B  # noqa: E402


def test_digits_beats_round_to_nearest(tmp_path):
    # (with calibration it wins by more: 6.9e-4 vs 5.9e-3 at 4x, 2.9e-2 vs 7.8e-2 at 8x; the
    # benchmark measures it, too slow here)
    path, run, _ = B._digits()
    r = B.compare(path, run, os.path.getsize(path), str(tmp_path))
    assert r["wp4_ratio"] >= 4 * 0.97 and r["wp8_ratio"] >= 8 * 0.97
    assert r["wp4"] < r["int8"] and r["wp8"] < r["int4g64"], r


def test_resnet_8x_beats_int4_g64(tmp_path):
    pytest.importorskip("torch")
    import realmodels

    m = realmodels.build("resnet", "pt", str(tmp_path))
    r = B.compare(m.path, m.run_tensors, B._file_bytes(m.path), str(tmp_path))
    assert r["wp8_ratio"] >= 8 * 0.97 and r["wp8"] < r["int4g64"], r
