"""Error-vs-size curves per layer and the allocation chosen, as PNG files (matplotlib)."""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["plot_curves", "require_matplotlib"]


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'weightpress[plot]'") from None


def plot_curves(curves: dict[str, Any], directory: str) -> list[str]:
    """One PNG per layer (bytes vs error of every measured candidate, by form, the chosen one
    circled) and ``allocation.png`` (bytes given to each layer). Returns the paths written."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, cv in curves.items():
        cands, k = cv["candidates"], cv["chosen"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        forms = sorted({c.label.split("@")[0] for c in cands})
        for f in forms:
            pts = sorted((c.nbytes, c.error) for c in cands if c.label.split("@")[0] == f)
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
