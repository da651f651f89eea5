"""The package's architecture: public names, the import graph's direction (import-linter runs in
CI; these check what it cannot see) and imports done where they belong."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import weightpress as wp

PKG = pathlib.Path(wp.__file__).parent
SOURCES = sorted(PKG.rglob("*.py"))

# every public name of the package before the re-layer: they must keep importing from the root
PUBLIC = ["__version__", "has_openmp", "set_num_threads", "get_num_threads", "threads",
          "soft_threshold", "hard_threshold", "prune", "csr_matmul", "randomized_svd", "svt",
          "omp", "OMPDictionary", "basis_pursuit", "lasso", "SolverInfo", "ConvergenceWarning",
          "compress_model", "open_source", "Container", "verify", "Dense", "Sparse", "LowRank",
          "SparsePlusLowRank", "SparseCoded", "CalibrationStats"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_import_from_the_root(name):
    assert name in wp.__all__
    ns: dict = {}
    exec(f"from weightpress import {name}", ns)  # noqa: S102 - the import statement itself
    assert ns[name] is getattr(wp, name)


def _module(path: pathlib.Path) -> list[str]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _resolve(path: pathlib.Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    here = _module(path)
    pkg = here if path.name == "__init__.py" else here[:-1]
    base = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_only_the_root_init_imports_the_root():
    """Below the root, ``from .. import X`` may only name the compiled ``_core`` (the import
    graph cannot see the extension, so import-linter is told to ignore those lines)."""
    bad = []
    for f in SOURCES:
        if f.parent == PKG and f.name in ("__init__.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(f, node) == "weightpress":
                names = {a.name for a in node.names}
                if names - {"_core"}:
                    bad.append(f"{f.relative_to(PKG)}:{node.lineno} imports {sorted(names)}")
            elif isinstance(node, ast.Import) and any(a.name == "weightpress" for a in node.names):
                bad.append(f"{f.relative_to(PKG)}:{node.lineno} imports weightpress")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and f.name != "_optional.py"):
                bad.append(f"{f.relative_to(PKG)}:{node.lineno} calls import_module")
    assert not bad, bad


def test_imports_sit_at_module_level():
    """In-function imports only for optional dependencies, and those go through
    ``weightpress._optional.require`` (one install hint), so no import statement is nested."""
    nested = []
    for f in SOURCES:
        tree = ast.parse(f.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                nested.append(f"{f.relative_to(PKG)}:{node.lineno}")
    assert not nested, nested


def test_missing_optional_dependency_names_the_extra():
    from weightpress._optional import require

    with pytest.raises(ImportError, match=r"plotting needs no_such_module_xyz: pip install"):
        require("no_such_module_xyz", "plotting")
    with pytest.raises(ImportError, match=r"weightpress\[plot\]"):
        saved = sys.modules.get("matplotlib")
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # import fails
        try:
            require("matplotlib", "plotting")
        finally:
            if saved is None:
                del sys.modules["matplotlib"]
            else:
                sys.modules["matplotlib"] = saved
