"""recscale: train deep-learning recommender models fast, from a laptop CPU to many GPUs."""

__version__ = "0.1.0"
