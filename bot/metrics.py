"""Prometheus metrics and the small HTTP server for /healthz and /metrics.

Each app instance has its own registry, so tests (and two runners in one process) never share
counters by accident.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_by_state = Gauge("videobot_jobs", "Jobs in the database by state", ["state"], registry=self.registry)
        self.queue_depth = Gauge("videobot_queue_depth", "Jobs waiting for a backend slot", registry=self.registry)
        self.jobs_finished = Counter(
            "videobot_jobs_finished", "Jobs finished by this process, by final state", ["state"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "videobot_stage_seconds",
            "Time a job spent in each stage",
            ["stage"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "videobot_backend_errors", "Backend failures that ended a job", ["backend", "retryable"], registry=self.registry
        )

    def observe_states(self, counts: dict[str, int]) -> None:
        for state in ("queued", "submitted", "running", "fetching", "delivering", "succeeded", "failed", "canceled"):
            self.jobs_by_state.labels(state=state).set(counts.get(state, 0))
        self.queue_depth.set(counts.get("queued", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_ops_app(
    metrics: Metrics,
    health: Callable[[], Awaitable[dict[str, Any]]],
    state_counts: Callable[[], Awaitable[dict[str, int]]],
) -> web.Application:
    """``/healthz`` answers 200 while the database takes writes and the runner answers, else 503
    with ``status`` and ``reason``; ``/metrics`` for Prometheus."""

    async def healthz(_: web.Request) -> web.Response:
        try:
            body = await health()
        except Exception as error:  # report, don't crash the probe
            return web.Response(status=503, text=json.dumps({"status": "error", "error": type(error).__name__}),
                                content_type="application/json")
        return web.json_response(body, status=200 if body.get("status") == "ok" else 503)

    async def scrape(_: web.Request) -> web.Response:
        metrics.observe_states(await state_counts())
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)
    return app
