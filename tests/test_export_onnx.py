"""weightpress.model.export_onnx: containers back into ONNX graphs that run compressed."""

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import rtn_quant
from weightpress.cli import main
from weightpress.io import open_model, save_model
from weightpress.model.compress import compress_model
from weightpress.model.container import Container, ContainerWriter
from weightpress.model.export_check import stated_error
from weightpress.model.export_onnx import export_onnx, full_int8_exact, nbits_arrays
from weightpress.model._packed import QuantParts, pack_bits, unpack_bits

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


# onnxruntime's per-channel integer products: DynamicQuantizeMatMul (8-bit activations, weights
# within ±64 of their zero point or uint8) and MatMulIntegerToFloat (7-bit activations,
# full-range int8 weights: int8_weights="portable" on 8-bit symmetric codes)
_INT_PRODUCTS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def _run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """A transformer-shaped MLP block exported by torch: (batch, seq, 64) through MatMul+Add."""
    d = tmp_path_factory.mktemp("block")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(64, 192)
            self.down = torch.nn.Linear(192, 64)

        def forward(self, x):
            return x + self.down(torch.nn.functional.gelu(self.up(x)))

    m = Block().eval()
    path = d / "block.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(m, (torch.randn(2, 5, 64),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}})
    g = onnx.load(str(path)).graph
    weights = [n.input[1] for n in g.node if n.op_type == "MatMul"]
    assert len(weights) == 2
    return path, weights


def _gemm_model(path, rng):
    """Gemm with transB=0 plus alpha/beta, then Gemm with transB=1 (PyTorch's [out, in])."""
    W1 = (rng.standard_normal((48, 96)) / 7).astype(np.float32)      # [in, out]
    W2 = (rng.standard_normal((32, 96)) / 10).astype(np.float32)     # [out, in]
    b1, b2 = rng.standard_normal(96).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 48])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
                          [numpy_helper.from_array(a, n) for a, n in
                           ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _reference(tmp_path, container, like):
    """The container's dense decode put into the original graph."""
    ref = tmp_path / "ref.onnx"
    with Container(container) as c:
        save_model(ref, c, like=like)
    return ref


def test_pack_roundtrip():
    rng = np.random.default_rng(0)
    for bits in range(2, 9):
        u = rng.integers(0, 1 << bits, (5, 37)).astype(np.uint8)
        p = pack_bits(u, bits)
        assert p.shape == (5, (37 * bits + 7) // 8)
        np.testing.assert_array_equal(unpack_bits(p, 37, bits), u)
        ref = np.packbits(((u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(5, -1),
                          axis=1, bitorder="little")
        np.testing.assert_array_equal(p, ref)


def test_lowrank_runs_as_two_matmuls(tmp_path, block):
    like, weights = block
    wpz = tmp_path / "m.wpz"
    compress_model(open_model(str(like)), wpz, method="lowrank", options={"rank": 8}, min_size=1024)
    out = tmp_path / "out.onnx"
    rows = export_onnx(wpz, out, like, never_slower=False)
    got = {r.name: r for r in rows}
    for w in weights:
        assert got[w].how == "2 MatMul (rank 8)" and got[w].nbytes < got[w].dense_nbytes / 2
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert sum(n.op_type == "MatMul" for n in m.graph.node) == 4
    assert not {t.name for t in m.graph.initializer} & set(weights)
    x = np.random.default_rng(1).standard_normal((3, 7, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(_run(like, x), ref, atol=1e-3)  # the compression did change something
    assert out.stat().st_size < 0.6 * like.stat().st_size


def test_gemm_alpha_beta_and_transb(tmp_path):
    rng = np.random.default_rng(2)
    like = tmp_path / "g.onnx"
    _gemm_model(like, rng)
    wpz = tmp_path / "g.wpz"
    compress_model(open_model(str(like)), wpz, method="lowrank", options={"rank": 6}, min_size=1024)
    out = tmp_path / "out.onnx"
    rows = export_onnx(wpz, out, like, never_slower=False)
    assert [r.how for r in rows if r.name in ("W1", "W2")] == ["2 MatMul (rank 6)"] * 2
    x = rng.standard_normal((4, 48)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, like), x), rtol=1e-4, atol=1e-4)


def _quant_container(path, like, specs):
    """A container holding each weight of ``like`` quantized per ``specs`` (name -> (bits, group,
    symmetric)); returns the dense decodes."""
    src = open_model(str(like))
    decoded = {}
    with ContainerWriter(path) as w:
        for name, (bits, group, sym) in specs.items():
            W = np.asarray(src[name])
            q, W_hat = rtn_quant(W, bits, group, sym, layout="in_out")
            w.add(name, q, original=W, layout="in_out")
            decoded[name] = W_hat
    return decoded


@pytest.mark.parametrize("specs", [
    {0: (4, 32, True), 1: (8, 0, False)},
    {0: (3, 64, False), 1: (6, 64, True)},
    {0: (2, 16, True), 1: (5, 0, True)},
])
def test_quant_runs_as_matmulnbits(tmp_path, block, specs):
    like, weights = block
    specs = {weights[k]: v for k, v in specs.items()}
    wpz = tmp_path / "q.wpz"
    decoded = _quant_container(wpz, like, specs)
    ref = tmp_path / "ref.onnx"
    save_model(ref, decoded, like=like)  # independent decode (NumPy) in the original graph
    x = np.random.default_rng(3).standard_normal((2, 9, 64)).astype(np.float32)
    y_ref = _run(ref, x)
    for compute, tol in (("exact", 1e-4), ("fast", 3e-2)):
        out = tmp_path / f"{compute}.onnx"
        rows = export_onnx(wpz, out, like, compute=compute, group_quant="nbits", never_slower=False)
        n_dq = 0
        for r in rows:
            bits, group, _ = specs[r.name]
            if compute == "fast" and bits > 4 and group == 0:   # per channel: integer MatMul
                assert r.how.startswith(f"DynamicQuantizeMatMul {bits}-bit per channel"), r.how
                n_dq += 1
            else:
                assert r.how.startswith(f"MatMulNBits {4 if bits <= 4 else 8}-bit"), r.how
            assert r.nbytes < r.dense_nbytes / (4.5 if bits <= 4 else 3.5)
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("MatMulNBits") == 2 - n_dq and ops.count("DynamicQuantizeMatMul") == n_dq
        y = _run(out, x)
        err = np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref)
        assert err < tol, (compute, err)
        if compute == "exact":
            np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)


def test_nbits_reencoding_is_exact():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((40, 100)).astype(np.float32)
    for bits, group, sym in ((3, 32, False), (7, 0, True), (4, 64, True)):
        q, W_hat = rtn_quant(W, bits, group, sym)
        qp = QuantParts.of(q)
        np.testing.assert_array_equal(qp.dense(), W_hat)
        Bp, S, Z, B, bs = nbits_arrays(qp)
        nb = Bp.shape[1]
        codes = unpack_bits(Bp.reshape(40, -1), nb * bs, B).reshape(40, nb, bs).astype(np.float32)
        zp = unpack_bits(Z, nb, B).astype(np.float32)
        M = ((codes - zp[:, :, None]) * S.astype(np.float32)[:, :, None]).reshape(40, -1)
        np.testing.assert_array_equal(M[:, :100], W_hat)
        np.testing.assert_array_equal(M[:, 100:], 0)


def test_forms_without_a_faster_kernel_go_dense(tmp_path, block):
    like, weights = block
    wpz = tmp_path / "p.wpz"
    compress_model(open_model(str(like)), wpz, method="prune", options={"sparsity": 0.8}, min_size=1024)
    out = tmp_path / "p.onnx"
    rows = export_onnx(wpz, out, like, never_slower=False)
    pr = [r for r in rows if r.name in weights]
    assert pr and all(r.how == "dense" and "sparse" in r.note for r in pr)
    x = np.random.default_rng(5).standard_normal((1, 4, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, like), x), rtol=1e-5, atol=1e-5)


def test_quant_in_the_wrong_orientation_goes_dense(tmp_path):
    rng = np.random.default_rng(6)
    like = tmp_path / "g.onnx"
    _gemm_model(like, rng)
    wpz = tmp_path / "g.wpz"
    decoded = _quant_container(wpz, like, {"W1": (4, 16, True), "W2": (4, 16, True)})
    rows = {r.name: r for r in export_onnx(wpz, tmp_path / "o.onnx", like, compute="exact", never_slower=False)}
    assert rows["W1"].how.startswith("MatMulNBits")      # transB=0, in_out: rows are outputs
    assert rows["W2"].how == "dense" and "inputs" in rows["W2"].note   # transB=1: they are inputs
    ref = tmp_path / "ref.onnx"
    save_model(ref, decoded, like=like)
    x = rng.standard_normal((3, 48)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "o.onnx", x), _run(ref, x), rtol=1e-4, atol=1e-4)


def test_cli_export_prints_the_output_check(tmp_path, block, capsys):
    # int8 layers round their activations: the check measures the exported outputs against
    # the container's computation and prints both figures; --no-check skips it
    like, _ = block
    wpz = tmp_path / "q.wpz"
    assert main(["compress", str(like), "-o", str(wpz), "--method", "quant", "--ratio", "3.5"]) == 0
    capsys.readouterr()
    assert main(["export", str(wpz), "-o", str(tmp_path / "q.onnx"), "--like", str(like)]) == 0
    text = capsys.readouterr().out
    line = next(t for t in text.splitlines() if t.startswith("outputs vs the container"))
    measured, stated = (float(v) for v in re.findall(r"(\d\.\d+e[-+]\d+)", line))
    assert 0 <= measured <= stated
    assert main(["export", str(wpz), "-o", str(tmp_path / "nc.onnx"), "--like", str(like),
                 "--no-check", "--group-quant", "nbits"]) == 0
    out = capsys.readouterr().out
    assert "outputs vs the container" not in out and "nothing to check" not in out


def test_cli_export_times_and_checks_on_the_given_inputs(tmp_path, block, capsys, monkeypatch):
    """--inputs: the output check runs on them, the speed choices on their first sample (the
    sequence length the model will run at); a bad file is one line and exit 2, nothing
    written."""
    from weightpress.model import export_onnx as eo
    like, _ = block
    wpz = tmp_path / "q.wpz"
    assert main(["compress", str(like), "-o", str(wpz), "--method", "quant", "--bits", "4",
                 "--group", "32"]) == 0
    seen = []
    real = eo._timing_feed

    def spy(sess, like_, inputs):
        feed = real(sess, like_, inputs)
        seen.append({k: v.shape for k, v in feed.items()})
        return feed

    monkeypatch.setattr(eo, "_timing_feed", spy)
    x = np.random.default_rng(3).standard_normal((3, 40, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    capsys.readouterr()
    assert main(["export", str(wpz), "-o", str(tmp_path / "q.onnx"), "--like", str(like),
                 "--inputs", str(tmp_path / "in.npz")]) == 0
    assert seen and all(s == {"x": (1, 40, 64)} for s in seen), seen   # auto and never_slower
    assert "outputs vs the container" in capsys.readouterr().out
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "one.npy", x)
    np.savez(tmp_path / "other.npz", y=x)
    for f, says in (("bad.npz", "not an .npz"), ("one.npy", "a single array"),
                    ("other.npz", "no value for the model's input 'x'")):
        out = tmp_path / f"{f}.onnx"
        assert main(["export", str(wpz), "-o", str(out), "--like", str(like), "--inputs",
                     str(tmp_path / f)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert not out.exists()


def test_timing_feed_takes_the_first_sample_where_the_batch_is_free(tmp_path):
    from weightpress.model.export_check import session
    from weightpress.model.export_onnx import _timing_feed
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 5]),
                                       helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    s = session(p)
    a, b = np.ones((4, 5), np.float32), np.zeros((4, 5), np.float32)
    feed = _timing_feed(s, p, {"a": a, "b": b, "unused": a})
    assert feed["a"].shape == (1, 5) and feed["b"].shape == (4, 5)    # the fixed batch whole
    assert set(feed) == {"a", "b"}
    assert {k: v.shape for k, v in _timing_feed(s, p, None).items()} == {"a": (1, 5), "b": (4, 5)}
    with pytest.raises(ValueError, match="inputs: no value for the model's input 'b'"):
        _timing_feed(s, p, {"a": a})


def test_cli_export(tmp_path, block, capsys):
    like, weights = block
    wpz = tmp_path / "m.wpz"
    assert main(["compress", str(like), "-o", str(wpz), "--method", "lowrank", "--ratio", "2"]) == 0
    capsys.readouterr()
    out = tmp_path / "o.onnx"
    assert main(["export", str(wpz), "-o", str(out), "--like", str(like), "--allow-slower"]) == 0
    text = capsys.readouterr().out
    assert "2 MatMul" in text and f"wrote {out}" in text
    # low rank computes in float: nothing for the output check to measure, and it says so
    assert "no layer rounds its activations" in text
    ext = tmp_path / "ext.onnx"
    assert main(["export", str(wpz), "-o", str(ext), "--like", str(like), "--external-data", "--allow-slower"]) == 0
    assert (tmp_path / "ext.onnx.data").stat().st_size > ext.stat().st_size
    x = np.random.default_rng(2).standard_normal((1, 3, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(ext, x), _run(out, x))
    # again, from the output's directory, over the first export's files (a relative output:
    # its .data file exists in the working directory; onnx's converter refused that)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main(["export", str(wpz), "-o", "ext.onnx", "--like", str(like), "--external-data", "--allow-slower"]) == 0
    np.testing.assert_array_equal(_run(ext, x), _run(out, x))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".wp-")) == []
    capsys.readouterr()
    assert main(["info", str(wpz), "--timing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("model (compressed layers, summed): batch 1: ") and "batch 32: " in lines[-2]
    # the whole model in onnxruntime, dense vs exported (the graph the container keeps)
    assert lines[-1].startswith("model (onnxruntime, 1 thread): batch 1: ") and "batch 32: " in lines[-1]
    # (the export is timed against dense: on a loaded machine a layer may go back dense)
    ran = re.search(r"(\d+) layers? runs? compressed, (\d+) decoded to dense", lines[-1])
    assert ran and int(ran[1]) + int(ran[2]) == 2, lines[-1]
    onnx.checker.check_model(str(out))
    # without --like: the graph the container keeps, the same model
    assert main(["export", str(wpz), "-o", str(tmp_path / "kept.onnx"), "--allow-slower"]) == 0
    np.testing.assert_allclose(_run(tmp_path / "kept.onnx", x), _run(out, x), rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".wp-")) == []
    npz = tmp_path / "m.npz"
    np.savez(npz, w=np.ones((64, 64), np.float32))
    assert main(["compress", str(npz), "-o", str(tmp_path / "n.wpz"), "--ratio", "2"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "n.wpz"), "-o", str(tmp_path / "x.onnx")]) == 2  # no graph
    assert "like" in capsys.readouterr().err
    assert main(["export", str(like), "-o", str(tmp_path / "x.onnx"), "--like", str(like)]) == 2
    err = capsys.readouterr().err
    assert "block.onnx" in err.splitlines()[-1]
    assert not (tmp_path / "x.onnx").exists()


def test_bad_arguments(tmp_path, block):
    like, _ = block
    wpz = tmp_path / "m.wpz"
    compress_model(open_model(str(like)), wpz, method="lowrank", options={"rank": 4}, min_size=1024)
    assert sum(r.compressed for r in export_onnx(wpz, tmp_path / "o.onnx", never_slower=False)) == 2  # like: kept graph
    with pytest.raises(ValueError, match="conv_quant"):
        export_onnx(wpz, tmp_path / "o.onnx", like, conv_quant="int4", never_slower=False)
    with pytest.raises(ValueError, match="compute"):
        export_onnx(wpz, tmp_path / "o.onnx", like, compute="int3", never_slower=False)
    with pytest.raises(ValueError, match="block_size"):
        export_onnx(wpz, tmp_path / "o.onnx", like, block_size=48, never_slower=False)
    other = tmp_path / "g.onnx"
    _gemm_model(other, np.random.default_rng(0))
    assert export_onnx(wpz, tmp_path / "o.onnx", other, never_slower=False) == []   # no tensor of it in that graph


def _convnet():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 32, 3, stride=2, dilation=2, bias=False), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 64, 3, groups=4), torch.nn.ReLU(),
                               torch.nn.Conv2d(64, 64, 3, groups=64, padding=1)).eval()


def test_lowrank_conv_runs_as_two_convs(tmp_path):
    like = tmp_path / "c.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(_convnet(), (torch.randn(1, 3, 24, 24),), str(like), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    wpz = tmp_path / "c.wpz"
    compress_model(open_model(str(like)), wpz, method="lowrank", options={"rank": 5}, min_size=256)
    out = tmp_path / "o.onnx"
    rows = {r.name: r for r in export_onnx(wpz, out, like, conv_quant="int8", never_slower=False)}
    assert rows["0.weight"].how == "Conv 3x3 to 5 channels + Conv 1x1"
    assert rows["2.weight"].how == "Conv 3x3 to 5 channels + Conv 1x1"
    assert rows["4.weight"].how == "Conv 3x3 to 5 channels per group (4 groups) + Conv 1x1"
    assert rows["6.weight"].how == "dense" and "64 groups" in rows["6.weight"].note   # depthwise
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 7
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 24)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, like), x), rtol=1e-4, atol=1e-4)


def test_quant_from_the_pipeline(tmp_path):
    """compress --method quant on a torch-exported Gemm model (weights [out, in], transB=1):
    MatMulNBits, bit-exact with the decompressed model in 'exact' compute."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    like = tmp_path / "m.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(net, (torch.randn(2, 64),), str(like), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}})
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    for opts, how in (({"bits": 4, "group": 32}, "MatMulNBits 4-bit, block 32"),
                      ({"bits": 8}, "MatMulNBits 8-bit"),
                      ({"bits": 3, "group": 64, "symmetric": False}, "MatMulNBits 4-bit, block 64 (from 3-bit")):
        wpz = tmp_path / "q.wpz"
        compress_model(open_model(str(like)), wpz, method="quant", options=opts, min_size=1024)
        out = tmp_path / "q.onnx"
        rows = [r for r in export_onnx(wpz, out, like, compute="exact", never_slower=False) if r.form == "quant"]
        assert len(rows) == 2 and all(r.how.startswith(how) for r in rows), rows
        np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, like), x), rtol=1e-5, atol=1e-5)


def test_weight_read_by_two_nodes_is_stored_once(tmp_path):
    rng = np.random.default_rng(7)
    W = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "W"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
                          [numpy_helper.from_array(W, "W")])
    like = tmp_path / "t.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(like))
    for method, opts in (("lowrank", {"rank": 8}),):
        wpz = tmp_path / f"{method}.wpz"
        compress_model(open_model(str(like)), wpz, method=method, options=opts, min_size=1024)
        out = tmp_path / f"{method}.onnx"
        export_onnx(wpz, out, like, never_slower=False)
        m = onnx.load(str(out))
        assert len(m.graph.initializer) == 2 and sum(n.op_type == "MatMul" for n in m.graph.node) == 4
        x = rng.standard_normal((3, 64)).astype(np.float32)
        np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, like), x), rtol=1e-4, atol=1e-5)
    wpz = tmp_path / "q.wpz"
    decoded = _quant_container(wpz, like, {"W": (4, 32, True)})
    export_onnx(wpz, tmp_path / "q.onnx", like, compute="exact", never_slower=False)
    m = onnx.load(str(tmp_path / "q.onnx"))
    assert len(m.graph.initializer) == 3 and sum(n.op_type == "MatMulNBits" for n in m.graph.node) == 2
    ref = tmp_path / "qref.onnx"
    save_model(ref, decoded, like=like)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "q.onnx", x), _run(ref, x), rtol=1e-4, atol=1e-5)


def test_lowrank_int8_runs_as_two_matmulnbits(tmp_path, block):
    """--method lowrank-int8: the factors' int8 codes run in two MatMulNBits per layer, exactly
    the container's product (``compute="exact"``), in MatMul (in_out) and Gemm transB graphs."""
    like, weights = block
    wpz = tmp_path / "lq.wpz"
    compress_model(open_model(str(like)), wpz, method="lowrank-int8", options={"rank": 24},
                   min_size=1024)
    with Container(wpz) as c:
        assert {c.entries[w]["form"] for w in weights} == {"lowrank-int8"}
    out = tmp_path / "lq.onnx"
    rows = {r.name: r for r in export_onnx(wpz, out, like, compute="exact", never_slower=False)}
    for w in weights:
        assert rows[w].how == "2 MatMulNBits 8-bit (rank 24)", rows[w]
        assert rows[w].nbytes < rows[w].dense_nbytes / 4
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert sum(n.op_type == "MatMulNBits" for n in m.graph.node) == 4
    x = np.random.default_rng(1).standard_normal((3, 7, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(_run(like, x), ref, atol=1e-3)
    # full-range int8 factors: 7-bit activations where exact on every CPU (portable), 8-bit
    # with int8_weights="vnni" (run only where this CPU has VNNI: exact there)
    for compute, mode, op in (("fast", "portable", "MatMulIntegerToFloat"),
                              ("fast", "vnni", "DynamicQuantizeMatMul"),
                              ("block", "portable", "MatMulNBits")):
        fast = tmp_path / f"lq_{compute}_{mode}.onnx"
        rows = {r.name: r for r in export_onnx(wpz, fast, like, compute=compute, never_slower=False,
                                               check=False, int8_weights=mode)}
        assert all(rows[w].how.startswith(f"2 {op} 8-bit (rank 24)") for w in weights), rows
        m = onnx.load(str(fast))
        onnx.checker.check_model(m)
        assert sum(n.op_type == op for n in m.graph.node) == 4
        if mode == "vnni" and not full_int8_exact():
            continue
        # 7- or 8-bit activations (per tensor, or per block): close, not exact
        err = np.linalg.norm(_run(fast, x) - ref) / np.linalg.norm(ref)
        assert 1e-6 < err < (0.04 if op == "MatMulIntegerToFloat" else 0.02), (compute, mode, err)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    gl = tmp_path / "gemm.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(net, (torch.randn(2, 64),), str(gl), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}})
    wpz = tmp_path / "g.wpz"
    compress_model(open_model(str(gl)), wpz, method="lowrank-int8", ratio=4, min_size=1024)
    out = tmp_path / "g.onnx"
    rows = [r for r in export_onnx(wpz, out, gl, compute="exact", never_slower=False) if r.form == "lowrank-int8"]
    assert len(rows) == 2 and all(r.how.startswith("2 MatMulNBits") for r in rows), rows
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, gl), x), rtol=1e-4, atol=1e-5)


def test_quant_conv_runs_as_dequantizelinear(tmp_path):
    """Per-channel quantized Conv weights (plain, grouped, depthwise; symmetric and asymmetric
    codes) become DequantizeLinear -> Conv, equal to the container's decode; group-wise scales
    and conv_quant="dense" stay dense with the reason."""
    like = tmp_path / "c.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(_convnet(), (torch.randn(1, 3, 24, 24),), str(like), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 24)).astype(np.float32)
    for opts in ({"bits": 8}, {"bits": 4, "symmetric": False}):
        wpz = tmp_path / "q.wpz"
        compress_model(open_model(str(like)), wpz, method="quant", options=opts, min_size=256)
        out = tmp_path / "q.onnx"
        rows = [r for r in export_onnx(wpz, out, like, conv_quant="dequant", never_slower=False) if r.form == "quant"]
        assert len(rows) == 4 and all(r.how.startswith(f"DequantizeLinear {opts['bits']}-bit") for r in rows)
        assert all(r.nbytes <= r.dense_nbytes / 4 + 64 * 8 for r in rows)
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) == 4
        np.testing.assert_allclose(_run(out, x), _run(_reference(tmp_path, wpz, like), x),
                                   rtol=1e-5, atol=1e-5)
        rows = export_onnx(wpz, tmp_path / "d.onnx", like, conv_quant="dense", never_slower=False)
        assert all(r.how == "dense" and "conv_quant" in r.note for r in rows if r.form == "quant")
    wpz = tmp_path / "g.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 4, "group": 32},
                   min_size=256)
    rows = {r.name: r for r in export_onnx(wpz, tmp_path / "g.onnx", like, conv_quant="dequant", never_slower=False)}
    assert rows["2.weight"].how == "dense" and "group-wise" in rows["2.weight"].note


def test_conv_quant_auto_times_each_conv(tmp_path):
    """conv_quant="auto" times each quantized conv alone (dense Conv against its im2col
    integer product, or DequantizeLinear -> Conv for grouped ones) and the whole model with the faster ones against every conv dense: each
    row says which won and the times; the outputs stay within the container's stated error."""
    like = tmp_path / "c.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(_convnet(), (torch.randn(1, 3, 24, 24),), str(like), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=256)
    out = tmp_path / "a.onnx"
    rows = export_onnx(wpz, out, like, never_slower=False)
    conv = [r for r in rows if r.form == "quant"]
    assert len(conv) == 4
    for r in conv:
        if r.how != "dense":   # grouped convs have no im2col form: DequantizeLinear
            assert r.how.startswith("im2col" if r.name in ("0.weight", "2.weight") else "Dequantize"), r
            assert "measured no slower" in r.note and " ms vs " in r.note, r
        else:
            assert "measured slower" in r.note and " ms vs " in r.note, r
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 24)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    with Container(wpz) as c:
        stated = stated_error(c)
    assert np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref) <= stated
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".wp-")]


def test_spend_time_takes_least_time_per_byte_within_the_budget():
    """conv_quant="auto" compresses convs slower than dense too while their summed excess
    stays within half the time the faster ones save: least seconds per byte first, one that
    does not fit passed over for a cheaper one after it."""
    from weightpress.model.export_onnx import spend_time
    slower = {"a": (3e-5, 1000), "b": (1e-5, 100_000), "c": (2e-5, 1000), "d": (1e-6, 10)}
    assert spend_time(slower, 0.0) == []
    assert spend_time(slower, 1e-5) == ["b"]                      # 1e-10 s/byte
    assert spend_time(slower, 2.5e-5) == ["b", "d"]               # c (2e-8) no longer fits
    assert spend_time(slower, 3.1e-5) == ["b", "c", "d"]          # a (3e-8) passed over
    assert spend_time(slower, 1.0) == ["b", "c", "a", "d"]


def test_conv_quant_auto_drops_the_spent_convs_when_the_model_is_slower(tmp_path, monkeypatch):
    """conv_quant="auto": when the model with the convs taken for their bytes (slower alone,
    within the faster ones' savings) measures slower than every conv dense, it is timed again
    with only the faster ones, and those are what the file holds."""
    import weightpress.model.export_onnx as eo
    like = tmp_path / "c.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(_convnet(), (torch.randn(1, 3, 24, 24),), str(like), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=256)
    fast, spent = "0.weight", "2.weight"           # the two convs with an im2col form
    full = ({fast: "int8", spent: "int8"}, {})
    strict = ({fast: "int8", spent: "dense"}, {spent: "dense: slower alone (made up)"})
    monkeypatch.setattr(eo, "_pick_convs", lambda *a: (full, strict, {spent: "spent (made up)"}))
    calls = []

    def choose(c, output, like_, compute, block_size, auto, modes, pick=None, inputs=None):
        calls.append(dict(pick[0]))
        if len(calls) == 1:   # the model with the spent conv: slower than every conv dense
            return {"conv_quant": "dense: the convs measured slower (made up)"}
        return {"conv_quant": "kept: measured no slower (made up)"}

    monkeypatch.setattr(eo, "_choose_modes", choose)
    rows = {r.name: r for r in export_onnx(wpz, tmp_path / "a.onnx", like, check=False, never_slower=False)}
    assert calls == [full[0], strict[0]]
    assert rows[fast].how.startswith("im2col") and rows[fast].note == "kept: measured no slower (made up)"
    assert rows[spent].how == "dense" and rows[spent].note == "dense: slower alone (made up)"


@pytest.mark.parametrize("nd,k,stride,pads,dil", [
    (2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), (2, (3, 2), (2, 1), (0, 1, 2, 0), (1, 2)),
    (2, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)), (2, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    (1, (5,), (3,), (2, 1), (2,)), (3, (2, 3, 1), (1, 2, 1), (1, 0, 0, 0, 1, 0), (1, 1, 1))])
def test_im2col_index_is_the_convolution(nd, k, stride, pads, dil):
    """The fixed im2col index, gathered from the input with a zero appended, times the weight's
    (O, C·Πk) matrix is torch's convolution (any strides, pads, dilations, 1–3 spatial dims)."""
    from weightpress.model.export_onnx import im2col_index
    rng = np.random.default_rng(nd)
    size = (9, 8, 5)[:nd]
    x = rng.standard_normal((2, 3) + size).astype(np.float32)
    w = rng.standard_normal((4, 3) + k).astype(np.float32)
    idx, out = im2col_index(size, k, stride, pads, dil)
    xp = np.concatenate([x.reshape(2, 3, -1), np.zeros((2, 3, 1), np.float32)], axis=2)
    cols = xp[:, :, idx].transpose(0, 2, 1, 3).reshape(2, idx.shape[0], -1)
    got = (cols @ w.reshape(4, -1).T).transpose(0, 2, 1).reshape((2, 4) + out)
    tx = torch.nn.functional.pad(torch.from_numpy(x), [p for d in reversed(range(nd))
                                                       for p in (pads[d], pads[nd + d])])
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[nd - 1]
    ref = conv(tx, torch.from_numpy(w), stride=stride, dilation=dil).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,stride,pads,dil,size", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (9, 8)), ((3, 2), (2, 1), (0, 1, 2, 0), (1, 2), (9, 8)),
    ((7, 7), (2, 2), (3, 3, 3, 3), (1, 1), (12, 11)), ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (9, 8)),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (5, 4)),
    ((5,), (3,), (2, 1), (2,), (17,)), ((2, 3, 1), (1, 2, 1), (1, 0, 0, 0, 1, 0), (1, 1, 1), (5, 6, 3))])
def test_im2col_slices_quantize_the_input_once(tmp_path, k, stride, pads, dil, size):
    """A quantized conv as im2col over uint8 patches (the input quantized per tensor, its
    zero point padding, strided slices per tap, the weight's columns tap-major): the result
    is the convolution of the input rounded as DynamicQuantizeLinear rounds it with the
    container's weights and the bias (torch, float64), to float rounding (the integer product is exact),
    for any kernel, strides, pads, dilations and 1-3 spatial dims."""
    nd = len(k)
    rng = np.random.default_rng(len(k) + sum(k))
    C, O = 8, 16
    w = rng.standard_normal((O, C) + k).astype(np.float32)
    x = (rng.standard_normal((2, C) + size) + 0.3).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "bias"], ["y"], kernel_shape=list(k), strides=list(stride),
                          pads=list(pads), dilations=list(dil))], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", C, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", O] + [
            (size[d] + pads[d] + pads[nd + d] - dil[d] * (k[d] - 1) - 1) // stride[d] + 1
            for d in range(nd)])], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")])
    like = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(like))
    wpz = tmp_path / "c.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=64)
    out = tmp_path / "q.onnx"
    rows = export_onnx(wpz, out, like, conv_quant="int8", check=False, never_slower=False)
    assert rows[0].how.startswith("im2col (") and "uint8 patches) + MatMulIntegerToFloat" in rows[0].how, rows
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    # one strided Slice per tap of each dimension of more than one, one for those of one tap
    # where they are subsampled
    assert ops.count("Slice") == sum(kd for kd in k if kd > 1) + any(
        kd == 1 and s_ > 1 for kd, s_ in zip(k, stride)), ops
    with Container(wpz) as c:
        wq = np.asarray(c["w"], np.float64).reshape(w.shape)
    # 8-bit codes beyond ±64 (int8_weights="portable"): the input rounded to 7 bits, so that
    # the uint8 x int8 kernel of CPUs without VNNI stays exact; else DynamicQuantizeLinear's 8
    levels = 127 if "7-bit activations" in rows[0].how else 255
    assert levels == 127, rows[0].how   # symmetric 8-bit codes span [-127, 127]
    lo, hi = np.float32(min(float(x.min()), 0.0)), np.float32(max(float(x.max()), 0.0))
    scale = np.float32((hi - lo) / np.float32(levels))
    zp = np.clip(np.round(-lo / scale), 0, 255)
    xq = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * np.float64(scale)
    tx = torch.nn.functional.pad(torch.from_numpy(xq), [p for d in reversed(range(nd))
                                                        for p in (pads[d], pads[nd + d])])
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[nd - 1]
    ref = conv(tx, torch.from_numpy(wq), torch.from_numpy(bias.astype(np.float64)), stride=stride,
               dilation=dil).numpy()
    got = _run(out, x)
    assert got.shape == ref.shape
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    # compensated (compute="twopass"): the residual's product too, the same way: the rounding
    # of the input (about 1e-2 here) falls by more than 20x against the unrounded input
    exact = conv(torch.nn.functional.pad(torch.from_numpy(x.astype(np.float64)),
                                         [p for d in reversed(range(nd)) for p in (pads[d], pads[nd + d])]),
                 torch.from_numpy(wq), torch.from_numpy(bias.astype(np.float64)), stride=stride,
                 dilation=dil).numpy()
    rows = export_onnx(wpz, out, like, conv_quant="int8", check=False, compute="twopass", never_slower=False)
    assert "uint8 patches) + MatMulIntegerToFloat x2" in rows[0].how, rows
    two = np.linalg.norm(_run(out, x) - exact) / np.linalg.norm(exact)
    one = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert two < one / 20 and one > 1e-3, (two, one)


def test_quant_conv_runs_as_im2col_integer_product(tmp_path):
    """conv_quant="int8": the ResNet-18-structured CNN's quantized convs (and its low rank +
    int8 ones) run as im2col (strided slices of the input, no index tensor) + an integer
    product over their int8 codes (MatMulIntegerToFloat over uint8 patches; twice, the
    input's rounding residual too, where the check asks for compensated rounding); the graph passes onnx.checker,
    holds a quarter of the bytes, and computes the container's computation within its stated
    error (the export's check; measured here again, and without the check). A Conv1d with
    stride, dilation and padding likewise; an input of unknown size keeps DequantizeLinear."""
    import realmodels
    torch.manual_seed(0)
    net = realmodels._cnn_classes()["resnet"](width=16).eval()
    realmodels._randomize_bn(net)
    like = tmp_path / "r.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(like), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    # the second factor: DynamicQuantizeMatMul over int8 codes within ±64, MatMulIntegerToFloat
    # over 7-bit activations beyond (what full-range codes need on CPUs without VNNI)
    hows = {"quant": ("+ MatMulIntegerToFloat 8-bit", "+ MatMulIntegerToFloat x2 8-bit"),
            "lowrank-int8": tuple(f"+ MatMulIntegerToFloat{two} + {op}{two} 8-bit" for two in ("", " x2")
                                  for op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"))}
    for method, opts in (("quant", {"bits": 8}), ("lowrank-int8", {"ratio": 4})):
        wpz = tmp_path / f"{method}.wpz"
        compress_model(open_model(str(like)), wpz, method=method, options=opts,
                       error=None if method == "quant" else 1.0, min_size=1024)
        ref = _run(_reference(tmp_path, wpz, like), x)
        with Container(wpz) as c:
            stated = stated_error(c)
        for check in (True, False):
            out = tmp_path / f"{method}-{check}.onnx"
            rows = export_onnx(wpz, out, like, conv_quant="int8", check=check, never_slower=False)
            conv = [r for r in rows if r.name != "fc.weight" and r.form != "dense"]
            assert len(conv) == 19 and all(r.how.startswith("im2col (") and
                                           any(h in r.how for h in hows[method]) for r in conv), rows
            if not check:    # every conv over uint8 patches: the input quantized once
                assert all(any("uint8 patches) + " + h[2:] in r.how for h in hows[method] if "x2" not in h)
                           for r in conv), rows
            # (the slices' starts and ends, a few int64 each, are counted with the first conv
            # that reads them)
            assert sum(r.nbytes for r in conv) < sum(r.dense_nbytes for r in conv) / 3.5
            m = onnx.load(str(out))
            onnx.checker.check_model(m)
            ops = [n.op_type for n in m.graph.node]
            assert ops.count("Conv") == 1 and "Gather" not in ops   # the 512-weight 1x1, kept
            assert max(int(np.prod(t.dims)) for t in m.graph.initializer
                       if t.data_type == onnx.TensorProto.INT64) <= 8     # no index tensor
            got = np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref)
            if check:
                assert got <= stated and rows.output_error <= rows.stated_error
            else:   # the integer kernels' rounding, unchecked: a few times the stated error
                assert got <= 4 * stated, (got, stated)   # (a misplaced tap would be ~1)

    class C1(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv1d(8, 32, 5, stride=2, padding=3, dilation=2)
            self.b = torch.nn.Conv1d(32, 16, 3, padding=1, bias=False)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(1)
    for dyn, want in (({0: "b"}, "im2col"), ({0: "b", 2: "t"}, "DequantizeLinear")):
        like = tmp_path / "c1.onnx"
        with pytest.warns(DeprecationWarning):
            torch.onnx.export(C1().eval(), (torch.randn(1, 8, 40),), str(like), dynamo=False,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": dyn})
        wpz = tmp_path / "c1.wpz"
        compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=256)
        out = tmp_path / "c1-q.onnx"
        rows = export_onnx(wpz, out, like, conv_quant="int8", never_slower=False)
        assert [r.how.split()[0] for r in rows if r.form == "quant"] == [want] * 2, rows
        onnx.checker.check_model(onnx.load(str(out)))
        x = np.random.default_rng(2).standard_normal((2, 8, 40)).astype(np.float32)
        ref = _run(_reference(tmp_path, wpz, like), x)
        with Container(wpz) as c:
            stated = stated_error(c)
        assert np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref) <= stated


def test_quantized_embedding_runs_as_gatherblockquantized(tmp_path):
    """An nn.Embedding table quantized per row (8 bits) or in groups (3- and 4-bit codes, two a
    byte) becomes GatherBlockQuantized over its codes, equal to the container's decode; groups
    that are not a power of two stay dense with the reason."""
    torch.manual_seed(0)

    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(300, 96)
            self.out = torch.nn.Linear(96, 8)

        def forward(self, ids):
            return self.out(self.emb(ids))

    like = tmp_path / "e.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(Emb().eval(), (torch.zeros(2, 5, dtype=torch.long),), str(like),
                          dynamo=False, input_names=["ids"], output_names=["y"],
                          dynamic_axes={"ids": {0: "b", 1: "s"}})
    src = open_model(str(like))
    name = "emb.weight"
    ids = np.random.default_rng(0).integers(0, 300, (3, 7)).astype(np.int64)
    for bits, group, sym, how in ((8, 0, True, "GatherBlockQuantized 8-bit, block 32"),
                                  (4, 32, False, "GatherBlockQuantized 4-bit, block 32"),
                                  (3, 16, True, "GatherBlockQuantized 4-bit, block 16 (from 3-bit"),
                                  (4, 24, True, None)):
        wpz = tmp_path / "e.wpz"
        q, _ = rtn_quant(np.asarray(src[name]), bits, group, sym)
        with ContainerWriter(wpz) as w:
            w.add(name, q, original=np.asarray(src[name]), layout="out_in")
        out = tmp_path / "e_q.onnx"
        row = {r.name: r for r in export_onnx(wpz, out, like, never_slower=False)}[name]
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        ops = [n.op_type for n in m.graph.node]
        if how is None:
            assert row.how == "dense" and "block" in row.note, row
            assert "GatherBlockQuantized" not in ops
        else:
            assert row.how.startswith(how), row
            assert ops.count("GatherBlockQuantized") == 1 and "Gather" not in ops
            assert row.nbytes < row.dense_nbytes / (3.4 if bits == 8 else 5)
            assert name not in {t.name for t in m.graph.initializer}
        s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        r = ort.InferenceSession(str(_reference(tmp_path, wpz, like)), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(s.run(None, {"ids": ids})[0], r.run(None, {"ids": ids})[0],
                                   rtol=1e-5, atol=1e-6)


def test_quantized_lstm_runs_as_dynamicquantizelstm(tmp_path):
    """The real recurrent model (torch: 2-layer bidirectional LSTM, GRU, linear) with its
    weights quantized per row: lstm_quant="int8" turns each LSTM into DynamicQuantizeLSTM over
    the int8 codes (uint8 activations per tensor: close to the container's decode, not exact),
    the GRU stays dense with the reason; "auto" keeps either, consistently."""
    import realmodels
    rm = realmodels.build("lstm", "onnx", str(tmp_path))
    wpz = tmp_path / "l.wpz"
    for opts in ({"bits": 8}, {"bits": 6, "symmetric": False}):
        compress_model(open_model(rm.path), wpz, method="quant", options=opts, min_size=256)
        ref = rm.run(str(_reference(tmp_path, wpz, rm.path)))
        out = tmp_path / "l.onnx"
        rows = [r for r in export_onnx(wpz, out, rm.path, lstm_quant="int8", never_slower=False) if r.form == "quant"]
        lstm = [r for r in rows if "LSTM" in r.name]
        assert len(lstm) == 4 and all(r.how.startswith(f"DynamicQuantizeLSTM {opts['bits']}-bit")
                                      for r in lstm), rows
        assert all(r.nbytes == r.dense_nbytes // 4 + 5 * 384 for r in lstm)  # codes + scale, zero / row
        assert all(r.how == "dense" and "GRU" in r.note for r in rows if "GRU" in r.name), rows
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
        y = rm.run(str(out))
        err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert 1e-7 < err < 0.03, err
    rows = [r for r in export_onnx(wpz, out, rm.path, never_slower=False) if "LSTM" in r.name and r.form == "quant"]
    auto_q = [r.how.startswith("DynamicQuantizeLSTM") for r in rows]
    assert all(auto_q) or (not any(auto_q) and all("measured slower" in r.note for r in rows)), rows


# The weight inputs of onnxruntime's integer products, and of their zero points, by op.
_INTEGER_WEIGHTS = {"DynamicQuantizeMatMul": ((1, 3),), "MatMulIntegerToFloat": ((1, 5),),
                    "DynamicQuantizeLSTM": ((1, 9), (2, 11))}


def _saturating_product(xu8, w):
    """``xu8 @ w`` as MLAS's uint8 x int8 AVX2 kernel (no VNNI) computes it: ``vpmaddubsw`` adds
    the products of two neighbouring inputs in int16, saturating, then ``vpmaddwd`` widens."""
    x = np.asarray(xu8, np.int64)
    w = np.asarray(w, np.int64)
    if x.shape[-1] % 2:
        x, w = np.pad(x, [(0, 0), (0, 1)]), np.pad(w, [(0, 1), (0, 0)])
    pair = x[:, 0::2, None] * w[None, 0::2] + x[:, 1::2, None] * w[None, 1::2]
    return np.clip(pair, -32768, 32767).sum(axis=1)


def _activation_top(g, inits, node):
    """The largest uint8 activation an integer product ``node`` can see: 255, or 129 where its
    input was rounded by the export's 7-bit rounding (``QuantizeLinear`` with the scale
    ``max(range / 127, tiny)``, traced through the im2col slices); checked, not assumed."""
    if node.op_type != "MatMulIntegerToFloat":
        return 255                      # DynamicQuantizeMatMul/LSTM: 8 bits, inside the kernel
    prod = {o: n for n in g.node for o in n.output}
    name = node.input[0]
    while name in prod and prod[name].op_type not in ("QuantizeLinear", "DynamicQuantizeLinear"):
        name = prod[name].input[0]
    q = prod.get(name)
    if q is None or q.op_type != "QuantizeLinear":
        return 255
    top = prod[q.input[1]]
    assert top.op_type == "Max", top
    div = prod[top.input[0]]
    assert div.op_type == "Div" and float(inits[div.input[1]]) == 127.0, div
    return 129         # round(x/s) + round(−lo/s) over a range of 127 s: 127, or 128–129 by rounding


def test_integer_weights_are_exact_on_cpus_without_vnni(tmp_path, block):
    """Every weight the exported graph hands to an integer product (DynamicQuantizeMatMul per
    channel and per group, MatMulIntegerToFloat of an im2col conv, DynamicQuantizeLSTM) is exact
    on x86 CPUs without VNNI (AMD Zen 1-3, Intel before Ice Lake), whatever CPU runs this test:
    the uint8 x int8 kernel's saturating int16 pair sums (emulated here over the worst
    activations: 255, or 129 after the export's 7-bit rounding) equal the exact product: int8
    weights within ±64 of their zero points under 8-bit activations, full-range ones only under
    7-bit activations, or uint8 weights with zero points. 8-bit symmetric codes use the whole
    [-127, 127]: as int8 under 8-bit activations they were off by up to 1.8e5 in int32 on an
    AMD EPYC (Zen 3)."""
    import realmodels
    like, _ = block
    conv = tmp_path / "conv.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1)).eval(),
                          (torch.randn(1, 16, 8, 8),), str(conv), dynamo=False, input_names=["x"])
    lstm = realmodels.build("lstm", "onnx", str(tmp_path)).path
    cases = [(like, {"bits": 8}, {}), (like, {"bits": 8}, {"compute": "twopass"}),
             (like, {"bits": 7, "symmetric": False}, {}),
             (like, {"bits": 8, "group": 32}, {"group_quant": "int8"}),
             (like, {"bits": 6, "group": 32}, {"group_quant": "int8"}),
             (conv, {"bits": 8}, {"conv_quant": "int8"}),
             (lstm, {"bits": 8}, {"lstm_quant": "int8"})]
    kinds = set()
    for i, (src, opts, how) in enumerate(cases):
        wpz, out = tmp_path / f"{i}.wpz", tmp_path / f"{i}.onnx"
        compress_model(open_model(str(src)), wpz, method="quant", options=opts, min_size=256)
        export_onnx(wpz, out, src, check=False, never_slower=False, **how)
        g = onnx.load(str(out)).graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        seen = 0
        for n in g.node:
            for wi, zi in _INTEGER_WEIGHTS.get(n.op_type, ()):
                w = inits[n.input[wi]]
                if n.op_type == "DynamicQuantizeLSTM":     # (D, in, 4H) -> one (in, D·4H) product
                    w = np.concatenate(list(w), axis=1)
                has_zero = len(n.input) > zi and n.input[zi] != ""
                if w.dtype == np.int8:
                    if has_zero:
                        assert not np.any(inits[n.input[zi]]), (n.name, "int8 weight, nonzero zero points")
                    exact = np.asarray(w, np.int64)
                    worst = np.full((2, w.shape[0]), _activation_top(g, inits, n), np.uint8)
                    worst[1, ::2] = 0           # and every other input off
                    assert np.array_equal(_saturating_product(worst, w), worst.astype(np.int64) @ exact), (
                        n.op_type, opts, how, int(np.abs(exact).max()))
                else:
                    assert w.dtype == np.uint8 and has_zero, (n.op_type, opts, how, w.dtype)
                kinds.add((n.op_type, w.dtype.name))
                seen += 1
        assert seen, (opts, how, [n.op_type for n in g.node])
    # every form occurs: 8-bit symmetric codes per channel go full-range int8 under 7-bit
    # activations, in groups or in an LSTM uint8; 6- and 7-bit ones stay int8
    assert {("DynamicQuantizeMatMul", "uint8"), ("DynamicQuantizeMatMul", "int8"),
            ("MatMulIntegerToFloat", "int8"), ("DynamicQuantizeLSTM", "uint8")} <= kinds, kinds


def test_int8_weights_vnni_keeps_full_range_int8_and_says_so(tmp_path, block):
    """int8_weights="vnni": 8-bit symmetric codes stay int8 over their whole range (the fast
    kernel on CPUs with VNNI or AMX) under 8-bit activations, where the portable export rounds
    the activations to 7 bits over the same weights: close (the rounding, about 1e-2) where
    this CPU has VNNI; the model's metadata says where it is exact; a bad value is refused
    naming the argument."""
    like, _ = block
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=256)
    got = {}
    for mode in ("portable", "vnni"):
        out = tmp_path / f"{mode}.onnx"
        export_onnx(wpz, out, like, check=False, never_slower=False, int8_weights=mode)
        m = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        op = "DynamicQuantizeMatMul" if mode == "vnni" else "MatMulIntegerToFloat"
        ws = [inits[n.input[1]] for n in m.graph.node if n.op_type == op]
        assert len(ws) == 2
        assert all(w.dtype == np.int8 and int(np.abs(w.astype(np.int16)).max()) > 64 for w in ws)
        props = {p.key: p.value for p in m.metadata_props}
        if mode == "vnni":      # 8-bit activations
            assert props["weightpress.int8_weights"].startswith("vnni")
        else:                   # 7-bit activations: the same weights, exact everywhere
            assert "weightpress.int8_weights" not in props
            assert [n.op_type for n in m.graph.node].count("QuantizeLinear") == 2   # each input
        got[mode] = _run(out, np.random.default_rng(3).standard_normal((2, 5, 64)).astype(np.float32))
    if full_int8_exact():
        d = np.linalg.norm(got["vnni"] - got["portable"]) / np.linalg.norm(got["vnni"])
        assert 1e-5 < d < 5e-2, d
    with pytest.raises(ValueError, match="int8_weights: expected 'portable' or 'vnni'"):
        export_onnx(wpz, tmp_path / "x.onnx", like, int8_weights="avx2")
    assert not (tmp_path / "x.onnx").exists()


def test_saturating_product_model_catches_wide_int8_weights():
    """The emulation above is not vacuous: full-range int8 codes saturate it, ±64 ones do not."""
    w = np.full((4, 1), 127, np.int8)
    x = np.full((1, 4), 255, np.uint8)
    assert _saturating_product(x, w)[0, 0] == 2 * 32767 < 4 * 255 * 127
    w64 = np.full((4, 1), -64, np.int8)
    assert _saturating_product(x, w64)[0, 0] == 4 * 255 * -64


def _deep_mlp(path, layers=6, d=64):
    """A residual stack of d -> 2d -> d blocks exported by torch (MatMul + Add per layer)."""
    torch.manual_seed(0)

    class Deep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.ModuleList(torch.nn.Linear(d, 2 * d) for _ in range(layers))
            self.down = torch.nn.ModuleList(torch.nn.Linear(2 * d, d) for _ in range(layers))

        def forward(self, x):
            for u, w in zip(self.up, self.down):
                x = x + w(torch.nn.functional.gelu(u(x)))
            return x

    with pytest.warns(DeprecationWarning):
        torch.onnx.export(Deep().eval(), (torch.randn(2, 16, d),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})


def test_export_keeps_outputs_within_the_stated_error(tmp_path):
    """The integer kernels' activation rounding puts a deep int8 stack further from the
    container's computation than the container's stated error; the checked export does not:
    on fresh inputs (not the check's samples) its outputs are within the stated error of the
    container's decode, run by onnxruntime in the original graph, and the rows name the layers
    that compensate their rounding and why."""
    like = tmp_path / "deep.onnx"
    _deep_mlp(like)
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=1024)
    with Container(wpz) as c:
        stated = max(float(e["error"]) for e in c.entries.values())
    assert 1e-3 < stated < 2e-2
    x = np.random.default_rng(11).standard_normal((3, 16, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)

    def err(p):
        y = _run(p, x)
        return np.linalg.norm(y - ref) / np.linalg.norm(ref)

    raw = tmp_path / "raw.onnx"
    rows = export_onnx(wpz, raw, like, check=False, never_slower=False)
    assert rows.output_error is None
    assert all(r.how.startswith(tuple(f"{op} 8-bit" for op in _INT_PRODUCTS)) for r in rows if r.form == "quant")
    assert err(raw) > stated          # what the check is for: the one-pass integer model is not
    out = tmp_path / "checked.onnx"
    rows = export_onnx(wpz, out, like, never_slower=False)
    assert err(out) <= stated, (err(out), stated)
    assert rows.stated_error == pytest.approx(stated)
    assert rows.output_error <= 0.8 * stated
    fixed = [r for r in rows if "stated error" in r.note]
    assert fixed and all(("x2" in r.how or "MatMulNBits" in r.how) for r in fixed), rows
    assert all("compensate their activation rounding" in r.note or "float activations" in r.note
               for r in fixed)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert sum(ops.count(op) for op in _INT_PRODUCTS) == sum(
        2 if "x2" in r.how else r.how.startswith(_INT_PRODUCTS) for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".wp-")]
    # the same with the caller's sample inputs; a missing input is named
    rows = export_onnx(wpz, tmp_path / "mine.onnx", like, inputs={"x": x[:2]}, never_slower=False)
    assert rows.output_error <= 0.8 * stated
    with pytest.raises(ValueError, match="inputs: no value for the model's input 'x'"):
        export_onnx(wpz, tmp_path / "bad.onnx", like, inputs={"y": x}, never_slower=False)


def test_twopass_compensates_the_activation_rounding(tmp_path, block):
    """compute="twopass": each per-channel int8 layer is DynamicQuantizeMatMul of the
    activations plus DynamicQuantizeMatMul of their rounding residual (one weight for both),
    about two orders of magnitude closer to the container's computation than one pass."""
    like, weights = block
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=1024)
    x = np.random.default_rng(5).standard_normal((2, 9, 64)).astype(np.float32)
    x[0, 0, :2] *= 30                               # outliers widen the per-tensor range
    ref = _run(_reference(tmp_path, wpz, like), x)
    errs = {}
    for compute in ("fast", "twopass"):
        out = tmp_path / f"{compute}.onnx"
        rows = {r.name: r for r in export_onnx(wpz, out, like, compute=compute, check=False, never_slower=False)}
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        n_dq = sum(n.op_type in _INT_PRODUCTS for n in m.graph.node)
        assert n_dq == (2 if compute == "twopass" else 1) * len(weights)
        assert len({i.name for i in m.graph.initializer if i.name.endswith("_q")}) == len(weights)
        assert all(rows[w].nbytes < rows[w].dense_nbytes / 3.5 for w in weights)
        errs[compute] = np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref)
    assert errs["twopass"] < 1e-3 < errs["fast"], errs
    assert errs["twopass"] < errs["fast"] / 30, errs


def test_twopass_layers_reading_one_input_share_its_residual(tmp_path):
    """Three projections of one input (q, k, v) compensated with compute="twopass": the input is
    rounded and its residual taken once (one DynamicQuantizeLinear → DequantizeLinear → Sub),
    read by all three; the model still computes the container's decode to the residual's
    rounding. Without the sharing each layer had its own (3 nodes and 3 passes apiece)."""
    torch.manual_seed(1)

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(64, 64) for _ in range(3))
            self.o = torch.nn.Linear(64, 64)

        def forward(self, x):
            a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 8, dim=-1)
            return self.o(a @ self.v(x))

    like = tmp_path / "attn.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(Attn().eval(), (torch.randn(2, 5, 64),), str(like), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}})
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 8}, min_size=1024)
    out = tmp_path / "twopass.onnx"
    rows = export_onnx(wpz, out, like, compute="twopass", check=False, never_slower=False)
    assert sum("x2" in r.how for r in rows) == 4, rows
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert sum(ops.count(op) for op in _INT_PRODUCTS) == 8
    assert ops.count("DequantizeLinear") == 2           # x's residual, and o's input's
    if "MatMulIntegerToFloat" in ops:   # 7-bit rounding: x, o's input, and their residuals
        assert ops.count("QuantizeLinear") == 4 == ops.count("ReduceMin")
    else:                               # DynamicQuantizeMatMul rounds the residuals itself
        assert ops.count("DynamicQuantizeLinear") == 2
    x = np.random.default_rng(2).standard_normal((3, 7, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    assert np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref) < 1e-3


@pytest.mark.parametrize("opts", [{"bits": 4, "group": 32}, {"bits": 8, "group": 32, "symmetric": False},
                                  {"bits": 3, "group": 48}, {"bits": 4, "group": 32, "symmetric": False}])
def test_group_quant_runs_as_one_integer_matmul_per_group(tmp_path, block, opts):
    """group_quant="int8": a weight quantized in groups along its inputs is Split into the
    groups' columns, one DynamicQuantizeMatMul per group (exactly the container's codes),
    summed; close to the container's decode (activations rounded per group). Codes of 2–4
    bits stay packed two a byte in the file (int8 once onnxruntime folds their unpacking);
    8-bit codes take a byte each. Symmetric 2–4-bit codes whose groups tile the inputs are one
    product over int8 weights per channel made at load instead (:func:`_requantized`). "auto" writes
    integer products for all such layers or MatMulNBits for all, and says why when
    MatMulNBits; either way a 3/4-bit model's file holds packed codes."""
    like, weights = block
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options=opts, min_size=1024)
    x = np.random.default_rng(2).standard_normal((2, 7, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    out = tmp_path / "g.onnx"
    rows = {r.name: r for r in export_onnx(wpz, out, like, group_quant="int8", check=False, never_slower=False)}
    inn = {weights[0]: 64, weights[1]: 192}
    groups = {w: -(-inn[w] // opts["group"]) for w in weights}
    packed = opts["bits"] <= 4
    one = {w: packed and opts.get("symmetric", True) and inn[w] % opts["group"] == 0 for w in weights}
    for w in weights:
        if one[w]:
            assert rows[w].how.startswith(
                f"DynamicQuantizeMatMul per channel over {opts['bits']}-bit codes in {groups[w]} "
                f"groups of {opts['group']} packed two a byte, int8 per channel at load"), rows[w]
        else:
            assert rows[w].how.startswith(f"DynamicQuantizeMatMul per group ({groups[w]} groups of "
                                          f"{opts['group']}, {opts['bits']}-bit"), rows[w]
        assert ("packed two a byte" in rows[w].how) == packed, rows[w]
        # half a byte a code (scales per group, the shared table), or a byte a code
        assert rows[w].nbytes < rows[w].dense_nbytes / (5 if packed else 3.2), rows[w]
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    per_group = [w for w in weights if not one[w]]
    assert ops.count("DynamicQuantizeMatMul") == sum(groups[w] for w in per_group) + sum(one.values())
    assert ops.count("Sum") == len(per_group)
    assert ops.count("Split") == (2 if packed else 1) * len(per_group)  # packed codes split too
    assert ops.count("QuantizeLinear") == sum(one.values())
    opset = {o.domain: o.version for o in m.opset_import}[""]
    before = {o.domain: o.version for o in onnx.load(str(like)).opset_import}[""]
    assert before < 21 and opset == (21 if packed else before)   # raised for the 4-bit codes
    err = np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref)
    assert 1e-6 < err < 2e-2, err
    rows = {r.name: r for r in export_onnx(wpz, tmp_path / "a.onnx", like, never_slower=False)}
    integer = {rows[w].how.startswith(("DynamicQuantizeMatMul per group",
                                       "DynamicQuantizeMatMul per channel over")) for w in weights}
    nbits = {rows[w].how.startswith("MatMulNBits 4-bit" if packed else "MatMulNBits 8-bit")
             for w in weights}
    assert integer == {True} or nbits == {True}, rows
    if nbits == {True}:
        assert all("measured slower" in rows[w].note for w in weights), rows
    else:
        assert all("measured no slower" in rows[w].note for w in weights), rows
    if packed:
        assert all(rows[w].nbytes <= rows[w].dense_nbytes / 5 for w in weights), rows
    y = _run(tmp_path / "a.onnx", x)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 2e-2


def _mlp_quantized(tmp_path, W1, W2, opts):
    """An opset-17 ONNX ``x @ W1 → Relu → @ W2`` (weights [in, out]) and its container
    quantized with ``opts``: ``(model path, container path)``."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, W1.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, W2.shape[1]])],
                          [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")])
    like = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(like))
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options=opts, min_size=1)
    return like, wpz


@pytest.mark.parametrize("opts", [{"bits": 4, "group": 16}, {"bits": 3, "group": 8}, {"bits": 2, "group": 16}])
def test_grouped_low_bit_codes_run_as_one_int8_product_per_channel(tmp_path, opts):
    """Symmetric 2–4-bit codes in groups that tile the inputs, group_quant="int8": the file
    holds the codes half a byte each; onnxruntime folds the requantization at load into one
    int8 weight per layer (its optimized graph keeps no Cast or QuantizeLinear); those weights
    are the container's matrix rounded per output channel to ±64 steps of max|row|/64
    (recomputed here from its decode; the step is held in float16), exact under the saturating
    uint8 x int8 kernel of CPUs without VNNI at any 8-bit activation, one DynamicQuantizeMatMul
    each; "vnni" takes ±127; the outputs stay within that rounding of the container's decode."""
    rng = np.random.default_rng(5)
    W1 = (rng.standard_normal((64, 48)) / 8).astype(np.float32)      # [in, out]
    W2 = (rng.standard_normal((48, 64)) / 7).astype(np.float32)
    W2[:, 3] *= 40                                                  # one loud output channel
    W2[:opts["group"], 5] = 0                                       # a group of zero scale
    like, wpz = _mlp_quantized(tmp_path, W1, W2, opts)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    with Container(wpz) as cont:
        dense = {w: QuantParts.of(cont.matrix(w)).dense() for w in ("W1", "W2")}   # (out, in)
    for mode, top in (("portable", 64), ("vnni", 127)):
        out = tmp_path / f"{mode}.onnx"
        rows = {r.name: r for r in export_onnx(wpz, out, like, group_quant="int8", check=False,
                                                never_slower=False, int8_weights=mode)}
        for w, k in (("W1", 64), ("W2", 48)):
            assert rows[w].how.startswith(f"DynamicQuantizeMatMul per channel over {opts['bits']}-bit "
                                          f"codes in {k // opts['group']} groups of {opts['group']}"), rows[w]
            assert ("(7-bit weights)" in rows[w].how) == (mode == "portable"), rows[w]
            assert rows[w].nbytes < rows[w].dense_nbytes / 4, rows[w]
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        codes = sorted((t.name, len(t.raw_data)) for t in m.graph.initializer if t.name.endswith("_q4"))
        assert [n for _, n in codes] == [64 * 48 // 2] * 2, codes             # half a byte a code
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = str(tmp_path / f"opt-{mode}.onnx")
        ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(tmp_path / f"opt-{mode}.onnx"))
        assert not {n.op_type for n in opt.graph.node} & {"Cast", "QuantizeLinear"}, \
            [n.op_type for n in opt.graph.node]
        inits = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
        prods = [n for n in opt.graph.node if n.op_type == "DynamicQuantizeMatMul"]
        assert len(prods) == 2
        seen = set()
        for n in prods:
            B, s = inits[n.input[1]], inits[n.input[2]]
            assert B.dtype == np.int8 and s.dtype == np.float32
            w = next(w for w, M in dense.items() if M.T.shape == B.shape and w not in seen)
            seen.add(w)
            M = dense[w]
            np.testing.assert_allclose(s, np.abs(M).max(axis=1) / top, rtol=1e-6)
            exact = M / s[:, None]
            assert np.all(np.abs(B.T - exact) <= 0.5 + np.abs(exact) * 2.0 ** -10 + 1e-6), w
            assert int(np.abs(B.astype(np.int16)).max()) == top
            if mode == "portable":   # any 8-bit activations: exact on the saturating kernel
                worst = np.full((2, B.shape[0]), 255, np.uint8)
                worst[1, ::2] = 0
                assert np.array_equal(_saturating_product(worst, B),
                                      worst.astype(np.int64) @ B.astype(np.int64)), w
        y = _run(out, x)
        if mode == "portable" or full_int8_exact():
            err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
            assert 1e-6 < err < 3e-2, (mode, err)


@pytest.mark.parametrize("opts", [{"bits": 4, "symmetric": False}, {"bits": 2}, {"bits": 4, "group": 16}])
def test_packed_codes_become_int8_weights_at_load(tmp_path, opts):
    """Codes of 2–4 bits with group_quant="int8": the file holds them two a byte (also for an
    odd input count, and asymmetric ones with their zero points), onnxruntime's default
    optimizations fold the unpacking into constant int8 weights (its optimized graph keeps no
    Gather/Cast/Sub of theirs, only the DynamicQuantizeMatMul products), the outputs stay
    within activation rounding of the container's decode, and never_slower keeps them (a
    4-bit model's file is not traded for speed)."""
    from weightpress.model import export_onnx as eo
    rng = np.random.default_rng(4)
    W1 = (rng.standard_normal((45, 40)) / 7).astype(np.float32)      # [in, out], in odd
    W2 = (rng.standard_normal((40, 45)) / 7).astype(np.float32)
    like, wpz = _mlp_quantized(tmp_path, W1, W2, opts)
    x = rng.standard_normal((6, 45)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    out = tmp_path / "p.onnx"
    rows = {r.name: r for r in export_onnx(wpz, out, like, group_quant="int8", check=False,
                                            never_slower=False)}
    kind = "per group" if "group" in opts else "per channel,"
    for w in ("W1", "W2"):
        assert rows[w].how.startswith(f"DynamicQuantizeMatMul {kind}"), rows[w]
        assert "packed two a byte" in rows[w].how
        assert rows[w].nbytes < rows[w].dense_nbytes / 3, rows[w]   # tiny: scales and table count
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    codes = [t for t in m.graph.initializer if t.name.endswith("_q4")]
    four = TensorProto.UINT4 if opts.get("symmetric") is False else TensorProto.INT4
    assert len(codes) == 2 and all(t.data_type == four for t in codes)
    assert sorted(tuple(t.dims) for t in codes) == [(40, 45), (45, 40)]    # in × out
    assert sorted(len(t.raw_data) for t in codes) == [900, 900]            # half a byte a code
    with Container(wpz) as cont:   # the codes themselves, as onnx reads 4-bit tensors
        q = QuantParts.of(cont.matrix("W1"))
    w1 = next(t for t in codes if t.name.startswith("W1"))
    want = q.codes().T.astype(np.int64) - ((1 << (q.bits - 1)) if q.symmetric else 0)
    assert np.array_equal(numpy_helper.to_array(w1).astype(np.int64), want)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    ops = {n.op_type for n in opt.graph.node}
    assert not ops & {"Cast", "Sub"}, ops
    splits = [n.op_type for n in opt.graph.node].count("Split")   # only the activations' own
    assert splits == (2 if "group" in opts else 0), splits
    assert "DynamicQuantizeMatMul" in ops
    int8 = sorted(tuple(t.dims) for t in opt.graph.initializer if t.data_type == TensorProto.INT8)
    assert (45, 40) in int8 or (16, 40) in int8, int8                # [in, out] int8, folded
    err = np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref)
    assert 1e-6 < err < 3e-2, err
    # `info` on the export lists the 4-bit tensors it cannot read as arrays, not silently
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", str(out)]) == 0
    text = buf.getvalue()
    assert text.count("_q4: not read (ONNX data type") == 2, text
    assert "tensors and 2 not read, not a weightpress container" in text
    # never_slower gives none of them back, however the timing reads
    timed = iter([1.0, 2.0] * 10)
    orig = eo.best_time
    try:
        eo.best_time = lambda fn, reps: (fn(), next(timed))[1]
        rows = {r.name: r for r in export_onnx(wpz, tmp_path / "n.onnx", like, group_quant="int8",
                                                check=False)}
    finally:
        eo.best_time = orig
    assert all("packed two a byte" in rows[w].how for w in ("W1", "W2")), rows


def test_packed_codes_stay_matmulnbits_where_the_opset_cannot_be_raised(tmp_path, block, monkeypatch):
    """Where onnx's version converter fails on the graph, 4-bit codes stay MatMulNBits (the
    opset as it was), and the rows say why."""
    like, weights = block
    wpz = tmp_path / "q.wpz"
    compress_model(open_model(str(like)), wpz, method="quant", options={"bits": 4, "group": 32},
                   min_size=1024)

    def refuse(model, version):
        raise RuntimeError("no adapter for this graph")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    out = tmp_path / "g.onnx"
    rows = {r.name: r for r in export_onnx(wpz, out, like, group_quant="int8", check=False,
                                            never_slower=False)}
    for w in weights:
        assert rows[w].how.startswith("MatMulNBits 4-bit"), rows[w]
        assert "could not be raised to 21 (RuntimeError: no adapter for this graph)" in rows[w].how
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert {o.domain: o.version for o in m.opset_import}[""] == \
        {o.domain: o.version for o in onnx.load(str(like)).opset_import}[""]
    x = np.random.default_rng(2).standard_normal((2, 7, 64)).astype(np.float32)
    ref = _run(_reference(tmp_path, wpz, like), x)
    assert np.linalg.norm(_run(out, x) - ref) / np.linalg.norm(ref) < 2e-2


def test_sample_inputs_index_the_embedding(tmp_path):
    """The check's sample inputs: token ids below the rows of the table they index (through a
    Cast), ones for a mask, the declared batch for a dynamic first dimension."""
    from weightpress.model.export_check import sample_feed, session
    T = numpy_helper.from_array(np.ones((50, 4), np.float32), "T")
    nodes = [helper.make_node("Cast", ["ids"], ["i32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["T", "i32"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 6]),
                                       helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [T, numpy_helper.from_array(np.array([2], np.int64), "ax")])
    path = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feed = sample_feed(session(path), 4, g)
    assert feed["ids"].shape == (4, 6) and feed["ids"].dtype == np.int64
    assert feed["ids"].min() >= 0 and feed["ids"].max() < 50 and len(np.unique(feed["ids"])) > 5
    assert (feed["attention_mask"] == 1).all()


@pytest.mark.parametrize("dense_time,want_dense,bits", [(2.0, 0, 8), (1.15, 2, 8), (0.5, 3, 8),
                                                         (0.5, 0, 4)])
def test_never_slower_makes_the_smallest_layers_dense_until_no_slower(tmp_path, monkeypatch,
                                                                      dense_time, want_dense, bits):
    """never_slower (default): the export is timed against the dense model; while slower, its
    smallest compressed layers (1, 2, 4, ...) stay dense, down to the dense graph itself; packed
    int4 layers stay (an int4 file whatever the timing). The
    timing is made up here (each integer product costs 0.1 over a base of 1.0) so that the
    choice, not the machine, is tested; the notes say why."""
    import weightpress.model.export_onnx as eo
    like = tmp_path / "m.onnx"
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 128),
                            torch.nn.ReLU(), torch.nn.Linear(128, 256)).eval()
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(m, (torch.randn(1, 64),), str(like), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}})
    wpz = tmp_path / "q.wpz"
    opts = {"bits": 8} if bits == 8 else {"bits": 4, "group": 32}   # int4: MatMulNBits, kept
    compress_model(open_model(str(like)), wpz, method="quant", options=opts, min_size=256)
    cost = {"now": 0.0}

    class Fake:
        def __init__(self, path):
            g = onnx.load(path, load_external_data=False).graph
            self.t = dense_time if path == str(like) else 1.0 + 0.1 * sum(
                n.op_type in _INT_PRODUCTS + ("MatMulNBits",) for n in g.node)

        def run(self, *a):
            cost["now"] = self.t

    def best_time(fn, reps):
        fn()
        return cost["now"]

    monkeypatch.setattr(eo, "session", Fake)
    monkeypatch.setattr(eo, "best_time", best_time)
    monkeypatch.setattr(eo, "sample_feed", lambda *a: {})
    vnni_cpu = dense_time == 1.15     # the note points a CPU with VNNI at int8_weights="vnni"
    monkeypatch.setattr(eo, "full_int8_exact", lambda: vnni_cpu)
    out = tmp_path / "o.onnx"
    rows = [r for r in export_onnx(wpz, out, like, check=False) if r.form == "quant"]
    assert len(rows) == 3
    by_size = sorted(rows, key=lambda r: r.dense_nbytes)
    assert [r.how == "dense" for r in by_size] == [True] * want_dense + [False] * (3 - want_dense)
    for r in by_size[:want_dense]:
        assert "measured slower than dense" in r.note and "1.3 s" not in r.note
        assert "1.3e+03 ms vs" in r.note   # the first timing: all three compressed
        assert ("--int8-weights vnni" in r.note) == vnni_cpu, r.note
    for r in by_size[want_dense:]:
        if bits == 8:
            assert r.how.startswith(_INT_PRODUCTS), r.how
        else:   # MatMulNBits, or integer products over the 4-bit codes made int8 at load
            assert r.how.startswith("MatMulNBits 4-bit") or "4-bit codes" in r.how and \
                "packed two a byte" in r.how, r.how
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert bool(ops & {*_INT_PRODUCTS, "MatMulNBits"}) == (want_dense < 3)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    with Container(wpz) as c:   # whatever it chose, the outputs are the container's
        save_model(tmp_path / "d.onnx", c, like=like)
    np.testing.assert_allclose(_run(out, x), _run(tmp_path / "d.onnx", x), rtol=0.05, atol=0.05)
