"""One progress facility for long work, and the `recscale` logger messages go through.

Bars are tqdm's (`tqdm.auto`: a widget in a notebook, a line on a terminal) and go to stderr; they
show only on a terminal or in a notebook, and only while the `recscale` logger lets INFO through
(`-q` raises it to WARNING, `-v` lowers it to DEBUG). Everything else a command says beside its
result (epoch lines, notes, warnings) is a record of the `recscale` logger; a handler writing the
bare message to the current stderr is installed once, and an application that configures the
logger itself replaces it.
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

LOGGER = logging.getLogger("recscale")


class _CurrentStderr(logging.StreamHandler):
    """The bare message on whatever sys.stderr is when the record is emitted (a handler that kept
    the stream of import time would miss redirections, pytest's capture among them)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # logging.StreamHandler assigns it; the current stderr is always used
        pass


if not LOGGER.handlers:
    LOGGER.addHandler(_CurrentStderr())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # one copy of each line, not a second through the root logger


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """-q: warnings and errors only, no bars; -v: debug messages too."""
    LOGGER.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def bars_shown() -> bool:
    """Bars are for people watching: a terminal or a notebook, and not under -q."""
    watched = sys.stderr.isatty() or "ipykernel" in sys.modules
    return watched and LOGGER.isEnabledFor(logging.INFO)


def bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
        **options) -> tqdm:
    """A tqdm bar on stderr (elapsed time, rate and ETA), left off the screen once done; a plain
    pass-through when bars are not shown or `enabled` is False."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5, disable=not (enabled and bars_shown()), **options)
