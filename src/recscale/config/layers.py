"""Settings resolved in layers (defaults < the model's own < config file < flags): each value is
checked against its field's type and says which layer it came from when it is wrong (`--lr`,
`run.toml: [optim] lr`, `--param lam`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping

from recscale.config.fields import ConfigError
from recscale.config.run import GROUPS, RunConfig, run_field_owner
from recscale.errors import RecscaleError


@dataclasses.dataclass(frozen=True)
class Layer:
    """Values from one source. `style` says how a key is named in messages: `flag` (--lr),
    `param` (--param lam), `key` (FILE: [section] key) or `plain` (SOURCE: key)."""

    values: Mapping[str, Any]
    source: str = "config"
    style: str = "plain"
    section: str = ""
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # key -> the name the user typed

    def name(self, key: str) -> str:
        if key in self.aliases:
            return self.aliases[key]
        if self.style == "flag":
            return "--" + key.replace("_", "-")
        if self.style == "param":
            return f"--param {key}"
        if self.style == "key":
            return f"{self.source}: [{self.section}] {key}" if self.section else f"{self.source}: {key}"
        return f"{self.source}: {key}"


def flags(values: Mapping[str, Any]) -> Layer:
    return Layer(values, "flags", "flag")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _check_type(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise RecscaleError(f"{where}: must not be empty")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and isinstance(value, (list, tuple)):
            return tuple(_check_type(v, args[0], where) for v in value)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_check_type(v, a, where) for v, a in zip(value, args))
        if len(args) == 2 and args[1] is Ellipsis:
            raise RecscaleError(f"{where}: expected a list of values, such as [64, 32] (TOML), got {value!r}")
        raise RecscaleError(f"{where}: expected a list of {len(args)} values, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise RecscaleError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _as_layer(layer: Layer | Mapping[str, Any], source: str) -> Layer:
    return layer if isinstance(layer, Layer) else Layer(layer, source)


def _construct(cls: type, values: dict[str, Any], origin: dict[str, Layer], fallback: Layer) -> Any:
    try:
        return cls(**values)
    except ConfigError as exc:
        layer = origin.get(exc.field, fallback)
        raise RecscaleError(f"{layer.name(exc.field)}: {exc.problem}") from None


def unknown_key(key: str, known: set[str], owner: str = "", noun: str = "key") -> str:
    """The problem with a key no settings hold: the closest known name (difflib) and the list."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {noun}{f' for {owner}' if owner else ''}{hint} (known: {', '.join(sorted(known)) or 'none'})"


def build(cls: type, *layers: Layer | Mapping[str, Any], source: str = "config", owner: str = "") -> Any:
    """Instantiate the flat dataclass `cls` from layered values (later wins; None is ignored).
    Unknown keys, wrong types and failed checks are errors naming the layer's source and key;
    `owner` names whose settings they are in messages (never a class name)."""
    layers = tuple(_as_layer(layer, source) for layer in layers)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    origin: dict[str, Layer] = {}
    for layer in layers:
        for key, value in layer.values.items():
            name = key.replace("-", "_")
            if name not in names:
                raise RecscaleError(f"{layer.name(key)}: {unknown_key(name, names, owner)}")
            if value is not None:
                values[name] = _check_type(value, hints[name], layer.name(key))
                origin[name] = layer
    return _construct(cls, values, origin, layers[-1] if layers else Layer({}, source))


def build_run_config(*layers: Layer | Mapping[str, Any], source: str = "config") -> RunConfig:
    """A RunConfig from flat layers of settings by field name (the flag names), each routed to
    its group. Later layers win."""
    layers = tuple(_as_layer(layer, source) for layer in layers)
    owner = run_field_owner()
    per_section: dict[str, dict[str, Any]] = {s: {} for s in ("run", *GROUPS)}
    origin: dict[str, Layer] = {}
    hints = {"run": typing.get_type_hints(RunConfig), **{g: typing.get_type_hints(c) for g, c in GROUPS.items()}}
    for layer in layers:
        for key, value in layer.values.items():
            name = key.replace("-", "_")
            section = owner.get(name)
            if section is None:
                raise RecscaleError(f"{layer.name(key)}: {unknown_key(name, set(owner), noun='setting')}")
            if layer.section and layer.section != section:
                raise RecscaleError(f"{layer.name(key)}: belongs in section [{section}], not [{layer.section}]")
            if value is not None:
                per_section[section][name] = _check_type(value, hints[section][name], layer.name(key))
                origin[name] = layer
    fallback = layers[-1] if layers else Layer({}, source)
    groups = {g: _construct(cls, per_section[g], origin, fallback) for g, cls in GROUPS.items()}
    return _construct(RunConfig, {**per_section["run"], **groups}, origin, fallback)
