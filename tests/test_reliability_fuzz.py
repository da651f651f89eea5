"""The fuzz targets (fuzz/targets.py) over the committed seed corpus: every seed goes through
its reader or the CLI without an unexpected exception. The fuzzing itself runs in CI
(``python fuzz/run.py --seconds 45``, needs atheris)."""

from __future__ import annotations

import os
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
sys.path.insert(0, FUZZ)
from targets import TARGETS  # noqa: E402

SEEDS = [(t, f) for t in sorted(TARGETS) for f in sorted(os.listdir(os.path.join(FUZZ, "corpus", t)))]


@pytest.mark.parametrize("target,seed", SEEDS, ids=[f"{t}/{f}" for t, f in SEEDS])
def test_seed(target, seed):
    with open(os.path.join(FUZZ, "corpus", target, seed), "rb") as f:
        data = f.read()
    TARGETS[target](data)
    # and a few cheap mutations: truncations and a flipped byte must stay expected errors
    for cut in (len(data) // 2, len(data) - 1, 9):
        TARGETS[target](data[:cut])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    TARGETS[target](bytes(flipped))


def test_every_target_has_seeds():
    assert {t for t, _ in SEEDS} == set(TARGETS)
