"""Counters kept per connection, and the clock measurements are taken with."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import attrs

__all__ = [
    "MAX_LATENCY_SAMPLES",
    "VIRTUAL_CLOCK_ATTR",
    "ConnectionStats",
    "measure_clock",
    "quantile",
]

#: An event loop whose ``time()`` is virtual (the simulator's loop) has this attribute set
#: to ``True``; measurements on such a loop are taken in its virtual time.
VIRTUAL_CLOCK_ATTR: Final = "virtual_clock"
#: Most recent round-trip samples a connection keeps for its median and percentiles.
MAX_LATENCY_SAMPLES: Final = 64


def measure_clock(loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], float]:
    """The clock to time round trips and transfers with, in seconds.

    On a loop with a virtual clock (the simulator's, see :data:`VIRTUAL_CLOCK_ATTR`) it
    is ``loop.time``, so measurements stay in virtual time; on any other loop it is
    :func:`time.perf_counter`: ``loop.time()`` is coarse there (uvloop's has 1 ms
    resolution, so a loopback round trip would read 0 or 1000 µs).  ``loop`` defaults
    to the running loop; with none running this is :func:`time.perf_counter`.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return time.perf_counter
    if getattr(loop, VIRTUAL_CLOCK_ATTR, False) is True:
        return loop.time
    return time.perf_counter


def quantile(samples: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``samples``; ``None`` when there are none."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q!r}")
    ordered = sorted(samples)
    if not ordered:
        return None
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _now() -> float:
    """The running loop's clock (virtual under the simulator), else the monotonic clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _samples() -> deque[float]:
    return deque(maxlen=MAX_LATENCY_SAMPLES)


@attrs.define(slots=True)
class ConnectionStats:
    """Traffic counters of one connection.

    ``messages_*`` count stream writes and delivered data chunks, ``bytes_*``
    count stream payload bytes (not framing).  Latency samples come from ping
    round trips on the connection (timed with :func:`measure_clock`); the last
    :data:`MAX_LATENCY_SAMPLES` are kept for :attr:`median_latency` and
    :attr:`p90_latency`, which a few slow samples (a ping queued behind a bulk
    transfer) do not drag the way they drag the mean.
    """

    opened_at: float = attrs.field(factory=lambda: _now())
    closed_at: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    latency_samples: int = 0
    latency_total: float = 0.0
    recent_latencies: deque[float] = attrs.field(factory=_samples)

    @property
    def duration(self) -> float:
        """Seconds the connection has been (or was) open."""
        end = self.closed_at if self.closed_at is not None else _now()
        return end - self.opened_at

    @property
    def average_latency(self) -> float | None:
        """Mean of every measured round trip in seconds, or ``None`` before any sample."""
        if not self.latency_samples:
            return None
        return self.latency_total / self.latency_samples

    @property
    def median_latency(self) -> float | None:
        """Median of the recent round trips in seconds, or ``None`` before any sample."""
        return statistics.median(self.recent_latencies) if self.recent_latencies else None

    @property
    def p90_latency(self) -> float | None:
        """90th percentile of the recent round trips in seconds (``None``: no sample)."""
        return self.latency_quantile(0.9)

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1, nearest rank) of the recent round trips in seconds."""
        return quantile(self.recent_latencies, q)

    def record_latency(self, rtt: float) -> None:
        """Add one round-trip measurement (seconds)."""
        self.latency_samples += 1
        self.latency_total += rtt
        self.recent_latencies.append(rtt)
