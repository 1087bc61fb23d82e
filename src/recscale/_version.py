"""The one version of recscale: pyproject.toml reads it (dynamic), the package and the files it
writes (meta.json, bundle manifests) record it."""

__version__ = "0.2.0"
