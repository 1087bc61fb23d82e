"""`recscale train`, `tune` and `benchmark`: the commands that fit a model, with the run flags
generated from RunConfig (config/arguments.py) and the one layer merge of api.resolve_settings."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
from pathlib import Path

from recscale import api
from recscale.bench import benchmark, format_benchmark, write_json
from recscale.cli.parsing import add_format_argument, say
from recscale.config.arguments import add_run_arguments, run_flags
from recscale.config.files import tomllib
from recscale.config.layers import Layer, flags
from recscale.errors import RecscaleError
from recscale.evaluation.report import format_rows, format_table
from recscale.models.registry import MODELS

PRETRAINED_FLAGS = ("pretrained_gmf", "pretrained_mlp")  # flags kept from before they became model settings


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
    note_model_defaults(p)


def note_model_defaults(p: argparse.ArgumentParser) -> None:
    """A run flag whose default some models override says so in its help: the model's default
    is the one a run of that model gets (NeuMF's batch size is 4096, not the general one)."""
    for action in p._actions:
        overrides = {name: cls.train_defaults[action.dest] for name, cls in MODELS.items()
                     if action.dest in cls.train_defaults}
        if overrides and action.help:
            per_model = ", ".join(f"{name} {value}" for name, value in overrides.items())
            action.help += f" (the models' own: {per_model})"


def fitting_parser(sub, name: str, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text, epilog=models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    add_format_argument(p)
    return p


def add_train(sub) -> None:
    p = fitting_parser(sub, "train", "fit a model on a prepared dataset")
    p.add_argument("--out", help="run directory to write (runs/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out (the old run "
                   "stays until the new one has its first checkpoint)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel worker processes on this machine "
                   "(starts torchrun; --batch-size stays the global batch)")
    p.add_argument("--max-restarts", type=int, default=0, help="with --nproc: restart the worker group "
                   "this many times after a failure; it resumes from the last checkpoint")


def add_tune(sub) -> None:
    p = fitting_parser(sub, "tune", "search hyperparameters with Optuna (each trial a training run)")
    p.add_argument("--space", help="TOML search space [default: the model's own]")
    p.add_argument("--trials", type=int, default=20, help="trials to finish (complete or pruned) [default: 20]")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--jobs", type=int, default=1, help="trials in parallel, as processes sharing the CPUs [default: 1]")
    p.add_argument("--out", required=True, help="study directory (study.db, trials/, trials.tsv, best.toml)")
    p.add_argument("--study", default="recscale", help="the study's name in OUT/study.db (another name: another "
                   "search beside it) [default: recscale]")
    p.add_argument("--overwrite", action="store_true", help="start the study afresh (deletes its trials and "
                   "outputs, nothing else)")


def add_benchmark(sub) -> None:
    p = fitting_parser(sub, "benchmark", "time training epochs and validation of a model")
    p.add_argument("--untimed-epochs", type=int, default=1, help="first epochs run but not timed (allocator and cache warm-up)")
    p.add_argument("--json", help="also write the result to this JSON file")


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


def resolve_flags(args) -> tuple:
    """(RunConfig, model hyperparameter layer) of the flags and --config."""
    params = {k: getattr(args, k) for k in PRETRAINED_FLAGS if getattr(args, k, None)}
    return api.resolve_settings(args.config, flags(run_flags(args)),
                                Layer({**params, **parse_params(args.param)}, "flags", "param"))


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
        say(args, f"resumed and finished {args.resume}")
        print(format_table({f"best ({best.get('split', '-')})": best}, (10, 20, 50, 100), best.get("protocol", "ncf"),
                           args.report_format))
        return 0
    if not args.out:
        raise RecscaleError("--out: a run directory is required (or --resume RUN)")
    cfg, params = resolve_flags(args)
    run = api.run_training(cfg, params, args.out, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    record = run.best
    say(args, f"trained {cfg.model} -> {args.out}")
    print(format_table({f"{cfg.model} ({record['split']})": record}, cfg.eval.ks, record["protocol"], args.report_format))
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
    with open(job.output("trials.tsv"), newline="") as handle:
        header, *trials = list(csv.reader(handle, delimiter="\t"))
    if args.report_format == "json":
        print(json.dumps({"trials": [dict(zip(header, t)) for t in trials], **summary}, indent=2, default=str))
        return 0
    print(format_rows(header, trials, args.report_format))
    say(args, f"best: trial {summary['best_trial']} ({summary['best_value']:.4f}), {summary['complete']} complete, "
          f"{summary['pruned']} pruned of {summary['trials']}; reproduce with: recscale train --config "
          f"{job.output('best.toml')} --out runs/best")
    return 0


def cmd_benchmark(args) -> int:
    cfg, params = resolve_flags(args)
    result = benchmark(cfg, params, untimed_epochs=args.untimed_epochs)
    print(format_benchmark(result, args.report_format))
    if args.report_format == "json":
        return 0
    validation = result["validation"]
    print(format_table({f"{cfg.model} ({validation['split']}, last epoch)": validation}, cfg.eval.ks,
                       result["protocol"]))
    if args.json:
        write_json(result, args.json)
        say(args, f"wrote {args.json}")
    return 0


