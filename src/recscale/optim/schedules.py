"""Schedules as pure functions of the global step: the trainer evaluates them, models never count."""

from __future__ import annotations

import math


def kl_beta(step: int, total_anneal_steps: int, anneal_cap: float) -> float:
    """Mult-VAE's KL weight: linear from 0 to `anneal_cap` over `total_anneal_steps` updates."""
    if total_anneal_steps <= 0:
        return anneal_cap
    return min(anneal_cap, step / total_anneal_steps)


EXPONENTIAL_WARMUP_START = 0.01  # the NCF scaling notebook's warmup starts at 1% of the target rate


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """The linear scaling rule (Goyal et al. 2017): a batch k times larger takes a k times larger
    rate; `lr` is the rate tuned at `base_batch_size`."""
    if rule == "none":
        return lr
    if rule == "linear":
        return lr * batch_size / base_batch_size
    raise ValueError(f"unknown lr scaling rule {rule!r}")


def warmup_factor(step: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the target rate at `step` (0-based) during warmup, 1 afterwards.
    linear: (step + 1) / warmup_steps, so the first step already moves.
    exponential: from 1% up by a constant factor per step, reaching 100% at `warmup_steps`."""
    if kind == "none" or warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    if kind == "linear":
        return (step + 1) / warmup_steps
    if kind == "exponential":
        return EXPONENTIAL_WARMUP_START ** (1.0 - step / warmup_steps)
    raise ValueError(f"unknown warmup {kind!r}")


def decay_factor(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier after warmup: constant, or linear / cosine down to 0 at `total_steps`."""
    if kind == "constant" or step < warmup_steps:
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown decay {kind!r}")


def learning_rate(step: int, peak: float, warmup_steps: int, total_steps: int, warmup: str, decay: str) -> float:
    """The rate of optimizer step `step`: a pure function, so a resumed run continues exactly."""
    return peak * warmup_factor(step, warmup_steps, warmup) * decay_factor(step, warmup_steps, total_steps, decay)
