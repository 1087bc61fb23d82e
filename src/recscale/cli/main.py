"""`recscale`'s parser, assembled from the command modules, and `main`: every failure caused by
the user's input is a RecscaleError, one line on stderr, exit code 2, no traceback unless --debug."""

from __future__ import annotations

import os
import sys

from recscale._version import __version__
from recscale.cli import datasets, prepare, runs, train
from recscale.cli.parsing import OneLineParser, add_common_arguments
from recscale.errors import RecscaleError
from recscale.progress import set_verbosity
from recscale.resources import limit_threads

# name -> (adds its parser, runs it)
COMMANDS = {
    "prepare": (prepare.add_prepare, prepare.cmd_prepare),
    "train": (train.add_train, train.cmd_train),
    "evaluate": (runs.add_evaluate, runs.cmd_evaluate),
    "compare": (runs.add_compare, runs.cmd_compare),
    "recommend": (runs.add_recommend, runs.cmd_recommend),
    "benchmark": (train.add_benchmark, train.cmd_benchmark),
    "tune": (train.add_tune, train.cmd_tune),
    "datasets": (datasets.add_datasets, datasets.cmd_datasets),
    "export": (runs.add_export, runs.cmd_export),
    "serve": (runs.add_serve, runs.cmd_serve),
    "demo": (datasets.add_demo, datasets.cmd_demo),
}


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog="recscale", description="Train deep-learning recommender models fast.")
    parser.add_argument("--version", action="version", version=f"recscale {__version__}")
    add_common_arguments(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add, _ in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():
        add_common_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    args.argv = argv
    set_verbosity(args.quiet, args.verbose)
    try:
        limit_threads()
        return COMMANDS[args.command][1](args)
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
