"""`recscale serve`: a bundle behind an HTTP JSON API (FastAPI on uvicorn).

    POST /recommend  {"user": "<original id>", "k": 10, "exclude_seen": true}
                     {"items": ["<original item ids>"], "k": 10}    a user not in the training data
    POST /score      {"user": "<original id>" | "items": [...], "candidates": ["<item ids>"]}
    GET  /health, GET /metadata

A new user is folded in: the models that read a history (Mult-VAE, Mult-DAE, the autoencoder,
EASE) take the items as their input row; pairwise models (NeuMF, GMF, MLP, the embedding MLP) fit
user vectors to them through the bundle's fold-in graph (models/foldin.py: 10 Adam steps), then
score every item from those. An empty history gets the most popular items.
Requests are micro-batched (batcher.py). Bad input is a 4xx with a one-line JSON error, never a
500: malformed JSON or fields 422, unknown user 404, unknown items listed 422, a body over
`max_body_bytes` 413 (counted as it arrives, so chunked bodies too), a missing or wrong API key 401
(with `api_key_file`; /health stays open). The other limits are the connection's (protocol.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from recscale.config.run import SCORE_BLOCK_MIB
from recscale.errors import RecscaleError
from recscale.serving.batcher import MicroBatcher
from recscale.serving.bundle import PAIRS_PER_CALL, Bundle
from recscale.serving.settings import MAX_ITEMS, MAX_REQUEST_K, ServerConfig

SCORE_BLOCK_BYTES = SCORE_BLOCK_MIB << 20  # the largest (jobs x items) array of scores a batch holds

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


@dataclasses.dataclass
class Job:
    """One request's work for the batch: whose scores (a known user, a history, or popularity),
    what to leave out, and what to return (top k, or the scores of candidates)."""

    user: int | None = None               # a known user (contiguous id)
    history: np.ndarray | None = None     # contiguous item ids of a folded-in user
    exclude: np.ndarray | None = None     # contiguous item ids left out of the top k
    k: int = 0
    candidates: np.ndarray | None = None  # /score: contiguous item ids


class Service:
    """The scoring behind the endpoints: turns a batch of jobs into one graph call."""

    def __init__(self, bundle: Bundle, index=None):
        self.bundle, self.index = bundle, index

    def _popular(self, job: Job) -> bool:
        if job.user is not None:
            return self.bundle.history_size[job.user] == 0  # nothing to go on, as `recscale recommend`
        return job.history is None or job.history.size == 0

    def _history_rows(self, jobs: list[Job]) -> np.ndarray:
        """(B, I) input rows: known users' from the bundle (one CSR slice for all), new users' items."""
        b = self.bundle
        known = [n for n, job in enumerate(jobs) if job.user is not None]
        rows = np.zeros((len(jobs), b.n_items), dtype=np.float32)
        if known:
            rows[known] = b.rows(b.history, np.array([jobs[n].user for n in known]))
        for n, job in enumerate(jobs):
            if job.user is None:
                rows[n, job.history] = 1.0
        return rows

    def _model_scores(self, jobs: list[Job]) -> np.ndarray:
        """(B, I) scores of jobs that have a model to go on."""
        b = self.bundle
        if b.kind == "rows":
            return b.score_histories(self._history_rows(jobs))
        if b.kind == "pairs":
            scores = np.empty((len(jobs), b.n_items), dtype=np.float32)
            known = [n for n, job in enumerate(jobs) if job.user is not None]
            new = [n for n, job in enumerate(jobs) if job.user is None]
            if known:
                scores[known] = b.score_users(np.array([jobs[n].user for n in known], dtype=np.int64))
            if new:
                scores[new] = b.score_new_users([jobs[n].history for n in new])
            return scores
        return b.popular_rows(len(jobs))

    def score(self, jobs: list[Job]) -> list[Any]:
        """Each job's answer. The (jobs x items) scores of a large catalog are computed for a few
        jobs at a time, so that no array of them exceeds SCORE_BLOCK_BYTES (at 1M items: 64 jobs)."""
        rows = max(1, SCORE_BLOCK_BYTES // (4 * self.bundle.n_items))
        return [answer for start in range(0, len(jobs), rows) for answer in self._score(jobs[start:start + rows])]

    def _score(self, jobs: list[Job]) -> list[Any]:
        b = self.bundle
        popular = [self._popular(job) for job in jobs]
        modelled = [n for n, p in enumerate(popular) if not p]
        # the index holds the user vectors of known users (and of any history, for history models);
        # a pairwise model's new users are scored exactly from their folded-in vectors
        retrievable = [n for n in modelled if b.kind == "rows" or jobs[n].user is not None]
        if retrievable and self.index is not None and all(jobs[n].candidates is None for n in modelled):
            return self._retrieve(jobs, retrievable)
        scores = np.empty((len(jobs), b.n_items), dtype=np.float32)
        if modelled:
            scores[modelled] = self._model_scores([jobs[n] for n in modelled])
        if len(modelled) < len(jobs):
            scores[[n for n, p in enumerate(popular) if p]] = b.popularity
        results: list[Any] = [None] * len(jobs)
        ranked = [n for n, job in enumerate(jobs) if job.candidates is None]
        for n, job in enumerate(jobs):
            if job.candidates is not None:
                results[n] = (scores[n, job.candidates], popular[n])
        if ranked:
            exclude = [(i, jobs[n].exclude) for i, n in enumerate(ranked) if jobs[n].exclude is not None]
            top_items, top_scores = b.top(scores[ranked], exclude, max(jobs[n].k for n in ranked))
            for i, n in enumerate(ranked):
                k = jobs[n].k
                keep = np.isfinite(top_scores[i, :k])
                results[n] = (top_items[i, :k][keep], top_scores[i, :k][keep], popular[n])
        return results

    def _retrieve(self, jobs: list[Job], modelled: list[int]) -> list[Any]:
        """Top k by inner product through the FAISS index (the user vectors from the bundle's graph)."""
        b = self.bundle
        group = [jobs[n] for n in modelled]
        if b.kind == "rows":
            vectors = b.user_vectors(self._history_rows(group))
        else:
            vectors = b.user_vectors(np.array([job.user for job in group], dtype=np.int64))
        widest = max(job.k + (job.exclude.size if job.exclude is not None else 0) for job in group)
        found_scores, found = self.index.search(vectors, min(widest, b.n_items))
        out: dict[int, Any] = {}
        for n, job, ids, values in zip(modelled, group, found, found_scores):
            keep = ids >= 0
            if job.exclude is not None:
                keep &= ~np.isin(ids, job.exclude)
            out[n] = (ids[keep][:job.k], values[keep][:job.k], False)
        rest = [n for n in range(len(jobs)) if n not in out]
        if rest:
            for n, result in zip(rest, Service(b).score([jobs[n] for n in rest])):
                out[n] = result
        return [out[n] for n in range(len(jobs))]


def warm_up(service: Service, max_batch: int) -> None:
    """Score one full batch before serving: the runtime sizes its buffers on the first batch of each
    size (measured: the first batch of 64 took about 150 ms more than the next ones)."""
    b = service.bundle
    users = [u for u in range(min(b.n_users, max_batch)) if b.history_size[u]] or [0]
    jobs = [Job(user=users[n % len(users)], k=10) for n in range(max_batch)]
    if b.kind == "pairs":  # a pairwise model scores users x items pairs: one chunk is enough
        b.score_pairs(np.zeros(min(PAIRS_PER_CALL, b.n_items * max_batch), dtype=np.int64),
                      np.zeros(min(PAIRS_PER_CALL, b.n_items * max_batch), dtype=np.int64))
        jobs = jobs[:1]
    service.score(jobs)


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


def create_app(bundle_dir: str | Path, settings: ServerConfig | None = None, **changes) -> RequestGuard:
    """The ASGI app serving `bundle_dir`; `changes` override fields of `settings` (ServerConfig)."""
    settings = dataclasses.replace(settings or ServerConfig(), **changes)
    bundle = Bundle(bundle_dir, settings.runtime, settings.threads, trust=settings.trust_bundle)
    api_key = read_api_key(settings.api_key_file) if settings.api_key_file else None
    index, max_batch = settings.index, settings.max_batch
    item_index = None
    if index != "none":
        if bundle.item_vectors is None:
            raise RecscaleError(f"--index {index}: {bundle.manifest['model']}'s score is not an inner product of "
                                f"user and item vectors (its tower mixes them): serve it without an index")
        from recscale.serving.index import ItemIndex
        item_index = ItemIndex(bundle.item_vectors, index, nprobe=settings.nprobe, threads=settings.threads)
    service = Service(bundle, item_index)
    batcher = MicroBatcher(service.score, max_batch, settings.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        warm_up(service, max_batch)
        # Everything loaded so far lives as long as the server: keep it out of the garbage
        # collector's full passes, which otherwise stalled every request in flight by 100+ ms
        gc.collect()
        gc.freeze()
        await batcher.start()
        yield
        await batcher.stop()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="recscale", lifespan=lifespan, **docs)
    app.state.bundle, app.state.batcher = bundle, batcher
    started = time.time()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _one_line(exc)}, 422)

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem):
        return JSONResponse({"error": str(exc)}, exc.status)

    def known_items(items: list) -> np.ndarray:
        found, unknown = bundle.items(items)
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise HTTPProblem(422, f"unknown item id(s): {shown}")
        return found

    def who(user, items) -> Job:
        if (user is None) == (items is None):
            raise HTTPProblem(422, "give exactly one of user (a known user's id) or items (a new user's history)")
        if user is not None:
            index = bundle.user(user)
            if index is None:
                raise HTTPProblem(404, f"unknown user {user!r}")
            return Job(user=index)
        history = known_items(items)
        if history.size and bundle.kind == "pairs" and bundle.fold_in is None:
            raise HTTPProblem(422, f"this bundle of {bundle.manifest['model']} has no fold-in graph for a new user "
                              f"(exported by an older recscale: export the run again)")
        return Job(history=np.unique(history))

    def item_json(index: int, score: float) -> dict:
        out = {"item": bundle.item_ids[index].item(), "score": float(score)}
        if bundle.titles is not None:
            out["title"] = bundle.titles[index]
        return out

    @app.post("/recommend")
    async def recommend(request: RecommendRequest):
        job = who(request.user, request.items)
        job.k = request.k
        if request.exclude_seen:
            job.exclude = job.history if job.user is None else bundle.seen[job.user].indices.astype(np.int64)
        items, scores, fallback = await batcher.submit(job)
        return _json({"user": request.user, "k": request.k, "fallback": bool(fallback),
                      "items": [item_json(i, s) for i, s in zip(items.tolist(), scores.tolist())]})

    @app.post("/score")
    async def score(request: ScoreRequest):
        job = who(request.user, request.items)
        job.candidates = known_items(request.candidates)
        scores, fallback = await batcher.submit(job)
        return _json({"user": request.user, "fallback": bool(fallback),
                      "scores": [item_json(i, s) for i, s in zip(job.candidates.tolist(), scores.tolist())]})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": bundle.manifest["model"], "uptime_s": round(time.time() - started, 1)}

    @app.get("/metadata")
    async def metadata():
        m = bundle.manifest
        return {"model": m["model"], "kind": m["kind"], "protocol": m["protocol"], "dataset": m["dataset"],
                "recscale_version": m["recscale_version"], "n_users": m["n_users"], "n_items": m["n_items"],
                "fold_in": m["fold_in"], "retrieval": m["retrieval"], "index": index,
                "runtime": bundle.scores.runtime if bundle.scores else None,
                "max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                "batches": batcher.batches, "requests_scored": batcher.jobs, "limits": {
                    "k": MAX_REQUEST_K, "items": MAX_ITEMS, "body_bytes": settings.max_body_bytes,
                    "request_line_bytes": settings.max_request_line, "header_bytes": settings.max_header_bytes,
                    "read_timeout_s": settings.read_timeout_s, "connections": settings.max_connections},
                "api_key": api_key is not None}

    return RequestGuard(app, settings.max_body_bytes, api_key)


def app_from_env():
    """For `uvicorn --factory` with several workers: the settings come in RECSCALE_SERVE_* variables."""
    return create_app(os.environ["RECSCALE_SERVE_BUNDLE"], ServerConfig.from_json(os.environ["RECSCALE_SERVE_SETTINGS"]))
