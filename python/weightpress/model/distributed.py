"""Layers as Dask tasks: curves and builds of :func:`~weightpress.model.compress.compress_model`
spread over a ``distributed`` cluster.

A task gets the *path* of the model (and of the calibration file) and one layer's plan, opens
the file itself (kept open per worker process), builds the layer and sends back its stored
arrays (:class:`~weightpress.model.container.Staged`) or its curve. The client keeps a window
of tasks in flight and hands results to the container writer in plan order, so the output is
byte-identical for any number of workers. A task that raises is retried (``RETRIES``); a task
on a worker that dies is rescheduled by the scheduler. ``dask`` and ``distributed`` are
optional (``pip install weightpress[dask]``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .._optional import require
from ..compression.calibration import CalibrationSet

__all__ = ["map_layers", "map_curves", "local_client", "connect", "close", "ordered", "worker_open",
           "worker_stats", "RETRIES"]

RETRIES = 2  # a layer whose task raises is run again this many times before the run fails

_OPEN: dict[Any, Any] = {}  # per worker process: (path, size, mtime) -> opened source / set


def local_client(n_workers: int) -> Any:
    """A ``distributed.Client`` on a new LocalCluster of ``n_workers`` processes with one
    thread each (its dashboard, if bokeh is installed, on a free port). Close it (``with``) to stop the cluster."""
    distributed = require("distributed", "--workers / client= (Dask)")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {n_workers!r}")
    dask = require("dask", "--workers / client= (Dask)")
    # Dask's statistical profiler samples each worker's stacks every 10 ms and keeps a second
    # of them for each of its last 1000 seconds, growing through a long run; a compression
    # run needs neither. A cluster started here runs without it (a user's own cluster keeps
    # its settings).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                           processes=True, dashboard_address=":0")
    # results straight from the workers (on this machine, always reachable): through the
    # scheduler, which a LocalCluster runs in this process, each layer's bytes were held here
    # twice, in the scheduler's copy and the client's (issue 13: the client's peak)
    client = distributed.Client(cluster, direct_to_workers=True)
    client._wp_cluster = cluster  # closed with the client (see close())
    return client


def connect(scheduler: str) -> Any:
    """A client of an existing cluster: ``tcp://HOST:PORT`` or a scheduler file (JSON)."""
    distributed = require("distributed", "--scheduler (Dask)")
    if os.path.isfile(scheduler):
        return distributed.Client(scheduler_file=scheduler)
    if "://" not in scheduler:
        raise ValueError(f"scheduler: expected tcp://HOST:PORT or a scheduler file, got {scheduler!r}")
    return distributed.Client(scheduler)


def close(client: Any) -> None:
    """Close a client (and the LocalCluster :func:`local_client` started for it)."""
    cluster = getattr(client, "_wp_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def worker_open(path: str, opener: Callable[[str], Any]) -> Any:
    """``opener(path)``, once per worker process (opened again when the file changes)."""
    k = ("model",) + _key(path)
    if k not in _OPEN:
        for old in [o for o in _OPEN if o[0] == "model" and o[1] == k[1]]:
            src = _OPEN.pop(old)
            getattr(src, "close", lambda: None)()
        _OPEN[k] = opener(path)
    return _OPEN[k]


def worker_stats(cal: Any, name: str) -> Any:
    """Calibration of one layer in a task: the statistics it was sent, or read here from the
    calibration file whose path it was sent."""
    if cal is None or not isinstance(cal, str):
        return cal
    k = ("calibration",) + _key(cal)
    if k not in _OPEN:
        _OPEN[k] = CalibrationSet(cal)
    cs = _OPEN[k]
    return cs[name] if name in cs else None


def _path(source: Any) -> str:
    path = getattr(source, "path", None)
    if not path or not os.path.exists(path):
        raise ValueError("client: the model must be a file the workers can open (open it with "
                         "open_source(path)); in-memory sources run without a client")
    return os.path.abspath(os.fspath(path))


def _cal_ref(cal: Any, name: str) -> Any:
    """What a task gets for calibration: the file's path (the worker reads its layer), or the
    layer's statistics computed here for in-memory calibration."""
    if cal is None or name not in cal:
        return None
    path = getattr(cal, "path", None)
    if path:
        return os.path.abspath(path)
    return cal[name]


def _n_workers(client: Any) -> int:
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # noqa: BLE001 - a guess is enough for the window size
        return 1


def ordered(client: Any, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]],
            names: Sequence[str], progress: Callable[[int, int, str], None] | None = None,
            what: str = "", window: int | None = None) -> Iterator[Any]:
    """Run ``fn(*args[i])`` as tasks and yield the results in order ``i = 0, 1, ...``.

    At most ``window`` tasks (default: twice the workers, plus two) are in flight or finished
    and not yet taken; a finished task's result is fetched as soon as it is done (held here,
    not on its worker, until its turn). ``progress(done, n, name)`` is called as tasks
    finish, in any order.
    """
    distributed = require("distributed", "client= (Dask)")
    n = len(args)
    window = window or 2 * _n_workers(client) + 2
    run = uuid.uuid4().hex[:12]
    futs: dict[int, Any] = {}
    got: dict[int, tuple[bool, Any]] = {}  # finished ahead of their turn: (ok, result or error)
    submitted = yielded = 0
    try:
        while yielded < n:
            while submitted < n and submitted - yielded < window:
                futs[submitted] = client.submit(fn, *args[submitted], pure=False, retries=RETRIES,
                                                key=f"weightpress-{fn.__name__}-{run}-{submitted}")
                submitted += 1
            if yielded not in got:
                distributed.wait(list(futs.values()), return_when="FIRST_COMPLETED")
            # every finished result is fetched now, not at its turn: a worker that finished
            # a layer ahead of an earlier one would hold it (a quarter of a 64 MiB layer at
            # --ratio 4) beside its next build; it waits here instead, for the writer (the
            # workers' peaks are then their builds' alone)
            new = sorted(i for i, f in futs.items() if f.done())
            if new and progress is not None:
                progress(len(got) + yielded + len(new), n, f"{what}{names[new[-1]]}")
            for i in new:
                f = futs.pop(i)
                try:
                    got[i] = (True, f.result())
                except Exception as e:  # noqa: BLE001 - raised at its turn, after its retries
                    got[i] = (False, e)
                f.release()
                del f
            while yielded in got:
                ok, res = got.pop(yielded)
                yielded += 1
                if not ok:
                    raise res
                yield res
                del res  # (not held here while the next result is fetched)
    finally:
        for f in futs.values():
            f.cancel()


def map_layers(client: Any, task: Callable[..., Any], source: Any, specs: Sequence[tuple],
               target: Any, cal: Any, names: Sequence[str], n_total: int, n_done: int,
               progress: Callable[[int, int, str], None] | None = None) -> Iterator[Any]:
    """``task(path, *spec, target, calibration)`` for every spec ``(layer, budget, view,
    layout)`` on the cluster; the staged layers in that order. Progress counts ``n_done``
    layers (already in a journal) plus the tasks finished, out of ``n_total``."""
    path = _path(source)
    args = [(path, *spec, target, _cal_ref(cal, spec[0].decision.name)
             if spec[0].decision.action != "skip" else None) for spec in specs]

    def prog(k: int, n: int, name: str) -> None:
        if progress is not None:
            progress(n_done + k, n_total, name)
    return ordered(client, task, args, names, prog)


def map_curves(client: Any, task: Callable[..., Any], source: Any, work: Sequence[Any],
               orig: Mapping[str, int],
               layout: str, cal: Any, options: Mapping[str, Any], vdt: Any, want_bf16: bool,
               progress: Callable[[int, int, str], None] | None = None) -> list[Any]:
    """Every layer's curve measured on the cluster, in ``work``'s order."""
    path = _path(source)
    args = [(path, d, orig[d.name], layout, _cal_ref(cal, d.name), dict(options), vdt, want_bf16)
            for d in work]
    return list(ordered(client, task, args, [d.name for d in work], progress,
                        what="measuring "))

