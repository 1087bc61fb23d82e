"""Metric tables as people read them: each value with its 95% interval, and the number of users."""

from __future__ import annotations

import math

TABLE_METRICS = {"sampled": ("hr", "ndcg"), "full": ("recall", "ndcg")}


def _cell(metrics: dict, name: str) -> str:
    value = metrics.get(name, float("nan"))
    half = metrics.get("ci95", {}).get(name, float("nan"))
    return f"{value:.4f}" + (f"±{half:.4f}" if math.isfinite(half) else "       ")


def format_table(rows: dict[str, dict], ks, protocol: str) -> str:
    """One line per model: HR/NDCG (ncf, sampled) or Recall/NDCG (full ranking) at each K, and MRR,
    each as mean±half-width of its 95% interval, then the number of users evaluated."""
    kinds = TABLE_METRICS["sampled" if protocol == "ncf" else "full"]
    names = [f"{m}@{k}" for k in sorted(ks) for m in kinds] + ["mrr"]
    present = [n for n in names if any(n in r for r in rows.values())]
    width = max(len(r) for r in rows) + 2
    lines = ["model".ljust(width) + "".join(n.rjust(16) for n in present) + "users".rjust(8)]
    for label, metrics in rows.items():
        lines.append(label.ljust(width) + "".join(_cell(metrics, n).rjust(16) for n in present)
                     + f"{metrics.get('users', 0):8d}")
    return "\n".join(lines)
