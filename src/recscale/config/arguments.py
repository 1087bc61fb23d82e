"""The argparse bridge: a Checked dataclass's fields become flags (their `help` metadata is the
--help text, their default shown), and a parsed namespace becomes a layer of settings again.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterable

from recscale.config.layers import _unwrap_optional
from recscale.config.run import GROUPS, RunConfig, run_field_owner


def _parse_tuple(item_type: type, length: int | None):
    """Comma-separated values; `length` None accepts any number of them."""
    expected = "some" if length is None else str(length)

    def parse(text: str) -> tuple:
        parts = [p for p in text.split(",") if p.strip()]
        try:
            values = tuple(item_type(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected} comma-separated numbers, got {text!r}")
        if not values or (length is not None and len(values) != length):
            raise argparse.ArgumentTypeError(f"expected {expected} comma-separated numbers, got {text!r}")
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                  skip: Iterable[str] = ()) -> None:
    """Add one `--flag` per field of dataclass `cls` (nested group fields are skipped); defaults
    stay None so that we can tell which flags the user really gave (CLI overrides config file
    overrides dataclass default)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or field.name in GROUPS and cls is RunConfig:
            continue
        flag = "--" + field.name.replace("_", "-")
        tp, _ = _unwrap_optional(hints[field.name])
        help_text = field.metadata.get("help", "")
        if field.default not in (None, "", (), dataclasses.MISSING):  # no default to show (or said in the help)
            default_text = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
            help_text += f" [default: {default_text}]"
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            variadic = len(args) == 2 and args[1] is Ellipsis
            kwargs["type"] = _parse_tuple(args[0], None if variadic else len(args))
            kwargs["metavar"] = "X,X,..." if variadic else ",".join(["X"] * len(args))
        else:
            kwargs["type"] = tp
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        if "metavar" in field.metadata:
            kwargs["metavar"] = field.metadata["metavar"]
        parser.add_argument(flag, **kwargs)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig setting as a flag, in one --help group per section."""
    add_arguments(parser.add_argument_group("What to train, on what, for how long ([run] in a config file)"),
                  RunConfig)
    for name, cls in GROUPS.items():  # the group's docstring, "[optim]: the optimizer ...", as a heading
        text = cls.__doc__.split(":", 1)[1].strip().rstrip(".")
        add_arguments(parser.add_argument_group(f"{text[0].upper()}{text[1:]} ([{name}] in a config file)"), cls)


def from_namespace(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that the user set on the command line."""
    return {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)
            if getattr(namespace, f.name, None) is not None}


def run_flags(namespace: argparse.Namespace) -> dict[str, Any]:
    """Every RunConfig setting given on the command line, by field name."""
    names = run_field_owner()
    return {name: getattr(namespace, name) for name in names if getattr(namespace, name, None) is not None}
