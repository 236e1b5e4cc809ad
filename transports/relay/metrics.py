"""The relay service's metrics, under go-libp2p's ``libp2p_relaysvc_*`` names."""

from __future__ import annotations

from collections.abc import Callable

from switchy.stack.metrics import MetricFamily, MetricsRegistry
from switchy.transports.relay.pb import Status

__all__ = ["RelayMetrics"]

#: Answers that refuse a request for a reason of policy or limits (go-libp2p's "rejected").
_REJECTED = frozenset(
    {
        Status.RESERVATION_REFUSED,
        Status.RESOURCE_LIMIT_EXCEEDED,
        Status.PERMISSION_DENIED,
        Status.NO_RESERVATION,
    }
)


def _outcome(status: Status) -> str:
    if status == Status.OK:
        return "ok"
    return "rejected" if status in _REJECTED else "error"


class RelayMetrics:
    """Counters of one relay service on its node's registry.

    ``libp2p_relaysvc_reservations_total{type}`` (``opened``/``renewed``),
    ``libp2p_relaysvc_reservation_request_response_status_total{status}``,
    ``libp2p_relaysvc_reservation_rejections_total{reason}``,
    ``libp2p_relaysvc_connections_total{type}`` (``opened``/``closed``),
    ``libp2p_relaysvc_connection_request_response_status_total{status}``,
    ``libp2p_relaysvc_connection_rejections_total{reason}``,
    ``libp2p_relaysvc_connection_duration_seconds``,
    ``libp2p_relaysvc_data_transferred_bytes_total``, ``libp2p_relaysvc_status`` (1 while
    serving), and the gauges ``libp2p_relaysvc_reservations`` and
    ``libp2p_relaysvc_circuits`` read at each scrape.
    """

    def __init__(
        self,
        registry: MetricsRegistry,
        reservations: Callable[[], int],
        circuits: Callable[[], int],
    ) -> None:
        ns = "libp2p_relaysvc_"
        self.status = registry.gauge(ns + "status", "Whether the relay service runs (1)")
        self.reservations = registry.counter(
            ns + "reservations_total", "Reservations granted", ("type",)
        )
        self.reservation_status = registry.counter(
            ns + "reservation_request_response_status_total",
            "Answers to reservation requests",
            ("status",),
        )
        self.reservation_rejections = registry.counter(
            ns + "reservation_rejections_total", "Reservations refused, by reason", ("reason",)
        )
        self.connections = registry.counter(
            ns + "connections_total", "Relayed connections (circuits)", ("type",)
        )
        self.connection_status = registry.counter(
            ns + "connection_request_response_status_total",
            "Answers to circuit requests",
            ("status",),
        )
        self.connection_rejections = registry.counter(
            ns + "connection_rejections_total", "Circuits refused, by reason", ("reason",)
        )
        self.duration = registry.histogram(
            ns + "connection_duration_seconds",
            "How long circuits lasted",
            buckets=(0.1, 1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
        )
        self.bytes = registry.counter(
            ns + "data_transferred_bytes_total", "Bytes relayed (both directions)"
        )

        def live() -> list[MetricFamily]:
            return [
                MetricFamily(
                    ns + "reservations", "gauge", "Reservations held now", (),
                    (((), float(reservations())),),
                ),
                MetricFamily(
                    ns + "circuits", "gauge", "Circuits open now", (), (((), float(circuits())),)
                ),
            ]  # fmt: skip

        self.collector = live
        registry.add_collector(live)

    def reservation(self, status: Status, *, renewed: bool) -> None:
        """Count the answer to a reservation request."""
        self.reservation_status.labels(_outcome(status)).inc()
        if status == Status.OK:
            self.reservations.labels("renewed" if renewed else "opened").inc()
        else:
            self.reservation_rejections.labels(status.name.lower()).inc()

    def circuit_request(self, status: Status) -> None:
        """Count the answer to a circuit (connect) request."""
        self.connection_status.labels(_outcome(status)).inc()
        if status != Status.OK:
            self.connection_rejections.labels(status.name.lower()).inc()

    def circuit_opened(self) -> None:
        """A circuit began forwarding."""
        self.connections.labels("opened").inc()

    def circuit_closed(self, duration: float, forwarded: int) -> None:
        """A circuit ended after ``duration`` seconds with ``forwarded`` bytes relayed."""
        self.connections.labels("closed").inc()
        self.duration.observe(duration)
        self.bytes.inc(forwarded)
