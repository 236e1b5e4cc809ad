"""Conformance harnesses of the iroh transport (loopback, no relay, nothing online).

* :class:`IrohTransportHarness` — the transport suite (``transport_harness``);
* :class:`IrohMuxerHarness` — the muxer suite (``muxer_harness``): the suite hands a muxer a
  memory pipe, which iroh cannot use, so :meth:`IrohMuxerHarness.make`'s muxer ignores the
  pipe and pairs the two ends it creates over a real iroh connection on loopback instead
  (the connection the suite gets is ready once that connection is);
* :class:`IrohNodeHarness` — the node suite (``node_harness``).

Each run closes every endpoint its transports bound.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from switchy.stack.config import NetworkConfig
from switchy.stack.conformance.harness import MuxerHarness, NodeHarness, TransportHarness
from switchy.stack.errors import ConnectionClosed
from switchy.stack.identity import KeyPair
from switchy.stack.mux import MuxedConnection, StreamMuxer
from switchy.stack.node import Node
from switchy.transports.iroh.transport import IrohTransport

if TYPE_CHECKING:
    from switchy.stack.stream import Connection, MuxedStream

__all__ = ["IrohMuxerHarness", "IrohNodeHarness", "IrohTransportHarness"]

_T = TypeVar("_T")

#: Where the harnesses listen.
LISTEN: str = "/ip4/127.0.0.1/udp/0/iroh"


class _Tracking:
    """Remembers the transports made during one run and shuts them down after it."""

    def _init_tracking(self) -> None:
        self._made: list[IrohTransport] = []

    def _track(self, t: IrohTransport) -> IrohTransport:
        self._made.append(t)
        return t

    async def _run_then_shutdown(self, main: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await main()
        finally:
            for t in self._made:
                await t.shutdown()
            self._made.clear()


class IrohTransportHarness(_Tracking, TransportHarness):
    """The iroh transport on loopback UDP (its connections bring their own streams)."""

    listen_addr = LISTEN
    backpressure_bytes = 48 * 1024 * 1024  # above what iroh's windows and our buffer hold

    def __init__(self) -> None:
        self._init_tracking()

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        return asyncio.run(self._run_then_shutdown(main))

    def make(self) -> IrohTransport:
        return self._track(IrohTransport(self.config(), key=KeyPair.generate()))

    def unreachable_addr(self) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # free a moment ago
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"/ip4/127.0.0.1/udp/{port}/iroh/p2p/{KeyPair.generate().peer_id}"

    def config(self) -> NetworkConfig:
        # Nobody answers at the unreachable address: give up on it soon.
        return NetworkConfig(keepalive_interval=0, close_timeout=0.5, dial_timeout=1.0)


class _PairedConnection(MuxedConnection):
    """One end of the iroh connection a :class:`_LoopbackIrohMuxer` sets up (once ready)."""

    def __init__(self, ready: asyncio.Future[MuxedConnection], local: Any, remote: Any) -> None:
        self._ready = ready
        self.local_peer, self.remote_peer = local, remote

    async def _conn(self) -> MuxedConnection:
        return await asyncio.shield(self._ready)

    async def open_stream(self) -> MuxedStream:
        return await (await self._conn()).open_stream()

    async def accept_stream(self) -> MuxedStream:
        return await (await self._conn()).accept_stream()

    async def close(self) -> None:
        await (await self._conn()).close()

    async def abort(self) -> None:
        await (await self._conn()).abort()

    @property
    def is_closed(self) -> bool:
        return self._ready.done() and self._ready.result().is_closed

    async def wait_closed(self) -> None:
        await (await self._conn()).wait_closed()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not self._ready.done():
            raise AttributeError(name)
        return getattr(self._ready.result(), name)


class _LoopbackIrohMuxer(StreamMuxer):
    """A "muxer" whose two ends (initiator, then responder) are an iroh connection."""

    protocol_id = "/switchy/iroh/1"

    def __init__(self, harness: IrohMuxerHarness) -> None:
        self._harness = harness

    def create(
        self, conn: Connection, *, is_initiator: bool, config: NetworkConfig
    ) -> MuxedConnection:
        loop = asyncio.get_running_loop()
        assert conn.local_peer is not None and conn.remote_peer is not None
        h = self._harness
        if is_initiator:
            h._pair = (loop.create_future(), loop.create_future())
            ready = h._pair[0]
            task = loop.create_task(h._connect(config))
            h._tasks.add(task)
        else:
            ready = h._pair[1]
        return _PairedConnection(ready, conn.local_peer, conn.remote_peer)


class IrohMuxerHarness(_Tracking, MuxerHarness):
    """The muxer suite on iroh connections over loopback (see the module docstring)."""

    def __init__(self) -> None:
        self._init_tracking()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pair: tuple[asyncio.Future[MuxedConnection], asyncio.Future[MuxedConnection]]

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        return asyncio.run(self._run_then_shutdown(main))

    def make(self) -> StreamMuxer:
        return _LoopbackIrohMuxer(self)

    async def _connect(self, config: NetworkConfig) -> None:
        dialer_ready, listener_ready = self._pair
        try:
            a = self._track(IrohTransport(config, key=KeyPair.generate()))
            b = self._track(IrohTransport(config, key=KeyPair.generate()))
            accepted: asyncio.Future[MuxedConnection] = asyncio.get_running_loop().create_future()

            async def on_conn(c: Any) -> None:
                if not accepted.done():
                    accepted.set_result(c)

            listener = await b.listen(_multiaddr(LISTEN), on_conn)
            dialed = await a.dial(listener.addrs[0])
            assert isinstance(dialed, MuxedConnection)
            dialer_ready.set_result(dialed)
            listener_ready.set_result(await accepted)
        except BaseException as exc:
            for f in (dialer_ready, listener_ready):
                if not f.done():
                    f.set_exception(ConnectionClosed(f"iroh pair failed: {exc!r}"))
            raise


class IrohNodeHarness(_Tracking, NodeHarness):
    """Nodes with only the iroh transport, on loopback."""

    def __init__(self) -> None:
        self._init_tracking()

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        return asyncio.run(self._run_then_shutdown(main))

    def make_node(self, name: str, **kwargs: Any) -> Node:
        config = kwargs.setdefault("config", self.config())
        transport = self._track(IrohTransport(config))
        return Node(transports=[transport], listen=[self.listen_addr()], **kwargs)

    def listen_addr(self) -> str:
        return LISTEN


def _multiaddr(text: str) -> Any:
    from multiaddr import Multiaddr

    return Multiaddr(text)
