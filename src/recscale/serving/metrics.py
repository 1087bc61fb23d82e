"""`GET /metrics`: the server's counters in the Prometheus text format, through prometheus-client.

    recscale_requests_total{path, status}        every answer, refusals (401, 413, 4xx) included
    recscale_request_seconds{path}               latency from the request's arrival to its last byte
    recscale_batch_size                          jobs per micro-batch (one graph call)
    recscale_bundle_info{digest, model, root}    the bundle being served (one series, replaced on swap)
    recscale_bundle_swaps_total{result}          hot swaps: swapped or failed (the old bundle kept)

Each app has its own registry (tests and the benchmark run several in one process). Under several
workers each process counts its own requests: a scrape reads the worker that answered it.
Paths outside the app's routes count as "other", so a client sending random paths cannot grow the
number of series.
"""

from __future__ import annotations

import time

from recscale.errors import RecscaleError

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise RecscaleError("serve: needs prometheus-client (pip install 'recscale[serve]')") from None
    return prometheus_client


class ServerMetrics:
    def __init__(self, max_batch: int):
        prometheus = _prometheus()
        self.registry = prometheus.CollectorRegistry()
        self.content_type = prometheus.CONTENT_TYPE_LATEST
        self._latest = prometheus.generate_latest
        self.requests = prometheus.Counter("recscale_requests", "HTTP answers by path and status",
                                           ("path", "status"), registry=self.registry)
        self.latency = prometheus.Histogram("recscale_request_seconds", "seconds from a request's arrival to its "
                                            "answer", ("path",), buckets=LATENCY_BUCKETS_S, registry=self.registry)
        sizes = sorted({1 << n for n in range(max_batch.bit_length())} | {max_batch})
        self.batch_size = prometheus.Histogram("recscale_batch_size", "jobs scored together in one micro-batch",
                                               buckets=sizes, registry=self.registry)
        self.bundle = prometheus.Info("recscale_bundle", "the bundle being served", registry=self.registry)
        self.swaps = prometheus.Counter("recscale_bundle_swaps", "bundle hot swaps by result", ("result",),
                                        registry=self.registry)

    def served(self, digest: str, model: str, root: str) -> None:
        self.bundle.info({"digest": digest, "model": model, "root": root})

    def text(self) -> bytes:
        return self._latest(self.registry)


class MetricsRecorder:
    """Pure ASGI middleware, outermost: counts every answer by path and status and times it."""

    def __init__(self, app, metrics: ServerMetrics, paths: frozenset[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.paths else "other"
        started, status = time.perf_counter(), 500  # an app that fails before answering: counted as 500

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
