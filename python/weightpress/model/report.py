"""The per-layer table printed by ``weightpress compress`` and ``weightpress info``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Row:
    """One tensor of a report (slots: a model of 40k tensors has 40k rows, issue 15)."""

    name: str
    shape: tuple[int, ...]
    form: str
    params: int
    nbytes: int
    orig_bytes: int
    error: float
    reason: str = ""
    output_error: float | None = None   # relative output-space error, with calibration data
    times: dict[str, float] | None = None  # e.g. {"b1": s, "b1 dense": s, "b32": ..., "b32 dense": ...}

    @property
    def ratio(self) -> float:
        return self.orig_bytes / self.nbytes if self.nbytes else float("inf")


@dataclass
class Report:
    """Per-tensor rows plus file sizes; ``str(report)`` is the table ``weightpress info`` prints."""

    rows: list[Row]
    file_bytes: int = 0
    source_bytes: int = 0
    notes: list[str] = field(default_factory=list)  # what the search did beyond the rules
    compressed_bytes: int = 0  # bytes of the tensors compressed (not kept) in the container
    not_stored: dict[str, str] | None = None  # tensors the reader could not hold, and why
    # a ratio search's first try: per layer, the build one step up (Staged.alt)
    alternatives: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.file_bytes if self.file_bytes else float("nan")

    def table(self) -> str:
        return format_table(self)

    __str__ = table

    @classmethod
    def of_container(cls, c: Any) -> "Report":
        """The report of an opened :class:`~weightpress.container.Container`."""
        rows = [Row(n, tuple(e["shape"]), e.get("label") or e["form"], e["params"], e["bytes"], e["orig_bytes"],
                    e["error"], e.get("reason", ""), e.get("output_error"))
                for n, e in c.entries.items()]
        src = int(c.source.get("bytes") or sum(r.orig_bytes for r in rows))
        return cls(rows, c.file_bytes, src, not_stored=dict(getattr(c, "not_stored", {}) or {}))


def human(n: float) -> str:
    """Bytes as 12.3 KiB / 4.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def printable(text: str) -> str:
    """`text` with control and other non-printable characters escaped (``\\x1b``, ``\\n``), so
    a tensor name cannot clear the terminal or forge table rows."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def format_table(report: Any) -> str:
    """Rows: name, shape, form, params, bytes, relative error, ratio, note; then totals.

    The ``(header)`` row is the container's JSON metadata and index, so the bytes column
    adds up to the file size exactly.
    """
    has_out = any(r.output_error is not None for r in report.rows)
    has_t = any(r.times for r in report.rows)
    head = ("tensor", "shape", "form", "params", "bytes", "rel.err", "ratio", "note")
    extra_head = (("out.err",) if has_out else ()) + (("b1 us", "b1 dense", "b32 us", "b32 dense")
                                                       if has_t else ())
    head = head[:6] + extra_head + head[6:]
    lines = []
    for r in report.rows:
        extra: tuple[str, ...] = ()
        if has_out:
            extra += ("" if r.output_error is None else f"{r.output_error:.4f}",)
        if has_t:
            t = r.times or {}
            extra += tuple(f"{t[k] * 1e6:.0f}" if k in t else "" for k in ("b1", "b1 dense", "b32", "b32 dense"))
        lines.append((printable(r.name), "x".join(map(str, r.shape)) or "()", r.form, f"{r.params:,}",
                      human(r.nbytes), f"{r.error:.4f}") + extra + (f"{r.ratio:.2f}x",
                      printable(r.reason) if r.form == "dense" else ""))
    payload = sum(r.nbytes for r in report.rows)
    params = sum(r.params for r in report.rows)
    orig = sum(r.orig_bytes for r in report.rows)
    tail = []
    if report.file_bytes:
        tail.append(("(header)", "", "", "", human(report.file_bytes - payload), "")
                    + ("",) * len(extra_head) + ("", "metadata"))
        tail.append(("total", "", "", f"{params:,}", human(report.file_bytes), "") + ("",) * len(extra_head)
                    + (f"{report.ratio:.2f}x", f"source {human(report.source_bytes)}"))
    else:
        tail.append(("total", "", "", f"{params:,}", human(payload), "") + ("",) * len(extra_head)
                    + (f"{orig / payload if payload else float('nan'):.2f}x", ""))
    rows = [head] + lines + tail
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    widths[0] = min(widths[0], 48)
    right = set(range(3, len(head) - 1))
    out = []
    for k, r in enumerate(rows):
        cells = [(c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0 or k == len(lines):
            out.append("  ".join("-" * w for w in widths))
    for name, why in (getattr(report, "not_stored", None) or {}).items():
        out.append(f"not stored: {printable(name)} ({printable(why)}); decompress with --like "
                   f"the original keeps it")
    return "\n".join(out)
