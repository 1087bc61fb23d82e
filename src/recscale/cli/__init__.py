"""The `recscale` command line: it parses flags, calls the Python API (api.py) and prints.

One module per group of commands, each with its parser (`add_*`) beside its handler (`cmd_*`):
prepare.py, train.py (train, tune, benchmark), runs.py (evaluate, recommend, export, serve),
datasets.py (datasets, demo); main.py puts them together and turns errors into one line.
"""

from recscale.cli.main import COMMANDS, main, make_parser

__all__ = ["COMMANDS", "main", "make_parser"]
