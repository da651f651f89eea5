"""atheris entry point shared by the ``fuzz_<target>.py`` harnesses.

``python fuzz/fuzz_safetensors.py [libFuzzer flags] [corpus dirs]`` fuzzes one target of
:mod:`targets` with coverage from weightpress's own modules. Use :mod:`run` for a bounded run
of every harness.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(target: str) -> None:
    import atheris

    with atheris.instrument_imports(include=["weightpress"]):
        import weightpress.cli  # noqa: F401 - instrumented for coverage
        import weightpress.io  # noqa: F401
        import weightpress.io.keras  # noqa: F401
        import weightpress.io.npz  # noqa: F401
        import weightpress.io.onnx_graph  # noqa: F401
        import weightpress.io.pytorch  # noqa: F401
        import weightpress.io.safetensors  # noqa: F401
        import weightpress.model.container  # noqa: F401
    from targets import TARGETS

    fn = TARGETS[target]
    atheris.Setup(sys.argv, fn)
    atheris.Fuzz()
