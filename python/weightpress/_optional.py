"""Optional dependencies: imported where they are used, through :func:`require`, so that a
missing one gives one line naming the package and the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "EXTRAS"]

# module -> the extra of ``pip install 'weightpress[EXTRA]'`` that brings it
EXTRAS = {"onnx": "onnx", "onnxruntime": "capture", "h5py": "keras", "matplotlib": "plot",
          "matplotlib.pyplot": "plot", "google.protobuf.message": "onnx", "torch": "torch",
          "dask": "dask", "distributed": "dask", "zstandard": "zstd"}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise ImportError saying what needs it and how to install it.

    Examples
    --------
    >>> require("numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module)
        hint = f"pip install 'weightpress[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        what = f"{purpose} needs {module}" if purpose else f"{module} is not installed"
        raise ImportError(f"{what}: {hint}") from None
