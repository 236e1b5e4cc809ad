"""A bounded keep-alive pool of HTTP/1.1 connections to one local server (``expose``).

:class:`HttpProxyService` takes a connection from :class:`UpstreamPool` for each request it
forwards and gives it back when the exchange ended cleanly (both sides ``DONE``, no
``Connection: close``, no stray bytes): the next request skips the TCP handshake and the
server's accept.  Bounds: at most ``max_idle`` connections wait in the pool, each at most
``idle_expiry`` seconds (shorter than the keep-alive timeouts of common servers, so the
server rarely closes a connection just as it is reused), and at most ``max_connections``
are open at once (more requests wait for one).  Ages are read on the event loop's clock,
so the simulator's virtual time ages them too.

A server may still close an idle connection under us: the proxy then sends a request
without a body once more on a fresh connection (see
:func:`~switchy.protocols.http.proxy.forward_exchange`); a request with a body gets ``502``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.http.core import DEFAULT_LIMITS, ClientCore, HttpLimits
from switchy.stack.errors import P2PError
from switchy.stack.stream import Connection, Stream
from switchy.stack.transport import Transport

__all__ = ["DEFAULT_POOL", "PoolLimits", "PooledConnection", "UpstreamPool"]


@attrs.frozen
class PoolLimits:
    """Bounds of an :class:`UpstreamPool` (``max_idle=0`` turns pooling off)."""

    #: Most idle connections kept for reuse.
    max_idle: int = 32
    #: Most connections open to the server at once (requests beyond wait).
    max_connections: int = 256
    #: Seconds an idle connection is kept (uvicorn and node close theirs after 5 s).
    idle_expiry: float = 2.0


#: The pool limits used when none are given.
DEFAULT_POOL: Final = PoolLimits()


@attrs.define(eq=False)
class PooledConnection:
    """One connection to the server and its HTTP client state."""

    #: The byte stream to the server.
    stream: Stream
    #: The HTTP client side (a fresh cycle when taken from the pool).
    core: ClientCore
    #: Whether it served an earlier request (may have been closed by the server since).
    reused: bool = False
    _since: float = 0.0
    #: Given back (released or discarded) since it was acquired: a second time is a no-op.
    given_back: bool = False


class UpstreamPool:
    """Keep-alive connections from ``transport`` to ``addr`` (HTTP client state each, with
    ``http_limits``); bounded by ``limits``."""

    #: Requests on these connections keep the connection open (no ``Connection: close``).
    keep_alive = True

    def __init__(
        self,
        transport: Transport,
        addr: Multiaddr,
        limits: PoolLimits = DEFAULT_POOL,
        http_limits: HttpLimits = DEFAULT_LIMITS,
    ) -> None:
        self._transport = transport
        self._addr = addr
        self.limits = limits
        self.http_limits = http_limits
        self._idle: collections.deque[PooledConnection] = collections.deque()
        self._slots = asyncio.Semaphore(limits.max_connections)
        #: Connections dialled so far (a figure for tests and metrics).
        self.dialled = 0

    async def acquire(self, *, fresh: bool = False) -> PooledConnection:
        """A connection: an idle one when there is one (and not ``fresh``), else a new one.

        Raises what the transport's dial raises.
        Every connection acquired must be given to :meth:`release` (or :meth:`discard`).
        """
        await self._slots.acquire()
        try:
            now = asyncio.get_running_loop().time()
            while self._idle and not fresh:
                conn = self._idle.pop()  # the most recently used: the least likely closed
                if now - conn._since <= self.limits.idle_expiry:
                    conn.given_back = False
                    return conn
                await _close(conn.stream)
            stream = await self._transport.dial(self._addr)
            assert isinstance(stream, Connection)
            self.dialled += 1
            return PooledConnection(stream, ClientCore(self.http_limits))
        except BaseException:
            self._slots.release()
            raise

    async def release(self, conn: PooledConnection) -> None:
        """Give ``conn`` back: kept for reuse when its exchange ended cleanly, else closed."""
        if conn.given_back:
            return
        conn.given_back = True
        self._slots.release()
        data, closed = conn.core.conn.trailing_data
        clean = conn.core.ready_for_next() and not data and not closed
        if not clean or len(self._idle) >= self.limits.max_idle:
            await _close(conn.stream)
            return
        conn.core.start_next_cycle()
        conn.reused = True
        conn._since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    async def discard(self, conn: PooledConnection) -> None:
        """Reset ``conn`` (its exchange failed) and free its slot."""
        if conn.given_back:
            return
        conn.given_back = True
        self._slots.release()
        with contextlib.suppress(P2PError, OSError):
            await conn.stream.reset()

    async def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            await _close(self._idle.pop().stream)

    @property
    def idle(self) -> int:
        """Idle connections now in the pool."""
        return len(self._idle)


async def _close(stream: Stream) -> None:
    with contextlib.suppress(P2PError, OSError):
        await stream.close()
