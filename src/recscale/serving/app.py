"""`recscale serve`: a bundle behind an HTTP JSON API (FastAPI on uvicorn).

    POST /recommend  {"user": "<original id>", "k": 10, "exclude_seen": true}
                     {"items": ["<original item ids>"], "k": 10}    a user not in the training data
    POST /score      {"user": "<original id>" | "items": [...], "candidates": ["<item ids>"]}
    GET  /health, GET /metadata, GET /metrics (Prometheus text format, metrics.py)
    POST /admin/reload                 with X-Admin-Token: swap in the bundle at the served path again

A new user is folded in: the models that read a history (Mult-VAE, Mult-DAE, the autoencoder,
EASE) take the items as their input row; pairwise models (NeuMF, GMF, MLP, the embedding MLP) fit
user vectors to them through the bundle's fold-in graph (models/foldin.py: 10 Adam steps), then
score every item from those. An empty history gets the most popular items.
Requests are micro-batched (batcher.py). Bad input is a 4xx with a one-line JSON error, never a
500: malformed JSON or fields 422, unknown user 404, unknown items listed 422, a body over
`max_body_bytes` 413 (counted as it arrives, so chunked bodies too), a missing or wrong API key 401
(with `api_key_file`; /health stays open). The other limits are the connection's (protocol.py).

The bundle can be swapped without downtime (live.py): on SIGHUP, or through /admin/reload, which
exists only when `admin_token_env` names an environment variable holding the token (compared in
constant time; a wrong or missing one is 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import json
import os
import signal
import time
from pathlib import Path
from typing import Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from recscale.errors import RecscaleError
from recscale.serving.live import LiveBundle, Served, SwapInProgress
from recscale.serving.metrics import MetricsRecorder, ServerMetrics
from recscale.serving.scoring import Job
from recscale.serving.settings import MAX_ITEMS, MAX_REQUEST_K, ServerConfig

Id = Union[int, str]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id | None = None
    items: list[Id] | None = Field(default=None, max_length=MAX_ITEMS)
    k: int = Field(default=10, ge=1, le=MAX_REQUEST_K)
    exclude_seen: bool = True


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id | None = None
    items: list[Id] | None = Field(default=None, max_length=MAX_ITEMS)
    candidates: list[Id] = Field(min_length=1, max_length=MAX_ITEMS)


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _json(body: dict) -> Response:
    """Plain JSON of plain values, serialized once (FastAPI's generic encoder walks every value
    again: a measurable share of a request on a small machine)."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def _one_line(exc: RequestValidationError) -> str:
    error = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    if error.get("type") == "json_invalid":
        return f"malformed JSON: {error.get('ctx', {}).get('error', error.get('msg', ''))}"
    return f"{where or 'body'}: {error.get('msg', 'invalid')}".replace("\n", " ")


def read_api_key(path: str) -> bytes:
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise RecscaleError(f"--api-key-file: {path}: cannot read: {exc.strerror}") from None
    if len(key) < 16 or b"\n" in key:
        raise RecscaleError(f"--api-key-file: {path}: expected one key of 16 or more characters on one line")
    return key


OPEN_PATHS = ("/health",)  # answered without the API key: load balancers probe it


class RequestGuard:
    """Pure ASGI middleware in front of the app: the API key (compared in constant time) and the
    body limit, both before the app reads anything. The body is counted as it arrives, so a
    chunked body without Content-Length is held to the same limit."""

    def __init__(self, app, limit: int, api_key: bytes | None = None):
        self.app, self.limit, self.api_key = app, limit, api_key

    def _authorized(self, path: str, headers: dict) -> bool:
        if self.api_key is None or path in OPEN_PATHS:
            return True
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ").strip()
        return hmac.compare_digest(given, self.api_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if not self._authorized(scope["path"], headers):
            return await JSONResponse({"error": "missing or wrong API key (Authorization: Bearer KEY or "
                                       "X-API-Key: KEY)"}, 401, headers={"www-authenticate": "Bearer"})(
                scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"error": f"request body over {self.limit} bytes"}, 413)(scope, receive, send)
        seen, refused = 0, False

        async def counted():
            # Past the limit: answer 413 here and tell the app the client left (an exception would
            # reach FastAPI's body parser, which turns any error into its own 400)
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not refused:
                refused = True
                await JSONResponse({"error": f"request body over {self.limit} bytes"}, 413)(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)


def read_admin_token(variable: str) -> bytes:
    token = os.environ.get(variable, "").strip().encode()
    if len(token) < 16:
        raise RecscaleError(f"--admin-token-env: environment variable {variable} is "
                            f"{'unset' if variable not in os.environ else 'shorter than 16 characters'}: it must "
                            f"hold the admin token (16 or more characters)")
    return token


ROUTES = frozenset({"/recommend", "/score", "/health", "/metadata", "/metrics", "/admin/reload"})


@contextlib.contextmanager
def _sighup_swaps(live: LiveBundle):
    """SIGHUP swaps the bundle, where signals can be had (the main thread of a Unix process; a test
    client runs the app in another thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_swap_quietly(live)))
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def _swap_quietly(live: LiveBundle) -> None:
    try:
        await live.swap()  # the outcome is logged there
    except SwapInProgress:
        pass


def create_app(bundle_dir: str | Path, settings: ServerConfig | None = None, **changes) -> MetricsRecorder:
    """The ASGI app serving `bundle_dir`; `changes` override fields of `settings` (ServerConfig)."""
    settings = dataclasses.replace(settings or ServerConfig(), **changes)
    api_key = read_api_key(settings.api_key_file) if settings.api_key_file else None
    admin_token = read_admin_token(settings.admin_token_env) if settings.admin_token_env else None
    metrics = ServerMetrics(settings.max_batch)

    def note_served(served: Served) -> None:
        metrics.served(served.bundle.digest, served.bundle.manifest["model"], str(served.bundle.root))

    def note_swap(outcome: dict) -> None:
        metrics.swaps.labels("swapped" if outcome["swapped"] else "failed").inc()
        note_served(live.current)

    live = LiveBundle(bundle_dir, settings, on_batch=metrics.batch_size.observe, on_swap=note_swap)
    note_served(live.current)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await live.start()
        # Everything loaded so far lives as long as the server: keep it out of the garbage
        # collector's full passes, which otherwise stalled every request in flight by 100+ ms
        gc.collect()
        gc.freeze()
        with _sighup_swaps(live):
            yield
        await live.stop()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="recscale", lifespan=lifespan, **docs)
    app.state.live = live
    started = time.time()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _one_line(exc)}, 422)

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem):
        return JSONResponse({"error": str(exc)}, exc.status)

    def known_items(served: Served, items: list) -> np.ndarray:
        found, unknown = served.bundle.items(items)
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise HTTPProblem(422, f"unknown item id(s): {shown}")
        return found

    def who(served: Served, user, items) -> Job:
        bundle = served.bundle
        if (user is None) == (items is None):
            raise HTTPProblem(422, "give exactly one of user (a known user's id) or items (a new user's history)")
        if user is not None:
            index = bundle.user(user)
            if index is None:
                raise HTTPProblem(404, f"unknown user {user!r}")
            return Job(user=index)
        history = known_items(served, items)
        if history.size and bundle.kind == "pairs" and bundle.fold_in is None:
            raise HTTPProblem(422, f"this bundle of {bundle.manifest['model']} has no fold-in graph for a new user "
                              f"(exported by an older recscale: export the run again)")
        return Job(history=np.unique(history))

    def item_json(served: Served, index: int, score: float) -> dict:
        bundle = served.bundle
        out = {"item": bundle.item_ids[index].item(), "score": float(score)}
        if bundle.titles is not None:
            out["title"] = bundle.titles[index]
        return out

    # Each handler reads live.current once, before its first await: a request in flight when the
    # bundle is swapped finishes on the bundle it started with
    @app.post("/recommend")
    async def recommend(request: RecommendRequest):
        served = live.current
        job = who(served, request.user, request.items)
        job.k = request.k
        if request.exclude_seen:
            job.exclude = job.history if job.user is None else served.bundle.seen[job.user].indices.astype(np.int64)
        items, scores, fallback = await served.batcher.submit(job)
        return _json({"user": request.user, "k": request.k, "fallback": bool(fallback),
                      "items": [item_json(served, i, s) for i, s in zip(items.tolist(), scores.tolist())]})

    @app.post("/score")
    async def score(request: ScoreRequest):
        served = live.current
        job = who(served, request.user, request.items)
        job.candidates = known_items(served, request.candidates)
        scores, fallback = await served.batcher.submit(job)
        return _json({"user": request.user, "fallback": bool(fallback),
                      "scores": [item_json(served, i, s) for i, s in zip(job.candidates.tolist(), scores.tolist())]})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": live.current.bundle.manifest["model"],
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/metadata")
    async def metadata():
        served = live.current
        bundle, batcher, m = served.bundle, served.batcher, served.bundle.manifest
        return {"model": m["model"], "kind": m["kind"], "protocol": m["protocol"], "dataset": m["dataset"],
                "recscale_version": m["recscale_version"], "n_users": m["n_users"], "n_items": m["n_items"],
                "digest": bundle.digest, "loaded_at": round(served.loaded_at, 3), "fold_in": m["fold_in"],
                "retrieval": m["retrieval"], "index": settings.index,
                "runtime": bundle.scores.runtime if bundle.scores else None,
                "max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                "batches": batcher.batches, "requests_scored": batcher.jobs, "limits": {
                    "k": MAX_REQUEST_K, "items": MAX_ITEMS, "body_bytes": settings.max_body_bytes,
                    "request_line_bytes": settings.max_request_line, "header_bytes": settings.max_header_bytes,
                    "read_timeout_s": settings.read_timeout_s, "connections": settings.max_connections},
                "api_key": api_key is not None, "hot_swap": {"admin": admin_token is not None, **live.swaps}}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.text(), media_type=metrics.content_type)

    if admin_token is not None:
        @app.post("/admin/reload")
        async def reload(request: Request):
            given = request.headers.get("x-admin-token", "").encode()
            if not hmac.compare_digest(given, admin_token):
                raise HTTPProblem(403, "missing or wrong admin token (X-Admin-Token)")
            try:
                outcome = await live.swap()
            except SwapInProgress as exc:
                raise HTTPProblem(409, str(exc)) from None
            if not outcome["swapped"]:
                return JSONResponse({"error": outcome["error"], "serving": outcome["digest"]}, 422)
            return outcome

    return MetricsRecorder(RequestGuard(app, settings.max_body_bytes, api_key), metrics, ROUTES)


def app_from_env():
    """For `uvicorn --factory` with several workers: the settings come in RECSCALE_SERVE_* variables."""
    return create_app(os.environ["RECSCALE_SERVE_BUNDLE"], ServerConfig.from_json(os.environ["RECSCALE_SERVE_SETTINGS"]))
