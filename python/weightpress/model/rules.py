"""Which tensors to compress and how: rules (``GLOB=ACTION[:key=value,...]``, first match
wins), the default rules that keep biases, norms, embeddings and small tensors, and :func:`plan`,
which turns a model's tensor list into one :class:`Decision` per tensor with its reason."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..compression import methods as M
from ..compression.views import MatrixView, matrix_view
from ..io.structure import onnx_uses

__all__ = ["Rule", "parse_rule", "DEFAULT_RULES", "DEFAULT_MIN_SIZE", "Decision", "plan", "ACTIONS",
           "tensor_views"]

ACTIONS = ("skip",) + M.METHODS
DEFAULT_MIN_SIZE = 4096


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a glob on tensor names) -> ``action`` (``skip`` or a method) with options.

    Options override the global target for matching tensors: ``ratio``, ``error``, ``rank``,
    ``sparsity``, ``pattern`` (N:M).
    """

    pattern: str
    action: str
    options: tuple[tuple[str, Any], ...] = ()
    reason: str = "user rule"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


def _flag(v: str) -> bool:
    t = v.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


_flag.__name__ = "bool"
_OPT_TYPES = {"ratio": float, "error": float, "rank": int, "sparsity": float, "pattern": str,
              "bits": int, "group": int, "symmetric": _flag}


def parse_rule(text: str) -> Rule:
    """Parse ``GLOB=ACTION[:key=value,...]``, e.g. ``"*.attn.*=lowrank:rank=32"``, ``"lm_head*=skip"``.

    Raises
    ------
    ValueError
        Malformed text, unknown action or option, or a bad option value.
    """
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"rule: expected 'GLOB=ACTION[:key=value,...]', got {text!r}")
    pat, _, rest = text.partition("=")
    action, _, opts = rest.partition(":")
    action = action.strip()
    if not pat.strip() or action not in ACTIONS:
        raise ValueError(f"rule {text!r}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    options = []
    for item in filter(None, (o.strip() for o in opts.split(","))):
        k, eq, v = item.partition("=")
        if not eq or k not in _OPT_TYPES:
            raise ValueError(f"rule {text!r}: option must be one of {', '.join(_OPT_TYPES)} "
                             f"as key=value, got {item!r}")
        try:
            options.append((k, _OPT_TYPES[k](v)))
        except ValueError:
            raise ValueError(f"rule {text!r}: option {k} needs a "
                             f"{_OPT_TYPES[k].__name__}, got {v!r}") from None
    return Rule(pat.strip(), action, tuple(options), reason=f"rule {text}")


# Tensors left as they are unless a user rule says otherwise (checked after user rules).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|[._/])(bias|b)$|bias", "bias"),
    (r"embed|wte|wpe|tok_emb|word_emb|position_emb|shared\.weight", "embedding"),
    (r"norm|(^|[._/])ln(_?\w*)?([._/]|$)|layer_?norm|rms", "normalization"),
)


@dataclass(slots=True)  # one per tensor (40k-tensor models, issue 15)
class Decision:
    """What happens to one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    action: str                     # "skip" or a method name
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def plan(infos: Mapping[str, Any], method: str = "auto", rules: Iterable[Rule] = (),
         min_size: int = DEFAULT_MIN_SIZE) -> list[Decision]:
    """Decide per tensor: compress (with which method and options) or keep, with the reason.

    User ``rules`` are tried first (first match wins); then the defaults: tensors that are
    not 2-D, not floating point, smaller than ``min_size`` elements, or named like a bias,
    an embedding or a normalization are kept.
    """
    if method not in M.METHODS:
        raise ValueError(f"method: expected one of {', '.join(M.METHODS)}, got {method!r}")
    rules = list(rules)
    out = []
    for name, inf in infos.items():
        shape, dt = tuple(inf[0]), np.dtype(inf[1])
        d = Decision(name, shape, dt, method)
        user = next((r for r in rules if r.matches(name)), None)
        if user is not None:
            d.action, d.reason, d.options = user.action, user.reason, dict(user.options)
            if d.action != "skip" and (len(shape) != 2 or dt.kind != "f"):
                d.action, d.reason = "skip", f"{user.reason}, but not a 2-D float matrix"
        elif len(shape) != 2:
            d.action, d.reason = "skip", f"{len(shape)}-D tensor, not a matrix"
        elif dt.kind != "f":
            d.action, d.reason = "skip", f"{dt} tensor, not floating point"
        else:
            for rx, why in DEFAULT_RULES:
                if re.search(rx, name, flags=re.IGNORECASE):
                    d.action, d.reason = "skip", why
                    break
            else:
                size = int(np.prod(shape))
                if size < min_size:
                    d.action, d.reason = "skip", f"small ({size} < {min_size} elements)"
        out.append(d)
    return out


def tensor_views(source: Any) -> dict[str, MatrixView | None]:
    """Each tensor's matrix view (conv and recurrent weights as the matrix their layer
    multiplies by; ONNX views from the operator that reads the initializer)."""
    fmt = getattr(source, "format", "")
    uses: dict[str, Any] = {}
    if fmt == "onnx":
        try:
            uses = onnx_uses(source.path)
        except (ImportError, ValueError):
            uses = {}
    return {n: matrix_view(n, inf.shape, source_format=fmt, uses=uses.get(n))
            for n, inf in source.info().items()}


# keep-reasons of the default rules the ratio search may override (never a user rule's)
_SOFT = ("bias", "embedding", "normalization", "small")


def _soft_kept(d: Decision, view: MatrixView | None) -> bool:
    """A tensor only the default rules keep, that a ratio search may compress after all."""
    return (d.action == "skip" and d.reason.startswith(_SOFT) and view is not None
            and d.dtype.kind == "f" and view.kind != "bias")
