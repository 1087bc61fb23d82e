"""Serving a bundle (export.py) over HTTP: the bundle reader, a micro-batcher, the FastAPI app."""
