"""Compressed weight matrices that still compute: dense, sparse, low-rank, sparse + low-rank.

**The linear-layer convention, stated once.** A compressed matrix stands for one stored weight
tensor ``W`` *as the file holds it*: ``shape`` and :meth:`~CompressedMatrix.toarray` are the
stored tensor's. Its ``layout`` says how the layer uses it:

- ``"out_in"`` (PyTorch ``nn.Linear``, safetensors/state dicts): ``W`` is ``[out, in]`` and the
  layer computes ``y = x Wᵀ``;
- ``"in_out"`` (Keras ``Dense``, ONNX ``MatMul``/``Gemm`` without ``transB``): ``W`` is
  ``[in, out]`` and the layer computes ``y = x W``.

:meth:`~CompressedMatrix.matmul` is the plain matrix product ``W @ X`` (or ``Wᵀ @ X``) whatever
the layout; :meth:`~CompressedMatrix.apply` is the layer, ``x`` of shape ``(batch, in)`` to
``y`` of shape ``(batch, out)``, with the layout taken into account.

Stored arrays (:meth:`~CompressedMatrix.parts`) are what a container file holds; ``nbytes`` is
their exact total (values, indices, index pointers, factors), so the bytes of a container file
are the sum of its matrices' ``nbytes`` plus its JSON header.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .._pages import release_rows, row_blocks
from ..io.safetensors import bf16_to_f32, f32_to_bf16
from ..linalg.sparse import csr_matmul, dense_product_pays
from .sparse_coding import dct_dictionary
from .storage import array_nbytes, check_storage, dense_nbytes, index_dtype, pointer_dtype

__all__ = ["CompressedMatrix", "Dense", "Sparse", "LowRank", "SparsePlusLowRank", "SparseCoded", "LAYOUTS",
           "FORMS", "error_stats", "fro2", "store_as", "from_parts", "register_form"]

LAYOUTS = ("out_in", "in_out")


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected 'out_in' ([out, in], y = x W^T) or 'in_out' "
                         f"([in, out], y = x W), got {layout!r}")
    return layout


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """float16 (and integers) are computed in float32/float64, as the kernels take."""
    return np.dtype(np.float64) if dt == np.float64 or dt.kind != "f" else np.dtype(np.float32)


def fro2(a: np.ndarray, block: int = 1 << 20) -> float:
    """``‖a‖_F²`` accumulated in float64 (the first of :func:`error_stats`, the same blocks and
    the same number, in one pass: that one makes four when ``Ŵ`` is ``W``)."""
    x = np.asarray(a).reshape(-1)
    tot = 0.0
    for i, i1 in row_blocks(x, block):  # (a file's pages dropped behind the pass)
        tot += float(np.einsum("i,i->", x[i:i1], x[i:i1], dtype=np.float64))
    return tot


def error_stats(W: Any, W_hat: Any, block: int = 1 << 20) -> tuple[float, float, float, float]:
    """``(‖W‖², ⟨W, Ŵ⟩, ‖Ŵ‖², ‖W − Ŵ‖²)`` accumulated in float64, in blocks of ``block``
    elements (no full-size temporary; no BLAS, whose thread wake-ups cost more than a dot).

    ``‖W − Ŵ‖²`` comes from the other three, or, where that would cancel (relative error
    below 1e-3), from the difference itself.
    """
    a = np.asarray(W).reshape(-1)
    b = np.asarray(W_hat).reshape(-1)
    n2 = inner = nh2 = 0.0
    for i, i1 in row_blocks(a, block):  # (a file's pages, W's or Ŵ's, dropped behind)
        x, y = a[i:i1], b[i:i1]
        n2 += float(np.einsum("i,i->", x, x, dtype=np.float64))
        inner += float(np.einsum("i,i->", x, y, dtype=np.float64))
        nh2 += float(np.einsum("i,i->", y, y, dtype=np.float64))
        del x, y
        release_rows(b, i, i1)
    d2 = n2 - 2.0 * inner + nh2
    if d2 < 1e-6 * max(n2, nh2):
        d2 = 0.0
        for i, i1 in row_blocks(a, block):
            d = a[i:i1].astype(np.float64) - b[i:i1]
            d2 += float(np.einsum("i,i->", d, d))
            del d
            release_rows(b, i, i1)
    return n2, inner, nh2, max(d2, 0.0)


class CompressedMatrix:
    """Interface shared by every compressed form (see the module docstring for the convention).

    Attributes
    ----------
    form : str
        ``"dense"``, ``"sparse"``, ``"lowrank"`` or ``"sparse+lowrank"``.
    shape : tuple[int, int]
        The stored tensor's shape.
    dtype : numpy.dtype
        dtype of :meth:`toarray` (the dtype the tensor was compressed from).
    layout : str
        ``"out_in"`` or ``"in_out"``.
    """

    form: ClassVar[str] = "?"
    needs: ClassVar[frozenset[str]] = frozenset()  # stored arrays from_parts requires
    shape: tuple[int, int]
    dtype: np.dtype
    layout: str

    # -- to implement ---------------------------------------------------------------------
    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "CompressedMatrix":
        """Rebuild from the arrays :meth:`parts` gave (checked: ValueError if malformed)."""
        raise NotImplementedError

    def parts(self) -> dict[str, np.ndarray]:
        """The stored arrays, by role (``"data"``, ``"indices"``, ``"left"``...)."""
        raise NotImplementedError

    def toarray(self) -> np.ndarray:
        """The dense tensor this matrix stands for, in the stored shape and ``dtype``."""
        raise NotImplementedError

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Dense rows ``start:stop`` of :meth:`toarray`, decoded without the rest."""
        raise NotImplementedError

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        raise NotImplementedError

    def blocks(self, block: int = 1 << 20) -> Any:
        """Yield ``(start, stop, rows)``: the dense tensor in row blocks of about ``block``
        elements and at most a sixteenth of the matrix, so a caller never holds all of it
        (issue 15: peak memory in multiples of the tensor at any size)."""
        m, n = self.shape
        step = max(1, min(block // max(1, n), -(-m // 16)))
        for r in range(0, m, step):
            yield r, min(m, r + step), self.rows(r, min(m, r + step))

    # -- shared ---------------------------------------------------------------------------
    storage: str | None = None  # "BF16": float arrays hold bfloat16 values, stored so

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array (values, indices, index pointers, factors), as stored
        (2 per value under bfloat16 storage)."""
        return array_nbytes(self.parts().values(), self.storage)

    @property
    def n_params(self) -> int:
        """Stored numbers: values and factor entries (indices are counted in ``nbytes`` only)."""
        raise NotImplementedError

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense tensor in ``dtype``."""
        return dense_nbytes(self.shape, self.dtype.itemsize)

    @property
    def in_features(self) -> int:
        return self.shape[1] if self.layout == "out_in" else self.shape[0]

    @property
    def out_features(self) -> int:
        return self.shape[0] if self.layout == "out_in" else self.shape[1]

    def matmul(self, X: Any, transpose: bool = False) -> np.ndarray:
        """Matrix product ``W @ X`` (``Wᵀ @ X`` with ``transpose``), ``X`` 1-D or 2-D.

        Returns float32 for float32/float16 weights and inputs, else float64.

        Raises
        ------
        ValueError
            If ``X`` has the wrong number of rows or dimensions.
        """
        Xa = np.asarray(X)
        if Xa.dtype.kind not in "fiub":
            raise TypeError(f"X: expected a real numeric array, got dtype {Xa.dtype}")
        if Xa.ndim not in (1, 2):
            raise ValueError(f"X: expected a 1-D or 2-D array, got {Xa.ndim}-D")
        need = self.shape[0] if transpose else self.shape[1]
        if Xa.shape[0] != need:
            raise ValueError(f"X: has {Xa.shape[0]} rows, expected {need} (W is "
                             f"{self.shape[0]}x{self.shape[1]}{', transposed' if transpose else ''})")
        dt = _compute_dtype(self.dtype)
        if Xa.dtype == np.float64 or Xa.dtype.kind != "f":
            dt = np.dtype(np.float64)
        return self._matmul(Xa.astype(dt, copy=False), bool(transpose))

    def apply(self, x: Any) -> np.ndarray:
        """The linear layer without bias: ``x`` ``(batch, in)`` or ``(in,)`` -> ``y`` ``(batch, out)``.

        ``y = x Wᵀ`` for layout ``"out_in"``, ``y = x W`` for ``"in_out"``.
        """
        xa = np.asarray(x)
        if xa.ndim not in (1, 2):
            raise ValueError(f"x: expected a 1-D or 2-D array, got {xa.ndim}-D")
        if xa.shape[-1] != self.in_features:
            raise ValueError(f"x: has {xa.shape[-1]} features, the layer takes {self.in_features}")
        y = self.matmul(xa.T, transpose=(self.layout == "in_out"))
        return y.T

    def relative_error(self, W: Any) -> float:
        """``‖W − Ŵ‖_F / ‖W‖_F`` against the original ``W`` (0 when both are zero)."""
        Wa = np.asarray(W)
        if Wa.shape != self.shape:
            raise ValueError(f"W: expected shape {self.shape}, got {Wa.shape}")
        ref = diff = 0.0
        for r0, r1, blk in self.blocks():
            a, _, _, d = error_stats(Wa[r0:r1], blk)
            ref, diff = ref + a, diff + d
            release_rows(Wa, r0, r1)  # (a file's pages: the whole of W was resident after)
        if ref == 0.0:
            return 0.0 if diff == 0.0 else float("inf")
        return float(np.sqrt(diff / ref))

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.shape[0]}x{self.shape[1]} {self.dtype} "
                f"{self.layout}: {self.n_params} params, {self.nbytes} bytes>")


def _setup(obj: CompressedMatrix, shape: Any, dtype: Any, layout: str) -> None:
    if len(shape) != 2 or any(int(s) < 0 for s in shape):
        raise ValueError(f"shape: expected 2 non-negative sizes, got {shape!r}")
    obj.shape = (int(shape[0]), int(shape[1]))
    obj.dtype = np.dtype(dtype)
    if obj.dtype.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype, got {obj.dtype}")
    obj.layout = _check_layout(layout)


class Dense(CompressedMatrix):
    """A tensor kept as it is (the baseline every other form must beat)."""

    form = "dense"

    needs = frozenset({"values"})

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "Dense":
        return cls(parts["values"], layout)

    def __init__(self, W: Any, layout: str = "out_in"):
        Wa = np.asarray(W)
        if Wa.ndim != 2:
            raise ValueError(f"W: expected a 2-D array, got {Wa.ndim}-D")
        _setup(self, Wa.shape, Wa.dtype, layout)
        self.W = Wa

    def parts(self) -> dict[str, np.ndarray]:
        return {"values": self.W}

    @property
    def n_params(self) -> int:
        return int(self.W.size)

    def toarray(self) -> np.ndarray:
        return np.array(self.W)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.W[start:stop])

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        W = self.W.astype(X.dtype, copy=False)
        return (W.T if transpose else W) @ X


class Sparse(CompressedMatrix):
    """CSR storage: values, column indices (uint8 or uint16 when the columns allow), row pointers.

    Products run in the C++ CSR kernel (:func:`weightpress.csr_matmul`).

    Parameters
    ----------
    A : scipy.sparse CSR array or matrix
        The kept entries (e.g. from :func:`weightpress.prune`); canonical format expected.
    layout : str
        See the module docstring.
    dtype : numpy.dtype, optional
        dtype of the stored values (default: ``A.dtype``).
    """

    form = "sparse"

    def __init__(self, A: Any, layout: str = "out_in", dtype: Any = None):
        if not (sp.issparse(A) and A.format == "csr"):
            raise TypeError(f"A: expected a scipy.sparse CSR array, got {type(A).__name__}")
        dt = np.dtype(dtype if dtype is not None else A.dtype)
        _setup(self, A.shape, dt, layout)
        m, n = self.shape
        idx, ptr = index_dtype(n), pointer_dtype(A.nnz)
        self.data = np.ascontiguousarray(A.data, dtype=dt)
        self.indices = np.ascontiguousarray(A.indices, dtype=idx)
        self.indptr = np.ascontiguousarray(A.indptr, dtype=ptr)
        self._csr: sp.csr_array | None = None
        self._dense: np.ndarray | None = None

    needs = frozenset({"data", "indices", "indptr"})

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "Sparse":
        return cls.from_arrays(parts["data"], parts["indices"], parts["indptr"], shape, layout)

    @classmethod
    def from_arrays(cls, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                    shape: tuple[int, int], layout: str = "out_in") -> "Sparse":
        """Rebuild from stored arrays, checking the CSR structure (ValueError if malformed)."""
        m, n = shape
        if indptr.ndim != 1 or indptr.size != m + 1 or indptr[0] != 0:
            raise ValueError(f"indptr: expected {m + 1} entries starting at 0")
        if np.any(np.diff(indptr.astype(np.int64)) < 0):
            raise ValueError("indptr: not monotone")
        if indices.ndim != 1 or data.ndim != 1 or indices.size != data.size or indptr[-1] != data.size:
            raise ValueError("indices/data: lengths do not match indptr[-1]")
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise ValueError(f"indices: column index out of range [0, {n})")
        obj = cls.__new__(cls)
        _setup(obj, shape, data.dtype, layout)
        obj.data, obj.indices, obj.indptr = data, indices, indptr
        obj._csr = None
        obj._dense = None
        return obj

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def n_params(self) -> int:
        return self.nnz

    def parts(self) -> dict[str, np.ndarray]:
        return {"data": self.data, "indices": self.indices, "indptr": self.indptr}

    def tocsr(self, dtype: Any = None) -> sp.csr_array:
        """A SciPy CSR array with int32/int64 indices (cached for the stored dtype)."""
        dt = _compute_dtype(self.dtype) if dtype is None else np.dtype(dtype)
        if self._csr is None or self._csr.dtype != dt:
            idx = np.int64 if self.indptr.dtype == np.int64 or self.shape[1] >= 2**31 else np.int32
            A = sp.csr_array((self.data.astype(dt, copy=False), self.indices.astype(idx),
                              self.indptr.astype(idx, copy=False)), shape=self.shape)
            A.has_sorted_indices = True
            self._csr = A
        return self._csr

    def toarray(self) -> np.ndarray:
        return self.rows(0, self.shape[0])

    def rows(self, start: int, stop: int) -> np.ndarray:
        A = self.tocsr(self.dtype if self.dtype != np.float16 else np.float32)
        return A[start:stop].toarray().astype(self.dtype, copy=False)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        # Dense enough that the CSR kernel's arrays (int32/int64 indices) are no smaller than
        # the dense matrix: a cached dense copy, no larger than the CSR cache it replaces,
        # and BLAS, which reads no more memory (weightpress.linalg.dense_product_pays).
        idx = np.int64 if self.indptr.dtype == np.int64 or self.shape[1] >= 2**31 else np.int32
        if dense_product_pays(self.nnz, self.shape, X.dtype, idx):
            if self._dense is None or self._dense.dtype != X.dtype:
                self._dense = self.tocsr(X.dtype).toarray()
                self._csr = None  # (the dense copy replaces it)
            return (self._dense.T if transpose else self._dense) @ X
        return csr_matmul(self.tocsr(X.dtype), X, transpose=transpose, check_dense=False)


class LowRank(CompressedMatrix):
    """``W ≈ left @ right`` with ``left`` ``(m, r)`` and ``right`` ``(r, n)``.

    Build from an SVD with :meth:`from_svd` (``U·diag(s)·Vt``, ``√s`` folded into each factor
    so both have the same scale, which keeps float16 storage safe). Products are two thin
    BLAS GEMMs: ``left @ (right @ X)``.
    """

    form = "lowrank"

    needs = frozenset({"left", "right"})

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "LowRank":
        return cls(parts["left"], parts["right"], layout)

    def __init__(self, left: Any, right: Any, layout: str = "out_in", dtype: Any = None):
        L, R = np.asarray(left), np.asarray(right)
        if L.ndim != 2 or R.ndim != 2 or L.shape[1] != R.shape[0]:
            raise ValueError(f"left/right: expected (m, r) and (r, n) factors, got {L.shape} and {R.shape}")
        dt = np.dtype(dtype if dtype is not None else np.result_type(L.dtype, R.dtype))
        _setup(self, (L.shape[0], R.shape[1]), dt, layout)
        self.left = np.ascontiguousarray(L, dtype=dt)
        self.right = np.ascontiguousarray(R, dtype=dt)

    @classmethod
    def from_svd(cls, U: np.ndarray, s: np.ndarray, Vt: np.ndarray, layout: str = "out_in",
                 dtype: Any = None) -> "LowRank":
        """From thin SVD factors ``U`` ``(m, r)``, ``s`` ``(r,)``, ``Vt`` ``(r, n)``."""
        root = np.sqrt(np.asarray(s, dtype=np.float64))
        dt = dtype if dtype is not None else U.dtype
        return cls(U * root.astype(U.dtype), root.astype(Vt.dtype)[:, None] * Vt, layout, dt)

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @property
    def n_params(self) -> int:
        return int(self.left.size + self.right.size)

    def parts(self) -> dict[str, np.ndarray]:
        return {"left": self.left, "right": self.right}

    def toarray(self) -> np.ndarray:
        return self.rows(0, self.shape[0])

    def rows(self, start: int, stop: int) -> np.ndarray:
        dt = _compute_dtype(self.dtype)
        return (self.left[start:stop].astype(dt) @ self.right.astype(dt)).astype(self.dtype, copy=False)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        L = self.left.astype(X.dtype, copy=False)
        R = self.right.astype(X.dtype, copy=False)
        if transpose:
            return R.T @ (L.T @ X)
        return L @ (R @ X)


class SumOfForms(CompressedMatrix):
    """A matrix stored as the sum of other compressed forms (``terms``: role prefix -> form):
    their parts under the prefix, their bytes and parameters added, their products summed."""

    @property
    def terms(self) -> tuple[tuple[str, CompressedMatrix], ...]:
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return sum(m.n_params for _, m in self.terms)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for _, m in self.terms)

    def parts(self) -> dict[str, np.ndarray]:
        return {f"{p}.{k}": v for p, m in self.terms for k, v in m.parts().items()}

    def toarray(self) -> np.ndarray:
        dt = _compute_dtype(self.dtype)
        return sum(m.toarray().astype(dt) for _, m in self.terms).astype(self.dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        dt = _compute_dtype(self.dtype)
        return sum(m.rows(start, stop).astype(dt) for _, m in self.terms).astype(self.dtype)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        return sum(m._matmul(X, transpose) for _, m in self.terms)


class SparsePlusLowRank(SumOfForms):
    """``W ≈ S + L``: a :class:`Sparse` part plus a :class:`LowRank` part of the same shape."""

    form = "sparse+lowrank"

    needs = frozenset({"sparse.data", "sparse.indices", "sparse.indptr", "lowrank.left",
                       "lowrank.right"})

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "SparsePlusLowRank":
        return cls(Sparse.from_parts(_sub(parts, "sparse"), shape, layout),
                   LowRank.from_parts(_sub(parts, "lowrank"), shape, layout))

    def __init__(self, sparse: Sparse, lowrank: LowRank):
        if not isinstance(sparse, Sparse) or not isinstance(lowrank, LowRank):
            raise TypeError("sparse, lowrank: expected a Sparse and a LowRank matrix")
        if sparse.shape != lowrank.shape or sparse.layout != lowrank.layout:
            raise ValueError(f"sparse, lowrank: shapes/layouts differ ({sparse.shape} "
                             f"{sparse.layout} vs {lowrank.shape} {lowrank.layout})")
        _setup(self, sparse.shape, np.result_type(sparse.dtype, lowrank.dtype), sparse.layout)
        self.sparse, self.lowrank = sparse, lowrank

    @property
    def terms(self) -> tuple[tuple[str, CompressedMatrix], ...]:
        return (("sparse", self.sparse), ("lowrank", self.lowrank))


class SparseCoded(CompressedMatrix):
    """Rows coded sparsely in a dictionary: ``W ≈ C @ Dᵀ``, ``C`` sparse ``(m, k)``, ``D``
    ``(n, k)``.

    ``D`` is either stored (a learned dictionary) or the overcomplete DCT of
    :func:`weightpress.sparse_coding.dct_dictionary`, which is regenerated from its size and
    costs no bytes. Products: ``W @ X = C (Dᵀ X)`` (the sparse product in C++),
    ``Wᵀ @ X = D (Cᵀ X)``.
    """

    form = "sparse-coded"

    needs = frozenset({"codes.data", "codes.indices", "codes.indptr"})

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "SparseCoded":
        if ("dictionary" in parts) == ("dct_shape" in parts):
            raise ValueError("sparse-coded: expected exactly one of 'dictionary' and 'dct_shape'")
        if "dictionary" in parts:
            D = parts["dictionary"]
            if D.ndim != 2 or D.shape[0] != shape[1]:
                raise ValueError(f"sparse-coded: dictionary has shape {D.shape}, expected ({shape[1]}, k)")
            k = D.shape[1]
        else:
            ds = parts["dct_shape"]
            if ds.shape != (2,) or int(ds[0]) != shape[1] or int(ds[1]) < 1:
                raise ValueError("sparse-coded: malformed dct_shape")
            k = int(ds[1])
        C = Sparse.from_parts(_sub(parts, "codes"), (shape[0], k), layout)
        return (cls(C, parts["dictionary"]) if "dictionary" in parts
                else cls(C, dct_atoms=shape[1]))

    def __init__(self, codes: Sparse, dictionary: Any = None, *, dct_atoms: int | None = None):
        if not isinstance(codes, Sparse):
            raise TypeError("codes: expected a Sparse matrix (m, k)")
        m, k = codes.shape
        if (dictionary is None) == (dct_atoms is None):
            raise ValueError("give exactly one of dictionary and dct_atoms")
        if dictionary is not None:
            D = np.asarray(dictionary)
            if D.ndim != 2 or D.shape[1] != k:
                raise ValueError(f"dictionary: expected (n, {k}), got {D.shape}")
            self.dictionary: np.ndarray | None = np.ascontiguousarray(D, dtype=codes.dtype)
            n = D.shape[0]
            self._dct = None
        else:
            n = int(dct_atoms)
            self.dictionary = None
            self._dct = np.array([n, k], dtype=np.int64)
        _setup(self, (m, n), codes.dtype, codes.layout)
        self.codes = codes

    def _D(self, dt: Any) -> np.ndarray:
        if self.dictionary is not None:
            return self.dictionary.astype(dt, copy=False)
        return dct_dictionary(int(self._dct[0]), int(self._dct[1]), dt)  # type: ignore[index]

    @property
    def n_params(self) -> int:
        return self.codes.n_params + (0 if self.dictionary is None else int(self.dictionary.size))

    def parts(self) -> dict[str, np.ndarray]:
        p = {f"codes.{k}": v for k, v in self.codes.parts().items()}
        if self.dictionary is not None:
            p["dictionary"] = self.dictionary
        else:
            p["dct_shape"] = self._dct  # type: ignore[assignment]
        return p

    def toarray(self) -> np.ndarray:
        return self.rows(0, self.shape[0])

    def rows(self, start: int, stop: int) -> np.ndarray:
        dt = _compute_dtype(self.dtype)
        return (self.codes.rows(start, stop).astype(dt) @ self._D(dt).T).astype(self.dtype)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        D = self._D(X.dtype)
        if transpose:
            return D @ self.codes._matmul(X, True)
        return self.codes._matmul(np.ascontiguousarray(D.T @ X), False)


FORMS: dict[str, type[CompressedMatrix]] = {
    c.form: c for c in (Dense, Sparse, LowRank, SparsePlusLowRank, SparseCoded)}


def store_as(m: CompressedMatrix, storage: str | None, *, exact: bool = False) -> CompressedMatrix:
    """Mark ``m`` as stored in ``storage`` (``None`` or ``"BF16"``), rounding its float32 value
    arrays to bfloat16 in place (``exact``: they already are) so the matrix computes what the
    file holds. Returns ``m``.
    """
    if check_storage(storage) is None:
        return m
    if m.dtype != np.float32:
        raise TypeError(f"storage='BF16' needs float32 values, got {m.dtype}")
    if isinstance(m, SparsePlusLowRank):
        store_as(m.sparse, storage, exact=exact)
        store_as(m.lowrank, storage, exact=exact)
    elif not exact:
        for p in m.parts().values():
            if p.dtype == np.float32:
                if not p.flags.writeable:
                    raise ValueError("store_as: value arrays are read-only")
                p[...] = bf16_to_f32(f32_to_bf16(p)).reshape(p.shape)
        if isinstance(m, Sparse):
            m._csr = m._dense = None
    m.storage = storage
    return m

def _sub(parts: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays of one component (``"sparse.data"`` -> ``"data"`` for prefix ``sparse``)."""
    return {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith(prefix + ".")}


def register_form(cls: type[CompressedMatrix]) -> type[CompressedMatrix]:
    """Add a compressed-matrix class to :data:`FORMS` (by its ``form``), so containers store
    and rebuild it; usable as a class decorator."""
    if not cls.form or cls.form == "?" or not cls.needs:
        raise ValueError(f"{cls.__name__}: a form needs a name and the parts it stores")
    FORMS[cls.form] = cls
    return cls


def from_parts(form: str, parts: dict[str, np.ndarray], shape: tuple[int, int],
               layout: str = "out_in") -> CompressedMatrix:
    """Rebuild a compressed matrix from its stored arrays (as :meth:`~CompressedMatrix.parts`):
    the form's class checks and assembles them.

    Raises
    ------
    ValueError
        Unknown form, missing parts, or parts inconsistent with ``shape``.
    """
    shape = (int(shape[0]), int(shape[1]))
    if form not in FORMS:
        raise ValueError(f"form: expected one of {sorted(FORMS)}, got {form!r}")
    cls = FORMS[form]
    missing = cls.needs - parts.keys()
    if missing:
        raise ValueError(f"{form}: missing stored arrays {sorted(missing)}")
    m = cls.from_parts(parts, shape, layout)
    if m.shape != shape:
        raise ValueError(f"{form}: stored arrays give shape {m.shape}, expected {shape}")
    return m
