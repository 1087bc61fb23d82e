"""Search spaces for `recscale tune`: a TOML file with one table per setting, any `recscale train`
setting or a hyperparameter of the model.

    [lr]
    type = "log"            # log (log-uniform), uniform, int, categorical
    low = 1e-4
    high = 1e-2

    [factors]
    type = "int"
    low = 8
    high = 128
    log = true              # int only: log-spaced

    [layers]
    type = "categorical"
    choices = [[256, 128, 64], [128, 64, 32]]

Every model declares a default space (`Recommender.tune_space`, same form as a dict), used when
no --space is given. Problems are one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from recscale.config.files import tomllib
from recscale.config.run import run_field_owner
from recscale.errors import RecscaleError

KINDS = ("log", "uniform", "int", "categorical")


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            # Optuna stores plain values only: lists (layer widths) travel as their JSON text
            text = trial.suggest_categorical(self.name, [json.dumps(c) for c in self.choices])
            value = json.loads(text)
            return tuple(value) if isinstance(value, list) else value
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.kind == "log")


def _number(where: str, key: str, spec: dict, field: str, integer: bool) -> float | int:
    if field not in spec:
        raise RecscaleError(f"{where}: [{key}] needs {field}")
    value = spec[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecscaleError(f"{where}: [{key}] {field}: expected a finite number, got {value!r}")
    if integer and not float(value).is_integer():
        raise RecscaleError(f"{where}: [{key}] {field}: expected an integer, got {value!r}")
    return int(value) if integer else float(value)


def parse_param(where: str, key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise RecscaleError(f"{where}: [{key}] must be a table with a type, got {spec!r}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise RecscaleError(f"{where}: [{key}] type: one of {', '.join(KINDS)}, got {kind!r}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high"} | ({"log"} if kind == "int" else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RecscaleError(f"{where}: [{key}] unknown field(s) {', '.join(unknown)} for type {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RecscaleError(f"{where}: [{key}] choices: expected a non-empty list")
        return Param(key, kind, choices=tuple(choices))
    low = _number(where, key, spec, "low", kind == "int")
    high = _number(where, key, spec, "high", kind == "int")
    if low > high:
        raise RecscaleError(f"{where}: [{key}] low ({low}) is above high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise RecscaleError(f"{where}: [{key}] log: expected true or false, got {log!r}")
    if (kind == "log" or log) and low <= 0:
        raise RecscaleError(f"{where}: [{key}] a log scale needs low > 0, got {low}")
    return Param(key, kind, low, high, log)


def parse_space(where: str, table: dict, model_fields: set[str]) -> list[Param]:
    """The parameters of a space table, each checked to be a train setting or a model hyperparameter."""
    settings = set(run_field_owner()) - {"data", "model"}
    params = []
    for key, spec in table.items():
        if key not in settings and key not in model_fields:
            raise RecscaleError(f"{where}: [{key}] is neither a `recscale train` setting nor a hyperparameter "
                                f"of this model ({', '.join(sorted(model_fields)) or 'none'})")
        params.append(parse_param(where, key, spec))
    if not params:
        raise RecscaleError(f"{where}: the space is empty")
    return params


def read_space(path: str | Path, model_fields: set[str]) -> list[Param]:
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecscaleError(f"--space: {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecscaleError(f"--space: {path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecscaleError(f"--space: {path}: not TOML: {exc}") from None
    return parse_space(str(path), table, model_fields)
