"""Whole models: rules and planning, budgets across layers, the model-level compress, the
container file, calibration capture and the per-layer report."""

from .compress import compress_model, open_source
from .container import Container, verify
from .report import Report, Row

__all__ = ["compress_model", "open_source", "Container", "verify", "Report", "Row"]
