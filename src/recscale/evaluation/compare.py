"""Is one run really better than another? Paired tests over the users both evaluated.

For each pair of runs and each metric: the per-user differences (b - a), their mean, a paired
t-test and a Wilcoxon signed-rank test (scipy.stats), a seeded bootstrap 95% interval of the mean
difference, and Holm's correction of each test's p-values across the pairs of one metric (so that
comparing many runs does not find differences by chance)."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
from scipy import stats

BOOTSTRAP = 2000  # resamples of the users for the interval


def bootstrap_interval(differences: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the mean of `differences` resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, differences.size, (resamples, differences.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def paired_tests(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """Mean difference, t-test and Wilcoxon p-values, bootstrap interval of b - a per user."""
    differences = b - a
    if not differences.any():  # identical: no test can tell them apart
        t_p = wilcoxon_p = 1.0
    else:
        t_p = float(stats.ttest_rel(b, a).pvalue)
        wilcoxon_p = float(stats.wilcoxon(b, a).pvalue)
    low, high = bootstrap_interval(differences, seed)
    return {"users": int(differences.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "difference": float(differences.mean()), "ci95_low": low, "ci95_high": high,
            "t_test_p": t_p, "wilcoxon_p": wilcoxon_p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (monotone, capped at 1)."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def compare_users(tables: dict[str, pl.DataFrame], metrics: list[str], seed: int = 0) -> list[dict]:
    """One row per (pair of runs, metric) from each run's per-user table (user + metric columns),
    paired on the users both hold; Holm-adjusted p-values beside the raw ones."""
    rows = []
    for name_a, name_b in itertools.combinations(tables, 2):
        joined = tables[name_a].join(tables[name_b], on="user", suffix="_b")
        for metric in metrics:
            rows.append({"a": name_a, "b": name_b, "metric": metric,
                         **paired_tests(joined[metric].to_numpy(), joined[f"{metric}_b"].to_numpy(), seed)})
    for metric in metrics:
        family = [r for r in rows if r["metric"] == metric]
        for test in ("t_test_p", "wilcoxon_p"):
            for row, adjusted in zip(family, holm([r[test] for r in family])):
                row[f"{test}_holm"] = adjusted
    return rows
