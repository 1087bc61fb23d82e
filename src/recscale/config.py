"""Small frozen dataclasses, one per concern, that double as CLI flags and config-file sections.

A training run's configuration is a `RunConfig` holding one dataclass per concern (litgpt's
style): `optim` (the optimizer and its schedule), `loader`, `eval` and `system` (device, precision,
seed, checkpoints), plus the model's own Config (models/). The TOML file has one section per group
(`[run]`, `[optim]`, `[loader]`, `[eval]`, `[system]`, `[model]`); files written before the groups
existed keep everything in `[train]` and are still read.

Every value is validated at this boundary, in one place: types, NaN and infinities, ranges
(`check=` on the field), choices, and relations between fields (`relations()`). A problem is one
line naming the flag (`--lr`), the file and key (`run.toml: [optim] lr`) or the parameter
(`--param lam`), raised as RecscaleError (exit code 2). A field's `help` metadata is its --help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from recscale.errors import RecscaleError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

WARMUPS = ("none", "linear", "exponential")  # optim/schedules.py implements each
DECAYS = ("constant", "linear", "cosine")


# ----------------------------------------------------------------------------- field checks

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


def _size_problem(value: str) -> str:
    from recscale.resources import memory_budget
    try:
        memory_budget(value)
    except RecscaleError as exc:
        return str(exc).split(": ", 1)[1]
    return ""


# ----------------------------------------------------------------------------- prepare

PROTOCOLS = ("ncf", "vae", "random")
TIE_BREAKS = ("file", "random", "item")


@dataclasses.dataclass(frozen=True)
class PrepareConfig(Checked):
    """How `recscale prepare` turns raw interactions into a prepared dataset."""

    protocol: str = option("ncf", "split protocol: ncf (leave-latest-out + sampled test negatives), "
                           "vae (strong generalization with fold-in), random (per-user ratio split)",
                           choices=PROTOCOLS)
    seed: int = option(0, "seed for every random choice of the split (same seed, same files)", check=SEED_RANGE)
    tie_break: str = option("file", "order of interactions with equal timestamps: file (the later line of "
                            "the input is the later interaction, as a stable sort gives; RecBole's rule), "
                            "random (seeded), item (the higher item id is later; recscale < 0.2)",
                            choices=TIE_BREAKS)
    min_rating: float | None = option(None, "keep only ratings >= this (default: all for ncf and "
                                      "random, 4.0 for vae as in Liang et al. 2018)")
    min_user_interactions: int | None = option(None, "drop users with fewer interactions after "
                                               "filtering (default: 5 for vae, 1 otherwise)", check=at_least(1))
    valid: bool = option(True, "ncf: also hold out each user's next-latest interaction for validation")
    test_negatives: int = option(100, "ncf: sampled negatives per held-out positive (never a "
                                 "positive of that user)", check=non_negative)
    heldout_users: int | None = option(None, "vae: users held out for validation and again for test "
                                       "(default: 10,000 as in the paper, capped at 10%% of users)",
                                       check=at_least(1))
    holdout_fraction: float = option(0.2, "vae: fraction of each held-out user's items to predict "
                                     "from the rest (fold-in)", check=lambda v: "" if 0.0 < v < 1.0 else
                                     f"must lie strictly between 0 and 1, got {v!r}")
    ratios: tuple[float, float, float] = option((0.8, 0.1, 0.1), "random: train,valid,test "
                                                "fractions of each user's interactions",
                                                check=each(non_negative))
    engine: str = option("auto", "memory (read the whole log), stream (Polars' streaming engine and "
                         "partitioned passes: memory stays bounded), or auto (stream when the in-memory "
                         "path would need more than --memory-budget)", choices=("auto", "memory", "stream"))
    memory_budget: str = option("auto", "memory this command may use, e.g. 4GiB (auto: half of what is "
                                "available)", check=lambda v: _size_problem(v))

    def relations(self) -> None:
        if abs(sum(self.ratios) - 1) > 1e-6:
            raise ConfigError("ratios", "need three non-negative fractions that sum to 1, e.g. 0.8,0.1,0.1")

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


# ----------------------------------------------------------------------------- a training run

PRECISIONS = ("fp32", "bf16", "fp16")
MAX_K = 1_000_000  # the largest cut-off of a ranking metric or top-k list
MAX_EPOCHS = 1_000_000  # bounds that no real run reaches, so that no flag can make a run endless
MAX_COUNT = 2**31 - 1   # batch sizes and step counts (int32 indexing)
MAX_NEGATIVES = 10_000
MAX_WIDTH = 65_536      # layer widths and embedding sizes of the models
WIDTH = in_range(1, MAX_WIDTH, high_inclusive=True)
LR_SCALINGS = ("none", "linear")
OPTIMIZERS = ("adam", "sgd", "lars", "rmsprop", "adagrad")


@dataclasses.dataclass(frozen=True)
class OptimConfig(Checked):
    """[optim]: the optimizer and its learning-rate schedule."""

    optimizer: str = option("adam", "adam, sgd (momentum), lars (layer-wise trust ratio, for large "
                            "batches), rmsprop or adagrad; sparse embedding tables use SparseAdam with adam",
                            choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate", check=positive)
    weight_decay: float = option(0.0, "L2 weight decay of dense parameters", check=non_negative)
    momentum: float = option(0.9, "SGD and LARS momentum", check=in_range(0.0, 1.0))
    lars_eta: float = option(0.001, "LARS trust coefficient eta", check=positive)
    lr_scaling: str = option("none", "linear: lr x batch-size / base-batch-size (Goyal et al. 2017)",
                             choices=LR_SCALINGS)
    base_batch_size: int = option(0, "the batch size --lr was tuned at (for --lr-scaling linear)",
                                  check=in_range(0, MAX_COUNT, high_inclusive=True))
    warmup: str = option("none", "ramp the rate up over --warmup-epochs: linear, or exponential "
                         "from 1%% of the target", choices=WARMUPS)
    warmup_epochs: float = option(0.0, "length of the warmup in epochs (fractions allowed)",
                                  check=in_range(0.0, MAX_EPOCHS, high_inclusive=True))
    lr_decay: str = option("constant", "after warmup: constant, or linear / cosine down to 0 at "
                           "the last step", choices=DECAYS)
    clip_grad_norm: float = option(0.0, "clip the dense gradients' global norm to this (0: off)",
                                   check=non_negative)
    table_optimizer: str = option("auto", "--embeddings sharded: the optimizer FBGEMM fuses into the tables' "
                                  "backward: sgd, adagrad, rowwise_adagrad (one state value per row) or adam "
                                  "(CUDA only); auto: --optimizer where FBGEMM has it on the device, else "
                                  "rowwise_adagrad", choices=("auto", "sgd", "adagrad", "rowwise_adagrad", "adam"))
    table_lr: float = option(0.0, "--embeddings sharded: the tables' peak learning rate (0: --lr, or 0.05 where auto replaced adam by rowwise_adagrad); the schedule "
                             "(warmup, decay, linear scaling) applies to it as to --lr", check=non_negative)

    def relations(self) -> None:
        if self.lr_scaling == "linear" and self.base_batch_size < 1:
            raise ConfigError("lr_scaling", "linear needs --base-batch-size >= 1")
        if self.warmup != "none" and self.warmup_epochs <= 0:
            raise ConfigError("warmup", f"{self.warmup} needs --warmup-epochs > 0")


@dataclasses.dataclass(frozen=True)
class LoaderConfig(Checked):
    """[loader]: how training batches are made."""

    batch_size: int = option(1024, "global batch size: examples (pairs) or users (rows) per step",
                             check=in_range(1, MAX_COUNT, high_inclusive=True))
    negatives: int = option(4, "pairs models: sampled negatives per positive and epoch",
                            check=in_range(1, MAX_NEGATIVES, high_inclusive=True))
    data_loading: str = option("auto", "memory (the training split in RAM), stream (read from the prepared "
                               "files as needed: memory stays bounded), or auto (stream when the split would take "
                               "more than --memory-budget); both give the same batches",
                               choices=("auto", "memory", "stream"))
    memory_budget: str = option("auto", "memory the training data may take, e.g. 4GiB (auto: half of what is "
                                "available)", check=lambda v: _size_problem(v))


@dataclasses.dataclass(frozen=True)
class EvalConfig(Checked):
    """[eval]: validation during training and model selection."""

    eval_batch_size: int = option(1024, "users per evaluation batch (results do not depend on it)",
                                  check=in_range(1, MAX_COUNT, high_inclusive=True))
    ks: tuple[int, ...] = option((10, 20, 50, 100), "cut-offs K of the ranking metrics",
                                 check=each(in_range(1, MAX_K, high_inclusive=True), allow_empty=False))
    patience: int = option(5, "stop after this many epochs without a better validation metric "
                           "(counted once the model's own schedule has settled, e.g. KL annealing)",
                           check=in_range(1, MAX_EPOCHS, high_inclusive=True))
    test_history: str = option("train+valid", "ncf/random test users are scored from their train+valid "
                               "interactions, or from train only (RecBole's choice); both are masked",
                               choices=("train+valid", "train"))


@dataclasses.dataclass(frozen=True)
class SystemConfig(Checked):
    """[system]: where and how the run executes."""

    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    precision: str = option("fp32", "fp32, bf16 or fp16 (autocast; fp16 with loss scaling)", choices=PRECISIONS)
    seed: int = option(0, "seed for initialization, shuffling and sampling", check=SEED_RANGE)
    progress: bool = option(True, "show a progress line (only when stderr is a terminal)")
    checkpoint_every: int = option(0, "also write checkpoints/last.pt every N steps within an epoch "
                                   "(0: at the end of each epoch only)", check=in_range(0, MAX_COUNT, high_inclusive=True))
    embeddings: str = option("replicated", "replicated (every worker holds every table: data parallel) or "
                             "sharded (TorchRec splits the tables across the torchrun workers)",
                             choices=("replicated", "sharded"))
    table_memory: str = option("auto", "--embeddings sharded: memory each worker's table shards (with their optimizer "
                               "state) may take, e.g. 6GiB; TorchRec's planner places the shards within it (auto: "
                               "its own default, which does not balance memory)", check=lambda v: _size_problem(v))
    sharding: str = option("auto", "--embeddings sharded: auto (TorchRec's planner decides per table) or force "
                           "table_wise, column_wise, row_wise, table_row_wise, table_column_wise (row-wise "
                           "kinds are CUDA only)", choices=("auto", "table_wise", "column_wise", "row_wise",
                                                            "table_row_wise", "table_column_wise"))


GROUPS: dict[str, type] = {"optim": OptimConfig, "loader": LoaderConfig, "eval": EvalConfig, "system": SystemConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig(Checked):
    """What `recscale train` fits and how. Model hyperparameters live in each model's Config
    ([model] section or --param); each model brings its own defaults for the step settings."""

    data: str = option("", "prepared dataset directory (from `recscale prepare`)")
    model: str = option("popularity", "model name (listed below)")
    epochs: int = option(20, "training epochs (the model's default applies when not given)",
                         check=in_range(1, MAX_EPOCHS, high_inclusive=True))
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    system: SystemConfig = dataclasses.field(default_factory=SystemConfig)

    def relations(self) -> None:
        if not self.data:
            raise ConfigError("data", "a prepared dataset directory is required")

    def sections(self) -> dict[str, dict[str, Any]]:
        """The TOML layout: [run] plus one section per group."""
        run = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in GROUPS}
        return {"run": run, **{name: dataclasses.asdict(getattr(self, name)) for name in GROUPS}}

    def flat(self) -> dict[str, Any]:
        """Every setting by its field (= flag) name."""
        return {k: v for section in self.sections().values() for k, v in section.items()}

    def replace(self, **settings: Any) -> "RunConfig":
        """A copy with settings changed by field name, checked like any other layer."""
        return build_run_config(Layer(self.flat(), "config"), Layer(settings, "settings"))


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in GROUPS)


def run_field_owner() -> dict[str, str]:
    """Field name -> the section that holds it ('run' or a group name)."""
    owner = {name: "run" for name in RUN_FIELDS}
    for group, cls in GROUPS.items():
        owner.update({f.name: group for f in dataclasses.fields(cls)})
    return owner


# ----------------------------------------------------------------------------- layers and sources


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


def build(cls: type, *layers: Layer | Mapping[str, Any], source: str = "config") -> Any:
    """Instantiate the flat dataclass `cls` from layered values (later wins; None is ignored).
    Unknown keys, wrong types and failed checks are errors naming the layer's source and key."""
    layers = tuple(_as_layer(layer, source) for layer in layers)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    origin: dict[str, Layer] = {}
    for layer in layers:
        for key, value in layer.values.items():
            name = key.replace("-", "_")
            if name not in names:
                raise RecscaleError(f"{layer.name(key)}: unknown key for {cls.__name__} "
                                    f"(known: {', '.join(sorted(names)) or 'none'})")
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
                raise RecscaleError(f"{layer.name(key)}: unknown setting (known: {', '.join(sorted(owner))})")
            if layer.section and layer.section != section:
                raise RecscaleError(f"{layer.name(key)}: belongs in section [{section}], not [{layer.section}]")
            if value is not None:
                per_section[section][name] = _check_type(value, hints[section][name], layer.name(key))
                origin[name] = layer
    fallback = layers[-1] if layers else Layer({}, source)
    groups = {g: _construct(cls, per_section[g], origin, fallback) for g, cls in GROUPS.items()}
    return _construct(RunConfig, {**per_section["run"], **groups}, origin, fallback)


# ----------------------------------------------------------------------------- config files

LEGACY_SECTION = "train"   # before the groups: every run setting in one [train] section
MODEL_SECTION = "model"
MOVED_TO_MODEL = ("pretrained_gmf", "pretrained_mlp")  # were [train] settings, now NCF model settings
RECORD_SECTION = "dataset"  # written by `recscale train` into config.toml: which dataset the run used


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or, with PyYAML installed, YAML) config file into a dict of sections."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except IsADirectoryError:
        raise RecscaleError(f"{path}: is a directory, expected a config file") from None
    except OSError as exc:
        raise RecscaleError(f"{path}: cannot read config file: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise RecscaleError(f"{path}: YAML config needs PyYAML (pip install pyyaml), or use TOML") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RecscaleError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RecscaleError(f"{path}: invalid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise RecscaleError(f"{path}: top level must be a table of sections")
    return data


def run_layers(sections: Mapping[str, Any], source: str) -> tuple[list[Layer], Layer]:
    """The run-setting layers and the model layer of a config file's sections. Unknown sections
    are errors; a legacy [train] section is routed key by key (pretrained_* to [model])."""
    known = ("run", *GROUPS, MODEL_SECTION, RECORD_SECTION, LEGACY_SECTION)
    layers: list[Layer] = []
    model: dict[str, Any] = {}
    for section, body in sections.items():
        if section not in known:
            raise RecscaleError(f"{source}: unknown section [{section}] (known: {', '.join(known[:-1])})")
        if not isinstance(body, dict):
            raise RecscaleError(f"{source}: [{section}] must be a table of settings")
        if section == RECORD_SECTION:
            continue  # what a run's config.toml records about its dataset; not a setting
        if section == MODEL_SECTION:
            model.update(body)
        elif section == LEGACY_SECTION:
            model.update({k: v for k, v in body.items() if k in MOVED_TO_MODEL})
            layers.append(Layer({k: v for k, v in body.items() if k not in MOVED_TO_MODEL}, source, "key", ""))
        else:
            layers.append(Layer(body, source, "key", section))
    return layers, Layer(model, source, "key", MODEL_SECTION)


def to_toml(sections: Mapping[str, Any]) -> str:
    """Write a two-level mapping of sections as TOML (enough for our resolved configs)."""

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


# ----------------------------------------------------------------------------- argparse bridge


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
        if field.default is not None and field.default is not dataclasses.MISSING:
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
        parser.add_argument(flag, **kwargs)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig setting as a flag, in one --help group per section."""
    add_arguments(parser.add_argument_group("run"), RunConfig)
    for name, cls in GROUPS.items():
        add_arguments(parser.add_argument_group(f"{name}: {cls.__doc__.split(':', 1)[1].strip()}"), cls)


def from_namespace(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that the user set on the command line."""
    return {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)
            if getattr(namespace, f.name, None) is not None}


def run_flags(namespace: argparse.Namespace) -> dict[str, Any]:
    """Every RunConfig setting given on the command line, by field name."""
    names = run_field_owner()
    return {name: getattr(namespace, name) for name in names if getattr(namespace, name, None) is not None}
