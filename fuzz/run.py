"""Run every fuzz harness for a bounded time; exit 1 on any finding.

    python fuzz/run.py --seconds 45             # each harness 45 s (what CI runs)
    python fuzz/run.py --runs 100000            # each harness a fixed number of inputs
    python fuzz/run.py --seconds 60 --only npz  # one harness
    python fuzz/run.py --replay                 # each corpus file once, no atheris needed

A finding is an unexpected exception (anything but FormatError/ValueError/TypeError, or a CLI
exit code other than 0 and 2), a crash by signal, a hang past ``--timeout`` seconds on one
input, or memory past ``--rss-mb``. libFuzzer writes new inputs into a scratch folder (the
committed seeds in ``fuzz/corpus/<target>`` are only read) and the failing input to
``--artifacts`` (default: a scratch folder, printed), and prints it in base64.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
ORDER = ("safetensors", "npz", "onnx", "pytorch", "keras", "container", "cli")


def replay(only: list[str]) -> int:
    """Every seed through its target once, in this process (a quick regression check)."""
    from targets import TARGETS

    bad = 0
    for name in only:
        d = os.path.join(HERE, "corpus", name)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            try:
                TARGETS[name](data)
            except Exception as e:  # noqa: BLE001 - report every finding
                bad += 1
                print(f"FAIL {name}/{f}: {type(e).__name__}: {e}")
        print(f"{name}: replayed {len(os.listdir(d)) if os.path.isdir(d) else 0} seeds")
    return 1 if bad else 0


# inputs per second relative to the readers (the CLI harness runs whole commands): --runs N gives
# each harness N * RATE inputs, so every harness takes about the same time
RATE = {"cli": 0.01}


def _print_inputs(artifacts: str, name: str) -> None:
    """The failing inputs in base64, so a finding on a machine that is gone (CI) reproduces:
    ``base64 -d > input; python fuzz/fuzz_<name>.py input``."""
    import base64

    for f in sorted(os.listdir(artifacts)):
        if f.startswith(name + "-"):
            with open(os.path.join(artifacts, f), "rb") as fh:
                data = fh.read()
            print(f"-- {f} ({len(data)} bytes), base64:")
            print(base64.encodebytes(data).decode("ascii"), end="")
            print("-- end", flush=True)


def fuzz(only: list[str], seconds: int, timeout: int, rss_mb: int, artifacts: str | None,
         n_inputs: int | None = None) -> int:
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz/run.py: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="wp-fuzz-run-")
    artifacts = artifacts or os.path.join(work, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    failed = []
    # a fixed mutation seed (WP_FUZZ_SEED to vary it): CI reruns the same search, so a finding
    # reproduces; vary it locally to search further
    seed = int(os.environ.get("WP_FUZZ_SEED", "1"))
    for name in only:
        scratch = os.path.join(work, name)
        os.makedirs(scratch, exist_ok=True)
        cmd = [sys.executable, os.path.join(HERE, f"fuzz_{name}.py"), scratch,
               os.path.join(HERE, "corpus", name),
               (f"-runs={max(1, int(n_inputs * RATE.get(name, 1.0)))}" if n_inputs
                else f"-max_total_time={seconds}"),
               f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}", "-print_final_stats=1",
               f"-artifact_prefix={artifacts}/{name}-", "-max_len=65536",
               f"-seed={seed}"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           timeout=(seconds if not n_inputs else 1800) + 10 * timeout + 120, env=dict(os.environ, OMP_NUM_THREADS="1"))
        runs = next((ln.split()[-1] for ln in r.stderr.splitlines() if "stat::number_of_executed_units" in ln), "?")
        status = "ok" if r.returncode == 0 else f"FINDING (exit {r.returncode})"
        if "no interesting inputs were found" in r.stderr and " cov: " not in r.stderr:
            # weightpress was not instrumented (an editable install's loader): a blind search
            status += ", BLIND: no coverage (use a regular install: pip install .)"
        print(f"{name:12s} {time.monotonic() - t0:6.1f} s  {runs:>8s} inputs  {status}", flush=True)
        if r.returncode != 0:
            failed.append(name)
            print(r.stderr[-6000:])
            _print_inputs(artifacts, name)
    if failed:
        print(f"findings in: {', '.join(failed)}; inputs saved under {artifacts}")
        return 1
    print(f"all {len(only)} harnesses ran clean")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=45, help="per harness (default 45, as in CI)")
    p.add_argument("--runs", type=int, help="a fixed number of inputs per harness instead of a time "
                                            "(deterministic with the fixed seed on one install)")
    p.add_argument("--only", action="append", choices=ORDER, help="run only these harnesses")
    p.add_argument("--replay", action="store_true", help="replay the corpus once, no fuzzing")
    p.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    p.add_argument("--rss-mb", type=int, default=3072, help="memory limit of a harness")
    p.add_argument("--artifacts", help="folder for failing inputs")
    a = p.parse_args()
    only = a.only or list(ORDER)
    if a.replay:
        return replay(only)
    return fuzz(only, a.seconds, a.timeout, a.rss_mb, a.artifacts, a.runs)


if __name__ == "__main__":
    sys.exit(main())
