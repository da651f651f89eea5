"""Error-vs-size curves per layer and the allocation chosen, as PNG files (matplotlib)."""

from __future__ import annotations

import os
import re
from typing import Any

from .._optional import require

__all__ = ["plot_curves", "require_matplotlib"]


def require_matplotlib() -> Any:
    """matplotlib with the Agg backend, or ImportError with the install hint."""
    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg")
    return matplotlib


def _series(label: str) -> str:
    """The curve a candidate belongs to: its form, or ``quant <precision>``."""
    form, _, rest = label.partition("@")
    prec = rest.partition("#")[2]
    if prec:
        return f"{form} {prec.split('+')[0]}"
    return form


def plot_curves(curves: dict[str, Any], directory: str) -> list[str]:
    """One PNG per layer (bytes vs error of every measured candidate, by form, quantization
    by precision (``quant int4g64``: its codes, plus the residual's largest entries where the
    budget leaves room), the chosen one circled) and ``allocation.png`` (bytes given to each
    layer). Returns the paths written."""
    require_matplotlib()
    plt = require("matplotlib.pyplot", "plotting")

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, cv in curves.items():
        cands, k = cv["candidates"], cv["chosen"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        forms = sorted({_series(c.label) for c in cands})
        for f in forms:
            pts = sorted((c.nbytes, c.error) for c in cands if _series(c.label) == f)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f)
        ch = cands[k]
        ax.plot([ch.nbytes], [ch.error], "o", ms=12, mfc="none", mec="k", label="chosen")
        ax.set_xscale("log")
        ax.set_xlabel("bytes")
        ax.set_ylabel("relative error")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(directory, re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(curves) + 1.5))
        names = list(curves)
        ax.barh(names, [curves[n]["candidates"][curves[n]["chosen"]].nbytes for n in names])
        ax.set_xlabel("bytes allocated")
        fig.tight_layout()
        p = os.path.join(directory, "allocation.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths
