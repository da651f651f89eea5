"""Calibration captured from an ONNX model run in onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from weightpress.model.capture import capture_onnx
from weightpress.cli import main
from weightpress.model.container import Container


def _mlp(path, rng):
    W1 = rng.standard_normal((32, 128)).astype(np.float32) / 6   # [in, out]: y = x W
    b1 = np.zeros(128, np.float32)
    W2 = rng.standard_normal((128, 64)).astype(np.float32) / 11
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
                          [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(b1, "b1"),
                           numpy_helper.from_array(W2, "W2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return W1, b1, W2


def test_capture_matches_numpy_forward(tmp_path):
    rng = np.random.default_rng(0)
    W1, b1, W2 = _mlp(str(tmp_path / "m.onnx"), rng)
    x = (rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32))).astype(np.float32)
    acts = capture_onnx(str(tmp_path / "m.onnx"), {"x": x}, batch=64)
    assert set(acts) == {"W1", "W2"}
    np.testing.assert_allclose(acts["W1"], x)
    np.testing.assert_allclose(acts["W2"], np.maximum(x @ W1 + b1, 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="missing model input"):
        capture_onnx(str(tmp_path / "m.onnx"), {"z": x})
    # stats=True: X^T X accumulated batch by batch, the same as from all the samples at once
    st = capture_onnx(str(tmp_path / "m.onnx"), {"x": x}, batch=64, stats=True)
    for name in ("W1", "W2"):
        X = acts[name].astype(np.float64)
        ref = X.T @ X  # float32 activations: H is accumulated in float32
        np.testing.assert_allclose(st[name].hessian(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
        assert st[name].n_samples == 300


def test_compress_onnx_with_captured_calibration(tmp_path, capsys):
    rng = np.random.default_rng(1)
    _mlp(str(tmp_path / "m.onnx"), rng)
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((256, 32)).astype(np.float32))
    out = tmp_path / "m.wpz"
    assert main(["compress", str(tmp_path / "m.onnx"), "-o", str(out), "--ratio", "2",
                 "--capture", str(tmp_path / "in.npz"), "--min-size", "1000"]) == 0
    assert "out.err" in capsys.readouterr().out
    with Container(str(out)) as c:
        assert c.entries["W1"]["layout"] == "in_out"
        assert c.entries["W1"]["output_error"] is not None


def test_onnx_round_trip_through_the_container(tmp_path):
    """compress an ONNX model, decompress it back into a copy of the original graph, run it."""
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    W1, b1, W2 = _mlp(str(tmp_path / "m.onnx"), rng)
    out = tmp_path / "m.wpz"
    assert main(["compress", str(tmp_path / "m.onnx"), "-o", str(out), "--ratio", "1.5",
                 "--method", "lowrank", "--min-size", "1000", "-q"]) == 0
    dense = tmp_path / "d.onnx"
    assert main(["decompress", str(out), "-o", str(dense), "--like", str(tmp_path / "m.onnx")]) == 0
    with Container(str(out)) as c:
        W1h, W2h = c["W1"], c["W2"]
    x = rng.standard_normal((8, 32)).astype(np.float32)
    y = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.maximum(x @ W1h + b1, 0) @ W2h, rtol=1e-4, atol=1e-4)
    assert not np.allclose(W1h, W1)  # it really is the compressed model
