"""The README's Python code runs as written (its API tour, on a small model made here)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from weightpress.io.safetensors import write_safetensors

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_api_tour_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    write_safetensors("model.safetensors", {
        "fc1.weight": rng.standard_normal((256, 128)).astype(np.float32),
        "fc1.bias": np.zeros(256, np.float32)})
    blocks = _python_blocks("API tour")
    assert blocks, "the README lost its API tour"
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - the README's own code
    assert ns["report"].ratio >= 8 * 0.97
    assert ns["layer"].shape == (256, 128)
    assert "fc1.weight" in capsys.readouterr().out
