"""recscale: train deep-learning recommender models fast, from a laptop CPU to many GPUs.

The Python API (see api.py): `recscale.prepare`, `recscale.train`, `recscale.load_run`,
`recscale.resume`, `recscale.open_dataset`, `recscale.compare`, and the `Run` they return."""

from recscale._version import __version__

API = ("prepare", "train", "load_run", "resume", "open_dataset", "run_training", "compare", "Run")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    # Imported on first use: `recscale --version` and the data layer need not load the training stack.
    if name in API:
        from recscale import api
        return getattr(api, name)
    raise AttributeError(f"module 'recscale' has no attribute {name!r}")
