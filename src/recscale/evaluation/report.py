"""Metric tables as people read them: each value with its 95% interval, and the number of users,
as an 80-column table (wrapped into blocks when there are many cut-offs), JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
import math

TABLE_METRICS = {"sampled": ("hr", "ndcg"), "full": ("recall", "ndcg")}
FORMATS = ("table", "json", "csv", "markdown")
CELL = 16  # "0.1234±0.0123" and its margin
WIDTH = 80  # a terminal's columns


def _cell(metrics: dict, name: str) -> str:
    value = metrics.get(name, float("nan"))
    half = metrics.get("ci95", {}).get(name, float("nan"))
    return f"{value:.4f}" + (f"±{half:.4f}" if math.isfinite(half) else "       ")


def metric_columns(rows: dict[str, dict], ks, protocol: str) -> list[str]:
    """HR/NDCG (ncf, sampled) or Recall/NDCG (full ranking) at each K, then MRR: those some row has."""
    kinds = TABLE_METRICS["sampled" if protocol == "ncf" else "full"]
    names = [f"{m}@{k}" for k in sorted(ks) for m in kinds] + ["mrr"]
    return [n for n in names if any(n in r for r in rows.values())]


def format_table(rows: dict[str, dict], ks, protocol: str, fmt: str = "table", width: int = WIDTH) -> str:
    """One row per model: each metric as mean±half-width of its 95% interval, then the users
    evaluated. `table` wraps the metric columns into blocks that fit `width` columns."""
    names = metric_columns(rows, ks, protocol)
    if fmt == "json":
        return json.dumps({label: {**{n: metrics.get(n) for n in names},
                                   "ci95": {n: metrics.get("ci95", {}).get(n) for n in names},
                                   "users": metrics.get("users", 0)} for label, metrics in rows.items()}, indent=2)
    if fmt == "csv":
        header = ["model", *[c for n in names for c in (n, f"{n}_ci95")], "users"]
        body = [[label, *[v for n in names for v in (metrics.get(n), metrics.get("ci95", {}).get(n))],
                 metrics.get("users", 0)] for label, metrics in rows.items()]
        return format_rows(header, body, "csv")
    if fmt == "markdown":
        return format_rows(["model", *names, "users"],
                           [[label, *[_cell(m, n).strip() for n in names], m.get("users", 0)] for label, m in rows.items()],
                           "markdown")
    label_width = max([len("model"), *map(len, rows)]) + 2
    per_block = max(1, (width - label_width - 8) // CELL)
    blocks = []
    for start in range(0, len(names), per_block):
        chunk, last = names[start:start + per_block], start + per_block >= len(names)
        lines = ["model".ljust(label_width) + "".join(n.rjust(CELL) for n in chunk) + ("users".rjust(8) if last else "")]
        for label, metrics in rows.items():
            lines.append(label.ljust(label_width) + "".join(_cell(metrics, n).rjust(CELL) for n in chunk)
                         + (f"{metrics.get('users', 0):8d}" if last else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_rows(header: list[str], rows: list[list], fmt: str) -> str:
    """Plain rows (benchmark results, tune's trials) as an aligned table, JSON records, CSV or Markdown."""
    if fmt == "json":
        return json.dumps([dict(zip(header, row)) for row in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return out.getvalue().rstrip("\n")
    text = [[str(c) for c in row] for row in rows]
    if fmt == "markdown":
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *["| " + " | ".join(row) + " |" for row in text]])
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [header, *text])
