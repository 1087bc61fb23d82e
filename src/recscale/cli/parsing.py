"""What every command's parser shares: one-line argparse errors and the flags accepted before or
after the subcommand."""

from __future__ import annotations

import argparse

from recscale.evaluation.report import FORMATS
from recscale.progress import LOGGER


class OneLineParser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_common_arguments(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--debug, -q and -v, given before or after the subcommand (a subcommand's copy leaves the
    top-level value alone unless it is given there)."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", default=default,
                          help="no progress bars or notes: results, warnings and errors only")
    loudness.add_argument("-v", "--verbose", action="store_true", default=default, help="debug messages too")


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """--format of the tables a command prints."""
    parser.add_argument("--format", dest="report_format", choices=FORMATS, default="table",
                        help="how tables are printed: an 80-column table, json, csv or markdown [default: table]")


def say(args, text: str) -> None:
    """A line beside a command's table: on stdout with a table for people, on stderr (the
    `recscale` logger) when stdout is json or csv for a program to read."""
    if getattr(args, "report_format", "table") in ("json", "csv"):
        LOGGER.info(text)
    else:
        print(text)
