"""The ``weightpress`` command line, its demo on the bundled digits model, and plots."""

from .main import main

__all__ = ["main"]
