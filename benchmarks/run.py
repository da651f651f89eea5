"""Run every benchmark: ``python benchmarks/run.py [--quick] [names...]``.

Names select modules (``sparse``, ``svd``, ``recovery``, ...); default: all of them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny problems, one call each (smoke test)")
    ap.add_argument("--large", action="store_true",
                    help="add the shapes larger than the last-level cache (sparse: SpMV 32768²)")
    ap.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    args = ap.parse_args()
    if args.quick:
        os.environ["WP_BENCH_QUICK"] = "1"
    if args.large:
        os.environ["WP_BENCH_LARGE"] = "1"
    sys.path.insert(0, str(HERE))
    names = args.names or sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    import weightpress as wp
    from weightpress import _core
    from _harness import cpu_model, last_level_cache, memory_bandwidth, read_bandwidth
    print(f"weightpress {wp.__version__}, openmp={wp.has_openmp}, threads={wp.get_num_threads()}, "
          f"CPU {cpu_model()}, ISA level {_core.isa_level()} (0 base, 1 AVX2, 2 AVX-512), SpMV x "
          f"by {_core.spmv_x_path()}, "
          f"last-level cache {last_level_cache() >> 20} MiB, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"memory bandwidth: read (XOR reduction) {read_bandwidth(1) / 1e9:.1f} GB/s 1 thread, "
          f"{read_bandwidth(2) / 1e9:.1f} GB/s 2 threads; copy (2 threads) "
          f"{memory_bandwidth() / 1e9:.1f} GB/s into a reused array, "
          f"{memory_bandwidth('fresh') / 1e9:.1f} GB/s into a fresh one")
    for name in names:
        mod = importlib.import_module(f"bench_{name}")
        mod.run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
