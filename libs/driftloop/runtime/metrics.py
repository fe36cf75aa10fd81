"""Prometheus metrics every service process shares: HTTP throughput and latency, events consumed and
published, handling latency, consumer lag, and cascade counts. Defined once here; ``driftloop.runtime.service`` and
``driftloop.runtime.bus`` record them, so every service exposes them on ``/metrics`` without code of its own.

Consumer lag is measured without the broker's queried high watermark (wrong on Tansu): it is the high watermark
carried by fetched messages (librdkafka's cached value) minus the offset this group has committed.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets from 1 ms (a cached lookup) to 2 minutes (a training request handled inline).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

SERVICE_INFO = Gauge("driftloop_service_info", "1 for the running service process.", ["service"])

HTTP_REQUESTS = Counter(
    "driftloop_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "driftloop_http_request_seconds",
    "HTTP request latency by route template (until the response is sent).",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("driftloop_http_requests_in_flight", "HTTP requests being answered.")

EVENTS_CONSUMED = Counter(
    "driftloop_events_consumed_total",
    "Messages taken from the bus by a consumer group, by outcome: handled, failed (handler raised), "
    "duplicate (already handled, skipped), undecodable.",
    ["group", "topic", "event_type", "outcome"],
)
EVENT_HANDLE_SECONDS = Histogram(
    "driftloop_event_handle_seconds",
    "Time a handler took per event.",
    ["group", "event_type"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "driftloop_consumer_lag",
    "Messages not yet committed by the group: high watermark seen in fetched messages minus the committed offset.",
    ["group", "topic", "partition"],
)
CONSUMER_COMMITTED_OFFSET = Gauge(
    "driftloop_consumer_committed_offset", "Offset committed by the group.", ["group", "topic", "partition"]
)
EVENTS_PUBLISHED = Counter(
    "driftloop_events_published_total", "Events delivered to the broker, by type.", ["event_type"]
)
PUBLISH_FAILURES = Counter("driftloop_event_publish_failures_total", "Events the broker refused.", ["event_type"])
# A cascade starts with an event that has no cause (new data, drift, a manual or external trigger, ...).
CASCADES_STARTED = Counter(
    "driftloop_cascades_started_total", "Cascades started: published events without a cause, by type.", ["event_type"]
)
CASCADE_STEPS = Counter(
    "driftloop_cascade_steps_total",
    "Events published inside a cascade (with a cause), by type: retrains requested, promotions, switches, ...",
    ["event_type"],
)


def _route_template(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are one label, so that scanners cannot blow up the series count.
    return path if isinstance(path, str) else "<unmatched>"


class HttpMetricsMiddleware:
    """Pure ASGI middleware (no response buffering): request count and latency per route template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = _route_template(scope)
            if route != "/metrics":
                method = scope.get("method", "GET")
                HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)
                HTTP_REQUESTS.labels(method, route, str(status["code"])).inc()
