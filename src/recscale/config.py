"""Small frozen dataclasses, one per concern, that double as CLI flags and config-file sections.

A field's `help` metadata is its `--help` text. Config files (TOML, or YAML when PyYAML is installed)
are checked strictly: an unknown key or a value of the wrong type is an error naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from recscale.errors import RecscaleError
from recscale.optim.schedules import DECAYS, WARMUPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field whose `help` becomes the flag's --help text."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


PROTOCOLS = ("ncf", "vae", "random")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How `recscale prepare` turns raw interactions into a prepared dataset."""

    protocol: str = option("ncf", "split protocol: ncf (leave-latest-out + sampled test negatives), "
                           "vae (strong generalization with fold-in), random (per-user ratio split)",
                           choices=PROTOCOLS)
    seed: int = option(0, "seed for every random choice of the split (same seed, same files)")
    min_rating: float | None = option(None, "keep only ratings >= this (default: all for ncf and "
                                      "random, 4.0 for vae as in Liang et al. 2018)")
    min_user_interactions: int | None = option(None, "drop users with fewer interactions after "
                                               "filtering (default: 5 for vae, 1 otherwise)")
    valid: bool = option(True, "ncf: also hold out each user's next-latest interaction for validation")
    test_negatives: int = option(100, "ncf: sampled negatives per held-out positive (never a "
                                 "positive of that user)")
    heldout_users: int | None = option(None, "vae: users held out for validation and again for test "
                                       "(default: 10,000 as in the paper, capped at 10%% of users)")
    holdout_fraction: float = option(0.2, "vae: fraction of each held-out user's items to predict "
                                     "from the rest (fold-in)")
    ratios: tuple[float, float, float] = option((0.8, 0.1, 0.1), "random: train,valid,test "
                                                "fractions of each user's interactions")

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise RecscaleError(f"--protocol: unknown protocol {self.protocol!r} "
                                f"(choose from {', '.join(PROTOCOLS)})")
        if self.test_negatives < 0:
            raise RecscaleError("--test-negatives: must be >= 0")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise RecscaleError("--holdout-fraction: must lie strictly between 0 and 1")
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
            raise RecscaleError("--ratios: need three non-negative fractions that sum to 1, e.g. 0.8,0.1,0.1")
        if self.heldout_users is not None and self.heldout_users < 1:
            raise RecscaleError("--heldout-users: must be >= 1")

    @property
    def effective_min_rating(self) -> float | None:
        if self.min_rating is not None:
            return self.min_rating
        return 4.0 if self.protocol == "vae" else None

    @property
    def effective_min_user_interactions(self) -> int:
        if self.min_user_interactions is not None:
            return self.min_user_interactions
        return 5 if self.protocol == "vae" else 1


PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCALINGS = ("none", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What `recscale train` fits and how. Model hyperparameters live in each model's Config
    ([model] section or --param); each model brings its own defaults for the step settings."""

    data: str = option("", "prepared dataset directory (from `recscale prepare`)")
    model: str = option("popularity", "model name (listed below)")
    epochs: int = option(20, "training epochs (the model's default applies when not given)")
    batch_size: int = option(1024, "global batch size: examples (pairs) or users (rows) per step")
    lr: float = option(1e-3, "learning rate")
    optimizer: str = option("adam", "adam, sgd (momentum), lars (layer-wise trust ratio, for large "
                            "batches), rmsprop or adagrad; sparse embedding tables use SparseAdam with adam")
    weight_decay: float = option(0.0, "L2 weight decay of dense parameters")
    momentum: float = option(0.9, "SGD and LARS momentum")
    lars_eta: float = option(0.001, "LARS trust coefficient eta")
    lr_scaling: str = option("none", "linear: lr x batch-size / base-batch-size (Goyal et al. 2017)",
                             choices=LR_SCALINGS)
    base_batch_size: int = option(0, "the batch size --lr was tuned at (for --lr-scaling linear)")
    warmup: str = option("none", "ramp the rate up over --warmup-epochs: linear, or exponential "
                         "from 1%% of the target", choices=WARMUPS)
    warmup_epochs: float = option(0.0, "length of the warmup in epochs (fractions allowed)")
    lr_decay: str = option("constant", "after warmup: constant, or linear / cosine down to 0 at "
                           "the last step", choices=DECAYS)
    clip_grad_norm: float = option(0.0, "clip the dense gradients' global norm to this (0: off)")
    negatives: int = option(4, "pairs models: sampled negatives per positive and epoch")
    patience: int = option(5, "stop after this many epochs without a better validation metric")
    precision: str = option("fp32", "fp32, bf16 or fp16 (autocast; fp16 with loss scaling)",
                            choices=PRECISIONS)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    seed: int = option(0, "seed for initialization, shuffling and sampling")
    eval_batch_size: int = option(1024, "users per evaluation batch (results do not depend on it)")
    ks: tuple[int, ...] = option((10, 20, 50, 100), "cut-offs K of the ranking metrics")
    pretrained_gmf: str = option("", "neumf: run directory of a trained gmf to initialize from")
    pretrained_mlp: str = option("", "neumf: run directory of a trained mlp to initialize from")
    progress: bool = option(True, "show a progress line (only when stderr is a terminal)")
    checkpoint_every: int = option(0, "also write checkpoints/last.pt every N steps within an epoch "
                                   "(0: at the end of each epoch only)")

    def __post_init__(self) -> None:
        if not self.data:
            raise RecscaleError("--data: a prepared dataset directory is required")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise RecscaleError(f"--{name.replace('_', '-')}: must be >= 1")
        if self.lr <= 0:
            raise RecscaleError("--lr: must be > 0")
        if self.lr_scaling == "linear" and self.base_batch_size < 1:
            raise RecscaleError("--lr-scaling linear: needs --base-batch-size >= 1")
        if self.warmup != "none" and self.warmup_epochs <= 0:
            raise RecscaleError(f"--warmup {self.warmup}: needs --warmup-epochs > 0")
        if self.warmup_epochs < 0:
            raise RecscaleError("--warmup-epochs: must be >= 0")
        for name, allowed in (("precision", PRECISIONS), ("lr_scaling", LR_SCALINGS), ("warmup", WARMUPS),
                              ("lr_decay", DECAYS)):
            if getattr(self, name) not in allowed:
                raise RecscaleError(f"--{name.replace('_', '-')}: choose from {', '.join(allowed)}")
        if self.negatives < 1:
            raise RecscaleError("--negatives: must be >= 1")
        if self.checkpoint_every < 0:
            raise RecscaleError("--checkpoint-every: must be >= 0")


# ----------------------------------------------------------------------------- argparse bridge


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_tuple(item_type: type, length: int | None, flag: str):
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


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one `--flag` per field of dataclass `cls`; defaults stay None so that we can tell
    which flags the user really gave (CLI overrides config file overrides dataclass default)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        tp, _ = _unwrap_optional(hints[field.name])
        help_text = field.metadata.get("help", "")
        if field.default is not None and field.default is not dataclasses.MISSING:
            default_text = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
            help_text += f" [default: {default_text}]"
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            variadic = len(args) == 2 and args[1] is Ellipsis
            kwargs["type"] = _parse_tuple(args[0], None if variadic else len(args), flag)
            kwargs["metavar"] = "X,X,..." if variadic else ",".join(["X"] * len(args))
        else:
            kwargs["type"] = tp
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(flag, **kwargs)


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
        raise RecscaleError(f"{where}: expected a list of {len(args)} values, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise RecscaleError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def build(cls: type, *layers: Mapping[str, Any], source: str = "config") -> Any:
    """Instantiate `cls` from layered mappings (later wins; None values are ignored).

    Unknown keys and wrong types are errors that name `source` and the key.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in names:
                raise RecscaleError(f"{source}: unknown key {key!r} for {cls.__name__} "
                                    f"(known: {', '.join(sorted(names))})")
            if value is not None:
                values[name] = _check_type(value, hints[name], f"{source}: {key}")
    return cls(**values)


def from_namespace(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that the user set on the command line."""
    return {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)
            if getattr(namespace, f.name, None) is not None}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or, with PyYAML installed, YAML) config file into a dict of sections."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RecscaleError(f"{path}: cannot read config file: {exc.strerror}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise RecscaleError(f"{path}: YAML config needs PyYAML (pip install pyyaml), or use TOML") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RecscaleError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from exc
    else:
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RecscaleError(f"{path}: invalid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecscaleError(f"{path}: top level must be a table of sections")
    return data


def to_toml(sections: Mapping[str, Any]) -> str:
    """Write a flat two-level mapping of sections as TOML (enough for our resolved configs)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for section, body in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in body.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
