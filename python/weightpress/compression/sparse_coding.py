"""Sparse coding of weight rows: ``W[i] ≈ D c_i`` with few nonzeros in each ``c_i``.

The rows of a weight matrix ``W`` (out, in) are coded by batch OMP in a dictionary ``D``
(in, n_atoms): either a fixed overcomplete DCT, or one learned from the rows themselves by a
few K-SVD rounds (Aharon, Elad and Bruckstein 2006). The layer is then stored as the
dictionary plus a CSR matrix of codes ``C`` (out, n_atoms), ``W ≈ C Dᵀ``, and computes
``y = x Wᵀ ≈ (x D) Cᵀ``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import as_float_array, as_matrix, positive_int
from ..linalg.recovery import omp  # the batch OMP kernel

__all__ = ["dct_dictionary", "ksvd", "sparse_code"]


def dct_dictionary(n: int, n_atoms: int | None = None, dtype: Any = np.float64) -> np.ndarray:
    """Overcomplete DCT dictionary (n, n_atoms), unit-norm columns, first atom constant.

    ``n_atoms = n`` gives the orthonormal DCT-II basis.
    """
    n = positive_int(n, "n")
    k = n if n_atoms is None else positive_int(n_atoms, "n_atoms")
    t = np.arange(n)[:, None] + 0.5
    D = np.cos(np.pi * t * np.arange(k)[None, :] / k)
    D /= np.linalg.norm(D, axis=0)
    return D.astype(dtype)


def _codes(D: np.ndarray, Y: np.ndarray, n_nonzero: int) -> sp.csc_array:

    return omp(D, Y, n_nonzero=min(n_nonzero, D.shape[1]), return_sparse=True)


def ksvd(Y: Any, n_atoms: int, n_nonzero: int, *, n_iter: int = 5, init: Any = None,
         seed: int = 0) -> tuple[np.ndarray, sp.csc_array]:
    """Learn a dictionary for the columns of ``Y`` (n_features, n_signals) by K-SVD.

    Parameters
    ----------
    Y : array_like (n_features, n_signals)
    n_atoms : int
    n_nonzero : int
        Atoms per signal in the coding step (batch OMP).
    n_iter : int
        K-SVD rounds (each: code all signals, then update every atom and its coefficients by
        a rank-1 SVD of the residual restricted to the signals that use it).
    init : array_like (n_features, n_atoms), optional
        Starting dictionary (default: overcomplete DCT).
    seed : int
        Seeds the replacement of unused atoms (by badly coded signals).

    Returns
    -------
    D : ndarray (n_features, n_atoms), unit-norm columns
    X : csc_array (n_atoms, n_signals), the codes of the last coding step
    """
    Ya = as_float_array(Y, "Y")
    if Ya.ndim != 2:
        raise ValueError(f"Y: expected (n_features, n_signals), got shape {Ya.shape}")
    m, N = Ya.shape
    n_atoms = positive_int(n_atoms, "n_atoms")
    n_nonzero = positive_int(n_nonzero, "n_nonzero")
    D = dct_dictionary(m, n_atoms) if init is None else as_float_array(init, "init").astype(np.float64)
    if D.shape != (m, n_atoms):
        raise ValueError(f"init: expected shape {(m, n_atoms)}, got {D.shape}")
    Y64 = Ya.astype(np.float64)
    rng = np.random.default_rng(seed)
    X = _codes(D, Y64, n_nonzero)
    for _ in range(positive_int(n_iter, "n_iter")):
        Xr = X.tocsr()
        Xd = Xr.toarray()
        R = Y64 - D @ Xd
        for j in range(n_atoms):
            users = np.nonzero(Xd[j])[0]
            if users.size == 0:  # unused atom: restart it on the worst-coded signal
                worst = int(np.argmax(np.einsum("ij,ij->j", R, R) + rng.uniform(0, 1e-12, N)))
                nrm = np.linalg.norm(R[:, worst])
                if nrm > 0:
                    D[:, j] = R[:, worst] / nrm
                continue
            Ej = R[:, users] + np.outer(D[:, j], Xd[j, users])
            u, s, vt = np.linalg.svd(Ej, full_matrices=False)
            D[:, j] = u[:, 0]
            Xd[j, users] = s[0] * vt[0]
            R[:, users] = Ej - np.outer(D[:, j], Xd[j, users])
        X = _codes(D, Y64, n_nonzero)
    return D.astype(Ya.dtype), X.astype(Ya.dtype)


def sparse_code(W: Any, n_nonzero: int, *, dictionary: Any = "learned", n_atoms: int | None = None,
                n_iter: int = 5) -> tuple[np.ndarray, sp.csr_array]:
    """Code the rows of ``W`` (out, in): returns ``D`` (in, n_atoms) and codes ``C`` (CSR,
    out × n_atoms) with ``W ≈ C @ D.T`` and at most ``n_nonzero`` nonzeros per row of ``C``.

    Parameters
    ----------
    W : array_like (out, in)
    n_nonzero : int
        Nonzeros per row code.
    dictionary : "learned", "dct", or array (in, n_atoms)
        A dictionary learned from the rows by K-SVD (default), the overcomplete DCT, or one given.
    n_atoms : int, optional
        Dictionary size (default ``in``; ignored for a given array).
    n_iter : int
        K-SVD rounds for "learned".
    """
    Wa = as_matrix(W, "W")
    out, inp = Wa.shape
    k = inp if n_atoms is None else positive_int(n_atoms, "n_atoms")
    if isinstance(dictionary, str):
        if dictionary == "dct":
            D = dct_dictionary(inp, k, Wa.dtype)
            X = _codes(D, Wa.T, positive_int(n_nonzero, "n_nonzero"))
        elif dictionary == "learned":
            D, X = ksvd(Wa.T, k, positive_int(n_nonzero, "n_nonzero"), n_iter=n_iter)
        else:
            raise ValueError(f"dictionary must be 'learned', 'dct' or an array, got {dictionary!r}")
    else:
        D = as_float_array(dictionary, "dictionary").astype(Wa.dtype)
        if D.ndim != 2 or D.shape[0] != inp:
            raise ValueError(f"dictionary: expected shape ({inp}, n_atoms), got {D.shape}")
        X = _codes(D, Wa.T, positive_int(n_nonzero, "n_nonzero"))
    C = sp.csr_array(X.T.astype(Wa.dtype))
    C.eliminate_zeros()
    return D.astype(Wa.dtype), C
