"""Stage 1, raw files -> a canonical table: `user, item, rating, timestamp` (+ item titles and genres).

readers.py (CSV/TSV/Parquet and the checks every table passes), formats.py (the published layouts),
sources.py (datasets known by name: the embedded one, downloads through download.py), synth.py
(synthetic logs), raw.py (RawDataset, what every reader returns), scan.py (the same inputs as lazy
scans, for the streaming engine of prepare)."""
