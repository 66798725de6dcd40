"""Prometheus metrics (`GET /metrics`): requests and their latency per route, micro-batch sizes, queue depths,
in-flight requests, generated tokens. Each app has its own registry (several apps in one process do not clash).

With `--workers N` every worker process keeps its own counters; scrape each, or run one worker per container.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Mount, Route

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("luban_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.latency = Histogram("luban_request_seconds", "time to answer an HTTP request (to the first byte of a "
                                 "stream)", ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("luban_inflight_requests", "HTTP requests being answered", registry=r)
        self.batch_size = Histogram("luban_batch_size", "inputs per model forward pass (micro-batch)", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("luban_batch_requests", "requests merged into one forward pass", ["model"],
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("luban_batch_seconds", "time of one forward pass", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("luban_queue_depth", "inputs waiting for a forward pass", ["model"], registry=r)
        self.gen_active = Gauge("luban_generations_active", "sequences being decoded", ["model"], registry=r)
        self.gen_queued = Gauge("luban_generations_queued", "generation requests waiting for a slot", ["model"],
                                registry=r)
        self.tokens = Counter("luban_generated_tokens", "tokens generated", ["model"], registry=r)
        self.gen_batch_size = Histogram("luban_generation_batch_size", "sequences advanced by one decoding forward "
                                        "(requests decoded together)", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.rejected = Counter("luban_rejected", "requests refused because a queue was full", ["model"], registry=r)
        self.ready = Gauge("luban_ready", "1 when every model is loaded and warm", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts requests and times them by route template (not raw path: bounded labels)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m = self.metrics
        t0 = time.perf_counter()
        status = {"code": 500, "timed": False}

        def observe():
            route = scope.get("route")  # the matched route (a Route, or the Mount of /static or /docs/assets)
            path = (route.path if isinstance(route, (Route, Mount)) and route.path else
                    "static" if scope["path"].startswith("/static/") else "unmatched")
            m.latency.labels(path, scope["method"]).observe(time.perf_counter() - t0)
            return path

        async def wrapped_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if not status["timed"]:
                    status["timed"] = True
                    status["path"] = observe()
            await send(message)

        m.inflight.inc()
        try:
            await self.app(scope, receive, wrapped_send)
        finally:
            m.inflight.dec()
            path = status.get("path") or observe()
            m.requests.labels(path, scope["method"], str(status["code"])).inc()
