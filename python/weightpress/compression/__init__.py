"""One weight matrix at a time: the compressed forms (each computes, knows its exact bytes and
rebuilds from its stored parts), the byte model, the methods that aim a form at a budget
(weight-space, or output-space with calibration statistics) and sparse coding."""

from .calibration import CalibrationSet, CalibrationStats, output_error
from .matrices import (CompressedMatrix, Dense, LowRank, Sparse, SparseCoded, SparsePlusLowRank,
                       from_parts)
from .quant import Codebook, Quantized

__all__ = ["CompressedMatrix", "Dense", "Sparse", "LowRank", "SparsePlusLowRank", "SparseCoded",
           "from_parts", "CalibrationStats", "CalibrationSet", "output_error", "Quantized", "Codebook"]
