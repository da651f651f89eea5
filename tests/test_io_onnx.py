"""ONNX: initializers, Constant nodes (also inside If/Loop subgraphs), typed fields, external
data, bf16/fp16, in-place replacement, and bad files. Models are built with onnx.helper."""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from weightpress.io import FormatError, detect_format, open_model, save_model
from weightpress.io.onnx_graph import OnnxSource

RNG = np.random.default_rng(7)
W = RNG.standard_normal((3, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float16)
S = np.arange(6, dtype=np.float32).reshape(2, 3)
L = RNG.standard_normal((2, 3)).astype(np.float32)


def _const(out, arr):
    return helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr, out + "_v"))


def build_model():
    """x[1,3] @ W (+ cast B) ; If(cond) -> Constant S / Constant ones ; Loop body with a Constant."""
    init = [numpy_helper.from_array(W, "W"),
            helper.make_tensor("typed_f", T.FLOAT, [2], [1.5, -2.5]),
            helper.make_tensor("typed_h", T.FLOAT16, [2], [0.5, -3.0]),
            helper.make_tensor("typed_bf", T.BFLOAT16, [3], [1.0, -2.0, 0.375]),
            helper.make_tensor("typed_i", T.INT64, [2], [7, -9]),
            helper.make_tensor("typed_d", T.DOUBLE, [1], [0.1]),
            helper.make_tensor("names", T.STRING, [1], [b"abc"])]
    then_g = helper.make_graph([_const("S", S)], "then", [],
                               [helper.make_tensor_value_info("S", T.FLOAT, [2, 3])])
    else_g = helper.make_graph([_const("E", np.ones((2, 3), np.float32))], "else", [],
                               [helper.make_tensor_value_info("E", T.FLOAT, [2, 3])])
    body = helper.make_graph(
        [_const("L", L), helper.make_node("Add", ["acc_in", "L"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("cond_in", T.BOOL, []),
         helper.make_tensor_value_info("acc_in", T.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("acc_out", T.FLOAT, [2, 3])])
    nodes = [
        _const("B", B),
        helper.make_node("Cast", ["B"], ["B32"], to=T.FLOAT),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B32"], ["y"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trip", "cond", "branch"], ["looped"], body=body),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, 3]), helper.make_tensor_value_info("cond", T.BOOL, []),
         helper.make_tensor_value_info("trip", T.INT64, [])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 4]), helper.make_tensor_value_info("looped", T.FLOAT, [2, 3])],
        initializer=init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _run(path, x):
    from onnx.reference import ReferenceEvaluator

    feeds = {"x": x, "cond": np.array(True), "trip": np.array(2, np.int64)}
    return ReferenceEvaluator(str(path)).run(None, feeds)


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(build_model(), p)
    return p


def test_finds_initializers_constants_and_subgraphs(model_path):
    assert detect_format(model_path) == "onnx"
    with open_model(model_path) as src:
        assert isinstance(src, OnnxSource)
        assert set(src) == {"W", "typed_f", "typed_h", "typed_bf", "typed_i", "typed_d", "B", "S", "E", "L"}
        assert "names" in src.skipped
        np.testing.assert_array_equal(src["W"], W)
        assert src["B"].dtype == np.float16
        np.testing.assert_array_equal(src["B"], B)
        np.testing.assert_array_equal(src["S"], S)  # Constant inside If.then_branch
        np.testing.assert_array_equal(src["L"], L)  # Constant inside Loop.body
        model = onnx.load(model_path)
        ref = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for name in ("typed_f", "typed_h", "typed_i", "typed_d"):
            assert src[name].dtype == ref[name].dtype, name
            np.testing.assert_array_equal(src[name], ref[name])
        assert src["typed_bf"].dtype == np.float32 and src.stored_dtypes["typed_bf"] == "BF16"
        np.testing.assert_array_equal(src["typed_bf"], np.asarray(ref["typed_bf"], np.float32))


def test_embedded_tensors_mapped_without_parsing_the_model(model_path, monkeypatch):
    """Opening scans the file; no full protobuf parse, embedded raw_data is memory-mapped."""
    from weightpress.io.onnx_graph import collect_tensors

    model = onnx.load(model_path)
    want = collect_tensors(model.graph)

    def boom(*a, **k):
        raise AssertionError("whole model parsed")

    monkeypatch.setattr(onnx, "load_model", boom)
    monkeypatch.setattr(onnx, "load", boom)
    monkeypatch.setattr(onnx.ModelProto, "ParseFromString", boom)
    with open_model(model_path) as src:
        assert list(src) == [k for k in want if k != "names"]  # same names, same order
        assert isinstance(src["W"], np.memmap) and isinstance(src["S"], np.memmap)
        for k in src:
            ref = numpy_helper.to_array(want[k])
            assert src[k].shape == ref.shape
            np.testing.assert_array_equal(src[k], np.asarray(ref, src[k].dtype))


def test_external_data_is_memory_mapped(tmp_path):
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(build_model(), d / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (d / "weights.bin").exists()
    with open_model(d / "m.onnx") as src:
        assert isinstance(src["W"], np.memmap)
        np.testing.assert_array_equal(src["W"], W)
        np.testing.assert_array_equal(src["typed_h"], np.array([0.5, -3.0], np.float16))
    # truncated external file
    data = (d / "weights.bin").read_bytes()
    (d / "weights.bin").write_bytes(data[:10])
    with pytest.raises(FormatError, match="external data"), open_model(d / "m.onnx") as src:
        for k in src:
            src[k]


def test_external_data_outside_model_folder_refused(tmp_path):
    m = build_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    for k, v in {"location": "../secret.bin", "offset": "0", "length": "48"}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "secret.bin").write_bytes(b"\0" * 48)
    (tmp_path / "sub").mkdir()
    onnx.save(m, tmp_path / "sub" / "m.onnx")
    with pytest.raises(FormatError, match="escapes"), open_model(tmp_path / "sub" / "m.onnx") as src:
        src["W"]


def test_replace_in_place_keeps_graph_and_runs(model_path, tmp_path):
    x = np.ones((1, 3), np.float32)
    _, loop0 = _run(model_path, x)
    out = tmp_path / "out.onnx"
    with open_model(model_path) as src:
        save_model(out, {"W": src["W"] * 2, "S": np.zeros((2, 3)), "L": src["L"] + 1,
                         "B": np.zeros(4, np.float32), "typed_bf": np.array([3.0, 4.0, 1.0 / 3.0])}, like=src)
    m = onnx.load(out)
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in onnx.load(model_path).graph.node]
    with open_model(out) as res:
        np.testing.assert_array_equal(res["W"], 2 * W)
        assert res["B"].dtype == np.float16  # stored type kept
        np.testing.assert_array_equal(res["typed_i"], [7, -9])  # untouched
        assert res.stored_dtypes["typed_bf"] == "BF16"
        np.testing.assert_array_equal(res["typed_bf"], np.array([3.0, 4.0, 0.333984375], np.float32))
    y1, loop1 = _run(out, x)
    np.testing.assert_allclose(y1, x @ (2 * W), rtol=1e-6)
    np.testing.assert_allclose(loop1, 2 * (L + 1), rtol=1e-6)  # S zeroed, body adds L+1 twice
    np.testing.assert_allclose(loop0, S + 2 * L, rtol=1e-6)


def test_raw_tensors_patched_in_a_byte_copy(model_path, tmp_path, monkeypatch):
    """Replacing raw_data tensors copies the file and overwrites their bytes: no model parse."""
    def boom(*a, **k):
        raise AssertionError("whole model parsed")

    out = tmp_path / "patched.onnx"
    with open_model(model_path) as src:
        new = {"W": -src["W"], "S": src["S"] + 1, "B": np.ones(4, np.float64)}
        monkeypatch.setattr(onnx, "load_model", boom)
        save_model(out, new, like=src)
        monkeypatch.undo()
    a, b = model_path.read_bytes(), out.read_bytes()
    assert len(a) == len(b)
    with open_model(out) as res:
        np.testing.assert_array_equal(res["W"], -W)
        np.testing.assert_array_equal(res["S"], S + 1)
        assert res["B"].dtype == np.float16 and np.all(res["B"] == 1)
        untouched = [k for k in res if k not in new]
        with open_model(model_path) as src:
            for k in untouched:
                np.testing.assert_array_equal(res[k], src[k])
    onnx.checker.check_model(onnx.load(out))
    y, _ = _run(out, np.ones((1, 3), np.float32))
    np.testing.assert_allclose(y, np.ones((1, 3), np.float32) @ -W + 1, rtol=1e-6)


def test_round_trip_all_tensors(model_path, tmp_path):
    with open_model(model_path) as src:
        save_model(tmp_path / "same.onnx", src)  # like defaults to the source itself
        with open_model(tmp_path / "same.onnx") as back:
            assert set(back) == set(src)
            for k in src:
                assert back[k].dtype == src[k].dtype
                np.testing.assert_array_equal(back[k], src[k])


def test_write_errors(model_path, tmp_path):
    out = tmp_path / "o.onnx"
    with pytest.raises(ValueError, match="like="):
        save_model(out, {"W": W})
    with pytest.raises(ValueError, match="no numeric initializer"):
        save_model(out, {"nope": W}, like=model_path)
    with pytest.raises(ValueError, match="shape"):
        save_model(out, {"W": W.T}, like=model_path)
    with pytest.raises(TypeError, match="cannot replace"):
        save_model(out, {"typed_i": np.array([1.5, 2.5])}, like=model_path)
    assert not out.exists()
    assert os.listdir(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("cut", [0.05, 0.5, 0.9])
def test_truncated_and_corrupt(model_path, cut):
    data = model_path.read_bytes()
    model_path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError, match="m.onnx"), open_model(model_path) as src:
        for k in src:
            src[k]


def test_garbage_and_lying_sizes(tmp_path):
    (tmp_path / "g.onnx").write_bytes(os.urandom(64) + b"\xff" * 64)
    with pytest.raises(FormatError, match="g.onnx"):
        open_model(tmp_path / "g.onnx")
    m = build_model()
    m.graph.initializer[0].dims[0] = 5  # the header lies: 5x4 floats, raw_data holds 3x4
    onnx.save(m, tmp_path / "lie.onnx")
    with open_model(tmp_path / "lie.onnx") as src:
        with pytest.raises(FormatError, match="raw_data holds 48 bytes"):
            src["W"]


def test_without_onnx_package(model_path, tmp_path, monkeypatch):
    """raw_data tensors read with no onnx installed; typed fields and writing say what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    with open_model(model_path) as src:
        np.testing.assert_array_equal(src["W"], W)
        with pytest.raises(ImportError, match=r"weightpress\[onnx\]"):
            src["typed_f"]
        with pytest.raises(ImportError, match=r"weightpress\[onnx\]"):
            save_model(tmp_path / "o.onnx", {"typed_f": np.zeros(2, np.float32)}, like=src)
