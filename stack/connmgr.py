"""The connection manager: keeps the number of connections between two watermarks.

When a node holds more than ``high_water`` connections, the manager closes the
least useful ones until ``low_water`` remain.  Never closed by trimming:
connections younger than ``grace_period`` and peers that are *protected*
(:meth:`ConnectionManager.protect`, with a tag so several users can protect one
peer: the relay client protects the relays it holds a reservation on, an
application its important peers).  Usefulness is the sum of the peer's tag values
(:meth:`ConnectionManager.tag_peer`), then the number of open streams; the least
useful go first, and of equals the newest.

``idle_timeout`` (0: off) closes connections without streams for that long.
The defaults (160/192, 20 s grace) are go-libp2p's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Final

from switchy.stack.errors import InvalidConfiguration

if TYPE_CHECKING:
    from switchy.stack.identity import PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.node import ConnectionEvent, Node

__all__ = ["DEFAULT_GRACE_PERIOD", "DEFAULT_HIGH_WATER", "DEFAULT_LOW_WATER", "ConnectionManager"]

log = logging.getLogger(__name__)

DEFAULT_LOW_WATER: Final = 160
DEFAULT_HIGH_WATER: Final = 192
DEFAULT_GRACE_PERIOD: Final = 20.0


def _streams(conn: MuxedConnection) -> int:
    scope = conn.resource_scope
    return len(scope.streams) if scope is not None else 0


class ConnectionManager:
    """Trims connections above ``high_water`` down to ``low_water``; see the module docs."""

    def __init__(
        self,
        *,
        low_water: int = DEFAULT_LOW_WATER,
        high_water: int = DEFAULT_HIGH_WATER,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        idle_timeout: float = 0.0,
    ) -> None:
        if not 0 <= low_water <= high_water:
            raise InvalidConfiguration(
                f"connection manager: need 0 <= low_water <= high_water, "
                f"got {low_water} and {high_water}"
            )
        if grace_period < 0 or idle_timeout < 0:
            raise InvalidConfiguration("connection manager: durations must be >= 0")
        self.low_water = low_water
        self.high_water = high_water
        self.grace_period = grace_period
        self.idle_timeout = idle_timeout
        self._node: Node | None = None
        self._protected: dict[PeerId, set[str]] = defaultdict(set)
        self._tags: dict[PeerId, dict[str, int]] = defaultdict(dict)
        self._opened: dict[MuxedConnection, float] = {}
        self._idle_since: dict[MuxedConnection, float] = {}
        self._trimming: asyncio.Task[int] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        #: Connections closed so far by trimming and by the idle timeout.
        self.trimmed = 0
        self.idle_closed = 0

    # --- protection and tags --------------------------------------------------------------

    def protect(self, peer: PeerId, tag: str) -> None:
        """Never trim connections to ``peer`` while ``tag`` protects it."""
        self._protected[peer].add(tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Drop ``tag``'s protection; returns whether ``peer`` is still protected."""
        tags = self._protected.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if not tags:
            del self._protected[peer]
            return False
        return True

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether ``peer`` is protected (by ``tag``, or by any tag)."""
        tags = self._protected.get(peer, set())
        return bool(tags) if tag is None else tag in tags

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        """Give ``peer`` ``value`` points of usefulness under ``tag`` (replacing its last)."""
        self._tags[peer][tag] = value

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        """Drop ``tag``'s points of ``peer``."""
        tags = self._tags.get(peer)
        if tags is not None:
            tags.pop(tag, None)
            if not tags:
                del self._tags[peer]

    def value(self, peer: PeerId) -> int:
        """The sum of ``peer``'s tag values."""
        return sum(self._tags.get(peer, {}).values())

    # --- the node's side ------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        """Watch ``node``'s connections (the node calls this)."""
        self._node = node
        node.on_connection_event(self._on_event)

    def start(self) -> None:
        """Begin the idle check (the node calls this when it starts)."""
        if self.idle_timeout > 0 and self._idle_task is None and self._node is not None:
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop())

    def stop(self) -> None:
        """Stop the background work (the node calls this when it closes)."""
        for task in (self._idle_task, self._trimming):
            if task is not None:
                task.cancel()
        self._idle_task = None

    def _on_event(self, event: ConnectionEvent) -> None:
        now = asyncio.get_running_loop().time()
        if event.kind == "connected":
            self._opened[event.connection] = now
            node = self._node
            if node is not None and len(node.connections()) > self.high_water:
                self._schedule_trim()
        else:
            self._opened.pop(event.connection, None)
            self._idle_since.pop(event.connection, None)

    def _schedule_trim(self) -> None:
        if self._trimming is None or self._trimming.done():
            self._trimming = asyncio.get_running_loop().create_task(self.trim())

    async def trim(self) -> int:
        """Close the least useful connections down to ``low_water`` (when above
        ``high_water``); returns how many were closed."""
        node = self._node
        if node is None or len(node.connections()) <= self.high_water:
            return 0
        now = asyncio.get_running_loop().time()
        conns = node.connections()
        excess = len(conns) - self.low_water
        candidates = [
            c
            for c in conns
            if not self.is_protected(c.remote_peer)
            and now - self._opened.get(c, now) >= self.grace_period
        ]
        candidates.sort(
            key=lambda c: (self.value(c.remote_peer), _streams(c), -self._opened.get(c, now))
        )
        victims = candidates[:excess]
        for c in victims:
            log.debug("connection manager: trimming %s (%s)", c.remote_peer, c.remote_addr)
            with contextlib.suppress(Exception):
                await c.close()
        self.trimmed += len(victims)
        return len(victims)

    async def _idle_loop(self) -> None:
        interval = max(self.idle_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(interval)
            node = self._node
            if node is None:
                return
            now = asyncio.get_running_loop().time()
            for c in node.connections():
                if _streams(c) or self.is_protected(c.remote_peer):
                    self._idle_since.pop(c, None)
                    continue
                since = self._idle_since.setdefault(c, now)
                if now - since >= self.idle_timeout:
                    self._idle_since.pop(c, None)
                    self.idle_closed += 1
                    log.debug("connection manager: closing idle %s", c.remote_peer)
                    with contextlib.suppress(Exception):
                        await c.close()
