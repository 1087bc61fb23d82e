"""What every command's parser shares: one-line argparse errors and the flags accepted before or
after the subcommand."""

from __future__ import annotations

import argparse


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
