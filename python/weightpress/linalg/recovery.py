"""Sparse recovery and sparse coding: OMP (batch), basis pursuit, BPDN and LASSO."""

from __future__ import annotations

from ._l1 import ConvergenceWarning, SolverInfo, basis_pursuit, lasso
from ._omp import OMPDictionary, omp

__all__ = ["omp", "OMPDictionary", "basis_pursuit", "lasso", "SolverInfo", "ConvergenceWarning"]
