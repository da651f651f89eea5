"""The model pipeline's stages: target -> plan -> budget -> execute (weightpress.model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightpress.io.safetensors import SafetensorsSource, write_safetensors
from weightpress.model.compress import Target, budget_layers, execute, prepare
from weightpress.model.container import Container, header_estimate
from weightpress.model.rules import parse_rule, plan


def _model(path, rng, shapes):
    tensors = {f"layer{i}.weight": rng.standard_normal(s).astype(np.float32)
               for i, s in enumerate(shapes)}
    tensors["layer0.bias"] = rng.standard_normal(shapes[0][0]).astype(np.float32)
    write_safetensors(path, tensors)
    return tensors


def _target(**kw):
    base = dict(ratio=None, error=None, method="auto", scope="layer", options=None,
                value_dtype=None, prefer="size")
    base.update(kw)
    return Target.of(**base)


def test_target_is_checked_once():
    with pytest.raises(ValueError, match="exactly one"):
        _target(ratio=2, error=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        _target()
    with pytest.raises(ValueError, match="scope"):
        _target(ratio=2, scope="everywhere")
    with pytest.raises(ValueError, match="value_dtype"):
        _target(ratio=2, value_dtype=np.int8)
    assert _target(ratio=2, value_dtype="bfloat16").bf16
    assert _target(options={"rank": 3}).ratio is None


@settings(max_examples=15, deadline=None)
@given(ratio=st.floats(1.5, 12), seed=st.integers(0, 1000))
def test_byte_budgets_never_exceed_the_ratio(tmp_path_factory, ratio, seed):
    """Kept tensors, the header estimate and every layer's byte budget add up to at most
    file / ratio; an impossible ratio is refused with the best reachable one."""
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    _model(path, np.random.default_rng(seed), [(64, 96), (96, 80), (8, 8)])
    with SafetensorsSource(path) as src:
        job = prepare(src, "auto")
        t = _target(ratio=ratio)
        try:
            b = budget_layers(src, job, t)
        except ValueError as e:
            assert "impossible" in e.args[0] and "best reachable ratio" in e.args[0]
            return
        kept = sum(ly.orig_bytes if ly.keep_dtype is None else ly.orig_bytes // 2
                   for ly in b.layers if ly.decision.action == "skip")
        spent = sum(ly.budget.nbytes for ly in b.layers if ly.budget is not None)
        header = header_estimate({d.name: d.action for d in job.decisions})
        assert kept + spent + header <= b.src_bytes / ratio * (1 + 1e-9)
        assert all(ly.budget is None for ly in b.layers if ly.decision.action == "skip")
        assert all(ly.keep_dtype in (None, np.float16) for ly in b.layers)


def test_execute_writes_what_the_budget_says(tmp_path):
    rng = np.random.default_rng(0)
    tensors = _model(tmp_path / "m.safetensors", rng, [(128, 96), (96, 64)])
    with SafetensorsSource(tmp_path / "m.safetensors") as src:
        job = prepare(src, "prune", [parse_rule("layer1*=lowrank")])
        t = _target(ratio=3)
        b = budget_layers(src, job, t)
        rep = execute(src, tmp_path / "c.wpz", job, b, t)
        layers = b.layers
    assert rep.ratio >= 3 * 0.97
    with Container(tmp_path / "c.wpz") as c:
        assert c.entries["layer0.weight"]["form"] == "sparse"
        assert c.entries["layer1.weight"]["form"] == "lowrank"
        np.testing.assert_array_equal(c["layer0.bias"], tensors["layer0.bias"])
        for ly in layers:
            if ly.budget is not None:
                assert c.entries[ly.decision.name]["bytes"] <= ly.budget.nbytes


def test_plan_says_why_each_tensor_is_kept():
    infos = {"enc.weight": ((64, 128), "float32"), "enc.bias": ((64,), "float32"),
             "ids": ((4, 4096), "int64"), "tiny.weight": ((4, 4), "float32"),
             "emb.embed_tokens.weight": ((100, 64), "float32")}
    reasons = {d.name: (d.action, d.reason) for d in plan(infos, "prune")}
    assert reasons["enc.weight"][0] == "prune"
    assert reasons["enc.bias"] == ("skip", "1-D tensor, not a matrix")
    assert "not floating point" in reasons["ids"][1]
    assert "small" in reasons["tiny.weight"][1]
    assert reasons["emb.embed_tokens.weight"][1] == "embedding"
