"""Thread-count policy shared by every kernel.

The count is resolved, in order, from the explicit ``n_threads`` argument, the innermost
:func:`threads` context, :func:`set_num_threads`, and finally OpenMP's default (which honours
``OMP_NUM_THREADS``) capped at the CPUs this process may use.

When threadpoolctl is installed, weightpress registers a controller with it (``user_api`` and
``internal_api`` "weightpress"), so ``threadpool_limits(n)`` and
``threadpool_limits(n, user_api="weightpress")`` set the default count (as
:func:`set_num_threads` does) and restore it on exit; an explicit ``n_threads`` or a
:func:`threads` context still takes precedence.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator

from . import _core
from ._optional import require

_ctx: contextvars.ContextVar[int | None] = contextvars.ContextVar("weightpress_threads", default=None)
_global: int | None = None
_warned_serial = False


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_DEFAULT: int | None = None


def _default() -> int:
    # Read once: OMP_NUM_THREADS and the affinity mask are fixed for the process's life in
    # practice, and this sits on every kernel call's path.
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = max(1, min(_core.omp_max_threads(), _usable_cpus()))
    return _DEFAULT


def _check(n: object, name: str = "n_threads") -> int:
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be an int or None, got {type(n).__name__}")
    n = int(n)  # type: ignore[call-overload]
    if n == 0:
        raise ValueError(f"{name}=0 is invalid; use None for the default or -1 for all CPUs")
    if not -(2**31) < n < 2**31:
        raise ValueError(f"{name}={n} is out of range (a thread count fits in a 32-bit int)")
    return n


def _resolve(n_threads: int | None = None) -> int:
    """The thread count a kernel should use for this call (always >= 1)."""
    global _warned_serial
    if n_threads is None and _ctx.get() is None and _global is None:
        return _default() if _core.has_openmp else 1
    if n_threads is not None:
        n = _check(n_threads)
    else:
        n = _ctx.get() or _global or _default()
    if n < 0:
        n = max(1, _usable_cpus() + 1 + n)
    if not _core.has_openmp and n > 1:
        if not _warned_serial:
            _warned_serial = True
            warnings.warn("weightpress was built without OpenMP; kernels run on one thread",
                          RuntimeWarning, stacklevel=3)
        return 1
    return n


def set_num_threads(n: int | None) -> None:
    """Set the default number of threads for all kernels (``None`` restores the default).

    Parameters
    ----------
    n : int or None
        Positive count, ``-1`` for all usable CPUs (``-2`` all but one, ...), or ``None``.
    """
    global _global
    _global = None if n is None else _check(n, "n")


def get_num_threads() -> int:
    """Return the number of threads kernels use when no ``n_threads`` is given."""
    return _resolve(None)


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Context manager: kernels called inside use ``n`` threads (per Python thread/task).

    Examples
    --------
    >>> import weightpress as wp
    >>> with wp.threads(1):
    ...     wp.get_num_threads()
    1
    """
    token = _ctx.set(_check(n, "n"))
    try:
        yield _resolve(None)
    finally:
        _ctx.reset(token)


_BLAS_CONTROLLER = None


def blas_sequential() -> contextlib.AbstractContextManager[object]:
    """A context that runs BLAS (SciPy's and NumPy's OpenBLAS) on one thread, restoring its
    count after. Kernels that must give the same bits for any thread count run BLAS so and
    spread their own tiles over weightpress's threads (``cpp/include/weightpress/tiled.hpp``):
    OpenBLAS splits a threaded call by its thread count and rounds differently at the splits
    (measured: potrf at 384 and 1536 inputs, dgemm and dsyrk of some shapes). The calibrated
    passes (statistics, factors, sweeps, eigensolves, exact errors) run under it at every size,
    so a Dask worker (one BLAS thread) writes the same bytes as a local run (issue 13). Small
    problems gain from it anyway: waking OpenBLAS's pool costs more than they do (a 256-input
    factor and sweep 1 ms sequential, 50-500 ms threaded on a loaded 2-core machine; a 384²
    eigensolve 0.04 s vs 0.3-1.7 s). The libraries are looked up once per process
    (threadpoolctl's scan took ~1.5 ms a call)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        tp = require("threadpoolctl", "pinning BLAS to one thread")
        _BLAS_CONTROLLER = tp.ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _register_threadpoolctl() -> None:
    """A threadpoolctl LibController for weightpress's OpenMP pool (threadpoolctl >= 3.5)."""
    try:
        threadpoolctl = require("threadpoolctl", "threadpoolctl's control of weightpress's pool")
    except ImportError:  # optional: without it there is nothing to register with
        return
    if not hasattr(threadpoolctl, "register") or not hasattr(threadpoolctl, "LibController"):
        return

    class _WeightpressController(threadpoolctl.LibController):  # type: ignore[misc]
        user_api = "weightpress"
        internal_api = "weightpress"
        filename_prefixes = ("_core",)
        check_symbols = ("weightpress_omp_max_threads",)  # exported by src/module.cpp

        def set_additional_attributes(self) -> None:
            # threadpool_limits restores the count it found; restoring that count restores
            # set_num_threads' own state (None: the default), not a pinned number.
            self._global_at_start = _global
            self._count_at_start = get_num_threads()

        def get_num_threads(self) -> int:
            return get_num_threads()

        def set_num_threads(self, num_threads: int) -> None:
            if num_threads == self._count_at_start:
                set_num_threads(self._global_at_start)
            else:
                set_num_threads(num_threads)

        def get_version(self) -> str:
            return str(_core.__version__)

    threadpoolctl.register(_WeightpressController)


_register_threadpoolctl()
