"""The `recscale` command line: it parses flags, calls the Python API (api.py) and prints.

Every failure caused by the user's input is a RecscaleError: one line on stderr, exit code 2, no
traceback unless --debug.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from recscale import api
from recscale._version import __version__
from recscale.bench import benchmark, format_benchmark, write_json
from recscale.config.arguments import add_arguments, add_run_arguments, from_namespace, run_flags
from recscale.config.files import read_config_file, run_layers, tomllib
from recscale.config.layers import Layer, build, flags
from recscale.config.prepare import PrepareConfig
from recscale.config.run import MAX_K, EvalConfig
from recscale.data.dataset.schema import dataset_notes
from recscale.data.ingest.download import cache_root, dataset_dir, ensure_dataset, parse_checksums
from recscale.data.ingest.formats import FORMATS
from recscale.data.ingest.inputs import RawInput
from recscale.data.ingest.sources import REMOTES
from recscale.data.ingest.synth import SynthSpec, synthesize, write_movielens_layout
from recscale.data.prepare.engine import prepare_input
from recscale.data.prepare.presplit import import_split, read_ncf_paper
from recscale.errors import RecscaleError
from recscale.evaluation.report import format_table
from recscale.fsutil import stop_signals_clean_up
from recscale.models.registry import MODELS
from recscale.recommend import read_user_file
from recscale.resources import limit_threads
from recscale.training.build import resolve_run_config


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------- prepare

def _input(args) -> RawInput:
    """What `prepare`'s flags name (data/ingest/inputs.py resolves it, as for the API)."""
    return RawInput(args.dataset, args.format, args.raw_dir, args.ratings, args.movies, args.sep, args.user_col,
                    args.item_col, args.rating_col, args.time_col, parse_checksums(args.sha256))


PRESPLIT_FLAGS = {"train": "train_file", "valid": "valid_file", "test": "test_file",
                  "valid_heldout": "valid_heldout_file", "test_heldout": "test_heldout_file"}


def _import_files(args, cfg: PrepareConfig) -> dict:
    """--train-file etc.: a split made elsewhere, imported as it is."""
    given = {part: getattr(args, flag) for part, flag in PRESPLIT_FLAGS.items() if getattr(args, flag)}
    if cfg.protocol == "vae":  # --valid-file/--test-file are the fold-in parts of the held-out users
        given = {({"valid": "valid_foldin", "test": "test_foldin"}.get(k, k)): v for k, v in given.items()}
    source = _input(args)
    parts = {part: source.read_file(path) for part, path in given.items()}
    items = source.items()
    files = tuple(Path(p) for p in [*given.values(), args.movies] if p)
    return import_split(Path(args.train_file).stem, parts, cfg.protocol, Path(args.out), files, items,
                        test_negatives=cfg.test_negatives, seed=cfg.seed, overwrite=args.overwrite)


def _import_ncf_paper(args, cfg: PrepareConfig) -> dict:
    root = args.raw_dir or ensure_dataset(REMOTES[args.dataset], checksums=parse_checksums(args.sha256))
    name, parts, negatives, files = read_ncf_paper(Path(root), args.dataset[len("ncf-"):] if args.dataset else None)
    return import_split(f"ncf-{name}", parts, "ncf", Path(args.out), files, negatives=negatives,
                        seed=cfg.seed, overwrite=args.overwrite)


def cmd_prepare(args) -> int:
    cfg = build(PrepareConfig, flags(from_namespace(PrepareConfig, args)))
    started = time.perf_counter()
    fmt = args.format or (REMOTES[args.dataset].format if args.dataset in REMOTES else None)
    if args.train_file:
        if args.dataset or args.format or args.ratings:
            raise RecscaleError("--train-file: imports a ready split; do not combine with --dataset/--format/--ratings")
        with stop_signals_clean_up("prepare"):
            meta = _import_files(args, cfg)
    elif fmt == "ncf-paper":
        if cfg.protocol != "ncf":
            raise RecscaleError("--protocol: the NCF paper's split is an ncf split")
        with stop_signals_clean_up("prepare"):
            meta = _import_ncf_paper(args, cfg)
    else:
        source = _input(args)
        meta, engine = prepare_input(source.read, source.scan, cfg, args.out, args.overwrite, what=source.what)
        if engine == "stream":
            print("engine: stream (bounded memory)", file=sys.stderr)
    counts = ", ".join(f"{k}={v}" for k, v in meta["counts"].items())
    print(f"prepared {meta['source']['dataset']} ({cfg.protocol}) in {time.perf_counter() - started:.1f}s "
          f"-> {args.out}\n  {counts}")
    for note in dataset_notes(meta):
        print(f"note: {note}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- train

def parse_params(pairs: list[str]) -> dict:
    """--param KEY=VALUE (VALUE in TOML syntax: 0.5, 200, [600, 200], true, "text")."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RecscaleError(f"--param: expected KEY=VALUE, got {pair!r}")
        try:
            params[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            params[key.strip()] = value  # a bare word: take it as a string
    return params


PRETRAINED_FLAGS = ("pretrained_gmf", "pretrained_mlp")  # flags kept from before they became model settings


def resolve_flags(args) -> tuple:
    """(RunConfig, model hyperparameter layer): defaults < the model's defaults < --config < flags."""
    layers, model_layers = [], []
    if args.config:
        file_layers, file_model = run_layers(read_config_file(args.config), args.config)
        layers += file_layers
        model_layers.append(file_model)
    layers.append(flags(run_flags(args)))
    cfg = resolve_run_config(*layers)
    params = {k: getattr(args, k) for k in PRETRAINED_FLAGS if getattr(args, k, None)}
    model_layers.append(Layer({**params, **parse_params(args.param)}, "flags", "param"))
    merged = {k: v for layer in model_layers for k, v in layer.values.items()}
    return cfg, Layer(merged, model_layers[-1].source if len(model_layers) == 1 else "config and flags", "param")


def _without(argv: list[str], flags_: tuple[str, ...]) -> list[str]:
    """argv minus the given flags and their values (`--flag V` or `--flag=V`)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in flags_:
            skip = True
        elif not any(token.startswith(f + "=") for f in flags_):
            out.append(token)
    return out


def launch_torchrun(args) -> int:
    """`recscale train --nproc N`: start torchrun's elastic launcher on this machine with N workers,
    each running this same command without --nproc (multi-node: run torchrun yourself, see README)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    argv = _without(args.argv, ("--nproc", "--max-restarts"))
    try:
        torchrun(["--standalone", "--nproc-per-node", str(args.nproc), "--max-restarts", str(args.max_restarts),
                  "-m", "recscale", *argv])
    except ChildFailedError as exc:
        raise RecscaleError(f"--nproc: a worker failed: {str(exc).splitlines()[0]}") from None
    return 0


def cmd_train(args) -> int:
    if args.nproc < 1:
        raise RecscaleError(f"--nproc: must be >= 1, got {args.nproc}")
    if args.max_restarts < 0:
        raise RecscaleError(f"--max-restarts: must be >= 0, got {args.max_restarts}")
    if args.nproc > 1 and "RANK" not in os.environ:
        return launch_torchrun(args)
    if args.resume:
        given = set(run_flags(args)) - {"device"}
        if args.out or args.config or args.param or given or any(getattr(args, k) for k in PRETRAINED_FLAGS):
            raise RecscaleError("--resume: takes only --device; the run's config.toml holds the rest")
        best = api.resume(args.resume, args.device).best
        print(f"resumed and finished {args.resume}")
        print(format_table({f"best ({best.get('split', '-')})": best}, (10, 20, 50, 100), best.get("protocol", "ncf")))
        return 0
    if not args.out:
        raise RecscaleError("--out: a run directory is required (or --resume RUN)")
    cfg, params = resolve_flags(args)
    run = api.run_training(cfg, params, args.out, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    record = run.best
    print(f"trained {cfg.model} -> {args.out}")
    print(format_table({f"{cfg.model} ({record['split']})": record}, cfg.eval.ks, record["protocol"]))
    return 0


def cmd_tune(args) -> int:
    from recscale.resources import usable_cpus
    from recscale.training.build import model_class
    from recscale.tuning.space import parse_space, read_space
    from recscale.tuning.study import TuneJob, check_out, check_study_name, fingerprint, tune
    for flag, value, low in (("--trials", args.trials, 1), ("--jobs", args.jobs, 1)):
        if value < low:
            raise RecscaleError(f"{flag}: must be >= {low}, got {value}")
    if args.timeout is not None and not args.timeout > 0:
        raise RecscaleError(f"--timeout: must be > 0 seconds, got {args.timeout}")
    cfg, params = resolve_flags(args)
    cls = model_class(cfg.model)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    if args.space:
        space = read_space(args.space, fields)
    elif cls.tune_space:
        space = parse_space(f"{cfg.model}'s default space", cls.tune_space, fields)
    else:
        raise RecscaleError(f"--space: {cfg.model} has no hyperparameters to tune by default; give a space file")
    cfg = cfg.replace(data=str(Path(cfg.data).absolute()))
    data = api.open_dataset(cfg.data)
    out = Path(args.out)
    check_out(out, [cfg.data, *(p for p in (args.space, args.config) if p)])
    job = TuneJob(out, [Layer(cfg.flat(), "flags")], params, space, cfg.model, args.trials, args.timeout,
                  cfg.system.seed, max(1, usable_cpus() // args.jobs), check_study_name(args.study),
                  fingerprint(cfg.model, cfg.data, data.protocol, space), args.overwrite)
    summary = tune(job, args.jobs)
    print(job.output("trials.tsv").read_text(), end="")
    print(f"best: trial {summary['best_trial']} ({summary['best_value']:.4f}), {summary['complete']} complete, "
          f"{summary['pruned']} pruned of {summary['trials']}; reproduce with: recscale train --config "
          f"{job.output('best.toml')} --out runs/best")
    return 0


# ----------------------------------------------------------------------------- evaluate, recommend

def _parse_ks(text: str) -> tuple[int, ...]:
    """--k 10,20: checked like the ks setting of a run (one place for its rules)."""
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise RecscaleError(f"--k: expected comma-separated integers, got {text!r}") from None
    return build(EvalConfig, Layer({"ks": ks}, "flags", "flag", aliases={"ks": "--k"})).ks


def cmd_evaluate(args) -> int:
    ks = _parse_ks(args.k)
    result = api.load_run(args.run, args.device, args.checkpoint).evaluate(args.split, ks, args.test_history)
    print(format_table({f"{result['model']} ({args.split})": result}, ks, result["protocol"]))
    print(f"wrote {Path(args.run) / f'eval-{args.split}.json'}")
    return 0


def cmd_recommend(args) -> int:
    if not 1 <= args.k <= MAX_K:
        raise RecscaleError(f"--k: must lie in [1, {MAX_K}], got {args.k}")
    if bool(args.users) == bool(args.all):
        raise RecscaleError("recommend: give exactly one of --users FILE or --all")
    run = api.load_run(args.run, args.device, args.checkpoint)
    users = read_user_file(args.users, run.data) if args.users else None
    rows = run.write_recommendations(args.out, users, args.k, args.overwrite, [args.users] if args.users else [])
    print(f"wrote {rows} recommendations -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- benchmark

def cmd_benchmark(args) -> int:
    cfg, params = resolve_flags(args)
    result = benchmark(cfg, params, untimed_epochs=args.untimed_epochs)
    print(format_benchmark(result))
    validation = result["validation"]
    print(format_table({f"{cfg.model} ({validation['split']}, last epoch)": validation}, cfg.eval.ks,
                       result["protocol"]))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- datasets, demo

def cmd_datasets(args) -> int:
    action = args.action or "list"
    if action == "list":
        print(f"{'name':18s} {'format':15s} {'checksum':30s} {'cached':7s} source")
        print(f"{'ml-latest-small':18s} {'movielens-csv':15s} {'embedded':30s} {'yes':7s} inside the package")
        for name, remote in REMOTES.items():
            pinned = next(iter(remote.checksums.values()), None)
            check = (f"{pinned[0]} (publisher)" if pinned else
                     "-" if not remote.urls else "sha256 on first use (TOFU)")
            cached = "yes" if dataset_dir(remote).is_dir() else "no"
            print(f"{name:18s} {remote.format:15s} {check:30s} {cached:7s} "
                  f"{remote.urls[0] if remote.urls else remote.note}")
        print(f"cache: {cache_root()} (set RECSCALE_HOME to move it); TOFU: the SHA-256 of the first copy is "
              f"recorded and later copies must match; pass --sha256 FILE=HEX to pin your own")
        return 0
    if action == "download":
        if not args.name:
            raise RecscaleError("datasets download: name a dataset (see `recscale datasets list`)")
        if args.name not in REMOTES or not REMOTES[args.name].urls:
            raise RecscaleError(f"datasets download: {args.name!r} is not downloadable (see `recscale datasets list`)")
        print(f"{args.name}: {ensure_dataset(REMOTES[args.name], checksums=parse_checksums(args.sha256))}")
        return 0
    if not args.out:
        raise RecscaleError("datasets synth: --out DIR is required")
    spec = build(SynthSpec, flags({k: getattr(args, k) for k in ("users", "items", "interactions", "seed", "clusters")}))
    started = time.perf_counter()
    write_movielens_layout(synthesize(spec).raw, args.out, overwrite=args.overwrite)
    print(f"wrote {spec.interactions:,} interactions ({spec.users:,} users x {spec.items:,} items) in "
          f"{time.perf_counter() - started:.1f}s -> {args.out}/ratings.csv, movies.csv")
    return 0


# ----------------------------------------------------------------------------- export, serve

def cmd_export(args) -> int:
    from recscale.export import export_run
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    manifest = export_run(args.run, args.out, formats, args.checkpoint, overwrite=args.overwrite)
    graphs = ", ".join(f for g in manifest["graphs"].values() for f in g["files"]) or "none (popularity needs none)"
    print(f"exported {manifest['model']} ({manifest['kind'] or 'no graph'}; {manifest['n_users']:,} users, "
          f"{manifest['n_items']:,} items) -> {args.out}\n  graphs: {graphs}; fold-in for new users: "
          f"{'yes' if manifest['fold_in'] else 'no'}; retrieval index: {'yes' if manifest['retrieval'] else 'no'}")
    return 0


def cmd_serve(args) -> int:
    from recscale.serving.server import serve
    from recscale.serving.settings import ServerConfig
    serve(args.bundle, build(ServerConfig, flags(from_namespace(ServerConfig, args))))
    return 0


DEMO_MODELS = {"ncf": ["popularity", "neumf"], "vae": ["popularity", "ease", "multvae"]}
DEMO_KS = {"ncf": (10, 20), "vae": (20, 50, 100)}


def cmd_demo(args) -> int:
    """prepare -> fit -> evaluate -> recommend on the embedded MovieLens ml-latest-small."""
    out = Path(args.out)
    for protocol, models in DEMO_MODELS.items():
        data = api.prepare("ml-latest-small", out / f"ml-latest-small-{protocol}", protocol, seed=args.seed,
                           overwrite=True)
        counts = data.meta["counts"]
        print(f"[prepare] {protocol}: {counts['users']} users, {counts['items']} items -> {data.root}", flush=True)
        rows = {}
        for name in models:
            run_dir = out / f"{name}-{protocol}"
            quick = {"epochs": 2} if args.quick else {}
            started = time.perf_counter()
            run = api.train(data, name, run_dir, overwrite=True, seed=args.seed, device=args.device, **quick)
            rows[f"{name} (test)"] = run.evaluate("test")
            n = run.write_recommendations(run_dir / "recs.tsv", k=10)
            print(f"[train] {name} ({time.perf_counter() - started:.0f}s): run -> {run_dir}; metrics -> "
                  f"{run_dir / 'eval-test.json'}; top-10 recommendations ({n} rows) -> {run_dir / 'recs.tsv'}",
                  flush=True)
        print(f"\nTest metrics, {protocol} protocol "
              f"({'100 sampled negatives' if protocol == 'ncf' else 'full ranking, fold-in users'}; "
              f"± is the 95% interval over users):")
        print(format_table(rows, DEMO_KS[protocol], protocol) + "\n", flush=True)
        for note in dataset_notes(data.meta):
            print(f"note: {note}\n", flush=True)
    return 0


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "recommend": cmd_recommend,
    "benchmark": cmd_benchmark,
    "tune": cmd_tune,
    "datasets": cmd_datasets,
    "export": cmd_export,
    "serve": cmd_serve,
    "demo": cmd_demo,
}


def models_help() -> str:
    lines = ["models and their hyperparameters (--param KEY=VALUE or a [model] config section):"]
    for name, cls in MODELS.items():
        fields = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.Config)) or "none"
        defaults = ", ".join(f"{k}={v}" for k, v in cls.train_defaults.items())
        lines.append(f"  {name:14s} {fields}" + (f"\n  {'':14s} training defaults: {defaults}" if defaults else ""))
    return "\n".join(lines)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML/YAML file with [run], [optim], [loader], [eval], [system] and [model] "
                   "sections (or an older file's [train] section); flags override it")
    p.add_argument("--param", "-p", action="append", metavar="KEY=VALUE", help="a model hyperparameter")
    p.add_argument("--pretrained-gmf", dest="pretrained_gmf", help="neumf: a trained gmf run to start from "
                   "(the model setting pretrained_gmf)")
    p.add_argument("--pretrained-mlp", dest="pretrained_mlp", help="neumf: a trained mlp run to start from "
                   "(the model setting pretrained_mlp)")
    add_run_arguments(p)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recscale", description="Train deep-learning recommender models fast.")
    parser.add_argument("--version", action="version", version=f"recscale {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prepare", help="raw interactions -> prepared dataset (Parquet + meta.json)")
    p.add_argument("--dataset", metavar="NAME", help="a dataset recscale knows by name (`recscale datasets "
                   "list`); downloaded into the cache when missing, unless --raw-dir holds its files")
    p.add_argument("--format", choices=[*FORMATS, "ncf-paper"], help="read the published files in --raw-dir "
                   "(ncf-paper: NAME.train.rating, NAME.test.rating, NAME.test.negative)")
    p.add_argument("--raw-dir", help="directory with a dataset's unpacked files")
    p.add_argument("--sha256", action="append", metavar="FILE=HEX", help="--dataset: your own SHA-256 of a "
                   "downloaded archive (FILE: its file name), checked before it is used")
    p.add_argument("--ratings", help="any CSV/TSV (with a header) or Parquet file of interactions")
    p.add_argument("--sep", help="--ratings field separator (default: tab for .tsv, else comma)")
    p.add_argument("--user-col", default="userId", help="--ratings user column [default: userId]")
    p.add_argument("--item-col", default="movieId", help="--ratings item column [default: movieId]")
    p.add_argument("--rating-col", default="rating", help="--ratings rating column; '' for implicit "
                   "feedback (every row 1.0) [default: rating]")
    p.add_argument("--time-col", default="timestamp", help="--ratings time column (integer); '' for none "
                   "[default: timestamp]")
    p.add_argument("--movies", help="optional movies.csv (movieId,title,genres) for item features")
    p.add_argument("--train-file", help="import a split made elsewhere: its training interactions "
                   "(read like --ratings); with --test-file and optionally --valid-file")
    p.add_argument("--valid-file", help="the imported split's validation interactions (vae: fold-in part "
                   "of the validation users)")
    p.add_argument("--test-file", help="the imported split's test interactions (vae: fold-in part of the "
                   "test users)")
    p.add_argument("--valid-heldout-file", help="vae: held-out part of the validation users")
    p.add_argument("--test-heldout-file", help="vae: held-out part of the test users")
    p.add_argument("--out", required=True, help="prepared dataset directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_arguments(p, PrepareConfig)

    p = sub.add_parser("train", help="fit a model on a prepared dataset", epilog=models_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.add_argument("--out", help="run directory to write (runs/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out (the old run "
                   "stays until the new one has its first checkpoint)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel worker processes on this machine "
                   "(starts torchrun; --batch-size stays the global batch)")
    p.add_argument("--max-restarts", type=int, default=0, help="with --nproc: restart the worker group "
                   "this many times after a failure; it resumes from the last checkpoint")

    for name, text in (("evaluate", "score a trained run on a split"), ("recommend", "write top-k unseen items per user")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--run", required=True, help="run directory from `recscale train`")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [default: auto]")
        p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                       help="best (validation) or last [default: best]")
        if name == "evaluate":
            p.add_argument("--split", choices=["valid", "test"], default="test")
            p.add_argument("--k", default="10,20,50,100", help="cut-offs, comma-separated")
            p.add_argument("--test-history", choices=("train+valid", "train"), default=None,
                           help="ncf/random: score test users from train+valid or from train only "
                           "[default: the run's setting, train+valid]")
        else:
            p.add_argument("--k", type=int, default=10)
            p.add_argument("--users", help="file with one original user id per line")
            p.add_argument("--all", action="store_true", help="every user of the dataset")
            p.add_argument("--out", required=True, help="recs.tsv or recs.parquet")
            p.add_argument("--overwrite", action="store_true", help="replace --out if it is recommendations "
                           "recscale wrote")

    p = sub.add_parser("tune", help="search hyperparameters with Optuna (each trial a training run)",
                       epilog=models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.add_argument("--space", help="TOML search space [default: the model's own]")
    p.add_argument("--trials", type=int, default=20, help="trials to finish (complete or pruned) [default: 20]")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--jobs", type=int, default=1, help="trials in parallel, as processes sharing the CPUs [default: 1]")
    p.add_argument("--out", required=True, help="study directory (study.db, trials/, trials.tsv, best.toml)")
    p.add_argument("--study", default="recscale", help="the study's name in OUT/study.db (another name: another "
                   "search beside it) [default: recscale]")
    p.add_argument("--overwrite", action="store_true", help="start the study afresh (deletes its trials and "
                   "outputs, nothing else)")

    p = sub.add_parser("benchmark", help="time training epochs and validation of a model",
                       epilog=models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.add_argument("--untimed-epochs", type=int, default=1, help="first epochs run but not timed (allocator and cache warm-up)")
    p.add_argument("--json", help="also write the result to this JSON file")

    p = sub.add_parser("datasets", help="list, download or synthesize datasets")
    p.add_argument("action", nargs="?", choices=["list", "download", "synth"], help="[default: list]")
    p.add_argument("name", nargs="?", help="download: the dataset's name")
    p.add_argument("--sha256", action="append", metavar="FILE=HEX", help="download: your own SHA-256 of an "
                   "archive (FILE: its file name), checked before use; replaces a checksum recorded on first use")
    add_arguments(p, SynthSpec, skip=("in_cluster", "item_exponent", "activity_exponent", "min_per_user"))
    p.add_argument("--out", help="synth: directory to write ratings.csv and movies.csv into")
    p.add_argument("--overwrite", action="store_true", help="synth: replace ratings.csv and movies.csv in --out")

    p = sub.add_parser("export", help="a trained run -> a bundle for serving (ONNX / torch.export graphs, id maps, "
                       "seen items, popularity)")
    p.add_argument("--run", required=True, help="run directory from `recscale train`")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--format", default="onnx,torch", help="onnx, torch or both, comma-separated [default: onnx,torch]")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = sub.add_parser("serve", help="serve a bundle over HTTP (FastAPI + uvicorn)")
    p.add_argument("--bundle", required=True, help="bundle directory from `recscale export`")
    from recscale.serving.settings import ServerConfig
    add_arguments(p, ServerConfig)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded MovieLens data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="2 epochs per neural model (a smoke run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    args.argv = argv
    try:
        limit_threads()
        return COMMANDS[args.command](args)
    except RecscaleError as exc:
        if args.debug:
            raise
        print(f"recscale {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"recscale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `recscale ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:
        if args.debug:
            raise
        print(f"recscale {args.command}: error: out of memory (a smaller batch, dataset or model may fit)",
              file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not the user's input: still one line, with the way to see more
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"recscale {args.command}: internal error: {type(exc).__name__}: {first} (rerun with --debug "
              f"for the traceback, and please report it)", file=sys.stderr)
        return 1
