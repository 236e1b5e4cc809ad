"""Discovery's metrics: registry requests by side, type and status, and their latency."""

from __future__ import annotations

from switchy.stack.metrics import LATENCY_BUCKETS, MetricsRegistry

__all__ = ["record_request"]


def record_request(
    registry: MetricsRegistry,
    side: str,
    kind: str,
    status: str,
    duration: float | None = None,
) -> None:
    """Count one registry request in ``switchy_discovery_requests_total{side,type,status}``
    (``side``: ``client`` or ``server``; ``status``: the answer's status in lower case,
    ``error`` when none came) and, with ``duration``, time it in
    ``switchy_discovery_request_duration_seconds{side,type}``."""
    registry.counter(
        "switchy_discovery_requests_total",
        "Name registry requests, by side, type and answer",
        ("side", "type", "status"),
    ).labels(side, kind, status).inc()
    if duration is not None:
        registry.histogram(
            "switchy_discovery_request_duration_seconds",
            "Time from a registry request to its answer",
            ("side", "type"),
            buckets=LATENCY_BUCKETS,
        ).labels(side, kind).observe(duration)
