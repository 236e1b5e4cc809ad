"""The event trace of a simulation, and traffic counters per host and per link.

Every send, delivery, drop, connect, accept, close, reset, crash, partition…
is recorded as a :class:`TraceEvent` ``(time, kind, src, dst, size, extra)``.
Two runs with the same seed and scenario produce the same trace, so its
:meth:`TraceRecorder.digest` is a fingerprint of a run.

Recording is an append of a tuple; JSON is only produced when the trace is
written or digested.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from typing import IO, Any, Final

import attrs

__all__ = [
    "EVENT_KINDS",
    "HostCounters",
    "LinkCounters",
    "TraceEvent",
    "TraceRecorder",
]

#: Every kind of event the simulator records.
EVENT_KINDS: Final = frozenset(
    {
        "send",  # a packet or segment entered the network
        "deliver",  # it arrived
        "drop",  # it was lost or could not get through (extra["reason"])
        "duplicate",  # a datagram was duplicated by a link
        "retransmit",  # a stream segment was lost on a hop and resent after a timeout
        "connect",  # a stream connection attempt started (SYN)
        "accept",  # the listener accepted it
        "established",  # the dialer learned the connection is up
        "refuse",  # nothing listened on the port
        "fin",  # end of stream of one direction (close_write)
        "close",  # an endpoint closed
        "reset",  # a connection was reset
        "timeout",  # a connection broke after being stalled for the timeout
        "crash",
        "restart",
        "partition",
        "heal",
        "hold",
        "release",
        "link",  # a link was added or changed
        "register",  # a name-service registration
        "lookup",  # a name-service lookup
        "note",  # free-form marker added by a scenario
        "nat",  # a NAT or firewall box was added (its behaviour in extra)
        "nat_map",  # a box created a mapping (internal -> external endpoint)
        "nat_reuse",  # a box used an existing mapping toward a new remote endpoint
        "nat_expire",  # a box retired a mapping (extra["expired_at"]: when it expired)
        "nat_rst",  # a box answered an unsolicited TCP SYN with a reset
        "nat_clear",  # a box crashed and lost its mappings
        "simultaneous_open",  # two crossing SYNs made one stream connection
    }
)


@attrs.frozen
class TraceEvent:
    """One recorded event.  ``time`` is virtual seconds; ``extra`` holds kind-specific fields."""

    time: float
    kind: str
    src: str
    dst: str
    size: int
    extra: dict[str, Any] | None = None

    def to_json(self) -> str:
        """The canonical JSON line (sorted keys, no spaces) of this event."""
        return _canonical(self.time, self.kind, self.src, self.dst, self.size, self.extra)


def _canonical(
    time: float, kind: str, src: str, dst: str, size: int, extra: dict[str, Any] | None
) -> str:
    obj: dict[str, Any] = {"t": time, "kind": kind, "src": src, "dst": dst, "size": size}
    if extra:
        obj["extra"] = extra
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@attrs.define(slots=True)
class HostCounters:
    """Traffic of one host: packets and bytes sent and received, packets dropped."""

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    drops: int = 0


@attrs.define(slots=True)
class LinkCounters:
    """Traffic of one directed link: packets and bytes that entered it, packets lost on it."""

    packets: int = 0
    bytes: int = 0
    drops: int = 0


_Raw = tuple[float, str, str, str, int, "dict[str, Any] | None"]


class TraceRecorder:
    """Keeps the event trace of a simulation.

    ``enabled=False`` keeps nothing (counters still count); ``sink`` also
    streams every event as a JSON line to an open text file as it happens.
    """

    def __init__(self, *, enabled: bool = True, sink: IO[str] | None = None) -> None:
        self.enabled = enabled
        self._events: list[_Raw] = []
        self._sink = sink

    def record(
        self,
        time: float,
        kind: str,
        src: str,
        dst: str = "",
        size: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Append one event (no-op when disabled)."""
        if not self.enabled:
            return
        self._events.append((time, kind, src, dst, size, extra))
        if self._sink is not None:
            self._sink.write(_canonical(time, kind, src, dst, size, extra) + "\n")

    def note(self, time: float, text: str, **extra: Any) -> None:
        """Add a free-form ``note`` event (scenario markers)."""
        self.record(time, "note", "", "", 0, {"text": text, **extra} if extra else {"text": text})

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[TraceEvent]:
        return (TraceEvent(*raw) for raw in self._events)

    @property
    def events(self) -> list[TraceEvent]:
        """All recorded events, oldest first."""
        return [TraceEvent(*raw) for raw in self._events]

    def of_kind(self, *kinds: str) -> list[TraceEvent]:
        """Events whose kind is one of ``kinds``."""
        wanted = set(kinds)
        return [TraceEvent(*raw) for raw in self._events if raw[1] in wanted]

    def clear(self) -> None:
        """Forget every event recorded so far."""
        self._events.clear()

    def lines(self) -> Iterator[str]:
        """Each event as its canonical JSON line (without newline)."""
        for raw in self._events:
            yield _canonical(*raw)

    def write_jsonl(self, target: str | os.PathLike[str] | IO[str]) -> int:
        """Write the trace as JSON lines to a path or an open text file; return the count."""
        if isinstance(target, str | os.PathLike):
            with open(target, "w", encoding="utf-8") as fh:
                return self.write_jsonl(fh)
        n = 0
        for line in self.lines():
            target.write(line + "\n")
            n += 1
        return n

    def to_jsonl(self) -> str:
        """The whole trace as one JSON-lines string."""
        buf = io.StringIO()
        self.write_jsonl(buf)
        return buf.getvalue()

    def digest(self) -> str:
        """Hex sha256 over the canonical JSON lines: equal for identical runs."""
        h = hashlib.sha256()
        for line in self.lines():
            h.update(line.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()
