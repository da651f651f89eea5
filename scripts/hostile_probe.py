"""Probe weightpress as a hostile or unlucky user would, and count what happens (issue 15).

    python scripts/hostile_probe.py [--quick] [--only files,pickles,kills,sigkill,disk,numeric,concurrent]

Per area it prints: inputs tried, crashes (an exit code other than 0/2, an unexpected
exception, death by signal), silent wrong results (exit 0 with a wrong answer), hangs (past a
time limit) and bytes lost (a damaged existing output, or leftover temporary files in an output
folder). Exit 1 if any count but "inputs" is non-zero.

Areas:
  files       every fuzz corpus seed (fuzz/corpus), truncated and byte-flipped, through
              info / compress / verify / decompress; a container whose data bytes were
              changed must not decompress with exit 0 to different values
  pickles     PyTorch checkpoints whose pickle calls os.system/exec/eval/subprocess/getattr:
              nothing runs (a marker file must not appear), exit 2
  kills       compress killed by SIGTERM/SIGINT/SIGHUP at several moments: an existing
              output keeps its bytes; only the announced resume journal is left
  sigkill     the same with SIGKILL, which no handler sees: the output must survive; scratch
              files present at that moment stay behind and are counted as bytes lost
  disk        a file-size limit (disk full, EFBIG) and a read-only output folder: exit 2,
              no partial output, the old output intact
  numeric     the public numpy-level functions on NaN/Inf, wrong dtypes/ndim/shapes,
              negative or huge parameters: ValueError/TypeError only
  concurrent  compress_model and the kernels from several threads at once: results
              identical to a serial run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz", "corpus")
HANG_S = 60


class Tally:
    def __init__(self, area: str) -> None:
        self.area, self.inputs, self.crashes, self.wrong, self.hangs, self.lost = area, 0, 0, 0, 0, 0
        self.notes: list[str] = []

    def bad(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + (1 if kind != "lost" else 0))
        if len(self.notes) < 12:
            self.notes.append(f"{kind}: {what}")

    def row(self) -> str:
        return (f"{self.area:11s} {self.inputs:7d} {self.crashes:7d} {self.wrong:7d} "
                f"{self.hangs:6d} {self.lost:10d}")


def _h(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so no handler in the CLI can take it for an
    I/O error (TimeoutError is an OSError)."""


def _cli(argv: list[str], timeout: float = HANG_S) -> tuple[int | None, str]:
    """Run the CLI in-process (fast) with an alarm for hangs: (exit code or None on hang, text)."""
    from weightpress.cli import main

    buf = io.StringIO()

    def _alarm(*_):
        raise _Hang

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout))
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(argv)
    except _Hang:
        return None, buf.getvalue()
    except BaseException as e:  # noqa: BLE001 - an escaping exception is a finding
        return -1, f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, buf.getvalue()


def _model(path: str, n: int = 6, size: tuple[int, int] = (96, 64), seed: int = 0) -> None:
    from weightpress.io.safetensors import write_safetensors

    rng = np.random.default_rng(seed)
    write_safetensors(path, {f"l{i}.weight": rng.standard_normal(size).astype(np.float32)
                             for i in range(n)} | {"l0.bias": np.zeros(size[0], np.float32)})


def _mutations(data: bytes, quick: bool) -> list[bytes]:
    out = [data[:k] for k in sorted({0, 7, 9, len(data) // 4, len(data) // 2, len(data) - 1})]
    rng = np.random.default_rng(len(data))
    for _ in range(3 if quick else 12):
        b = bytearray(data)
        for i in rng.integers(0, max(1, len(b)), size=int(rng.integers(1, 5))):
            if b:
                b[int(i)] = int(rng.integers(0, 256))
        out.append(bytes(b))
    return out


def probe_files(quick: bool) -> Tally:
    t = Tally("files")
    ext = {"safetensors": ".safetensors", "npz": ".npz", "onnx": ".onnx", "pytorch": ".pt",
           "keras": ".keras", "container": ".wpz"}
    with tempfile.TemporaryDirectory() as d:
        for target, e in ext.items():
            folder = os.path.join(FUZZ, target)
            for seed in sorted(os.listdir(folder)):
                with open(os.path.join(folder, seed), "rb") as f:
                    data = f.read()
                for k, m in enumerate(_mutations(data, quick)):
                    p = os.path.join(d, f"in{e}")
                    with open(p, "wb") as f:
                        f.write(m)
                    for argv in (["info", p], ["verify", p],
                                 ["compress", p, "-o", os.path.join(d, "o.wpz"), "--error", "0.3", "-q"],
                                 ["decompress", p, "-o", os.path.join(d, "o.safetensors")]):
                        t.inputs += 1
                        code, text = _cli(argv)
                        ok = (0, 1, 2) if argv[0] == "verify" else (0, 2)
                        if code is None:
                            t.bad("hangs", f"{argv[0]} {target}/{seed}#{k}")
                        elif code not in ok or "internal error" in text:
                            t.bad("crashes", f"{argv[0]} {target}/{seed}#{k}: {code} {text[-200:]!r}")
                    for f in os.listdir(d):
                        if f.startswith(".wp-"):
                            t.bad("lost", f"temp file {f} left")
                            t.lost += os.path.getsize(os.path.join(d, f))
                            os.unlink(os.path.join(d, f))
        # silent corruption: change data bytes of a good container; decompress must refuse
        # (checksums) or give back exactly what the good one gives
        m, c = os.path.join(d, "m.safetensors"), os.path.join(d, "c.wpz")
        _model(m)
        assert _cli(["compress", m, "-o", c, "--error", "0.2", "-q"])[0] == 0
        ref = os.path.join(d, "ref.safetensors")
        assert _cli(["decompress", c, "-o", ref])[0] == 0
        from weightpress.io import open_model

        with open(c, "rb") as f:
            good = f.read()
        hlen = int.from_bytes(good[:8], "little") + 8
        rng = np.random.default_rng(1)
        for k in range(20 if quick else 100):
            b = bytearray(good)
            i = int(rng.integers(hlen, len(b)))
            b[i] ^= int(rng.integers(1, 256))
            bad_c, out = os.path.join(d, "bad.wpz"), os.path.join(d, "bad.safetensors")
            with open(bad_c, "wb") as f:
                f.write(b)
            t.inputs += 1
            code, text = _cli(["decompress", bad_c, "-o", out])
            if code == 0:
                with open_model(ref) as r, open_model(out) as o:
                    if any(not np.array_equal(np.asarray(r[n]), np.asarray(o[n])) for n in r):
                        t.bad("wrong", f"byte {i} changed: decompress exit 0 with different values")
            elif code != 2:
                t.bad("crashes", f"decompress of corrupted byte {i}: {code} {text[-200:]!r}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
    return t


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def probe_pickles(quick: bool) -> Tally:
    import builtins
    import subprocess as sp_mod

    t = Tally("pickles")
    with tempfile.TemporaryDirectory() as d:
        mark = os.path.join(d, "PWNED")
        payloads = [(os.system, f"touch {mark}"), (builtins.exec, f"open({mark!r}, 'w').close()"),
                    (builtins.eval, f"open({mark!r}, 'w')"), (sp_mod.call, ["touch", mark]),
                    (os.mkdir, mark), (builtins.__import__, "antigravity")]
        for j, (fn, arg) in enumerate(payloads):
            for wrap in ("plain", "dict", "nested"):
                obj = _Evil(fn, arg)
                obj = {"w": obj} if wrap == "dict" else ({"a": [{"b": obj}]} if wrap == "nested" else obj)
                raw = pickle.dumps(obj, protocol=2)
                for kind in ("zip", "legacy"):
                    p = os.path.join(d, f"evil{j}{wrap}{kind}.pt")
                    if kind == "zip":
                        with zipfile.ZipFile(p, "w") as z:
                            z.writestr("archive/data.pkl", raw)
                            z.writestr("archive/version", "3\n")
                    else:
                        with open(p, "wb") as f:
                            f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                                    + pickle.dumps({}, protocol=2) + raw)
                    for argv in (["info", p], ["compress", p, "-o", os.path.join(d, "o.wpz"), "-q", "--error", "0.3"]):
                        t.inputs += 1
                        code, text = _cli(argv)
                        if os.path.exists(mark):
                            t.bad("wrong", f"{fn.__name__} ran from {kind}/{wrap} via {argv[0]}")
                            with contextlib.suppress(OSError):
                                os.unlink(mark) if os.path.isfile(mark) else os.rmdir(mark)
                        if code is None:
                            t.bad("hangs", f"{argv[0]} {p}")
                        elif code != 2:
                            t.bad("crashes", f"{argv[0]} {kind}/{wrap} {fn.__name__}: exit {code} {text[-160:]!r}")
    return t


def _spawn(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "weightpress", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)


def probe_kills(quick: bool, sigs: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
                area: str = "kills") -> Tally:
    """Handled signals. SIGKILL (no handler runs) is its own row: see probe_sigkill."""
    t = Tally(area)
    delays = [0.5, 1.5, 3.0] if quick else [0.3, 0.8, 1.5, 2.5, 4.0, 6.0]
    with tempfile.TemporaryDirectory() as d:
        m = os.path.join(d, "m.safetensors")
        _model(m, n=30, size=(384, 384))
        outdir = os.path.join(d, "out")
        os.mkdir(outdir)
        out = os.path.join(outdir, "m.wpz")
        assert _cli(["compress", m, "-o", out, "--method", "prune", "--ratio", "2", "-q"])[0] == 0
        before = _h(out)
        # what the killed command writes when it completes (the same bytes every time): a kill
        # that lands after its atomic replace, before the process exits, leaves this complete
        # new output, not a damaged one
        done = os.path.join(d, "done.wpz")
        job = ["--method", "lowrank", "--error", "0.01", "-q"]
        assert _cli(["compress", m, "-o", done] + job)[0] == 0
        complete = _h(done)
        for sig in sigs:
            for delay in delays:
                t.inputs += 1
                p = _spawn(["compress", m, "-o", out] + job)
                time.sleep(delay)
                p.send_signal(sig)
                try:
                    p.communicate(timeout=HANG_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    t.bad("hangs", f"{sig.name} after {delay}s: did not exit")
                if p.returncode == 0:  # finished before the signal: a new good output
                    before = _h(out)
                elif _h(out) == complete:  # replaced whole before the signal landed
                    before = complete
                elif _h(out) != before:
                    t.bad("lost", f"{sig.name} after {delay}s: existing output changed")
                    t.lost += os.path.getsize(out)
                for f in os.listdir(outdir):
                    fp = os.path.join(outdir, f)
                    if f == "m.wpz":
                        continue
                    if f == "m.wpz.journal" and sig != signal.SIGKILL:
                        subprocess.run(["rm", "-rf", fp], check=True)  # announced, resumable
                        continue
                    size = sum(os.path.getsize(os.path.join(r, x)) for r, _, xs in os.walk(fp) for x in xs) \
                        if os.path.isdir(fp) else os.path.getsize(fp)
                    if f == "m.wpz.journal":  # SIGKILL cannot clean up; the journal is the resume point
                        subprocess.run(["rm", "-rf", fp], check=True)
                        continue
                    t.bad("lost", f"{sig.name} after {delay}s: left {f} ({size} bytes)")
                    t.lost += size
                    subprocess.run(["rm", "-rf", fp], check=True)
    return t


def probe_sigkill(quick: bool) -> Tally:
    """SIGKILL: nothing can clean up, so scratch files that exist at that moment stay (named
    ``.wp-*``); the existing output must still be intact."""
    return probe_kills(quick, (signal.SIGKILL,), "sigkill")


def probe_disk(quick: bool) -> Tally:
    t = Tally("disk")
    with tempfile.TemporaryDirectory() as d:
        m = os.path.join(d, "m.safetensors")
        _model(m, n=8, size=(256, 256))
        out = os.path.join(d, "o.wpz")
        assert _cli(["compress", m, "-o", out, "--error", "0.5", "-q"])[0] == 0
        before = _h(out)
        for limit in ([4096, 100_000] if quick else [0, 1024, 4096, 20_000, 100_000, 300_000]):
            for cmd in (["compress", m, "-o", out, "--error", "0.05", "-q"],
                        ["decompress", out, "-o", os.path.join(d, "back.safetensors")]):
                t.inputs += 1

                def lim(limit=limit):
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

                p = _spawn(cmd, preexec_fn=lim)
                _, err = p.communicate(timeout=HANG_S * 2)
                if p.returncode not in (0, 2):
                    t.bad("crashes", f"{cmd[0]} with files limited to {limit} B: exit {p.returncode} {err[-200:]!r}")
                if _h(out) != before:
                    t.bad("lost", f"{cmd[0]} at limit {limit}: existing output changed")
                    t.lost += os.path.getsize(out)
                for f in os.listdir(d):
                    if f.startswith(".wp-"):
                        t.bad("lost", f"temp file {f} left at limit {limit}")
                        t.lost += os.path.getsize(os.path.join(d, f))
        ro = os.path.join(d, "ro")
        os.mkdir(ro)
        os.chmod(ro, 0o555)
        if os.geteuid() != 0:  # root writes anyway
            t.inputs += 1
            code, text = _cli(["compress", m, "-o", os.path.join(ro, "o.wpz"), "-q", "--error", "0.5"])
            if code != 2:
                t.bad("crashes", f"read-only folder: exit {code} {text[-200:]!r}")
    return t


def probe_numeric(quick: bool) -> Tally:
    import scipy.sparse as sp
    import weightpress as wp

    t = Tally("numeric")
    rng = np.random.default_rng(0)
    good = rng.standard_normal((20, 12))
    bad_arrays = [good * np.nan, np.where(good > 1, np.inf, good), good.astype(np.complex128),
                  good.astype(object), np.array("x"), good[:, :, None], np.zeros((0, 5)),
                  good.astype(np.float16), good.astype(">f8"), [[1, 2], [3]], None, "abc",
                  good.T, good[::2, ::3], np.zeros((3, 0)), good.astype(np.int64),
                  good.astype(bool), np.full((4, 4), 1e308), np.full((4, 4), 1e-320)]
    bad_scalars = [np.nan, np.inf, -1, -1e300, 2**63, 2**31, 0, 1.5, "1", None, [1], True, 1e400]
    bad_csr = []
    A = sp.random(20, 12, density=0.3, format="csr", random_state=0)
    for mutate in ("indptr_dec", "index_oob", "nan", "short"):
        B = A.copy()
        if mutate == "indptr_dec":
            B.indptr[5] = B.indptr[6] + 1
        elif mutate == "index_oob":
            B.indices[0] = 99
        elif mutate == "nan":
            B.data[0] = np.nan
        else:
            B.indptr = B.indptr[:-3]
        bad_csr.append(B)
    calls = []
    for X in bad_arrays:
        calls += [(wp.soft_threshold, (X, 0.1), {}), (wp.hard_threshold, (X, 0.1), {}),
                  (wp.prune, (X,), {"sparsity": 0.5}), (wp.randomized_svd, (X, 2), {"seed": 0}),
                  (wp.randomized_svd, (X,), {"tol": 0.1, "seed": 0}), (wp.svt, (X, 0.5), {"seed": 0}),
                  (wp.omp, (X, good[:, :3]), {"n_nonzero": 2}), (wp.basis_pursuit, (X, good[:, 0]), {}),
                  (wp.lasso, (X, good[:, 0], 0.1), {}), (wp.csr_matmul, (A, X), {})]
    for s in bad_scalars:
        calls += [(wp.soft_threshold, (good, s), {}), (wp.prune, (good,), {"sparsity": s}),
                  (wp.prune, (good,), {"threshold": s}), (wp.randomized_svd, (good, s), {"seed": 0}),
                  (wp.randomized_svd, (good,), {"tol": s, "seed": 0}), (wp.svt, (good, s), {}),
                  (wp.omp, (good, good[:, :3]), {"n_nonzero": s}), (wp.lasso, (good, good[:, 0], s), {}),
                  (wp.soft_threshold, (good, 0.1), {"n_threads": s}), (wp.set_num_threads, (s,), {}),
                  (wp.randomized_svd, (good, 2), {"seed": s}),
                  (wp.randomized_svd, (good, 2), {"oversamples": s, "seed": 0})]
    for B in bad_csr:
        calls += [(wp.csr_matmul, (B, good[:12]), {}), (wp.randomized_svd, (B, 2), {"seed": 0})]
    n0 = wp.get_num_threads()
    for fn, args, kw in calls:
        t.inputs += 1
        try:
            with np.errstate(all="ignore"), contextlib.suppress(Warning):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = fn(*args, **kw)
            # accepted: the result must at least be finite where the input was finite
            arrs = r if isinstance(r, tuple) else (r,)
            for a in arrs:
                if isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.isfinite(a).all():
                    fin = all(np.isfinite(np.asarray(x.data if sp.issparse(x) else x, dtype=float)).all()
                              for x in args if sp.issparse(x) or (isinstance(x, np.ndarray) and x.dtype.kind in "fiub"))
                    # finite input overflowing (1e308 * 1e308) is IEEE arithmetic, not a wrong result
                    fin = fin and all(np.abs(np.asarray(x.data if sp.issparse(x) else x, dtype=float)).max(initial=0) < 1e150
                                      for x in args if sp.issparse(x) or (isinstance(x, np.ndarray) and x.dtype.kind in "fiub"))
                    if fin:
                        t.bad("wrong", f"{fn.__name__}{tuple(type(a).__name__ for a in args)}: non-finite output")
        except (ValueError, TypeError):
            pass
        except Exception as e:  # noqa: BLE001
            t.bad("crashes", f"{fn.__name__} {kw}: {type(e).__name__}: {str(e)[:120]}")
        finally:
            wp.set_num_threads(n0)
    return t


def probe_concurrent(quick: bool) -> Tally:
    import weightpress as wp
    from weightpress.model.compress import compress_model, open_source

    t = Tally("concurrent")
    with tempfile.TemporaryDirectory() as d:
        m = os.path.join(d, "m.safetensors")
        _model(m, n=6, size=(128, 96))
        ref = os.path.join(d, "ref.wpz")
        compress_model(open_source(m), ref, error=0.2, method="auto", min_size=16)
        want = _h(ref)
        rng = np.random.default_rng(0)
        W = rng.standard_normal((200, 150)).astype(np.float32)
        kref = (wp.randomized_svd(W, 10, seed=3)[1], wp.soft_threshold(W, 0.3), wp.prune(W, sparsity=0.7).data)
        errors: list[str] = []

        def job(k: int) -> None:
            try:
                o = os.path.join(d, f"o{k}.wpz")
                compress_model(open_source(m), o, error=0.2, method="auto", min_size=16)
                if _h(o) != want:
                    errors.append(f"wrong: thread {k}: container differs from the serial one")
                for _ in range(3):
                    got = (wp.randomized_svd(W, 10, seed=3)[1], wp.soft_threshold(W, 0.3),
                           wp.prune(W, sparsity=0.7).data)
                    if not all(np.array_equal(a, b) for a, b in zip(got, kref)):
                        errors.append(f"wrong: thread {k}: kernel result differs")
            except Exception as e:  # noqa: BLE001
                errors.append(f"crashes: thread {k}: {type(e).__name__}: {e}")

        n = 4 if quick else 8
        threads = [threading.Thread(target=job, args=(k,)) for k in range(n)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + HANG_S * 5 * n  # slow under load is not a hang
        for th in threads:
            th.join(max(1.0, deadline - time.monotonic()))
            if th.is_alive():
                t.bad("hangs", f"a thread did not finish in {HANG_S * 5 * n} s")
        t.inputs += n * 4
        for e in errors:
            t.bad(e.split(":")[0], e)
    return t


AREAS = {"files": probe_files, "pickles": probe_pickles, "kills": probe_kills,
         "sigkill": probe_sigkill, "disk": probe_disk,
         "numeric": probe_numeric, "concurrent": probe_concurrent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer mutations, delays and threads")
    ap.add_argument("--only", default=",".join(AREAS), help="comma-separated areas")
    a = ap.parse_args()
    rows = []
    for area in a.only.split(","):
        t0 = time.monotonic()
        t = AREAS[area](a.quick)
        rows.append(t)
        print(f"{area}: {time.monotonic() - t0:.0f} s", flush=True)
        for n in t.notes:
            print("   ", n)
    print(f"{'area':11s} {'inputs':>7s} {'crashes':>7s} {'wrong':>7s} {'hangs':>6s} {'bytes lost':>10s}")
    for t in rows:
        print(t.row())
    return 1 if any(t.crashes or t.wrong or t.hangs or t.lost for t in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
