"""Counters kept per connection and per node."""

from __future__ import annotations

import asyncio
import time

import attrs

__all__ = ["ConnectionStats"]


def _now() -> float:
    """The running loop's clock (virtual under the simulator), else the monotonic clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@attrs.define(slots=True)
class ConnectionStats:
    """Traffic counters of one connection.

    ``messages_*`` count stream writes and delivered data chunks, ``bytes_*``
    count stream payload bytes (not framing).  Latency samples come from ping
    round trips on the connection.
    """

    opened_at: float = attrs.field(factory=lambda: _now())
    closed_at: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    latency_samples: int = 0
    latency_total: float = 0.0

    @property
    def duration(self) -> float:
        """Seconds the connection has been (or was) open."""
        end = self.closed_at if self.closed_at is not None else _now()
        return end - self.opened_at

    @property
    def average_latency(self) -> float | None:
        """Mean measured round trip in seconds, or ``None`` before any sample."""
        if not self.latency_samples:
            return None
        return self.latency_total / self.latency_samples

    def record_latency(self, rtt: float) -> None:
        """Add one round-trip measurement (seconds)."""
        self.latency_samples += 1
        self.latency_total += rtt
