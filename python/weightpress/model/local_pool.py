"""Layers built side by side in one process: a small ordered map over Python threads.

The kernels release the GIL and give the same bits for any thread count (BLAS pinned to one
thread, weightpress's own loops split by fixed tiles), so several small layers can be built at
once, each on one thread, and written in plan order: the same container as one layer at a
time on every thread. Small layers gain most: their kernels are too short for a parallel
region to pay (fork/join, OpenBLAS's pool waking and spinning; issue 13's MiniLM-sized model
ran faster on one thread than on two).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .._threads import blas_sequential, threads

__all__ = ["ordered_map", "ahead_for", "LockedSource", "PARALLEL_LAYER_BYTES", "MAX_AHEAD",
           "AHEAD_BYTES"]

T = TypeVar("T")
R = TypeVar("R")

# Layers whose tensors are at most this large are built side by side: each in flight holds a
# few times its tensor, so a run's peak grows by a few MiB per worker; larger layers are
# built one at a time on every thread (peak memory within a few times the largest tensor,
# issue 15).
PARALLEL_LAYER_BYTES = 4 << 20


# Items that may be started ahead of the one the caller waits for, beyond one per worker, and
# the source bytes they may add up to: layers' costs differ (a 384 x 1536 layer takes ~5x a
# 384 x 384 one), and with one item ahead per worker the other worker idled behind each large
# one (MiniLM-sized calibrated --ratio 4, its layers' measured costs replayed on 2 workers:
# 6.3 s -> 4.3 s with 8 ahead). A finished item holds its result (a staged compressed layer:
# under its source bytes) until its turn.
MAX_AHEAD = 8
AHEAD_BYTES = 24 << 20


def ahead_for(largest: int) -> int:
    """Items started ahead (:func:`ordered_map`'s ``ahead``) for items of at most ``largest``
    source bytes: :data:`MAX_AHEAD`, fewer where they would exceed :data:`AHEAD_BYTES`."""
    return int(min(MAX_AHEAD, AHEAD_BYTES // max(1, int(largest))))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                ahead: int = 0, cost: Callable[[T], float] | None = None) -> Iterator[R]:
    """``fn`` of every item, yielded in the items' order, ``workers`` at a time on Python
    threads, each under ``threads(1)`` and with BLAS on one thread. At most ``workers +
    ahead`` items are in flight (running, queued or finished) beside the one the caller
    holds. An exception from ``fn`` is raised at its item's turn; items not started by then
    are dropped.

    ``cost``: an estimate of each item's time. Items of cost 0 (a layer kept as it is: little
    work, little held) do not count against ``ahead``, up to four times as many of them.
    Once every item is in flight, a free worker starts the costliest of those not started,
    not the earliest: the longest first, so no long item is started last beside an idle
    worker (MiniLM-sized calibrated ``--ratio 4``: the last block's 384 x 1536 layer ran
    alone for 0.5 s of a 4.6 s run). Before that, items start in order: the earliest is the
    one the caller waits for, and behind it no new item can enter. Which thread runs an item
    never changes what it gives."""
    def one(it: T) -> R:
        with threads(1):
            return fn(it)

    queued: list[tuple[float, int, T]] = []  # (key, plan index, item): the next to start
    futures: dict[int, Future[R]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def start_next() -> None:
        with lock:
            _, k, it = heapq.heappop(queued)
            f = futures.pop(k)
        if stop.is_set() or not f.set_running_or_notify_cancel():
            return
        try:
            f.set_result(one(it))
        except BaseException as e:  # noqa: BLE001 - raised at the item's turn
            f.set_exception(e)

    with blas_sequential(), ThreadPoolExecutor(max_workers=workers,
                                               thread_name_prefix="wp-layer") as ex:
        pending: deque[tuple[Future[R], bool]] = deque()  # (its future, counted in the window)
        counted = 0
        limit = workers + max(0, int(ahead))
        try:
            for k, it in enumerate(items):
                if cost is None:
                    pending.append((ex.submit(one, it), True))
                    counted += 1
                else:
                    c = float(cost(it))
                    f: Future[R] = Future()
                    with lock:
                        futures[k] = f
                        heapq.heappush(queued, (float(k), k, it))
                    pending.append((f, c > 0))
                    counted += c > 0
                    ex.submit(start_next)
                while counted > limit or len(pending) > 4 * (limit + 1):
                    f0, n0 = pending.popleft()
                    counted -= n0
                    yield f0.result()
            if cost is not None:  # the last item is in flight: the longest of those left first
                with lock:
                    queued[:] = [(-float(cost(it)), k, it) for _, k, it in queued]
                    heapq.heapify(queued)
            while pending:
                yield pending.popleft()[0].result()
        finally:
            stop.set()
            for f, _ in pending:
                f.cancel()


class LockedSource:
    """A tensor source read by one thread at a time (readers of zip archives and pickles share
    one file handle); every other attribute is the source's own."""

    def __init__(self, source: Any):
        self._source = source
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            return self._source[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)
