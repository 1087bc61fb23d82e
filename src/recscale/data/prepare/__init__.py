"""Stage 2, table or scan -> a prepared directory. `engine.prepare_from` is the entry: a split made
elsewhere goes to presplit.py, anything else to `engine.prepare_input`, which picks the in-memory
engine (memory.py) or the streaming one (stream.py); both run the same filters
(filters.py), id encoding (ids.py), protocol functions (protocols.py) and evaluation negatives
(negatives.py), and write through output.py."""

from recscale.data.prepare.engine import prepare_from, prepare_input

__all__ = ["prepare_from", "prepare_input"]
