"""One construction path for a training run, used by `train`, `--resume`, `recscale benchmark`,
the Python API and the benchmark scripts: settings resolved in layers, the model built and its
'auto' settings decided against the data, then the trainer (loader, optimizers, scaler) around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import Any, Mapping

import torch

from recscale.config.layers import Layer, build, build_run_config
from recscale.config.run import RunConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.loading.factory import decide_loading, local_batch_size, open_training_data
from recscale.errors import RecscaleError
from recscale.evaluation.protocols import check_ks, default_ks
from recscale.models.base import DataShape, FitContext, Recommender
from recscale.models.registry import MODELS
from recscale.models.tables import deferred_tables
from recscale.parallel import distributed
from recscale.training.trainer import Trainer, TrainSettings


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RecscaleError(f"--device: {name} requested but CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecscaleError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise RecscaleError(f"--device: unsupported device {name!r} (auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RecscaleError(f"--device: {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def model_class(name: str) -> type[Recommender]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecscaleError(f"--model: unknown model {name!r}{hint} (known: {', '.join(MODELS)})")
    return MODELS[name]


def data_shape(data: PreparedDataset) -> DataShape:
    """The dataset's dimensions and item features, as models take them (no files)."""
    features = data.meta["features"]
    genres = data.item_genres() if "genres" in features else None
    return DataShape(
        n_users=data.n_users, n_items=data.n_items,
        user_dim=features["user"]["embedding_dim"], item_dim=features["item"]["embedding_dim"],
        n_genres=features.get("genres", {}).get("cardinality", 0),
        genre_dim=features.get("genres", {}).get("embedding_dim", 16),
        genre_values=genres[0] if genres else None, genre_offsets=genres[1] if genres else None)


def resolve_run_config(*layers: Layer | Mapping[str, Any], source: str = "settings") -> RunConfig:
    """Dataclass defaults < the model's own defaults (scaled to the data) < the given layers
    (e.g. config file < flags)."""
    layers = tuple(layer if isinstance(layer, Layer) else Layer(layer, source) for layer in layers)

    def last(key: str):
        return next((layer.values[key] for layer in reversed(layers) if layer.values.get(key)), None)

    name = last("model")
    cls = model_class(name) if name else None  # an unknown name first, then a bad --data
    data = last("data")
    counts = PreparedDataset(data).meta["counts"] if data else None
    if cls is None:  # no silent default: which model to train is the user's first choice
        raise RecscaleError(f"--model: which model to train? one of {', '.join(MODELS)} "
                            f"(`recscale train --help` lists their settings)")
    defaults = cls.default_train_settings(counts) if counts is not None else dict(cls.train_defaults)
    cfg = build_run_config(Layer(defaults, f"{name}'s defaults"), *layers)
    if data:  # the cut-offs: the dataset's defaults, or the asked ones checked against it
        dataset = PreparedDataset(data)
        cfg = cfg.replace(ks=check_ks(cfg.eval.ks, dataset, "--ks") if cfg.eval.ks else default_ks(dataset))
    return cfg


def model_config(name: str, *layers: Layer | Mapping[str, Any]):
    """The model's Config from layered hyperparameters (unknown keys and bad values are errors
    naming the parameter)."""
    return build(model_class(name).Config, *layers, source=f"model {name}", owner=name)


def without_retired(name: str, layer: Layer) -> Layer:
    """A model layer read from a run or a config file, less the settings model `name` no longer
    takes (an older run of it recorded them)."""
    retired = model_class(name).retired_settings
    return dataclasses.replace(layer, values={k: v for k, v in layer.values.items() if k not in retired})


def build_model(cfg: RunConfig, params: Layer | Mapping[str, Any], data: PreparedDataset,
                world_size: int = 1, for_training: bool = False) -> tuple[Recommender, Any]:
    """The model and its resolved Config: settings left to 'auto' are decided here, from the data,
    the per-process batch size and the optimizer, so that config.toml records what was used.
    A model built `for_training` a run with sharded tables gets its tables on the meta device
    (build_trainer shards them; no worker ever holds them whole)."""
    cls = model_class(cfg.model)
    context = FitContext(n_users=data.n_users, n_items=data.n_items, world_size=world_size,
                         local_batch_size=local_batch_size(cfg.loader.batch_size, world_size),
                         optimizer=cfg.optim.optimizer)
    model_cfg = cls.resolve_config(model_config(cfg.model, params), context)
    deferred = for_training and cfg.system.embeddings == "sharded"
    with deferred_tables() if deferred else contextlib.nullcontext():
        return cls(data_shape(data), model_cfg), model_cfg


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Seed torch's default generators for this run only: the caller's global state is restored
    afterwards (dropout and VAE sampling draw from them; loaders use their own generators)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_trainer(cfg: RunConfig, model: Recommender, data: PreparedDataset, device: torch.device,
                  run=None, info: distributed.DistInfo = distributed.DistInfo(), label: str | None = None) -> Trainer:
    """The trainer around `model` (already on `device`): loader, optimizers, scaler, schedules.
    Under torchrun the model is wrapped in DDP for the forward, or with --embeddings sharded its
    tables are sharded by TorchRec (parallel/sharding.py); `model` stays the module that is checkpointed."""
    if cfg.system.embeddings == "sharded":
        from recscale.parallel import sharding
        net, fused = sharding.shard(model, cfg.optim, cfg.system, device, info.world_size)
        return Trainer(model, data, TrainSettings.of(cfg, label), device, run, info.rank, info.world_size, net, fused)
    return Trainer(model, data, TrainSettings.of(cfg, label), device, run, info.rank, info.world_size,
                   distributed.wrap(model, info, device))


def seeded_trainer(cfg: RunConfig, params: Layer | Mapping[str, Any], data: PreparedDataset,
                   device: torch.device) -> Trainer:
    """The model built under the run's seed, on `device`, and the trainer around it, in one process
    and writing nothing (`recscale benchmark`, the benchmark scripts, the device tests)."""
    with seeded(cfg.system.seed, device):
        model, _ = build_model(cfg, params, data)
        return build_trainer(cfg, model.to(device), data, device)


def place(model: Recommender, device: torch.device) -> Recommender:
    """`model.to(device)`, leaving tables deferred to the sharding on the meta device (they have
    no data to move yet)."""
    return model._apply(lambda t: t if t.is_meta else t.to(device))


def resolve_data_loading(cfg: RunConfig, data: PreparedDataset) -> RunConfig:
    """The loading factory's decision recorded in the run's settings (config.toml keeps what was
    used, so that a resumed run shuffles in the same windows)."""
    loader = decide_loading(cfg.loader, data)
    return cfg.replace(data_loading=loader.data_loading, memory_budget=loader.memory_budget)


def open_data(cfg: RunConfig) -> PreparedDataset:
    """The run's prepared dataset, read as the loading factory decided."""
    return open_training_data(cfg.data, cfg.loader)
