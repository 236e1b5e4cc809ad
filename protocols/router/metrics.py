"""The router's metrics: requests by method and status, and their latency."""

from __future__ import annotations

from typing import TYPE_CHECKING

from switchy.stack.metrics import LATENCY_BUCKETS, MetricsRegistry, measure_clock

if TYPE_CHECKING:
    from switchy.protocols.router.messages import Request, Response
    from switchy.protocols.router.router import Middleware, Next

__all__ = ["METHODS", "RouterMetrics"]

#: Methods counted by name; any other is counted as ``other`` (a bounded label).
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


class RouterMetrics:
    """The router's metrics on ``registry``, declared once (here):
    ``switchy_router_requests_total{method, status}`` and
    ``switchy_router_request_duration_seconds{method}`` (to the response head)."""

    def __init__(self, registry: MetricsRegistry) -> None:
        #: Requests answered, by method and status.
        self.requests = registry.counter(
            "switchy_router_requests_total", "Router requests answered", ("method", "status")
        )
        #: Time from a request's head to its response head, by method.
        self.latency = registry.histogram(
            "switchy_router_request_duration_seconds",
            "Time from a request's head to its response head",
            ("method",),
            buckets=LATENCY_BUCKETS,
        )

    def middleware(self) -> Middleware:
        """A middleware counting and timing every request it passes on."""
        requests, latency = self.requests, self.latency

        async def count(request: Request, call_next: Next) -> Response:
            method = request.method if request.method in METHODS else "other"
            clock = measure_clock()
            start = clock()
            status = "500"
            try:
                response = await call_next(request)
                status = str(response.status)
                return response
            finally:
                requests.labels(method, status).inc()
                latency.labels(method).observe(clock() - start)

        return count

    def count_refused(self, status: int) -> None:
        """Count a request answered before dispatch (``status``: 503 when too busy); its
        method is not read then, so it counts as ``other``."""
        self.requests.labels("other", str(status)).inc()
