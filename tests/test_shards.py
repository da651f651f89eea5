"""Sharded checkpoints (weightpress.io.shards): index files read and written, as the Hugging Face
layout has them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weightpress.io import FormatError, open_model, save_model
from weightpress.io.shards import write_sharded


def _tensors():
    rng = np.random.default_rng(0)
    return {f"layer{i}.weight": rng.standard_normal((64, 32)).astype(np.float32) for i in range(5)} | {
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4), "step": np.array(3, np.int64)}


@pytest.mark.parametrize("index", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
def test_round_trip_in_several_shards(tmp_path, index):
    t = _tensors()
    write_sharded(tmp_path / index, t, max_shard_bytes=20_000)
    meta = json.loads((tmp_path / index).read_text())
    shards = set(meta["weight_map"].values())
    assert len(shards) >= 3 and set(meta["weight_map"]) == set(t)
    assert all((tmp_path / s).is_file() for s in shards)
    with open_model(tmp_path / index) as src:
        assert set(src.info()) == set(t)
        for k, v in t.items():
            got = src[k]
            assert got.dtype == v.dtype and got.shape == v.shape
            np.testing.assert_array_equal(got, v)


def test_save_model_keeps_a_given_grouping(tmp_path):
    t = _tensors()
    wmap = {k: ("a.safetensors" if i % 2 else "b.safetensors") for i, k in enumerate(t)}
    save_model(tmp_path / "model.safetensors.index.json", t, shards=wmap)
    meta = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert meta["weight_map"] == wmap


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/passwd", "", 7])
def test_index_naming_files_outside_its_folder_is_refused(tmp_path, shard):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(FormatError):
        open_model(tmp_path / "model.safetensors.index.json")


def test_malformed_index(tmp_path):
    p = tmp_path / "model.safetensors.index.json"
    p.write_text("{not json")
    with pytest.raises(FormatError, match="malformed"):
        open_model(p)
    p.write_text(json.dumps({"weight_map": ["w"]}))
    with pytest.raises(FormatError, match="malformed"):
        open_model(p)
