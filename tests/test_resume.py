"""The compress journal: a run killed midway (SIGKILL, nothing cleaned up) resumes with
--resume from its finished layers and writes the same bytes as an uninterrupted run; a changed
input or other settings refuse to resume."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from weightpress.cli.main import main  # noqa: E402
from weightpress.compression.methods import magnitude_prune  # noqa: E402
from weightpress.model import compress as C  # noqa: E402
from weightpress.model.container import stage_tensor  # noqa: E402
from weightpress.model.journal import Journal, journal_path  # noqa: E402

# Runs the CLI in a child that SIGKILLs itself right after the journal records its N-th layer.
KILLER = """
import os, signal, sys
from weightpress.model import journal as J
orig, n, seen = J.Journal.record, int(sys.argv[1]), []
def record(self, i, key, st):
    orig(self, i, key, st)
    seen.append(i)
    if len(seen) >= n:
        os.kill(os.getpid(), signal.SIGKILL)
J.Journal.record = record
from weightpress.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _save_model(path: str, seed: int) -> None:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(*(torch.nn.Linear(96, 96) for _ in range(8)))
    safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)


@pytest.fixture()
def model(tmp_path) -> str:
    p = str(tmp_path / "model.safetensors")
    _save_model(p, 0)
    return p


def _killed(args: list[str], after: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, WEIGHTPRESS_DEBUG="")
    r = subprocess.run([sys.executable, "-c", KILLER, str(after), *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    return r


def _layer_files(out: str) -> list[str]:
    return sorted(f for f in os.listdir(journal_path(out)) if f.startswith("layer-"))


def _count(monkeypatch, name: str) -> list[str]:
    calls: list[str] = []
    orig = getattr(C, name)

    def counting(*a, **k):
        calls.append(name)
        return orig(*a, **k)
    monkeypatch.setattr(C, name, counting)
    return calls


def test_killed_run_resumes_to_identical_bytes(model, tmp_path, monkeypatch, capsys):
    ref = str(tmp_path / "ref.wpz")
    args = ["compress", model, "--ratio", "4", "-q"]
    assert main([*args, "-o", ref]) == 0
    assert not os.path.exists(journal_path(ref))  # removed on success
    out = str(tmp_path / "out.wpz")
    _killed([*args, "-o", out], after=3)
    assert not os.path.exists(out)
    assert len(_layer_files(out)) == 3  # compressed layers only; the biases are kept as they are
    # other settings: refused, journal kept
    assert main(["compress", model, "--ratio", "5", "-q", "-o", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "different settings" in err and "target" in err
    assert len(_layer_files(out)) == 3
    calls = _count(monkeypatch, "_build_layer")
    assert main([*args, "-o", out, "--resume"]) == 0
    assert len(calls) == 8 - 3  # the finished layers were not built again
    assert _sha(out) == _sha(ref)
    assert not os.path.exists(journal_path(out))


def test_changed_input_refuses_to_resume(model, tmp_path, capsys):
    out = str(tmp_path / "out.wpz")
    args = ["compress", model, "--ratio", "3", "--method", "prune", "-q", "-o", out]
    _killed(args, after=2)
    _save_model(model, 1)  # same tensors and sizes, other values
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different input" in err and "model.safetensors" in err
    assert os.path.isdir(journal_path(out))
    assert main(args) == 0  # without --resume: starts again, and cleans up
    assert not os.path.exists(journal_path(out))
    ref = str(tmp_path / "ref.wpz")
    assert main([*args[:-1], ref]) == 0
    assert _sha(out) == _sha(ref)


def test_allocate_resume_reuses_the_budgets(model, tmp_path, monkeypatch):
    ref = str(tmp_path / "ref.wpz")
    args = ["compress", model, "--ratio", "5", "--allocate", "-q"]
    assert main([*args, "-o", ref]) == 0
    out = str(tmp_path / "out.wpz")
    _killed([*args, "-o", out], after=4)
    curves = _count(monkeypatch, "layer_curve")
    assert main([*args, "-o", out, "--resume"]) == 0
    assert curves == []  # budgets (and curves) came from the journal
    assert _sha(out) == _sha(ref)


def test_calibrated_first_try_with_steps_up_resumes_to_identical_bytes(tmp_path, monkeypatch):
    """A calibrated ratio search killed in its first try (which records each quantized layer
    and its step up): the resumed run builds only the missing layers, takes the steps up of
    the recorded ones from the journal, and writes the uninterrupted run's bytes."""
    from helpers import twelve_layer_model

    mp, cp = twelve_layer_model(tmp_path)
    args = ["compress", mp, "--ratio", "4", "--method", "quant", "--calibration", cp,
            "--min-size", "16", "-q"]
    ref = str(tmp_path / "ref.wpz")
    assert main([*args, "-o", ref]) == 0
    out = str(tmp_path / "out.wpz")
    _killed([*args, "-o", out], after=7)
    assert len(_layer_files(out)) == 7  # layers and their steps up
    calls = _count(monkeypatch, "_build_layer")
    assert main([*args, "-o", out, "--resume"]) == 0
    assert 0 < len(calls) < 12
    assert _sha(out) == _sha(ref)


def test_resume_without_journal_runs_afresh(model, tmp_path):
    out = str(tmp_path / "out.wpz")
    assert main(["compress", model, "--ratio", "4", "-q", "-o", out, "--resume"]) == 0
    assert os.path.isfile(out) and not os.path.exists(journal_path(out))


def test_journal_keeps_a_layer_exactly(tmp_path, model):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((64, 80)).astype(np.float32)
    with C.open_source(model) as src:
        jr = Journal.start(str(tmp_path / "o.wpz"), src, settings={"x": 1})
    staged = [stage_tensor("a", magnitude_prune(W, sparsity=0.7, storage="BF16"), original=W,
                           method="prune"),
              stage_tensor("b", magnitude_prune(W.astype(np.float16), sparsity=0.5), original=W),
              stage_tensor("c", np.arange(12, dtype=np.float16).reshape(3, 4))]
    for i, st in enumerate(staged):
        jr.record(i, f"{i:016x}", st)
    again = Journal.start(str(tmp_path / "o.wpz"), src, settings={"x": 1}, resume=True)
    assert again.done == {(i, f"{i:016x}") for i in range(3)}
    for i, st in enumerate(staged):
        assert again.has(i, f"{i:016x}") and not again.has(i, f"{i + 1:016x}")
        back = again.load(i, f"{i:016x}")
        assert (back.name, back.entry, back.dtypes) == (st.name, st.entry, st.dtypes)
        assert list(back.parts) == list(st.parts)
        for r in st.parts:
            assert back.parts[r].dtype == st.parts[r].dtype
            np.testing.assert_array_equal(back.parts[r], st.parts[r])
    assert staged[0].dtypes  # BF16 storage is remembered, values kept exactly as float32
    with pytest.raises(ValueError, match="different settings"):
        Journal.start(str(tmp_path / "o.wpz"), src, settings={"x": 2}, resume=True)
    again.remove()
    assert not os.path.exists(journal_path(str(tmp_path / "o.wpz")))


def test_foreign_directory_is_not_replaced(model, tmp_path, capsys):
    out = str(tmp_path / "out.wpz")
    os.mkdir(journal_path(out))
    (tmp_path / "out.wpz.journal" / "mine.txt").write_text("keep me")
    assert main(["compress", model, "--ratio", "4", "-q", "-o", out]) == 2
    assert "not a weightpress journal" in capsys.readouterr().err
    assert (tmp_path / "out.wpz.journal" / "mine.txt").read_text() == "keep me"
