"""Matrix views of N-D weights (weightpress.compression.views) against what the frameworks
compute: the view is the matrix the layer multiplies its input patches by, and it restores the
tensor exactly."""

from __future__ import annotations

import numpy as np
import pytest

from weightpress.compression.views import matrix_view

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_torch_conv2d_is_the_im2col_matrix(groups):
    rng = np.random.default_rng(groups)
    cin, cout, k = 6, 12, 3
    W = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
    x = rng.standard_normal((1, cin, 7, 9)).astype(np.float32)
    v = matrix_view("conv.weight", W.shape, source_format="pytorch")
    assert v.layout == "out_in" and v.kind == ("conv" if groups == 1 else "depthwise" if groups == 6 else "conv")
    Wm = v.to_matrix(W)
    ref = F.conv2d(_t(x), _t(W), groups=groups).numpy().reshape(cout, -1)
    cols = F.unfold(_t(x), k).numpy()[0]  # (cin*k*k, L), channel-major like the weight
    per_in, per_out = cin // groups * k * k, cout // groups
    got = np.concatenate([Wm[g * per_out:(g + 1) * per_out] @ cols[g * per_in:(g + 1) * per_in]
                          for g in range(groups)])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(v.from_matrix(Wm), W)


def test_torch_conv1d_and_conv3d_views_restore_exactly():
    for shape in [(8, 4, 5), (8, 4, 3, 3, 3)]:
        W = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        v = matrix_view("c.weight", shape, source_format="pytorch")
        assert v.matrix_shape == (8, int(np.prod(shape[1:])))
        np.testing.assert_array_equal(v.from_matrix(v.to_matrix(W)), W)


def test_conv_transpose_matrix_scatters_the_input():
    rng = np.random.default_rng(1)
    cin, cout, k = 4, 3, 3
    W = rng.standard_normal((cin, cout, k, k)).astype(np.float32)
    x = rng.standard_normal((1, cin, 5, 5)).astype(np.float32)
    v = matrix_view("up.weight", W.shape, source_format="onnx",
                    uses=[("ConvTranspose", 1, {})])
    assert v.layout == "in_out" and v.matrix_shape == (cin, cout * k * k)
    cols = v.to_matrix(W).T @ x.reshape(cin, -1)  # (cout*k*k, L): y = x W, then col2im
    got = F.fold(_t(cols[None]), (7, 7), k).numpy()
    np.testing.assert_allclose(got, F.conv_transpose2d(_t(x), _t(W)).numpy(), rtol=1e-4, atol=1e-4)


def test_keras_hwio_conv_is_patches_times_matrix():
    rng = np.random.default_rng(2)
    kh, kw, cin, cout = 3, 2, 4, 5
    W = rng.standard_normal((kh, kw, cin, cout)).astype(np.float32)
    x = rng.standard_normal((6, 7, cin)).astype(np.float32)
    v = matrix_view("conv2d/kernel", W.shape, source_format="keras")
    assert v.layout == "in_out" and v.matrix_shape == (kh * kw * cin, cout)
    Wm = v.to_matrix(W)
    H, Wd = 6 - kh + 1, 7 - kw + 1
    patches = np.stack([x[i:i + kh, j:j + kw, :].reshape(-1) for i in range(H) for j in range(Wd)])
    ref = np.einsum("hwio,xyhwi->xyo", W,
                    np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))
                    .transpose(0, 1, 3, 4, 2))
    np.testing.assert_allclose(patches @ Wm, ref.reshape(-1, cout), rtol=1e-4, atol=1e-4)


def test_onnx_recurrent_and_gemm_views():
    v = matrix_view("W", (2, 4 * 8, 5), source_format="onnx", uses=[("LSTM", 1, {})])
    assert v.matrix_shape == (2 * 32, 5) and v.layout == "out_in" and v.kind == "recurrent"
    rng = np.random.default_rng(3)
    W = rng.standard_normal((2, 32, 5))
    x = rng.standard_normal(5)
    # each direction's gate pre-activations W[d] @ x are rows of the stacked matrix
    np.testing.assert_allclose(v.to_matrix(W) @ x, np.concatenate([W[0] @ x, W[1] @ x]))
    assert matrix_view("B", (5, 7), source_format="onnx",
                       uses=[("Gemm", 1, {"transB": 1})]).layout == "out_in"
    assert matrix_view("B", (5, 7), source_format="onnx", uses=[("Gemm", 1, {})]).layout == "in_out"
    assert matrix_view("B", (32,), source_format="onnx", uses=[("LSTM", 3, {})]) is None


def test_gpt2_conv1d_is_in_out_and_non_matrices_have_no_view():
    v = matrix_view("h.0.attn.c_attn.weight", (64, 192), source_format="safetensors")
    assert v.layout == "in_out" and v.kind == "fused_qkv"
    assert matrix_view("fc.weight", (10, 64), source_format="safetensors").layout == "out_in"
    assert matrix_view("b", (64,)) is None and matrix_view("s", ()) is None
    assert matrix_view("x", (1, 1, 64)) is None  # fewer than two dimensions above 1
