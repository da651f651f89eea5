"""Calibration statistics: what data-aware compression needs to know about a layer's inputs.

A linear layer computes ``Y = X Wᵀ`` with ``W`` of shape ``(out, in)`` (PyTorch's layout) and
inputs ``X`` of shape ``(n_samples, in)``. Every data-aware method here needs only the second
moment ``H = XᵀX`` (``in × in``, accumulated over chunks by BLAS ``syrk``, so any number of samples
streams through in bounded memory) and the sample count. The output-space error of a
replacement ``Ŵ`` is then ``‖X(W − Ŵ)ᵀ‖_F² = tr((W − Ŵ) H (W − Ŵ)ᵀ)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from scipy.linalg.blas import get_blas_funcs

from .._threads import blas_sequential
from .._validation import float_dtype
from ..io import open_model
from ..linalg.memory import row_blocks

__all__ = ["CalibrationStats", "CalibrationSet", "output_error", "check_calibration"]


class CalibrationStats:
    """Streaming second moment ``H = XᵀX`` of one layer's inputs.

    Parameters
    ----------
    n_features : int
        The layer's input width (``in``; ``W.shape[1]`` in PyTorch layout).
    min_samples : int
        Fewest samples :meth:`hessian` accepts (default 16): fewer cannot say anything
        reliable about the input distribution.
    dtype : float32 or float64, optional
        The dtype ``H`` is kept in (default: float32; :meth:`from_inputs` takes the inputs'
        own, so float64 inputs give a float64 ``H``). ``H`` is as large as a weight with as
        many outputs as inputs, so float32 keeps the calibrated methods within a few times
        the layer's own size (issue 15); each chunk's product is one BLAS ``syrk``.

    Examples
    --------
    >>> import numpy as np
    >>> from weightpress.compression.calibration import CalibrationStats
    >>> st = CalibrationStats(4)
    >>> for chunk in np.array_split(np.random.default_rng(0).standard_normal((100, 4)), 3):
    ...     _ = st.update(chunk)
    >>> st.n_samples
    100
    """

    def __init__(self, n_features: int, *, min_samples: int = 16, dtype: Any = np.float32):
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype: expected float32 or float64, got {dt}")
        self.n_features = int(n_features)
        self.min_samples = int(min_samples)
        self.n_samples = 0
        self._h = np.zeros((self.n_features, self.n_features), dt)
        self._full = True  # both triangles of _h hold H (syrk fills one)
        self._cache: dict[Any, Any] = {}  # factorizations of H, reused across budgets
        # factors of H are cached (a copy) rather than written over H for one use: set by a
        # CalibrationSet that keeps these statistics for later visits
        self.keep_factors = False

    @property
    def dtype(self) -> np.dtype:
        return self._h.dtype

    def cached(self, key: Any, make: Any) -> Any:
        """``make()`` once per key until the next :meth:`update` (factorizations of ``H``
        that several compression budgets of one layer share)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @classmethod
    def from_inputs(cls, X: Any, **kw: Any) -> "CalibrationStats":
        """Statistics of one array of inputs (n_samples, n_features); higher-dimensional
        activations (batch, tokens, features) are flattened to rows. ``H`` is float64 for
        float64 inputs, else float32 (unless ``dtype`` says)."""
        Xa = np.asarray(X)
        if Xa.ndim < 2:
            raise ValueError(f"calibration inputs must be at least 2-D (samples, features), got shape {Xa.shape}")
        if "dtype" not in kw:
            kw["dtype"] = np.float64 if Xa.dtype == np.float64 else np.float32
        st = cls(Xa.shape[-1], **kw)
        st.update(Xa)
        return st

    def update(self, X: Any, *, chunk: int = 8192) -> "CalibrationStats":
        """Add a chunk of inputs (rows are samples). Validates width and finiteness.

        ``X`` may be memory-mapped and of any float dtype: it is read and converted at most
        ``chunk`` rows (and about 2²⁰ values) at a time, so memory stays bounded by one
        chunk plus ``H``."""
        Xa = np.asarray(X)
        if Xa.dtype == object:
            raise TypeError("calibration inputs: expected a numeric array, got dtype object")
        float_dtype(Xa.dtype, name="calibration inputs")
        if Xa.ndim < 2:
            raise ValueError(f"calibration inputs must be 2-D (samples, features), got shape {Xa.shape}")
        Xa = Xa.reshape(-1, Xa.shape[-1])
        if Xa.shape[1] != self.n_features:
            raise ValueError(f"calibration inputs have {Xa.shape[1]} features, the layer takes "
                             f"{self.n_features} (W has shape (out, {self.n_features}))")
        step = max(1, min(int(chunk), (1 << 18) // self.n_features))
        syrk = get_blas_funcs("syrk", dtype=self._h.dtype)
        with blas_sequential():  # (the same H for any BLAS thread count)
            self._accumulate(Xa, step, syrk)
        self.n_samples += Xa.shape[0]
        self._cache.clear()
        return self

    def _accumulate(self, Xa: np.ndarray, step: int, syrk: Any) -> None:
        for s in range(0, Xa.shape[0], step):
            c = np.ascontiguousarray(Xa[s:s + step], dtype=self._h.dtype)
            if not np.isfinite(c).all():
                raise ValueError("calibration inputs contain NaN or Inf")
            # H (F-order view: symmetric, so the same) += cᵀc, one triangle
            out = syrk(1.0, c.T, beta=1.0, c=self._h.T, trans=0, lower=0, overwrite_c=1)
            if not np.shares_memory(out, self._h):
                self._h[...] = out.T
            self._full = False

    def hessian(self) -> np.ndarray:
        """``XᵀX`` (``n_features × n_features`` in :attr:`dtype`; do not modify)."""
        if self.n_samples < self.min_samples:
            raise ValueError(f"too few calibration samples: {self.n_samples} < min_samples={self.min_samples}")
        if not self._full:  # syrk filled the lower triangle (C order): mirror it, by blocks
            _mirror_lower(self._h)
            self._full = True
        return self._h

    def column_norms(self) -> np.ndarray:
        """``‖X[:, j]‖₂`` for every input feature j (float64)."""
        return np.sqrt(np.maximum(np.diag(self.hessian()).astype(np.float64), 0.0))

    def damped(self, rel: float = 1e-6) -> np.ndarray:
        """``H + rel · mean(diag H) · I`` (a copy): positive definite even for rank-deficient
        inputs (fewer samples than features, dead features)."""
        H = self.hessian()
        d = float(np.mean(np.diag(H), dtype=np.float64)) if H.size else 0.0
        out = H.copy()
        out.flat[::self.n_features + 1] += (rel * d if d > 0 else 1e-12)
        return out


def row_step(rows: int, cols: int, max_elems: int = 1 << 18) -> int:
    """Rows per block of a blocked pass over a ``rows × cols`` matrix: at most ``max_elems``
    values and at most a sixteenth of the matrix, so a pass's float64 temporaries stay a small
    fraction of the matrix at any size (issue 15: peak memory in multiples of the tensor)."""
    return max(1, min(max_elems // max(1, cols), -(-rows // 16)))


def _mirror_lower(H: np.ndarray, b: int = 64) -> None:
    """Copy the strictly lower triangle of ``H`` onto the upper, by blocks (small temporaries)."""
    n = H.shape[0]
    for i0 in range(0, n, b):
        i1 = min(i0 + b, n)
        H[i0:i1, i1:] = H[i1:, i0:i1].T.copy()
        blk = H[i0:i1, i0:i1]
        blk[...] = np.tril(blk) + np.tril(blk, -1).T


def _rows_of(M: Any, r0: int, r1: int) -> np.ndarray:
    if hasattr(M, "rows") and getattr(M, "layout", "out_in") == "out_in":
        return M.rows(r0, min(r1, M.shape[0]))  # (Quantized.rows needs stop <= rows)
    return np.asarray(M[r0:r1])


def output_error(W: Any, W_hat: Any, stats: CalibrationStats, block: int = 1 << 17) -> float:
    """Relative output-space error ``‖XWᵀ − XŴᵀ‖_F / ‖XWᵀ‖_F`` from the statistics alone.

    ``W_hat`` is an array or a compressed matrix (decoded a block of rows at a time when it is
    stored ``[out, in]``). Accumulated in float64 over row blocks of about `block` elements,
    a float32 ``H`` converted a block of columns at a time, so the extra memory is a few
    blocks, not full-size float64 copies of W or H (issue 15: this was 10-20x W); float64
    because pruning and quantization put their error where ``H`` is small, where a float32
    product would cancel.
    """
    Wa = np.asarray(W)
    if hasattr(W_hat, "toarray") and not (hasattr(W_hat, "rows") and getattr(W_hat, "layout", "") == "out_in"):
        W_hat = W_hat.toarray()
    shape = tuple(W_hat.shape) if hasattr(W_hat, "shape") else None
    if shape != Wa.shape:
        raise ValueError(f"W_hat: shape {shape} differs from W's {Wa.shape}")
    H = stats.hessian()
    with blas_sequential():
        num, den = _quadratic_forms(Wa, W_hat, H, True, block)
    if den <= 0:
        return 0.0 if num <= 0 else float("inf")
    return float(np.sqrt(max(num, 0.0) / den))


def half_h_blocks(H: np.ndarray, cstep: int, dtype: Any) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(c, c1, Hc)`` over blocks of ``cstep`` columns of the symmetric ``H``: ``Hc`` is
    ``H[c:, c:c1]`` in ``dtype`` with the rows below the block doubled, so that
    ``Σ_c ⟨D[:, c:] Hc, D[:, c:c1]⟩ = tr(D H Dᵀ)``: each column block meets the inputs from its
    own on (those below it twice, for the block above the diagonal), half the products of all
    of H's rows."""
    n = H.shape[0]
    for c in range(0, n, max(1, int(cstep))):
        c1 = min(c + cstep, n)
        Hc = np.array(H[c:, c:c1], dtype=dtype)  # (a copy: scaled here)
        Hc[c1 - c:] *= 2
        yield c, c1, Hc


def _quadratic_forms(Wa: np.ndarray, W_hat: Any, H: np.ndarray, with_den: bool = True,
                     block: int = 1 << 17) -> tuple[float, float]:
    """``(tr(D H Dᵀ), tr(W H Wᵀ))`` with ``D = W − Ŵ`` (the second 0.0 unless ``with_den``),
    float64. ``H`` is converted a block of at most ``4 · block`` values (whole columns: all of
    ``H`` up to 1024 inputs) at a time, once per call, and each such block meets every row
    block of ``D`` (``block`` values;
    rows of ``Ŵ`` are decoded again per column block, which costs less than converting ``H``
    again per row block did: that made this pass a product of many small GEMMs). Memory: float64
    blocks of ``5 · block`` values and their product (5 MiB by default), at any size."""
    num = den = 0.0
    rows, n_in = Wa.shape
    step = max(1, min(rows, block // max(1, n_in)))
    cstep = max(1, min(-(-n_in // 2), 4 * block // max(1, n_in)))
    for c, c1, Hc in half_h_blocks(H, cstep, np.float64):
        for r, r1 in row_blocks(Wa, step):  # (a file's pages read back for the next columns)
            Wd = np.asarray(Wa[r:r1, c:], dtype=np.float64)
            D = Wd - np.asarray(_rows_of(W_hat, r, r1)[:, c:], dtype=np.float64)
            num += float(np.einsum("ij,ij->", D @ Hc, D[:, :c1 - c]))
            if with_den:
                den += float(np.einsum("ij,ij->", Wd @ Hc, Wd[:, :c1 - c]))
    return num, den


# bytes of statistics (and their cached factors) a CalibrationSet keeps across visits, by
# default none: kept, a layer's H and the factors of H the data-aware methods then keep beside
# it (instead of factoring H in place) take 1-2x the largest tensor each, and the calibrated
# methods' peak went from under 3x the largest tensor to 4.6-10x (benchmarks/bench_memory.py,
# issue 15), for 10-15 % of a MiniLM-sized calibrated search's time (issue 13: 13.5 s -> 11.4 s
# at --ratio 4, 25.0 s -> 22.6 s with --allocate, quiet). A user with memory to spare opts in:
# CalibrationSet(..., keep_bytes=N) or $WP_CALIBRATION_KEEP_MB.
KEEP_BYTES = 0


def _held_bytes(x: Any, depth: int = 0) -> int:
    """Bytes of the arrays ``x`` holds: statistics (``H`` and their cache), arrays, tuples,
    lists, dicts and compressed matrices (their stored parts), a few levels deep."""
    if depth > 4:
        return 0
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    if isinstance(x, CalibrationStats):
        return int(x._h.nbytes) + _held_bytes(x._cache, depth + 1)
    if isinstance(x, dict):
        return sum(_held_bytes(v, depth + 1) for v in x.values())
    if isinstance(x, (tuple, list)):
        return sum(_held_bytes(v, depth + 1) for v in x)
    parts = getattr(x, "parts", None)
    if callable(parts):
        try:
            return sum(int(a.nbytes) for a in parts().values())
        except Exception:  # noqa: BLE001 (a form that cannot list its parts: counted as 0)
            return 0
    return 0


class CalibrationSet(Mapping):
    """Per-layer calibration: weight tensor name -> :class:`CalibrationStats`, lazily.

    Built from a file (``.npz`` or ``.safetensors``) or a mapping whose keys are the *weight*
    tensors' names and whose values are that layer's inputs ``(n_samples, in)`` (any leading
    dimensions are flattened), or ready :class:`CalibrationStats`. Statistics are computed when
    a layer asks for them, streaming that layer's inputs in chunks (files are memory-mapped
    where the format allows: uncompressed ``.npz`` and ``.safetensors``), so memory holds
    one chunk of samples and ``XᵀX``, not all samples. ``path`` is the file's path (None for
    a mapping).

    ``keep_bytes``: statistics computed here are kept, with what they cached (the factors of
    ``H`` the data-aware methods use, which they then keep instead of factoring ``H`` in
    place; measured quantizations), while all of them together take at most this many bytes
    (default :data:`KEEP_BYTES`, or ``$WP_CALIBRATION_KEEP_MB`` MiB; 0 keeps only the last
    layer's): a ratio search's next try and the build after an allocation's curves find each
    layer's ``H`` and factors ready instead of computing them again. Layers are admitted
    while there is room and never evicted for later ones (a search visits the layers in the
    same order every try: evicting the oldest would make every visit a miss).
    """

    def __init__(self, source: Any, *, min_samples: int = 16, keep_bytes: int | None = None):
        if keep_bytes is None:
            env = os.environ.get("WP_CALIBRATION_KEEP_MB")
            keep_bytes = int(float(env) * (1 << 20)) if env else KEEP_BYTES
        self.keep_bytes = max(0, int(keep_bytes))
        self._kept: dict[str, CalibrationStats] = {}
        self._kept_sizes: dict[str, int] = {}
        self._close = None
        self.path: str | None = None
        if isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
            try:
                src = open_model(source)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise ValueError(f"calibration file {os.fspath(source)!r}: {e}") from e
            self._src: Mapping[str, Any] = src
            self._close = getattr(src, "close", None)
        elif isinstance(source, Mapping):
            self._src = source
        else:
            raise TypeError(f"calibration: expected a file path or a mapping name -> inputs, "
                            f"got {type(source).__name__}")
        self.min_samples = int(min_samples)
        self._last: tuple[str, CalibrationStats] | None = None

    def __getitem__(self, name: str) -> CalibrationStats:
        if self._last is not None and self._last[0] == name:  # asked again for the same layer
            return self._last[1]
        if self._last is not None:
            self._settle(*self._last)
        st = self._kept.get(name)
        if st is None:
            v = self._src[name]
            if isinstance(v, CalibrationStats):
                return v
            try:
                st = CalibrationStats.from_inputs(v, min_samples=self.min_samples)
            except ValueError as e:
                raise ValueError(f"calibration for {name!r}: {e}") from None
            if self.keep_bytes and self._room() >= _held_bytes(st):
                st.keep_factors = True
                self._kept[name] = st
                self._kept_sizes[name] = _held_bytes(st)
        self._last = (name, st)  # one layer's statistics kept at least (memory: one H)
        return st

    def _room(self) -> int:
        return self.keep_bytes - sum(self._kept_sizes.values())

    def _settle(self, name: str, st: CalibrationStats) -> None:
        """A layer is left: count what its statistics now hold (their factors, measured
        forms); over the budget they are let go (the next visit computes them again)."""
        if name not in self._kept:
            return
        self._kept_sizes[name] = 0
        size = _held_bytes(st)
        if size > self._room():
            del self._kept[name], self._kept_sizes[name]
            st.keep_factors = False
        else:
            self._kept_sizes[name] = size

    def __contains__(self, name: object) -> bool:
        return name in self._src  # without computing the statistics (Mapping's would)

    def __iter__(self):
        return iter(self._src)

    def __len__(self) -> int:
        return len(self._src)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def check_calibration(stats: CalibrationStats, name: str, shape: tuple[int, ...], layout: str) -> None:
    """Raise ValueError when calibration inputs do not fit the weight they are for."""
    n_in = shape[1] if layout == "out_in" else shape[0]
    if stats.n_features != n_in:
        raise ValueError(f"calibration for {name!r} has {stats.n_features} features per sample, but "
                         f"the weight {tuple(shape)} ({layout}) takes {n_in} inputs")
    stats.hessian()  # too few samples -> ValueError now, before any work
