"""compress_model on a Dask cluster: the same bytes as in one process, retried layers, the CLI's
--workers / --scheduler. One 2-process LocalCluster is shared by the whole module."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import cloudpickle  # noqa: E402  (distributed depends on it)

from weightpress.cli.main import main  # noqa: E402
from weightpress.model import compress as C  # noqa: E402
from weightpress.model.compress import compress_model, open_source  # noqa: E402
from weightpress.model.distributed import close, local_client, ordered  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


def _sha(path: os.PathLike[str] | str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class _Block(torch.nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.up, self.down = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)
        self.norm = torch.nn.LayerNorm(d)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, list[str]]:
    """A 3-block transformer-like model saved by safetensors.torch, and calibration inputs of
    every linear layer captured with forward hooks on torch's own forward pass."""
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    net = torch.nn.Sequential(*(_Block(64, 128) for _ in range(3)))
    acts: dict[str, list[np.ndarray]] = {}
    names = {m: n for n, m in net.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, inp, out: acts.setdefault(
        names[mod] + ".weight", []).append(inp[0].detach().numpy().reshape(-1, inp[0].shape[-1])))
        for m in net.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.randn(128, 64) @ torch.randn(64, 64)
    with torch.no_grad():
        for blk in net:
            h = blk.o(blk.q(x) * blk.k(x) + blk.v(x))
            x = blk.norm(x + blk.down(torch.relu(blk.up(h))))
    for h in hooks:
        h.remove()
    mp, cp = str(d / "model.safetensors"), str(d / "calib.safetensors")
    safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, mp)
    safetensors_torch.save_file({k: torch.from_numpy(np.concatenate(v)) for k, v in acts.items()}, cp)
    return mp, cp, sorted(acts)


@pytest.fixture(scope="module")
def client():
    c = local_client(2)
    yield c
    close(c)


def _compress(path: str, out: str, **kw: object) -> str:
    with open_source(path) as src:
        compress_model(src, out, **kw)  # type: ignore[arg-type]
    return _sha(out)


CASES = {
    "ratio": dict(ratio=4),
    "error-prune": dict(error=0.3, method="prune"),
    "calibrated": dict(ratio=3, calibration=True),
    "allocate-calibrated": dict(ratio=3, scope="allocate", calibration=True),
    "allocate-bf16": dict(ratio=5, scope="allocate", value_dtype="bfloat16"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cluster_output_is_byte_identical(model, client, tmp_path, case):
    mp, cp, _ = model
    kw = dict(CASES[case])
    if kw.pop("calibration", False):
        kw["calibration"] = cp
    local = _compress(mp, str(tmp_path / "local.wpz"), **kw)
    calls: list[tuple[int, int, str]] = []
    remote = _compress(mp, str(tmp_path / "dask.wpz"), client=client,
                       progress=lambda i, n, what: calls.append((i, n, what)), **kw)
    assert remote == local
    with open_source(str(tmp_path / "dask.wpz")) as c:
        entries = c.entries
    assert sum(e["form"] != "dense" for e in entries.values()) >= 12  # work really was done
    n = len(entries)
    built = [c for c in calls if not c[2].startswith("measuring") and c[2] != "writing"]
    # progress counted every layer as done (once per try of the ratio search)
    assert built[-1][:2] == (n, n) and all(0 < i <= n for i, _, _ in built)


def test_first_try_steps_up_come_back_from_the_workers(client, tmp_path, monkeypatch):
    """A calibrated ratio search whose first try's steps up reach the target: the workers
    send each layer's step up back with it, and the file is the one-process file."""
    from helpers import twelve_layer_model

    mp, cp = twelve_layer_model(tmp_path)
    kw = dict(ratio=4, method="quant", calibration=cp, min_size=16)
    local = _compress(mp, str(tmp_path / "local.wpz"), **kw)
    tries = []
    real = C.execute
    monkeypatch.setattr(C, "execute", lambda *a, **k: tries.append(k.get("alt")) or real(*a, **k))
    assert _compress(mp, str(tmp_path / "dask.wpz"), client=client, **kw) == local
    assert len(tries) == 2 and tries[0] is None and tries[1]


def test_in_memory_calibration_travels_with_the_task(model, client, tmp_path):
    mp, cp, names = model
    with open_source(cp) as cs:
        cal = {n: np.array(cs[n]) for n in names}
    local = _compress(mp, str(tmp_path / "a.wpz"), ratio=3, calibration=cal)
    assert _compress(mp, str(tmp_path / "b.wpz"), ratio=3, calibration=cal, client=client) == local


def _arm(marker: str, victim: str, how: str) -> None:
    """On a worker: make the build of ``victim`` fail once (raise, or kill the process)."""
    from weightpress.model import compress as wc
    orig = wc.build_task
    if getattr(orig, "_armed", False):
        orig = orig._orig

    def build_task(path, ly, *a):
        if ly.decision.name == victim and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            if how == "kill":
                os._exit(3)
            raise RuntimeError("injected failure")
        return orig(path, ly, *a)
    build_task._armed, build_task._orig = True, orig
    wc.build_task = build_task


def _disarm() -> None:
    from weightpress.model import compress as wc
    if getattr(wc.build_task, "_armed", False):
        wc.build_task = wc.build_task._orig


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_failed_layer_is_retried(model, client, tmp_path, how):
    mp, _, names = model
    local = _compress(mp, str(tmp_path / "local.wpz"), ratio=4)
    marker = str(tmp_path / "failed-once")
    client.run(_arm, marker, names[4], how)
    try:
        remote = _compress(mp, str(tmp_path / "dask.wpz"), ratio=4, client=client)
    finally:
        client.run(_disarm)
    assert os.path.exists(marker)  # the failure did happen on a worker
    assert remote == local
    client.wait_for_workers(2, timeout=60)  # the killed worker's nanny brought it back


def test_task_error_is_raised_after_its_retries(client):
    with pytest.raises(ZeroDivisionError):
        list(ordered(client, _divide, [(1, 1), (1, 0), (2, 1)], ["a", "b", "c"]))
    assert list(ordered(client, _divide, [(6, 3), (1, 1)], ["a", "b"], window=1)) == [2.0, 1.0]


def _divide(a: float, b: float) -> float:
    return a / b


def test_cli_workers_and_scheduler(model, client, tmp_path):
    mp, _, _ = model
    local = str(tmp_path / "local.wpz")
    assert main(["compress", mp, "-o", local, "--ratio", "4", "-q"]) == 0
    out = str(tmp_path / "w.wpz")
    assert main(["compress", mp, "-o", out, "--ratio", "4", "-q", "--workers", "2"]) == 0
    assert _sha(out) == _sha(local)
    out2 = str(tmp_path / "s.wpz")
    assert main(["compress", mp, "-o", out2, "--ratio", "4", "-q",
                 "--scheduler", client.scheduler.address]) == 0
    assert _sha(out2) == _sha(local)
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"address": client.scheduler.address}))
    out3 = str(tmp_path / "f.wpz")
    assert main(["compress", mp, "-o", out3, "--ratio", "4", "-q", "--scheduler", str(sched)]) == 0
    assert _sha(out3) == _sha(local)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".journal") or p.startswith(".wp-")]


def test_cli_bad_cluster_arguments(model, tmp_path, capsys):
    mp, _, _ = model
    out = str(tmp_path / "o.wpz")
    assert main(["compress", mp, "-o", out, "--ratio", "4", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["compress", mp, "-o", out, "--ratio", "4", "--scheduler", "nowhere"]) == 2
    assert "scheduler" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_client_needs_a_file(client, tmp_path):
    from weightpress.io._base import TensorInfo, TensorSource

    class Mem(TensorSource):
        format = "mem"

        def info(self):
            return {"w": TensorInfo((64, 64), np.dtype(np.float32))}

        def _load(self, name):
            return np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match="client"):
        compress_model(Mem(""), str(tmp_path / "x.wpz"), ratio=2, client=client)
    assert os.listdir(tmp_path) == []
    assert C.build_task.__module__ == "weightpress.model.compress"


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_tasks_result_carries_its_stored_bytes_once(model, tmp_path, monkeypatch, calibrated):
    # issue 13: what a worker sends back is the staged layer's stored arrays, each once and
    # out of band (pickle protocol 5, as Dask sends it), none a view holding a larger buffer
    # alive on the worker, nothing else of the build (the layer, its candidates) in it
    import pickle

    from weightpress.model import distributed as D

    seen = []

    def in_process(client, task, source, specs, target, cal, names, n_total, n_done,
                   progress=None):
        for spec in specs:
            st = task(source.path, *spec, target, D._cal_ref(cal, spec[0].decision.name))
            bufs: list[pickle.PickleBuffer] = []
            head = pickle.dumps(st, protocol=5, buffer_callback=bufs.append)
            # (a calibrated first try's small layers also carry their step up, alt_staged,
            # which the client's journal keeps for the next try)
            parts = [np.asarray(a) for x in (st, st.alt_staged) if x is not None
                     for a in x.parts.values()]
            seen.append((len(head), sum(memoryview(b).nbytes for b in bufs),
                         sum(a.nbytes for a in parts)))
            for a in parts:
                base = a
                while isinstance(base.base, np.ndarray):
                    base = base.base
                assert base.nbytes == a.nbytes, (st.name, a.shape)
            yield st

    monkeypatch.setattr(C.D, "map_layers", in_process)
    mp, cp, _ = model
    kw = {"calibration": cp} if calibrated else {}
    _compress(mp, str(tmp_path / "o.wpz"), ratio=3, client=object(), **kw)
    assert len(seen) >= 18  # the 3 blocks' 6 linear layers at least
    assert sum(oob for _, oob, _ in seen) > 100_000  # (the stored layers themselves)
    for head, oob, stored in seen:
        assert oob == stored  # every stored array out of band, once
        assert head < 8 * 1024  # the entry


def test_local_cluster_workers_run_without_the_dask_profiler(client):
    """A LocalCluster started by weightpress leaves Dask's sampling profiler off in its
    workers: it samples stacks every 10 ms and keeps up to 1000 one-second cycles of them per
    worker, and a compression run needs neither. The process calling us keeps its own
    settings."""
    import dask

    def worker_state(dask_worker):
        return (dask.config.get("distributed.worker.profile.enabled"),
                len(dask_worker.profile_history))

    states = client.run(worker_state)
    assert len(states) == 2
    assert all(enabled is False and n == 0 for enabled, n in states.values()), states
    assert dask.config.get("distributed.worker.profile.enabled") is True
