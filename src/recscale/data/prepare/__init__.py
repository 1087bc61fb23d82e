"""Stage 2, table or scan -> a prepared directory. `engine.prepare_input` is the entry: it picks the
in-memory engine (memory.py) or the streaming one (stream.py); both run the same filters
(filters.py), id encoding (ids.py), protocol functions (protocols.py) and evaluation negatives
(negatives.py), and write through output.py. presplit.py imports splits made elsewhere."""

from recscale.data.prepare.engine import prepare_input

__all__ = ["prepare_input"]
