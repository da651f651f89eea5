"""weightpress.torch.load_into: containers into PyTorch modules that compute compressed."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import rtn_quant  # noqa: E402
from weightpress.io import open_model  # noqa: E402
from weightpress.model.compress import compress_model  # noqa: E402
from weightpress.model.container import Container, ContainerWriter  # noqa: E402
from weightpress.torch import LowRankLinear, QuantLinear, SparseLinear, load_into  # noqa: E402


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).eval()


def _saved(tmp_path, m):
    p = tmp_path / "m.pt"
    torch.save(m.state_dict(), p)
    return p


def _decoded(module, wpz):
    """The module with the container's dense decode as its weights (the reference)."""
    with Container(wpz) as c:
        sd = {k: torch.from_numpy(np.array(c[k])) for k in c.entries}
    module.load_state_dict(sd, strict=False)
    return module


def test_lowrank_linear(tmp_path):
    m = _mlp()
    wpz = tmp_path / "m.wpz"
    compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="lowrank", options={"rank": 8},
                   min_size=1024)
    ref = _decoded(_mlp(), wpz)
    rows = load_into(m, wpz)
    assert isinstance(m[0], LowRankLinear) and isinstance(m[2], LowRankLinear) and m[0].rank == 8
    assert {r.how for r in rows if r.name.endswith("weight")} == {"LowRankLinear (rank 8)"}
    x = torch.randn(5, 64)
    with torch.no_grad():
        y, y_ref = m(x), ref(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m[0].dense()(x), ref[0](x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(y, _mlp()(x), atol=1e-3)  # compression did change something
    assert sum(p.numel() for p in m.parameters()) < 0.5 * sum(p.numel() for p in _mlp().parameters())


@pytest.mark.parametrize("mode", ["sparse", "dense", "auto"])
def test_sparse_linear(tmp_path, mode):
    m = _mlp()
    wpz = tmp_path / "m.wpz"
    compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="prune",
                   options={"sparsity": 0.9}, min_size=1024)
    ref = _decoded(_mlp(), wpz)
    load_into(m, wpz, sparse=mode)
    assert isinstance(m[0], SparseLinear)
    if mode != "auto":
        assert m[0].use_sparse == (mode == "sparse")
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def _quant_wpz(tmp_path, m, specs):
    wpz = tmp_path / "q.wpz"
    ref = _mlp()
    with ContainerWriter(wpz) as w:
        for name, (bits, group, sym) in specs.items():
            W = m.state_dict()[name].numpy()
            q, W_hat = rtn_quant(W, bits, group, sym, layout="out_in")
            w.add(name, q, original=W)
            ref.state_dict()[name].copy_(torch.from_numpy(W_hat))
    return wpz, ref


@pytest.mark.parametrize("specs, modes", [
    ({"0.weight": (8, 0, True), "2.weight": (4, 32, False)}, ("int8", "int4")),
    ({"0.weight": (6, 16, False), "2.weight": (3, 0, True)}, ("dequant", "int4")),
])
def test_quant_linear(tmp_path, specs, modes):
    m = _mlp()
    wpz, ref = _quant_wpz(tmp_path, m, specs)
    rows = {r.name: r for r in load_into(m, wpz)}
    assert isinstance(m[0], QuantLinear) and isinstance(m[2], QuantLinear)
    assert (m[0].mode, m[2].mode) == modes
    if "int8" in modes:
        assert m[0].qweight.dtype == torch.int8
    assert m[2].packed.dtype == torch.uint8 and m[2].packed.numel() <= 32 * 128 // 2
    assert ("dequantized" in rows["0.weight"].note) == (modes[0] == "dequant")
    x = torch.randn(4, 64)
    with torch.no_grad():
        for layer, xin in ((0, x), (2, torch.relu(ref[0](x)))):
            y, y_ref = m[layer](xin), ref[layer](xin)
            tol = 1e-5 if m[layer].mode == "dequant" else 2e-2   # bfloat16 activations
            assert (y - y_ref).norm() / y_ref.norm() < tol
            torch.testing.assert_close(m[layer].dense().weight, ref[layer].weight,
                                       rtol=1e-5 if m[layer].mode == "dequant" else 1e-2,
                                       atol=1e-6 if m[layer].mode == "dequant" else 1e-3)
    m2 = _mlp()
    load_into(m2, wpz, quant="dequant")
    with torch.no_grad():
        torch.testing.assert_close(m2(x), ref(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot run"):
        load_into(_mlp(), wpz, quant="int8" if "int8" not in modes else "int4")


def test_gpt2_conv1d(tmp_path):
    tr = pytest.importorskip("transformers")
    cfg = tr.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=50)
    torch.manual_seed(0)
    m = tr.GPT2LMHeadModel(cfg).eval()
    wpz = tmp_path / "g.wpz"
    compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="lowrank",
                   rules=[], options={"rank": 6}, min_size=1024)
    torch.manual_seed(0)
    ref = tr.GPT2LMHeadModel(cfg).eval()
    _decoded(ref, wpz)
    rows = load_into(m, wpz)
    mlp = m.transformer.h[0].mlp
    assert isinstance(mlp.c_fc, LowRankLinear) and mlp.c_fc.kind == "conv1d"
    assert any(r.how.startswith("LowRankLinear") for r in rows)
    assert [r.how for r in rows if r.name == "lm_head.weight"] == ["copied dense"]  # tied: stored once
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
        d = mlp.c_fc.dense()
        assert type(d).__name__ == "Conv1D"
        h = torch.randn(1, 3, 32)
        torch.testing.assert_close(d(h), mlp.c_fc(h), rtol=1e-4, atol=1e-5)


def test_torch_compile(tmp_path):
    m = _mlp()
    wpz, _ = _quant_wpz(tmp_path, m, {"2.weight": (4, 32, True)})
    load_into(m, wpz)
    lr = torch.nn.Sequential(LowRankLinear(torch.randn(64, 4), torch.randn(4, 64)), torch.nn.ReLU(), m)
    x = torch.randn(3, 64)
    with torch.no_grad():
        eager = lr(x)
        compiled = torch.compile(lr, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_bad_input(tmp_path):
    m = _mlp()
    wpz = tmp_path / "m.wpz"
    compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="lowrank", options={"rank": 4},
                   min_size=1024)
    with pytest.raises(ValueError, match="shape"):
        load_into(torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)), wpz)
    with pytest.raises(ValueError, match="no parameter"):
        load_into(torch.nn.Sequential(torch.nn.Linear(64, 128)), wpz)
    assert load_into(torch.nn.Sequential(torch.nn.Linear(64, 128)), wpz, strict=False)
    with pytest.raises(ValueError, match="sparse"):
        load_into(_mlp(), wpz, sparse="csr")


def test_lowrank_conv(tmp_path):
    from weightpress.torch import LowRankConv

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(16, 24, 3, stride=2, bias=False), torch.nn.ReLU(),
                                   torch.nn.Conv2d(24, 48, 3, groups=3), torch.nn.ReLU(),
                                   torch.nn.Conv1d(48, 48, 1, groups=48)).eval()
    m = net()
    wpz = tmp_path / "c.wpz"
    compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="lowrank", options={"rank": 4},
                   min_size=256)
    ref = _decoded(net(), wpz)
    rows = {r.name: r for r in load_into(m, wpz)}
    assert all(isinstance(m[i], LowRankConv) for i in (0, 2, 4)) and m[4].rank == 4
    assert m[4].first.groups == 3 and m[4].first.out_channels == 12
    assert isinstance(m[6], torch.nn.Conv1d)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y = m[:6](x)
        torch.testing.assert_close(y, ref[:6](x), rtol=1e-4, atol=1e-4)
        h = torch.relu(m[:4](x))
        torch.testing.assert_close(m[4].dense()(h), m[4](h), rtol=1e-4, atol=1e-4)
    assert rows["6.weight"].how == "copied dense"


@pytest.mark.parametrize("mode", ["auto", "dequant"])
def test_lowrank_int8_linear(tmp_path, mode):
    """lowrank-int8 layers become two per-channel int8 linears (PyTorch's int8 kernel with
    bfloat16 activations, or dequantized in float), close to the container's decode; under
    torch.compile too; ``.dense()`` gives the decoded layer."""
    from weightpress.torch import LowRankQuantLinear
    m = _mlp()
    wpz = tmp_path / "m.wpz"
    compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="lowrank-int8",
                   options={"rank": 13}, min_size=1024)   # the int8 kernel runs it padded to 16
    ref = _decoded(_mlp(), wpz)
    rows = load_into(m, wpz, quant=mode)
    assert isinstance(m[0], LowRankQuantLinear) and m[0].rank == 13
    want = "int8" if mode == "auto" else "dequant"
    assert {r.how for r in rows if r.name.endswith("weight")} == {f"LowRankQuantLinear {want} (rank 13)"}
    assert m[0].second.mode == want
    x = torch.randn(5, 64)
    tol = 2e-2 if mode == "auto" else 1e-5   # bfloat16 activations in the int8 kernel
    with torch.no_grad():
        y, y_ref = m(x), ref(x)
        assert (y - y_ref).norm() <= tol * y_ref.norm()
        d, d_ref = m[0].dense()(x), ref[0](x)   # int8 mode: scales held in bfloat16
        assert (d - d_ref).norm() <= (1e-2 if mode == "auto" else 1e-5) * d_ref.norm()
        yc = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
        torch.testing.assert_close(yc, y, rtol=1e-3, atol=1e-3)
    held = sum(t.numel() * t.element_size() for t in list(m.buffers()) + list(m.parameters()))
    dense = sum(p.numel() * 4 for p in _mlp().parameters())
    assert held < 0.3 * dense


def test_quant_conv(tmp_path):
    """Quantized conv weights (plain, grouped, depthwise; per channel and group-wise) become
    QuantConv: packed codes, equal to the container's decode; .dense() and torch.compile."""
    from weightpress.torch import QuantConv

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(32, 64, 3, groups=4), torch.nn.ReLU(),
                                   torch.nn.Conv2d(64, 64, 3, groups=64, padding=1)).eval()

    x = torch.randn(2, 3, 16, 16)
    for opts in ({"bits": 8}, {"bits": 4, "group": 32, "symmetric": False}):
        m = net()
        wpz = tmp_path / "c.wpz"
        compress_model(open_model(str(_saved(tmp_path, m))), wpz, method="quant", options=opts,
                       min_size=256)
        ref = _decoded(net(), wpz)
        rows = load_into(m, wpz)
        kinds = {r.name: r.how for r in rows}
        assert all(isinstance(m[i], QuantConv) for i in (0, 2, 4)), kinds
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(m[2].dense()(torch.relu(ref[0](x))), ref[2](torch.relu(ref[0](x))),
                                       rtol=1e-5, atol=1e-5)
            if opts["bits"] == 8:
                yc = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
                torch.testing.assert_close(yc, ref(x), rtol=1e-5, atol=1e-5)
        held = sum(t.numel() * t.element_size() for t in m.buffers())
        assert held < 0.5 * sum(p.numel() * 4 for n, p in net().named_parameters() if "weight" in n)


def test_quant_embedding(tmp_path):
    """A quantized nn.Embedding table (8-bit per row; 3-bit in groups, two codes a byte)
    becomes QuantEmbedding: codes held, only looked-up rows dequantized, equal to the
    container's decode; .dense() and torch.compile."""
    from weightpress.torch import QuantEmbedding

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(300, 96, padding_idx=0),
                                   torch.nn.Linear(96, 8)).eval()

    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 300, (3, 7)))
    W = net()[0].weight.detach().numpy()
    for bits, group, sym in ((8, 0, True), (3, 32, False)):
        q, W_hat = rtn_quant(W, bits, group, sym)
        wpz = tmp_path / "e.wpz"
        with ContainerWriter(wpz) as w:
            w.add("0.weight", q, original=W, layout="out_in")
        m = net()
        rows = load_into(m, wpz)
        assert isinstance(m[0], QuantEmbedding), rows
        assert rows[0].how.startswith(f"QuantEmbedding ({bits}-bit"), rows
        ref = _decoded(net(), wpz)
        with torch.no_grad():
            torch.testing.assert_close(m(ids), ref(ids), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(m[0].dense().weight, torch.from_numpy(W_hat), rtol=1e-6, atol=1e-6)
            yc = torch.compile(m, backend="aot_eager", fullgraph=True)(ids)
            torch.testing.assert_close(yc, ref(ids), rtol=1e-6, atol=1e-6)
        held = sum(t.numel() * t.element_size() for t in m[0].buffers())
        assert held < W.nbytes / (3.4 if bits == 8 else 5), held


def test_compressed_linears_have_no_dense_weight(tmp_path):
    """QuantLinear and the two-factor linears answer ``.weight`` with None (no dense weight),
    so model code that checks ``isinstance(layer.weight, torch.Tensor)`` (transformers' T5
    feed-forward) runs with them in place."""
    for method, opts in (("quant", {"bits": 8}), ("lowrank", {"rank": 8})):
        m = _mlp()
        wpz = tmp_path / f"{method}.wpz"
        compress_model(open_model(str(_saved(tmp_path, m))), wpz, method=method, options=opts,
                       min_size=256)
        load_into(m, wpz)
        assert type(m[0]).__name__ in ("QuantLinear", "LowRankLinear")
        assert m[0].weight is None


def test_quant_conv_decodes_into_a_reused_buffer_and_keeps_autograd():
    """Without autograd, QuantConv (and QuantLinear "dequant") decode into one scratch buffer
    per thread, reused by layers of every size (it grows to the largest), by blocks of rows:
    the outputs equal the convolution with the container's decode, whatever the order. With
    autograd each call gets its own tensor, so the backward pass is right."""
    from weightpress.model._packed import QuantParts
    from weightpress.model.export_torch import QuantConv
    rng = np.random.default_rng(9)
    layers, refs = [], []
    # 8-bit per channel, and 4-bit in groups of 48 that do not divide the 5·3·3 inputs (padded);
    # the largest spans several blocks of rows
    for (C, O, bits, group) in ((5, 7, 4, 48), (64, 600, 8, 0), (16, 24, 8, 0)):
        W = rng.standard_normal((O, C * 9)).astype(np.float32)
        q, W_hat = rtn_quant(W, bits, group, True, layout="out_in")
        conv = torch.nn.Conv2d(C, O, 3, padding=1)
        ref = torch.nn.Conv2d(C, O, 3, padding=1)
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(W_hat).reshape(O, C, 3, 3))
            ref.bias.copy_(conv.bias)
        layers.append(QuantConv(conv, QuantParts.of(q)))
        refs.append(ref)
    xs = [torch.randn(2, c.conv.in_channels, 6, 6) for c in layers]
    with torch.no_grad():
        for i in (1, 0, 2, 1, 0):                      # sizes up and down: the buffer is reused
            torch.testing.assert_close(layers[i](xs[i]), refs[i](xs[i]), rtol=1e-5, atol=1e-5)
    x = xs[1].clone().requires_grad_(True)
    x_ref = xs[1].clone().requires_grad_(True)
    y = layers[1](x)
    layers[0](xs[0])                                   # another layer's call in between
    y.sum().backward()
    refs[1](x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
