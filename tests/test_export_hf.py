"""weightpress.model.export_hf: compressed-tensors checkpoints that transformers loads."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tr = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from helpers import rtn_quant  # noqa: E402
from weightpress.cli import main  # noqa: E402
from weightpress.io import open_model  # noqa: E402
from weightpress.model.container import ContainerWriter  # noqa: E402
from weightpress.model.export_hf import export_compressed_tensors  # noqa: E402


def test_llama_loads_with_from_pretrained(tmp_path):
    cfg = tr.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=100,
                         max_position_embeddings=32)
    torch.manual_seed(0)
    orig = tr.LlamaForCausalLM(cfg).eval()
    orig.save_pretrained(tmp_path / "orig")
    src = open_model(str(tmp_path / "orig" / "model.safetensors"))
    # every precision the formats take: int8 per channel, int4 groups, symmetric or not, 3 bits
    schemes = [(8, 0, True), (4, 32, True), (4, 32, False), (3, 16, True), (8, 0, False)]
    decoded, i = {}, 0
    with ContainerWriter(tmp_path / "m.wpz") as w:
        for name in src.info():
            W = np.asarray(src[name])
            if W.ndim == 2 and name.endswith("proj.weight"):
                bits, group, sym = schemes[i % len(schemes)]
                i += 1
                q, decoded[name] = rtn_quant(W, bits, group, sym, layout="out_in")
                w.add(name, q, original=W)
            else:
                w.add(name, W)
                decoded[name] = np.array(W)
    rows = export_compressed_tensors(tmp_path / "m.wpz", tmp_path / "ct", tmp_path / "orig")
    assert sum(r.form == "quant" and r.how != "dense" for r in rows) == 7
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mixed-precision"
    assert {g["format"] for g in qc["config_groups"].values()} == {"pack-quantized", "int-quantized"}
    ref = tr.LlamaForCausalLM(cfg).eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in decoded.items()}, strict=True)
    model = tr.AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    ids = torch.tensor([[1, 5, 7, 9, 2, 44]])
    with torch.no_grad():
        got, want, before = model(ids).logits, ref(ids).logits, orig(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, want, atol=1e-4)  # quantization did change the logits
    st = (tmp_path / "ct" / "model.safetensors").stat().st_size
    assert st < 0.6 * (tmp_path / "orig" / "model.safetensors").stat().st_size + 100_000


def test_cli_and_bad_input(tmp_path, capsys):
    cfg = tr.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50)
    torch.manual_seed(1)
    tr.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "orig")
    src = open_model(str(tmp_path / "orig" / "model.safetensors"))
    with ContainerWriter(tmp_path / "m.wpz") as w:
        for name in src.info():
            W = np.asarray(src[name])
            if name.endswith("up_proj.weight"):
                w.add(name, rtn_quant(W, 4, 16, True)[0], original=W)
            elif name.endswith("down_proj.weight"):   # in_out codes: no nn.Linear layout
                w.add(name, rtn_quant(W, 4, 16, True, layout="in_out")[0], original=W, layout="in_out")
            else:
                w.add(name, W)
    assert main(["export", str(tmp_path / "m.wpz"), "-o", str(tmp_path / "ct"),
                 "--like", str(tmp_path / "orig")]) == 0
    out = capsys.readouterr().out
    assert "pack-quantized int4 group 16" in out and "[in, out] layout" in out
    model = tr.AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 50)
    with pytest.raises(ValueError, match="config.json"):
        export_compressed_tensors(tmp_path / "m.wpz", tmp_path / "x", tmp_path / "ct" / "config.json")
    with pytest.raises(ValueError, match="differ"):
        export_compressed_tensors(tmp_path / "m.wpz", tmp_path / "orig", tmp_path / "orig")
