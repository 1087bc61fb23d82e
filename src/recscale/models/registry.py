"""Every model recscale can train, by its CLI name. A test keeps this dict and the CLI in sync."""

from __future__ import annotations

from recscale.models.popularity import Popularity

MODELS = {
    "popularity": Popularity,
}
