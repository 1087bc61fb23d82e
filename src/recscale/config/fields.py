"""Checked settings: field checks (`check=` on an option), `option` (a field with its --help text),
and `Checked`, the frozen dataclass base that validates types, finiteness, ranges, choices and
relations between fields in one place; a problem is one ConfigError line naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from recscale.errors import RecscaleError

Check = Callable[[Any], str]  # returns the problem ("must be > 0") or "" when the value is fine


def positive(value) -> str:
    return "" if value > 0 else f"must be > 0, got {value!r}"


def non_negative(value) -> str:
    return "" if value >= 0 else f"must be >= 0, got {value!r}"


def at_least(low) -> Check:
    return lambda value: "" if value >= low else f"must be >= {low}, got {value!r}"


def in_range(low, high, high_inclusive: bool = False) -> Check:
    """low <= value < high (or <= high)."""
    def check(value):
        ok = low <= value <= high if high_inclusive else low <= value < high
        return "" if ok else f"must lie in [{low}, {high}{']' if high_inclusive else ')'}, got {value!r}"
    return check


def each(check: Check, allow_empty: bool = True) -> Check:
    """Apply `check` to every element of a tuple."""
    def run(values):
        if not values and not allow_empty:
            return "must not be empty"
        return next((f"{problem} (element {i + 1})" for i, v in enumerate(values) if (problem := check(v))), "")
    return run


SEED_RANGE = in_range(0, 2**63)  # NumPy's SeedSequence takes non-negative seeds


def option(default: Any, help: str, check: Check | None = None, **extra: Any) -> Any:
    """A dataclass field whose `help` becomes the flag's --help text and whose `check` (with the
    type's own checks: finite floats, `choices`) runs whenever the dataclass is built."""
    metadata = {"help": help, **extra}
    if check is not None:
        metadata["check"] = check
    return dataclasses.field(default=default, metadata=metadata)


class ConfigError(RecscaleError):
    """A bad value of one field; `build` names where the value came from."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


class Checked:
    """Mixin for frozen config dataclasses: every field is checked on construction."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if not _finite(value):
                raise ConfigError(field.name, f"must be a finite number, got {value!r}")
            choices = field.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(field.name, f"choose from {', '.join(map(str, choices))}, got {value!r}")
            check = field.metadata.get("check")
            if check is not None and (problem := check(value)):
                raise ConfigError(field.name, problem)
        self.relations()

    def relations(self) -> None:
        """Checks that involve several fields; raise ConfigError naming the field to change."""


def size_problem(value: str) -> str:
    from recscale.resources import memory_budget
    try:
        memory_budget(value)
    except RecscaleError as exc:
        return str(exc).split(": ", 1)[1]
    return ""
