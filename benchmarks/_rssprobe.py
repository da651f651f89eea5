"""Where a process's resident peak happens: a development probe for the memory benchmarks.

``install()`` hooks Python's profiler (``sys.setprofile`` in the calling thread,
``threading.setprofile`` for threads started later) and reads the process's high-water mark
(``VmHWM``) at every call and return, Python's and C functions' alike. Each time the mark has
risen by ``step`` bytes over the last record, it records the stacks of every thread and the
resident set's parts (anonymous memory, file pages): the last record is where the peak was
reached, to the call. ``report()`` gives the records as text; ``write(folder)`` writes them to
``folder/<pid>.txt``. Slow (a read of /proc/self/status per call): for diagnosis, never for
timing. Linux only.

    WP_SCALE_PROBE=/tmp/probe WP_SCALE_PARAMS=1.1e8 python benchmarks/run.py scale
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any

_STATE: dict[str, Any] = {}


def _read(fd: int) -> dict[str, int]:
    txt = os.pread(fd, 8192, 0)
    out = {}
    for key in (b"VmHWM:", b"VmRSS:", b"RssAnon:", b"RssFile:"):
        i = txt.find(key)
        if i >= 0:
            out[key[:-1].decode()] = int(txt[i + len(key):txt.index(b"kB", i)]) * 1024
    return out


def _stacks(depth: int) -> list[str]:
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        frames = traceback.extract_stack(frame)[-depth:]
        out.append(f"  thread {names.get(ident, ident)}:")
        out.extend(f"    {os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames)
    return out


def _held() -> str:
    """A Dask worker's stored task results (their keys and bytes), if this is one."""
    try:
        from distributed import Worker
        from dask.sizeof import sizeof
    except ImportError:
        return ""
    out = []
    for w in list(Worker._instances):
        data = getattr(w, "data", {})
        out.extend(f"{str(k)[-28:]}={sizeof(v) / 2**20:.1f}MiB" for k, v in list(data.items()))
    return ("  worker holds: " + " ".join(out)) if out else ""


def _traced() -> list[str]:
    """With tracemalloc on (``trace=True``): the live allocations (NumPy's arrays, Python's
    objects) by the line that made them, largest first."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    cur = tracemalloc.get_traced_memory()[0]
    stats = tracemalloc.take_snapshot().statistics("traceback")[:8]
    out = [f"  traced now {cur / 2**20:.1f} MiB; largest:"]
    for st in stats:
        fr = [f"{os.path.basename(f.filename)}:{f.lineno}" for f in st.traceback][-4:]
        out.append(f"    {st.size / 2**20:.1f} MiB in {st.count} blocks at {' < '.join(reversed(fr))}")
    return out


def install(step: int = 1 << 20, depth: int = 12, trace: bool = False) -> bool:
    """Start recording in this thread and in threads started from now on (``trace``: with
    tracemalloc's live allocations at each record, 4 frames deep; slower still)."""
    if trace:
        import tracemalloc

        if not tracemalloc.is_tracing():
            tracemalloc.start(4)
    if "fd" not in _STATE:
        _STATE.update(fd=os.open("/proc/self/status", os.O_RDONLY), records=[], t0=time.time(),
                      last=0, step=step, depth=depth, lock=threading.Lock())
        _STATE["last"] = _read(_STATE["fd"])["VmHWM"]

    def hook(frame: Any, event: str, arg: Any) -> None:
        st = _STATE
        hwm = _read(st["fd"])
        if hwm["VmHWM"] < st["last"] + st["step"]:
            return
        with st["lock"]:
            st["last"] = hwm["VmHWM"]
            what = getattr(arg, "__qualname__", getattr(arg, "__name__", "")) if event.startswith("c_") else ""
            st["records"].append((time.time() - st["t0"], hwm, threading.current_thread().name,
                                  f"{event} {what} at {os.path.basename(frame.f_code.co_filename)}:"
                                  f"{frame.f_lineno} {frame.f_code.co_name}",
                                  [_held()] + _traced() + _stacks(st["depth"])))

    sys.setprofile(hook)
    threading.setprofile(hook)
    return True


def reset_records() -> None:
    """Forget the records so far (the high-water mark is reset by the caller)."""
    if "fd" in _STATE:
        _STATE["records"].clear()
        _STATE["last"] = _read(_STATE["fd"])["VmHWM"]


def report(last: int = 6) -> str:
    """The last ``last`` records (the last one: where the peak was reached)."""
    lines = [f"pid {os.getpid()}: {len(_STATE.get('records', []))} records"]
    for t, hwm, thread, where, stacks in _STATE.get("records", [])[-last:]:
        lines.append(f"t={t:.2f}s VmHWM {hwm['VmHWM'] / 2**20:.1f} MiB (RSS {hwm['VmRSS'] / 2**20:.1f}, "
                     f"anon {hwm.get('RssAnon', 0) / 2**20:.1f}, file {hwm.get('RssFile', 0) / 2**20:.1f})"
                     f" in thread {thread}: {where}")
        lines.extend(stacks)
    return "\n".join(lines)


def write(folder: str, last: int = 6) -> str:
    """:func:`report` into ``folder/<pid>.txt``; returns the path."""
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{os.getpid()}.txt")
    with open(path, "w") as f:
        f.write(report(last) + "\n")
    return path
