"""Counters kept per connection, the clock measurements are taken with, and the
node's metrics registry (exported in the Prometheus format by :mod:`switchy.monitoring`)."""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

__all__ = [
    "COUNT_BUCKETS",
    "LATENCY_BUCKETS",
    "MAX_LABEL_SETS",
    "MAX_LATENCY_SAMPLES",
    "OVERFLOW_LABEL",
    "VIRTUAL_CLOCK_ATTR",
    "ByteCounter",
    "Collector",
    "ConnectionStats",
    "HistogramValue",
    "Metric",
    "MetricFamily",
    "MetricsRegistry",
    "ResourceUsage",
    "SwarmMetrics",
    "loop_time",
    "measure_clock",
    "quantile",
    "rcmgr_collector",
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


def loop_time() -> float:
    """The running loop's clock in seconds (virtual under the simulator), else
    :func:`time.monotonic` when no loop runs: for timestamps and deadlines (to time a
    measurement, :func:`measure_clock`)."""
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

    opened_at: float = attrs.field(factory=lambda: loop_time())
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
        end = self.closed_at if self.closed_at is not None else loop_time()
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


# --- node metrics: counters, gauges and histograms a node and its protocols keep ----------
#
# The core keeps its metrics in plain Python (no third-party import): a node always has
# its totals, and :mod:`switchy.monitoring` exports them in the Prometheus text format
# with ``prometheus-client`` (the optional ``metrics`` extra).  Names follow the libp2p
# convention ``libp2p_<subsystem>_<name>[_<unit>][_total]``; where go-libp2p defines a
# metric (``libp2p_swarm_connections_opened_total``, ``libp2p_relaysvc_*``,
# ``libp2p_rcmgr_*``, ``libp2p_identify_*``) the name and labels are go-libp2p's, so
# existing dashboards read them.  Protocols register their own metrics on
# :attr:`Node.metrics <switchy.stack.node.Node.metrics>` with :meth:`MetricsRegistry.counter`
# and friends (get-or-create: a second registration of the same name returns the first).

MetricKind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]

#: Default histogram buckets for latencies in seconds (1 ms .. 60 s).
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Histogram buckets for small counts (addresses or protocols in an identify message).
COUNT_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
#: Most label combinations one metric keeps; further ones are counted under ``other``
#: values, so a peer that makes up protocol ids cannot grow the registry without bound.
MAX_LABEL_SETS: Final = 1024
#: The label value that stands for every combination past :data:`MAX_LABEL_SETS`.
OVERFLOW_LABEL: Final = "other"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


@attrs.define(slots=True)
class HistogramValue:
    """One histogram series: cumulative counts per upper bound, sum and count."""

    buckets: tuple[float, ...]
    counts: list[int]
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that) per bucket, ``+Inf`` last."""
        return [*zip(self.buckets, self.counts, strict=True), (math.inf, self.count)]


@attrs.frozen
class MetricFamily:
    """What a metric holds at one moment: its name, kind, help text, label names and
    the value of each label combination (a float, or a :class:`HistogramValue`)."""

    name: str
    kind: MetricKind
    help: str
    label_names: tuple[str, ...]
    samples: tuple[tuple[LabelValues, float | HistogramValue], ...]


class _Child:
    """One label combination of a counter or gauge (``inc``/``dec``/``set``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount`` (gauges)."""
        self.value -= amount

    def set(self, value: float) -> None:
        """Set the value (gauges)."""
        self.value = value


class Metric:
    """A named metric with label names; :meth:`labels` gives one series of it."""

    def __init__(
        self,
        name: str,
        kind: MetricKind,
        help: str,
        label_names: tuple[str, ...],
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.label_names = label_names
        self.buckets = buckets
        self._series: dict[LabelValues, _Child | HistogramValue] = {}

    def labels(self, *values: str) -> Any:
        """The series of these label values (in :attr:`label_names` order), made at first
        use: a counter's or gauge's has ``inc``/``dec``/``set``, a histogram's ``observe``.

        Past :data:`MAX_LABEL_SETS` combinations new ones share the series whose every
        value is :data:`OVERFLOW_LABEL`.  A wrong number of values raises ``ValueError``.
        """
        series = self._series.get(values)
        if series is not None:
            return series
        if len(values) != len(self.label_names):
            raise ValueError(
                f"metric {self.name} has labels {self.label_names}, got values {values}"
            )
        if len(self._series) >= MAX_LABEL_SETS:
            values = (OVERFLOW_LABEL,) * len(values)
            series = self._series.get(values)
            if series is not None:
                return series
        new: _Child | HistogramValue = (
            HistogramValue(self.buckets, [0] * len(self.buckets))
            if self.kind == "histogram"
            else _Child()
        )
        self._series[values] = new
        return new

    def inc(self, amount: float = 1.0) -> None:
        """``inc`` of the metric without labels."""
        self.labels().inc(amount)

    def set(self, value: float) -> None:
        """``set`` of the gauge without labels."""
        self.labels().set(value)

    def observe(self, value: float) -> None:
        """``observe`` of the histogram without labels."""
        self.labels().observe(value)

    def value(self, *values: str) -> float:
        """The current value of a counter or gauge series (0 when never touched)."""
        series = self._series.get(values)
        if series is None:
            return 0.0
        if isinstance(series, HistogramValue):
            return float(series.count)
        return series.value

    def family(self) -> MetricFamily:
        """A snapshot of every series."""
        samples = tuple(
            (k, v.value if isinstance(v, _Child) else attrs.evolve(v, counts=list(v.counts)))
            for k, v in self._series.items()
        )
        return MetricFamily(self.name, self.kind, self.help, self.label_names, samples)


#: What :meth:`MetricsRegistry.add_collector` takes: a function called at each scrape
#: that returns the families it computes then (for example from a resource manager).
Collector = Callable[[], Iterable[MetricFamily]]


class MetricsRegistry:
    """A node's metrics: the ones registered by name plus collectors called at each scrape.

    Registration is get-or-create, so a protocol registers in ``attach`` (or at first
    use) without knowing whether another instance did first; registering a name again
    with another kind or other labels raises ``ValueError``.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Collector] = []

    def _get(
        self,
        name: str,
        kind: MetricKind,
        help: str,
        labels: Sequence[str],
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> Metric:
        existing = self._metrics.get(name)
        label_names = tuple(labels)
        if existing is not None:
            if existing.kind != kind or existing.label_names != label_names:
                raise ValueError(
                    f"metric {name} is registered as a {existing.kind} with labels "
                    f"{existing.label_names}, not a {kind} with {label_names}"
                )
            return existing
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        metric = self._metrics[name] = Metric(name, kind, help, label_names, tuple(buckets))
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Metric:
        """A counter (only goes up); by convention its name ends in ``_total``."""
        return self._get(name, "counter", help, labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Metric:
        """A gauge (goes up and down)."""
        return self._get(name, "gauge", help, labels)

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Metric:
        """A histogram of observations with these upper ``buckets`` (ascending)."""
        return self._get(name, "histogram", help, labels, tuple(buckets))

    def add_collector(self, collector: Collector) -> None:
        """Call ``collector()`` at each scrape and export the families it returns."""
        if collector not in self._collectors:
            self._collectors.append(collector)

    def remove_collector(self, collector: Collector) -> None:
        """Stop calling ``collector``."""
        if collector in self._collectors:
            self._collectors.remove(collector)

    def get(self, name: str) -> Metric | None:
        """The registered metric of this name, if any."""
        return self._metrics.get(name)

    def collect(self) -> list[MetricFamily]:
        """A snapshot of every metric and of what each collector returns now."""
        families = [m.family() for m in self._metrics.values()]
        for collector in self._collectors:
            families.extend(collector())
        return families


@attrs.define(slots=True)
class ByteCounter:
    """Payload bytes a stream carried, counted by the muxer (one per protocol and
    direction; shared by every stream of that protocol)."""

    sent: Any  # the series of the bytes-out counter (``inc``)
    received: Any  # the series of the bytes-in counter


def _error_label(exc: BaseException) -> str:
    """A bounded label for a dial error: its class name (the error hierarchy is finite)."""
    if isinstance(exc, asyncio.CancelledError):
        return "canceled"
    return type(exc).__name__


class SwarmMetrics:
    """The node's connection and stream metrics (``libp2p_swarm_*``), kept by the node.

    Totals live on the node, so they survive the connections they count.
    """

    def __init__(self, registry: MetricsRegistry) -> None:
        conn_labels = ("dir", "transport", "security", "muxer")
        self.opened = registry.counter(
            "libp2p_swarm_connections_opened_total", "Connections opened", conn_labels
        )
        self.closed = registry.counter(
            "libp2p_swarm_connections_closed_total", "Connections closed", conn_labels
        )
        self.handshake = registry.histogram(
            "libp2p_swarm_handshake_latency_seconds",
            "Time from the start of a dial (or an accept) to an upgraded connection",
            ("dir", "transport", "security", "muxer"),
        )
        self.duration = registry.histogram(
            "libp2p_swarm_connection_duration_seconds",
            "How long connections lasted",
            conn_labels,
            buckets=(1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 6 * 3600.0, 86400.0),
        )
        self.dial_errors = registry.counter(
            "libp2p_swarm_dial_errors_total", "Failed dial attempts", ("transport", "error")
        )
        self.streams_opened = registry.counter(
            "libp2p_swarm_streams_opened_total",
            "Streams opened, by negotiated protocol",
            ("dir", "protocol"),
        )
        self.stream_bytes = registry.counter(
            "libp2p_swarm_stream_bytes_total",
            "Stream payload bytes, by protocol and direction (in: received, out: sent)",
            ("protocol", "dir"),
        )
        self._counters: dict[str, ByteCounter] = {}

    def connection_labels(self, conn: Any, transport: str) -> LabelValues:
        """The ``dir, transport, security, muxer`` labels of ``conn`` (a MuxedConnection)."""
        return (
            "outbound" if conn.is_initiator else "inbound",
            transport,
            conn.security_protocol or "none",
            conn.muxer_protocol or "none",
        )

    def stream_opened(self, direction: str, protocol: str) -> ByteCounter:
        """Count a stream of ``protocol``; returns the byte counter its muxer feeds."""
        self.streams_opened.labels(direction, protocol).inc()
        counter = self._counters.get(protocol)
        if counter is None:
            counter = ByteCounter(
                self.stream_bytes.labels(protocol, "out"), self.stream_bytes.labels(protocol, "in")
            )
            if len(self._counters) < MAX_LABEL_SETS:
                self._counters[protocol] = counter
        return counter

    def dial_error(self, transport: str, exc: BaseException) -> None:
        """Count one failed dial attempt."""
        self.dial_errors.labels(transport, _error_label(exc)).inc()


def rcmgr_collector(usage: Callable[[], ResourceUsage]) -> Collector:
    """A collector exporting a resource manager's use, limits and refusals as go-libp2p's
    ``libp2p_rcmgr_*`` families; register it with :meth:`MetricsRegistry.add_collector`.

    ``usage()`` returns ``{scope: {resource: (used, limit, blocked)}}``: ``scope`` names
    a scope (``system``, ``transient``, ``peer:<id>``, ``protocol:/ipfs/ping/1.0.0``,
    ...), ``resource`` one of ``connections_inbound``, ``connections_outbound``,
    ``streams_inbound``, ``streams_outbound``, ``memory``, ``fds`` (others are exported
    under ``libp2p_rcmgr_limit`` and ``libp2p_rcmgr_blocked_resources`` only), ``limit``
    is ``None`` when unlimited and ``blocked`` counts the refusals so far.  Exported:

    * ``libp2p_rcmgr_connections{dir,scope}``, ``libp2p_rcmgr_streams{dir,scope}``,
      ``libp2p_rcmgr_memory{scope}``, ``libp2p_rcmgr_fds{scope}``: current use (gauges);
    * ``libp2p_rcmgr_limit{scope,resource}``: the limits (gauges);
    * ``libp2p_rcmgr_blocked_resources{dir,scope,resource}``: refusals so far (a count
      that only grows, typed gauge to keep go-libp2p's name without ``_total``; ``dir``
      is ``inbound``/``outbound`` for directed resources, empty otherwise).
    """

    def collect() -> list[MetricFamily]:
        conns: list[tuple[LabelValues, float | HistogramValue]] = []
        streams: list[tuple[LabelValues, float | HistogramValue]] = []
        memory: list[tuple[LabelValues, float | HistogramValue]] = []
        fds: list[tuple[LabelValues, float | HistogramValue]] = []
        limits: list[tuple[LabelValues, float | HistogramValue]] = []
        blocked: list[tuple[LabelValues, float | HistogramValue]] = []
        for scope, resources in usage().items():
            for resource, (used, limit, refused) in resources.items():
                kind, _, direction = resource.partition("_")
                if kind == "connections" and direction:
                    conns.append(((direction, scope), float(used)))
                elif kind == "streams" and direction:
                    streams.append(((direction, scope), float(used)))
                elif resource == "memory":
                    memory.append(((scope,), float(used)))
                elif resource == "fds":
                    fds.append(((scope,), float(used)))
                if limit is not None:
                    limits.append(((scope, resource), float(limit)))
                blocked.append(((direction, scope, resource), float(refused)))
        return [
            MetricFamily(
                "libp2p_rcmgr_connections", "gauge", "Connections in use", ("dir", "scope"),
                tuple(conns),
            ),
            MetricFamily(
                "libp2p_rcmgr_streams", "gauge", "Streams in use", ("dir", "scope"),
                tuple(streams),
            ),
            MetricFamily(
                "libp2p_rcmgr_memory", "gauge", "Bytes of memory reserved", ("scope",),
                tuple(memory),
            ),
            MetricFamily(
                "libp2p_rcmgr_fds", "gauge", "File descriptors in use", ("scope",), tuple(fds)
            ),
            MetricFamily(
                "libp2p_rcmgr_limit", "gauge", "Limits of the resource manager",
                ("scope", "resource"), tuple(limits),
            ),
            MetricFamily(
                # go-libp2p's name has no _total, which a counter's samples would get:
                # exported as a gauge that only grows, under the name dashboards use
                "libp2p_rcmgr_blocked_resources", "gauge", "Resource requests refused",
                ("dir", "scope", "resource"), tuple(blocked),
            ),
        ]  # fmt: skip

    return collect


#: What :func:`rcmgr_collector` reads: ``{scope: {resource: (used, limit, blocked)}}``.
ResourceUsage = Mapping[str, Mapping[str, tuple[int, int | None, int]]]
