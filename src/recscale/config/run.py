"""A training run's settings, one frozen dataclass per concern (litgpt's style): `optim` (the
optimizer and its schedule), `loader`, `eval` and `system` (device, precision, seed, checkpoints),
gathered in `RunConfig` beside the run's own fields (data, model, epochs); the model's own Config
lives with the model (models/).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recscale.config.fields import (
    SEED_RANGE,
    Checked,
    ConfigError,
    each,
    in_range,
    non_negative,
    option,
    positive,
    size_problem,
)

WARMUPS = ("none", "linear", "exponential")  # optim/schedules.py implements each


DECAYS = ("constant", "linear", "cosine")


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
                                "available)", check=lambda v: size_problem(v))


SCORE_BLOCK_MIB = 256  # the default bound of one (users x items) float32 block of scores


@dataclasses.dataclass(frozen=True)
class EvalConfig(Checked):
    """[eval]: validation during training and model selection."""

    eval_batch_size: int = option(1024, "users per evaluation batch (results do not depend on it)",
                                  check=in_range(1, MAX_COUNT, high_inclusive=True))
    ks: tuple[int, ...] = option((), "cut-offs K of the ranking metrics (default: 10,20,50,100, less those "
                                 "at or above the sampled negatives of an ncf split)",
                                 check=each(in_range(1, MAX_K, high_inclusive=True)))
    patience: int = option(5, "stop after this many epochs without a better validation metric "
                           "(counted once the model's own schedule has settled, e.g. KL annealing)",
                           check=in_range(1, MAX_EPOCHS, high_inclusive=True))
    test_history: str = option("train+valid", "ncf/random test users are scored from their train+valid "
                               "interactions, or from train only (RecBole's choice); both are masked",
                               choices=("train+valid", "train"))
    score_block_mib: int = option(SCORE_BLOCK_MIB, "largest block of (users x items) scores that full ranking holds, "
                                  "in MiB; a larger catalog is scored in item blocks with a running top-k "
                                  "(the same results)", check=in_range(1, 1 << 20, high_inclusive=True))


@dataclasses.dataclass(frozen=True)
class SystemConfig(Checked):
    """[system]: where and how the run executes."""

    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    precision: str = option("fp32", "fp32, bf16 or fp16 (autocast; fp16 with loss scaling)", choices=PRECISIONS)
    seed: int = option(0, "seed for initialization, shuffling and sampling", check=SEED_RANGE)
    progress: bool = option(True, "show a progress line (only when stderr is a terminal)")
    tracker: str = option("auto", "experiment tracking: auto (TensorBoard events in the run directory when "
                          "tensorboard is installed), tensorboard, mlflow (MLFLOW_TRACKING_URI, else a local "
                          "./mlruns store), or none", choices=("auto", "tensorboard", "mlflow", "none"))
    checkpoint_every: int = option(0, "also write checkpoints/last.pt every N steps within an epoch "
                                   "(0: at the end of each epoch only)", check=in_range(0, MAX_COUNT, high_inclusive=True))
    embeddings: str = option("replicated", "replicated (every worker holds every table: data parallel) or "
                             "sharded (TorchRec splits the tables across the torchrun workers)",
                             choices=("replicated", "sharded"))
    table_memory: str = option("auto", "--embeddings sharded: memory each worker's table shards (with their optimizer "
                               "state) may take, e.g. 6GiB; TorchRec's planner places the shards within it (auto: "
                               "its own default, which does not balance memory)", check=lambda v: size_problem(v))
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
    model: str = option("", "model name (listed below); required")
    epochs: int = option(20, "training epochs (the model's default applies when not given)",
                         check=in_range(1, MAX_EPOCHS, high_inclusive=True))
    warm_start: str = option("", "a run of the same model trained on the dataset this one extends (prepare "
                             "--extend) or on an ancestor: its weights start this run, the rows of new users "
                             "and items as a fresh run draws them; the optimizer starts fresh")
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
        from recscale.config.layers import Layer, build_run_config  # layers.py builds RunConfigs: imported late
        return build_run_config(Layer(self.flat(), "config"), Layer(settings, "settings"))


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in GROUPS)


def run_field_owner() -> dict[str, str]:
    """Field name -> the section that holds it ('run' or a group name)."""
    owner = {name: "run" for name in RUN_FIELDS}
    for group, cls in GROUPS.items():
        owner.update({f.name: group for f in dataclasses.fields(cls)})
    return owner
