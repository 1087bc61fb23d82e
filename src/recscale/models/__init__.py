"""Models: loss through `forward`, ranking through `score` (see base.Recommender)."""
