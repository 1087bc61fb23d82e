"""`recscale serve`: the app of app.py on uvicorn, with every limit of ServerConfig set.

SIGTERM or SIGINT drains: uvicorn stops accepting, closes idle connections, lets requests in
flight finish (up to `grace_s`), then ends the app's lifespan (the batcher) and the process exits 0.
SIGHUP swaps the bundle: in the one process (live.py), or, under several workers, sent to the main
process, through uvicorn's rolling restart (each worker replaced once its replacement is ready;
one that fails to load the bundle leaves the old worker serving).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

from recscale.errors import RecscaleError
from recscale.fsutil import signal_handlers
from recscale.serving.settings import ServerConfig


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise RecscaleError("serve: needs fastapi and uvicorn (pip install 'recscale[serve]')") from None
    return uvicorn


def _protocol():
    """Our guarded httptools protocol; uvicorn's h11 (bounded head size, no read timeout) where
    httptools is missing."""
    try:
        from recscale.serving.protocol import GuardedHttpToolsProtocol
        return GuardedHttpToolsProtocol
    except ImportError:
        return "h11"


def uvicorn_config(app, settings: ServerConfig, **extra):
    uvicorn = _uvicorn()
    for flag in ("tls_cert", "tls_key"):
        path = getattr(settings, flag)
        if path is not None and not Path(path).is_file():
            raise RecscaleError(f"--{flag.replace('_', '-')}: {path}: no such file")
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, http=_protocol(), log_level="warning", access_log=False,
        limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.grace_s, ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
        h11_max_incomplete_event_size=settings.max_request_line + settings.max_header_bytes, server_header=False,
        **extra)
    config.recscale_limits = settings  # read by the protocol of every connection (and worker)
    return config


def serve(bundle: str | Path, settings: ServerConfig) -> None:
    """Serve `bundle` until SIGTERM/SIGINT (then drain)."""
    from recscale.serving.app import create_app
    if settings.threads == 0:  # workers share the CPUs instead of fighting
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        settings = dataclasses.replace(settings, threads=max(1, cpus // settings.workers))
    app = create_app(bundle, settings)  # a bad bundle or setting fails here, in one line, before any worker starts
    scheme = "https" if settings.tls_cert else "http"
    uvicorn = _uvicorn()
    if settings.workers == 1:
        print(f"serving {bundle} on {scheme}://{settings.host}:{settings.port} (POST /recommend, /score; GET "
              f"/health, /metadata, /metrics; SIGHUP swaps the bundle; pid {os.getpid()})", flush=True)
        # uvicorn drains on SIGTERM, then raises the signal again under the handler it found: a
        # handler that ignores it makes a drained server exit 0 instead of dying of the signal
        with signal_handlers(lambda *_: None, (signal.SIGTERM,)):
            uvicorn.Server(uvicorn_config(app, settings)).run()
        return
    os.environ.update(RECSCALE_SERVE_BUNDLE=str(bundle), RECSCALE_SERVE_SETTINGS=settings.to_json())
    print(f"serving {bundle} on {scheme}://{settings.host}:{settings.port} with {settings.workers} workers", flush=True)
    config = uvicorn_config("recscale.serving.app:app_from_env", settings, factory=True, workers=settings.workers)
    sock = config.bind_socket()
    from uvicorn.supervisors import Multiprocess
    Multiprocess(config, sockets=[sock]).run()
