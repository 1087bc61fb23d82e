"""[prepare]: the settings of `recscale prepare` (protocol, filters, evaluation negatives, engine).
"""

from __future__ import annotations

import dataclasses
import datetime

from recscale.config.fields import (
    SEED_RANGE,
    Checked,
    ConfigError,
    at_least,
    each,
    non_negative,
    option,
    size_problem,
)

PROTOCOLS = ("ncf", "vae", "random", "temporal", "seq")
MAX_EVAL_NEGATIVES = 100_000  # far beyond the papers' 99-100; also keeps the candidate tensors int32-sized


def parse_cutoff(value: str) -> tuple[str, float | int]:
    """A point in time as `--cutoff` takes it: ("quantile", q) for a fraction strictly between 0
    and 1 of the log's interactions, ("time", seconds) for a Unix timestamp or an ISO date or
    date-time (UTC unless it names its zone). ValueError when it is none of these."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if 0.0 < number < 1.0:
            return "quantile", number
        if number == int(number) and number >= 1:
            return "time", int(number)
        raise ValueError(f"{text!r} is neither a quantile strictly between 0 and 1 nor a Unix timestamp")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a quantile (0.9), a Unix timestamp or a date (2018-01-01)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return "time", int(moment.timestamp())


def _cutoff_problem(value) -> str:
    if value is None:
        return ""
    try:
        parse_cutoff(value)
    except ValueError as exc:
        return str(exc)
    return ""


def eval_negatives_problem(value: int) -> str:
    """Sampled evaluation negatives: at least one (with none, each held-out positive is ranked
    against nothing and every metric is 1.0), at most MAX_EVAL_NEGATIVES."""
    if value < 1:
        return (f"must be >= 1, got {value} (with no negatives every metric is 1.0; for full ranking over "
                f"all items use --protocol random or vae)")
    return "" if value <= MAX_EVAL_NEGATIVES else f"must be <= {MAX_EVAL_NEGATIVES:,}, got {value}"


TIE_BREAKS = ("file", "random", "item")


@dataclasses.dataclass(frozen=True)
class PrepareConfig(Checked):
    """How `recscale prepare` turns raw interactions into a prepared dataset."""

    protocol: str = option("ncf", "split protocol: ncf (leave-latest-out + sampled test negatives), "
                           "vae (strong generalization with fold-in), random (per-user ratio split), "
                           "temporal (one global cut in time), seq (each user's time-ordered sequence: the last item test, "
                           "the one before valid; full ranking)", choices=PROTOCOLS)
    seed: int = option(0, "seed for every random choice of the split (same seed, same files)", check=SEED_RANGE)
    tie_break: str = option("file", "order of interactions with equal timestamps: file (the later line of "
                            "the input is the later interaction, as a stable sort gives; RecBole's rule), "
                            "random (seeded), item (the higher item id is later; recscale < 0.2)",
                            choices=TIE_BREAKS)
    min_rating: float | None = option(None, "keep only ratings >= this (default: all for ncf and "
                                      "random, 4.0 for vae as in Liang et al. 2018)")
    min_user_interactions: int | None = option(None, "drop users with fewer interactions after "
                                               "filtering (default: 5 for vae, 1 otherwise)", check=at_least(1))
    min_seq: int = option(3, "seq: users with fewer interactions (after filtering) are dropped; 3 leaves each "
                          "kept user one training item, one validation and one test item", check=at_least(3))
    valid: bool = option(True, "ncf: also hold out each user's next-latest interaction for validation; "
                         "temporal: a validation window before the cutoff")
    cutoff: str = option("0.9", "temporal: test = the interactions at or after this point: a quantile of "
                         "the log's timestamps (0.9), a Unix timestamp or a date (2018-01-01)",
                         check=_cutoff_problem)
    valid_cutoff: str | None = option(None, "temporal: validation = the interactions from this point to the "
                                      "cutoff, in the same forms (default: as large a share of the log as "
                                      "the test)", check=_cutoff_problem)
    test_negatives: int = option(100, "ncf: sampled negatives per held-out positive, validation and "
                                 "test (never a positive of that user)", check=eval_negatives_problem)
    heldout_users: int | None = option(None, "vae: users held out for validation and again for test "
                                       "(default: 10,000 as in the paper, capped at 10%% of users)",
                                       check=at_least(1))
    holdout_fraction: float = option(0.2, "vae: fraction of each held-out user's items to predict "
                                     "from the rest (fold-in)", check=lambda v: "" if 0.0 < v < 1.0 else
                                     f"must lie strictly between 0 and 1, got {v!r}")
    ratios: tuple[float, float, float] = option((0.8, 0.1, 0.1), "random: train,valid,test "
                                                "fractions of each user's interactions",
                                                check=each(non_negative))
    extend: str | None = option(None, "a prepared dataset (yesterday's) whose user and item numbers this one "
                                "keeps, new ones appended after them: same protocol and filters")
    engine: str = option("auto", "memory (read the whole log), stream (Polars' streaming engine and "
                         "partitioned passes: memory stays bounded), or auto (stream when the in-memory "
                         "path would need more than --memory-budget)", choices=("auto", "memory", "stream"))
    memory_budget: str = option("auto", "memory this command may use, e.g. 4GiB (auto: half of what is "
                                "available)", check=lambda v: size_problem(v))

    def relations(self) -> None:
        if abs(sum(self.ratios) - 1) > 1e-6:
            raise ConfigError("ratios", "need three non-negative fractions that sum to 1, e.g. 0.8,0.1,0.1")

    @property
    def effective_min_rating(self) -> float | None:
        if self.min_rating is not None:
            return self.min_rating
        return 4.0 if self.protocol == "vae" else None

    @property
    def effective_min_user_interactions(self) -> int:
        if self.min_user_interactions is not None:
            base = self.min_user_interactions
        else:
            base = 5 if self.protocol == "vae" else 1
        return max(base, self.min_seq) if self.protocol == "seq" else base
