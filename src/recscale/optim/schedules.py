"""Schedules as pure functions of the global step: the trainer evaluates them, models never count."""

from __future__ import annotations


def kl_beta(step: int, total_anneal_steps: int, anneal_cap: float) -> float:
    """Mult-VAE's KL weight: linear from 0 to `anneal_cap` over `total_anneal_steps` updates."""
    if total_anneal_steps <= 0:
        return anneal_cap
    return min(anneal_cap, step / total_anneal_steps)
