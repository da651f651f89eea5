#!/usr/bin/env bash
# Build the C++ engine and bindings with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option WP_SANITIZE=ON) in a venv and build folder of their own, then run the kernel
# test files under the ASan runtime. Any sanitizer report fails the run.
#
#   bash scripts/asan_tests.sh                      # the default kernel test files
#   bash scripts/asan_tests.sh tests/test_svd.py    # chosen ones
#
# Env: WP_ASAN_VENV (default build/asan-venv), WP_ASAN_REUSE=1 to skip re-creating the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${WP_ASAN_VENV:-build/asan-venv}"
log="$(mktemp -d)/asan.log"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
if [[ "${WP_ASAN_REUSE:-0}" != 1 || ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q numpy scipy pytest hypothesis scikit-learn threadpoolctl zstandard \
      scikit-build-core pybind11
fi
echo "== sanitizer build (WP_SANITIZE=ON, RelWithDebInfo)"
"$venv/bin/python" -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/asan \
    -Ccmake.build-type=RelWithDebInfo -Ccmake.define.WP_SANITIZE=ON \
    -Ccmake.define.CMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF .
asan_rt="$(${CXX:-g++} -print-file-name=libasan.so)"
[[ -f "$asan_rt" ]] || { echo "ASan runtime not found ($asan_rt)"; exit 2; }
# libstdc++ preloaded too: else ASan's __cxa_throw interceptor finds no real function (the
# interpreter loads libstdc++ only with the extension) and the first C++ exception aborts
cxx_rt="$(${CXX:-g++} -print-file-name=libstdc++.so)"
if [[ $# -gt 0 ]]; then
  files=("$@")
else
  files=(tests/test_threshold.py tests/test_sparse.py tests/test_svd.py tests/test_omp.py
         tests/test_basis_pursuit.py tests/test_threads_blas.py tests/test_sparse_coding.py
         tests/test_compressed.py)
  for f in tests/test_kernels*.py tests/test_quant*.py; do [[ -f "$f" ]] && files+=("$f"); done
fi
echo "== kernel tests under ASan + UBSan: ${files[*]}"
# tests run from a copy-free path: the installed (sanitized) package, not python/ in the tree
# reports go to files (pytest's output capture would swallow a report printed as the process
# dies), one per process: $logdir/asan.<pid>
logdir="$(dirname "$log")/reports"
mkdir -p "$logdir"
status=0
LD_PRELOAD="$asan_rt $cxx_rt" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_odr_violation=0:log_path=$logdir/asan" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logdir/ubsan" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider --capture=sys "${files[@]}" \
      -W "ignore::DeprecationWarning" \
      --deselect tests/test_threads_blas.py::test_default_honours_omp_num_threads \
      2>&1 | tee "$log" || status=$?
# (deselected: it starts a child interpreter with an emptied environment, so without the
# LD_PRELOAD the sanitized extension refuses to load; the normal test run covers it)
# GCC's UBSan ignores log_path when ASan is loaded too and writes to stderr: pytest runs with
# --capture=sys (Python-level capture only), so a report written to fd 2 as the process halts
# reaches the tee'd log instead of a capture buffer that dies with the process, and is counted
reports=$(cat "$logdir"/* "$log" 2>/dev/null | grep -cE "ERROR: AddressSanitizer|runtime error:|CHECK failed|ERROR: LeakSanitizer" || true)
echo "== sanitizer reports: $reports"
for f in "$logdir"/*; do [[ -f "$f" ]] && { echo "--- $f"; head -60 "$f"; }; done
if [[ "$status" != 0 || "$reports" != 0 ]]; then
  echo "asan_tests: FAILED (pytest exit $status, $reports sanitizer reports)"
  exit 1
fi
echo "asan_tests: ok"
