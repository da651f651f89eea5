"""Legacy (pre-1.6, non-zip) PyTorch checkpoints: torch writes them, weightpress reads them
through the allow-list unpickler, memory-mapped."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from weightpress.io import FormatError, open_model  # noqa: E402
from weightpress.io.pytorch_legacy import LegacyPyTorchSource  # noqa: E402


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    return {"w": w, "tied": w, "t": torch.randn(5, 7, generator=g).t(),
            "sl": torch.arange(20, dtype=torch.int64)[5:15:2], "bf": torch.randn(3, 2).bfloat16(),
            "h": torch.randn(4).half(), "i8": torch.tensor([-3, 4], dtype=torch.int8),
            "b": torch.tensor([True, False, True]), "s": torch.tensor(2.5, dtype=torch.float64),
            "nested": {"conv": torch.randn(4, 2, 3, 3, generator=g)}, "epoch": 3}


def test_legacy_round_trip(tmp_path):
    sd = _state()
    p = str(tmp_path / "legacy.pt")
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    with open_model(p) as src:
        assert isinstance(src, LegacyPyTorchSource) and src.format == "pytorch"
        assert src.aliases == {"tied": "w"}
        assert set(src) == {"w", "tied", "t", "sl", "bf", "h", "i8", "b", "s", "nested.conv"}
        assert src.stored_dtypes["bf"] == "BF16" and src.stored_dtypes["h"] == "F16"
        for k in src:
            v = sd["nested"]["conv"] if k == "nested.conv" else sd[k]
            want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            got = src[k]
            assert got.shape == want.shape and got.dtype == want.dtype, k
            assert np.array_equal(got, want), k
        assert not src["w"].flags.owndata and not src["w"].flags.writeable  # mapped, not copied


def test_legacy_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = str(tmp_path / "evil.pt")
    torch.save({"w": torch.ones(2), "x": Evil()}, p, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="refused global"):
        open_model(p)
    q = str(tmp_path / "plain.pt")  # a pickle that is not a checkpoint at all
    with open(q, "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)
    with pytest.raises(FormatError, match="magic number"):
        open_model(q)


def test_legacy_truncated(tmp_path):
    p = str(tmp_path / "legacy.pt")
    torch.save({"w": torch.randn(64, 64)}, p, _use_new_zipfile_serialization=False)
    with open(p, "rb") as f:
        data = f.read()
    q = str(tmp_path / "cut.pt")
    with open(q, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(FormatError, match="past the end"):
        open_model(q)
