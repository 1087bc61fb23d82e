"""Hyperparameter search (`recscale tune`)."""
