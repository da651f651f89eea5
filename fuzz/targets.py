"""What each fuzz harness does with one input: the readers and the command line.

Each target takes the fuzzed bytes, writes them to a file of its format and drives the public
entry point over it the way a user would (open, list, load every tensor; or run the CLI). A
target returns normally or raises an *expected* error: :class:`weightpress.io.FormatError` or
another ValueError/TypeError with a message, or for the CLI an exit code of 0 or 2 (1 means
"internal error", a bug). Anything else (another exception, a crash, a hang, a memory blow-up
caught by libFuzzer's limits) is a finding.

Used by the atheris harnesses (``fuzz/fuzz_<target>.py``) and by :mod:`fuzz.run`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

EXPECTED = (ValueError, TypeError)  # FormatError is a ValueError
_MAX_LOAD = 64 << 20  # a fuzzed header may describe a huge tensor: list it, do not load it


class Scratch:
    """One private folder for the run; each input is written to the same file name."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wp-fuzz-")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def clean(self) -> None:
        for n in os.listdir(self.dir):
            p = os.path.join(self.dir, n)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)


_scratch: Scratch | None = None


def scratch() -> Scratch:
    global _scratch
    if _scratch is None:
        _scratch = Scratch()
    return _scratch


def _read_model(path: str, fmt: str | None = None) -> None:
    from weightpress.io import open_model

    with open_model(path, format=fmt) as m:
        for name, info in m.info().items():
            if info.nbytes > _MAX_LOAD:
                continue
            a = np.asarray(m[name])
            if a.shape != tuple(info.shape):
                raise AssertionError(f"{name}: loaded {a.shape}, info says {info.shape}")
            if a.size:
                a.reshape(-1)[: 1 << 16].sum()  # touch the bytes (a bad mmap would fault here)


def _reader(ext: str, fmt: str | None = None) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        s = scratch()
        path = s.write("model" + ext, data)
        try:
            _read_model(path, fmt)
        except EXPECTED:
            pass
        finally:
            s.clean()
    return target


def _container(data: bytes) -> None:
    from weightpress.model.container import Container, verify

    s = scratch()
    path = s.write("c.wpz", data)
    try:
        try:
            with Container(path) as c:
                for name, info in c.info().items():
                    if info.nbytes <= _MAX_LOAD:
                        np.asarray(c[name])
        except EXPECTED:
            pass
        try:
            verify(path)
        except EXPECTED:
            pass
    finally:
        s.clean()


_CLI_EXTS = (".safetensors", ".npz", ".pt", ".onnx", ".h5", ".wpz")


def _cli(data: bytes) -> None:
    import sys

    from weightpress.cli import main

    s = scratch()
    ext = _CLI_EXTS[data[0] % len(_CLI_EXTS)] if data else ".safetensors"
    path = s.write("in" + ext, data[1:])
    out = os.path.join(s.dir, "out.wpz")
    devnull = io.StringIO()
    try:
        for argv in (["info", path], ["compress", path, "-o", out, "--error", "0.5", "-q"],
                     ["verify", path]):
            with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
                code = main(argv)
            ok = (0, 1, 2) if argv[0] == "verify" else (0, 2)
            if argv[0] == "verify" and code == 1 and "internal error" in devnull.getvalue():
                ok = (0, 2)
            if code not in ok:
                sys.stderr.write(devnull.getvalue()[-2000:])
                raise AssertionError(f"weightpress {argv[0]} exited {code}")
            devnull.seek(0)
            devnull.truncate()
    finally:
        s.clean()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "safetensors": _reader(".safetensors", "safetensors"),
    "npz": _reader(".npz", "npz"),
    "onnx": _reader(".onnx", "onnx"),
    "pytorch": _reader(".pt", "pytorch"),
    "keras": _reader(".keras", "keras"),
    "container": _container,
    "cli": _cli,
}
