"""The public Python API; the `recscale` command line is a thin layer over it.

    import recscale
    data = recscale.prepare("ml-latest-small", "data/ml-ncf", protocol="ncf")
    run = recscale.train(data, model="neumf", out="runs/neumf", epochs=5, factors=32)
    run.evaluate("test")                       # {'hr@10': ..., 'ci95': {...}, 'users': ...}
    run.recommend(["1", "2"], k=10)            # a Polars frame: user, rank, item, score, fallback
    run = recscale.load_run("runs/neumf")      # later, from the run directory alone

Settings go by their flag names (`epochs`, `batch_size`, `lr`, ...; `recscale train --help`) and
model hyperparameters by theirs (`factors`, `anneal_cap`, ...), in one set of keyword arguments;
every value is checked as on the command line. Nothing here keeps global state.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

from recscale.config.files import read_config_file, run_layers
from recscale.config.layers import Layer, build
from recscale.config.prepare import PrepareConfig
from recscale.config.run import RunConfig, run_field_owner
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.inputs import RawInput
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import frame_interactions
from recscale.data.prepare.engine import prepare_from, prepare_input
from recscale.data.prepare.presplit import SplitFiles
from recscale.errors import RecscaleError
from recscale.evaluation.protocols import check_ks, default_ks, meaningful
from recscale.evaluation.protocols import evaluate as evaluate_split
from recscale.fsutil import atomic_file
from recscale.recommend import Histories, recommend_frame
from recscale.recommend import recommend as write_recommendations
from recscale.training.build import resolve_run_config, without_retired
from recscale.training.run import LoadedRun, read_run_config, resume_run, start_run
from recscale.training.run import load_run as load_trained
from recscale.training.trainer import selection_metric

COLUMN_OPTIONS = ("sep", "movies", "user_col", "item_col", "rating_col", "time_col", "time_format")  # RawInput's, by flag name
SPLIT_OPTIONS = tuple(f.name for f in dataclasses.fields(SplitFiles))
FRAME_COLUMNS = {"user": "user_col", "item": "item_col", "rating": "rating_col", "timestamp": "time_col"}


def _input(source: Any, format: str | None, columns: dict[str, Any]) -> RawInput:
    """`source` as `recscale prepare`'s flags would name it (one resolver for both)."""
    if format is not None:
        return RawInput(format=format, raw_dir=str(source), **columns)
    if source is None or Path(str(source)).is_file():
        return RawInput(ratings=None if source is None else str(source), **columns)
    return RawInput(dataset=str(source), **columns)


def _as_polars(source: Any) -> pl.DataFrame | None:
    """A Polars, pandas or Arrow table as a Polars frame; None for anything else."""
    if isinstance(source, pl.DataFrame):
        return source
    module = type(source).__module__.split(".")[0]
    if module == "pandas":
        return pl.from_pandas(source)
    if module == "pyarrow":
        return pl.from_arrow(source)
    return None


def _frame_input(frame: pl.DataFrame, columns: dict[str, Any]) -> RawDataset:
    """A table's interactions: canonical column names unless the column options name others
    (rating_col='' or time_col='': none; a column named by an option must exist)."""
    names = {}
    for canonical, option in FRAME_COLUMNS.items():
        column = columns.get(option, canonical)
        if column and (canonical in ("user", "item") or option in columns or column in frame.columns):
            names[canonical] = column
    return RawDataset("frame", frame_interactions(frame, "frame", names), None, ())


def prepare(source: Any, out: str | Path, protocol: str = "ncf", *, format: str | None = None,
            overwrite: bool = False, **options: Any) -> PreparedDataset:
    """Prepare `source` under `protocol` into `out`. `source`: a dataset name such as
    'ml-latest-small', a CSV/TSV/Parquet file of interactions, a directory of a published `format`,
    a Polars, pandas or Arrow table with user/item[/rating/timestamp] columns, a RawDataset, or
    None with `train_file=...` for a split made elsewhere. `options` are `recscale prepare`'s flags
    by name: the settings (seed, test_negatives, tie_break, ...), the column options (sep,
    user_col, item_col, rating_col, time_col, movies) and the split files (train_file, valid_file,
    test_file, valid_heldout_file, test_heldout_file)."""
    columns = {k: options.pop(k) for k in COLUMN_OPTIONS if k in options}
    files = SplitFiles(**{k: str(options.pop(k)) for k in SPLIT_OPTIONS if k in options})
    cfg = build(PrepareConfig, Layer({"protocol": protocol, **options}, "prepare()"))
    frame = _as_polars(source)
    if isinstance(source, RawDataset) or frame is not None:  # already in memory: nothing to scan
        raw = source if isinstance(source, RawDataset) else _frame_input(frame, columns)
        prepare_input(lambda: raw, lambda: None, cfg, out, overwrite, what=str(raw.name))
    else:
        prepare_from(_input(source, format, columns), cfg, out, overwrite, files)
    return PreparedDataset(out)


def open_dataset(path: str | Path) -> PreparedDataset:
    return PreparedDataset(path)


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments -> (run settings, model hyperparameters), by name."""
    owner = run_field_owner()
    run = {k: v for k, v in settings.items() if k in owner}
    return run, {k: v for k, v in settings.items() if k not in owner}


def resolve_settings(config: str | Path | None, settings: Layer, params: Layer) -> tuple[RunConfig, Layer]:
    """(RunConfig, model hyperparameters) for train, tune and benchmark, from the command line and
    the API alike: defaults < the model's defaults < the `config` file < `settings` and `params`."""
    layers, model_layers = [], []
    if config is not None:
        file_layers, file_model = run_layers(read_config_file(config), str(config))
        layers += file_layers
        model_layers.append(file_model)
    cfg = resolve_run_config(*layers, settings)
    model_layers = [without_retired(cfg.model, layer) for layer in model_layers]
    merged = {k: v for layer in [*model_layers, params] for k, v in layer.values.items()}
    source = params.source if config is None else f"config and {params.source}"
    return cfg, dataclasses.replace(params, values=merged, source=source)


class Run:
    """A training run directory: its settings, history, model, evaluation and recommendations."""

    def __init__(self, path: str | Path, device: str = "auto", checkpoint: str = "best"):
        self.path = Path(path)
        self.device, self.checkpoint = device, checkpoint
        self._loaded: LoadedRun | None = None
        if not (self.path / "config.toml").is_file():
            raise RecscaleError(f"{self.path}: not a run directory (no config.toml; run `recscale train`)")

    def __repr__(self) -> str:
        """The model, the dataset and the best validation metric, read from the run's files (the
        checkpoint is not loaded)."""
        try:
            cfg, _ = read_run_config(self.path)
            best = self.best
        except RecscaleError as exc:
            return f"Run({str(self.path)!r}: {exc})"
        metric = selection_metric(best["protocol"])
        score = f", best {metric} {best[metric]:.4f} (epoch {best['epoch'] + 1})" if metric in best else ""
        return f"Run({str(self.path)!r}: {cfg.model} on {cfg.data}, {len(self.history)} epoch(s){score})"

    @property
    def loaded(self) -> LoadedRun:
        if self._loaded is None:
            self._loaded = load_trained(self.path, self.device, self.checkpoint)
        return self._loaded

    @property
    def config(self) -> RunConfig:
        return self.loaded.config

    @property
    def model(self):
        return self.loaded.model

    @property
    def data(self) -> PreparedDataset:
        return self.loaded.data

    @property
    def best(self) -> dict:
        """The epoch record with the best validation metric (with the dataset's protocol)."""
        history = self.history
        cfg, _ = read_run_config(self.path)
        protocol = PreparedDataset(cfg.data).protocol
        metric = selection_metric(protocol)
        best = max((r for r in history if metric in r), key=lambda r: r[metric], default=history[-1] if history else {})
        return {**best, "protocol": protocol}

    @property
    def history(self) -> list[dict]:
        """One record per finished epoch (metrics.jsonl)."""
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def evaluate(self, split: str = "test", ks: Iterable[int] | None = None, test_history: str | None = None,
                 write: bool = True) -> dict:
        """Metrics on `split` ('valid' or 'test'), each with its 95% interval (`ci95`) and the number
        of users; with `write`, also saved as eval-SPLIT.json in the run directory."""
        loaded = self.loaded
        data, cfg = loaded.data, loaded.config
        if split not in ("valid", "test"):
            raise RecscaleError(f"--split: valid or test, got {split!r}")
        if split == "valid" and not (data.has("valid") or data.has("valid_heldout")):
            raise RecscaleError(f"--split: {data.root} has no validation split")
        # the run's own cut-offs less those a run recorded before the rule may hold; asked ones are checked
        ks = check_ks(ks, data) if ks is not None else tuple(k for k in cfg.eval.ks if meaningful(k, data))
        ks = ks or default_ks(data)
        history = test_history or cfg.eval.test_history
        per_user: dict = {}
        metrics = evaluate_split(loaded.model, data, split, ks=ks, device=loaded.device,
                                 batch_size=cfg.eval.eval_batch_size, test_history=history, per_user=per_user,
                                 beyond=True, block_bytes=cfg.eval.score_block_mib << 20)
        result = {"run": str(self.path), "model": cfg.model, "split": split, "protocol": data.protocol,
                  "checkpoint": loaded.checkpoint, "test_history": history, **metrics}
        if write:  # the metrics, and beside them each user's values (what `recscale compare` pairs)
            with atomic_file(self.path / f"eval-{split}.json") as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n")
            users = pl.DataFrame({"user": data.original_user_ids()[per_user.pop("user")], **per_user})
            with atomic_file(self.path / f"eval-{split}-users.parquet") as tmp:
                users.write_parquet(tmp)
        return result

    def users(self, original_ids: Iterable[Any] | None) -> np.ndarray:
        """Contiguous ids of the given original user ids (all users for None); unknown ids are an error."""
        data = self.loaded.data
        if original_ids is None:
            return np.arange(data.n_users)
        lookup = {str(u): i for i, u in enumerate(data.original_user_ids().tolist())}
        wanted = [str(u) for u in original_ids]
        unknown = [u for u in wanted if u not in lookup]
        if unknown:
            raise RecscaleError(f"unknown user id(s): {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""))
        return np.array([lookup[u] for u in wanted], dtype=np.int64)

    def recommend(self, users: Iterable[Any] | None = None, k: int = 10,
                  columns: Iterable[str] | None = None, histories: dict | None = None) -> pl.DataFrame:
        """Top-k unseen items of the given original user ids (every user for None) as a frame, with
        the item features `columns` names (None: every one the dataset has, title and genres).
        `histories` ({user: [original item ids]}) instead scores each of those users from its
        items alone, as a new user (folded in by pairwise models)."""
        if k < 1:
            raise RecscaleError(f"k: must be >= 1, got {k}")
        loaded = self.loaded
        given = None if histories is None else Histories.of(histories, loaded.data)
        chosen = self.users(users) if given is None else np.arange(given.ids.size)
        return recommend_frame(loaded.model, loaded.data, chosen, k, loaded.device,
                               loaded.config.eval.eval_batch_size, None if columns is None else tuple(columns),
                               loaded.config.eval.score_block_mib << 20, given)

    def write_recommendations(self, out: str | Path, users: np.ndarray | None = None, k: int = 10,
                              overwrite: bool = False, inputs=(), columns: Iterable[str] | None = None,
                              histories: Histories | None = None) -> int:
        """Write top-k lists (contiguous `users`, every user for None; or every user of
        `histories`, scored as new users) to a .tsv or .parquet file, batch by batch; returns the
        number of rows. An existing file is replaced only with `overwrite`, and only when it is
        recommendations that recscale wrote."""
        if k < 1:
            raise RecscaleError(f"--k: must be >= 1, got {k}")
        loaded = self.loaded
        if histories is not None:
            users = np.arange(histories.ids.size)
        users = np.arange(loaded.data.n_users) if users is None else users
        return write_recommendations(loaded.model, loaded.data, users, k, out, loaded.device,
                                     loaded.config.eval.eval_batch_size, overwrite, (self.path, *inputs),
                                     None if columns is None else tuple(columns), loaded.config.eval.score_block_mib << 20,
                                     histories)


def compare(runs: Iterable[str | Path], split: str = "test", metrics: Iterable[str] | None = None,
            seed: int = 0) -> list[dict]:
    """Paired tests between runs on the same dataset (evaluation/compare.py): one record per
    (pair, metric) with the mean difference, its bootstrap 95% interval, t-test and Wilcoxon
    p-values, each also Holm-adjusted. Each run's per-user values come from its
    eval-SPLIT-users.parquet (evaluated now when it is missing)."""
    from recscale.config.files import tomllib
    from recscale.evaluation.compare import compare_users
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise RecscaleError("compare: give two runs or more")
    digests = {}
    for path in paths:
        Run(path)  # a run directory, or one line saying it is not
        digests[path] = tomllib.loads((path / "config.toml").read_text()).get("dataset", {}).get("meta_sha256")
    if len(set(digests.values())) != 1:
        raise RecscaleError("compare: the runs were trained on different datasets (their meta.json digests "
                            "differ); paired tests need the same users and split")
    labels = [p.name for p in paths] if len({p.name for p in paths}) == len(paths) else [str(p) for p in paths]
    tables = {}
    for label, path in zip(labels, paths):
        users = path / f"eval-{split}-users.parquet"
        if not users.is_file():
            Run(path).evaluate(split)
        tables[label] = pl.read_parquet(users)
    available = [c for c in tables[labels[0]].columns if c != "user"]
    if metrics is None:
        cfg, _ = read_run_config(paths[0])
        metrics = [selection_metric(PreparedDataset(cfg.data).protocol), "mrr"]
    metrics = list(metrics)
    missing = [m for m in metrics if any(m not in t.columns for t in tables.values())]
    if missing:
        raise RecscaleError(f"--metrics: {missing[0]!r} is not in every run's evaluation (known: {', '.join(available)})")
    return compare_users(tables, metrics, seed)


def _dataset_path(data: Any) -> str:
    return str(data.root if isinstance(data, PreparedDataset) else data)


def train(data: Any, model: str | None = None, out: str | Path | None = None, *, config: str | Path | None = None,
          overwrite: bool = False, **settings: Any) -> Run:
    """Fit `model` (a name from `recscale train --help`; required, here or in `config`) on a
    prepared dataset (a PreparedDataset or its directory) and return the Run.
    `settings`: run settings and model hyperparameters by name; `config`: a TOML file as for
    `recscale train --config` (keyword arguments override it). Without `out`, the run goes to a new
    temporary directory. `warm_start`: a Run (or its directory) trained on the dataset `data`
    extends, whose weights start this one."""
    if "warm_start" in settings:  # a Run or a path, recorded as the path
        settings["warm_start"] = str(getattr(settings["warm_start"], "path", settings["warm_start"]))
    run_settings, params = split_settings(settings)
    chosen = {"model": model} if model else {}  # else the config file's
    cfg, merged = resolve_settings(config, Layer({"data": _dataset_path(data), **chosen, **run_settings}, "train()"),
                                   Layer(params, "train()"))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"recscale-{cfg.model}-")) / "run"
    return run_training(cfg, merged, out, overwrite)


def run_training(cfg: RunConfig, params: Layer | dict, out: str | Path, overwrite: bool = False) -> Run:
    """Train with an already resolved RunConfig (what `train` and the command line build)."""
    start_run(cfg, params, out, overwrite=overwrite)
    return Run(out, cfg.system.device)


def resume(run: str | Path, device: str | None = None) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    resume_run(run, device)
    return Run(run, device or "auto")


def load_run(path: str | Path, device: str = "auto", checkpoint: str = "best") -> Run:
    """A trained run from its directory (the model loads on first use)."""
    return Run(path, device, checkpoint)
