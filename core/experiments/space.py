"""A sweep's search space: the values given on the command line, as fixed values and swept dimensions.

Pure Python (no Optuna, no jax): ``--lr 1e-4,3e-4`` and ``--set optimizer.b2=0.99,0.999`` each
become a :class:`Dim` (:func:`parse_spec`), a single value stays a fixed ``--set`` text
(:func:`split_values`), and :func:`grid` spells out every combination of the lists.
:mod:`jaxyard.core.experiments.sweep` runs the trials.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from jaxyard.core.errors import UsageError
from jaxyard.core.registry import params as P
from jaxyard.core.registry.config import parse_set

_DIST = re.compile(r"^(log|uniform|int|choice)\((.*)\)$", re.S)
_RANGE = re.compile(r"^(\d+)-(\d+)$")

__all__ = ["Dim", "as_text", "fixed_text", "grid", "max_epochs", "parse_spec", "split_top", "split_values"]


@attrs.frozen
class Dim:
    """One swept parameter: ``values`` (a list, or ``choice``: texts as typed) or a distribution
    (``log``/``uniform``: floats, ``int``: integers) between ``low`` and ``high``."""

    name: str
    kind: str  # list | choice | log | uniform | int
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def is_list(self) -> bool:
        return self.kind in ("list", "choice")

    def texts_for_check(self) -> list[str]:
        """Values whose configurations are validated before any trial starts."""
        if self.is_list:
            return list(self.values)
        assert self.low is not None and self.high is not None  # a distribution has both bounds
        return [as_text(self.low if self.kind != "int" else int(self.low)), as_text(self.high if self.kind != "int" else int(self.high))]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": [P.parse_value(v) for v in self.values]} if self.is_list else {
            "kind": self.kind, "low": self.low, "high": self.high}


def split_top(text: str) -> list[str]:
    """``a,[1,2],b`` -> ``["a", "[1,2]", "b"]``: commas inside brackets or quotes do not split."""
    out, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
            continue
        current += ch
    out.append(current.strip())
    return [x for x in out if x]


def parse_spec(name: str, text: str) -> Dim | None:
    """A swept value (``1e-4,3e-4``, ``0-4``, ``log(1e-5,1e-2)``, ``int(16,256)``,
    ``choice(a,b)``, ``uniform(0.8,0.99)``), or None for a single fixed value."""
    text = str(text).strip()
    where = f"--set {name}={text}"
    match = _DIST.match(text)
    if match:
        kind, inner = match.groups()
        items = split_top(inner)
        if kind == "choice":
            if len(items) < 2:
                raise UsageError(f"{where}: choice(...) needs at least two values, for example choice(adam,sgd)")
            return Dim(name, "choice", tuple(items))
        if len(items) != 2:
            raise UsageError(f"{where}: {kind}(LOW,HIGH) takes two numbers, for example {kind}(1e-5,1e-2)")
        try:
            low, high = (float(P.parse_value(x)) for x in items)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {kind}(LOW,HIGH) takes two numbers, got {', '.join(items)}") from None
        if not low < high:
            raise UsageError(f"{where}: LOW must be below HIGH")
        if kind == "log" and low <= 0:
            raise UsageError(f"{where}: log(LOW,HIGH) needs LOW > 0")
        if kind == "int" and not (low.is_integer() and high.is_integer()):
            raise UsageError(f"{where}: int(LOW,HIGH) takes two integers")
        return Dim(name, kind, low=low, high=high)
    match = _RANGE.match(text)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if high < low:
            raise UsageError(f"{where}: the range {text} is empty; write LOW-HIGH with LOW <= HIGH")
        return Dim(name, "list", tuple(str(i) for i in range(low, high + 1))) if high > low else None  # N-N: N, fixed
    items = split_top(text)
    if len(items) > 1:
        if len(set(items)) != len(items):
            raise UsageError(f"{where}: a value is listed twice")
        return Dim(name, "list", tuple(items))
    return None


def fixed_text(text: str) -> str:
    """A value that :func:`parse_spec` found not swept, as ``--set`` reads it (``3-3`` is ``3``)."""
    match = _RANGE.match(str(text).strip())
    return match.group(1) if match else str(text)


def as_text(value: Any) -> str:
    """A value as ``--set`` reads it back."""
    if isinstance(value, float):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def split_values(options: Mapping[str, Any] | None = None, sets: Iterable[str] = ()) -> tuple[list[str], list[Dim]]:
    """The values a sweep is given, as ``(fixed, dims)``: the single values as ``KIND.KEY=VALUE``
    texts (every trial has them) and the swept dimensions, in the order given.

    :param options: ``run`` settings by name (the command's options; None: not given), e.g.
        ``{"learning_rate": "1e-4,3e-4"}``.
    :param sets: ``KIND.KEY=VALUE`` texts (``--set``); a logger's values are never swept.
    """
    fixed, dims = [], []
    items = [(f"run.{k}", v) for k, v in (options or {}).items() if v is not None]
    for item in sets:
        section, key, value = parse_set(item)
        items.append((f"{section}.{key}", str(value)))
    for name, text in items:
        dim = None if name.startswith("logger.") else parse_spec(name, text)
        if dim is None:
            fixed.append(f"{name}={fixed_text(text)}")
        else:
            dims.append(dim)
    return fixed, dims


def grid(dims: Iterable[Dim]) -> list[dict[str, str]]:
    """Every combination of the list dimensions, in order (the last varies fastest)."""
    dims = list(dims)
    return [dict(zip([d.name for d in dims], combo, strict=True)) for combo in itertools.product(*(d.values for d in dims))]


def max_epochs(base: int, dims: Iterable[Dim]) -> int:
    """The most epochs any trial trains (``run.epochs`` swept: its largest value)."""
    for d in dims:
        if d.name == "run.epochs":
            return max(int(P.parse_value(v)) for v in d.values) if d.is_list else int(d.high or base)
    return base
