"""Deliberately broken implementations the conformance suite must fail.

Each is a harness class; ``BROKEN`` maps it to the suite it targets and the
contract the suite must report broken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import attrs
from multiaddr import Multiaddr

from switchy.conformance import (
    MuxerHarness,
    RegistryDiscoveryHarness,
    RouterHarness,
    SecurityHarness,
    SimNameDiscoveryHarness,
    SimTransportHarness,
)
from switchy.protocols.discovery.backends import DiscoveredPeer, DiscoveryBackend, RegistryBackend
from switchy.protocols.router import Request, Response, Route, Router, Service
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import AuthenticationFailed, ConnectionClosed
from switchy.stack.identity import KeyPair, PeerId, PublicKey
from switchy.stack.metrics import ConnectionStats
from switchy.stack.mux import MuxedConnection, StreamMuxer
from switchy.stack.mux.yamux import Yamux
from switchy.stack.security import SecurityTransport
from switchy.stack.security.noise import NoiseConnection, NoiseSecurity
from switchy.stack.stream import Connection, MuxedStream
from switchy.stack.transport import ConnectionHandler, Listener, Transport


class _Forward(Connection):
    """A connection forwarding to another (base for the broken ones)."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.local_addr = inner.local_addr
        self.remote_addr = inner.remote_addr

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.write(data)

    async def close_write(self) -> None:
        await self.inner.close_write()

    async def reset(self) -> None:
        await self.inner.reset()

    async def close(self) -> None:
        await self.inner.close()


class _DropsLastByte(_Forward):
    """Holds back the last byte written and drops it at close_write."""

    held = b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        data = self.held + bytes(data)
        self.held = data[-1:]
        if data[:-1]:
            await self.inner.write(data[:-1])


class _IgnoresHalfClose(_Forward):
    async def close_write(self) -> None:
        pass


class _WrappingTransport(Transport):
    def __init__(self, inner: Transport, wrap: type[_Forward]) -> None:
        self.inner = inner
        self.wrap = wrap

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        self.inner.bind(key, config)

    def can_dial(self, addr: Multiaddr) -> bool:
        return self.inner.can_dial(addr)

    def can_listen(self, addr: Multiaddr) -> bool:
        return self.inner.can_listen(addr)

    async def dial(self, addr: Multiaddr, *, remote_peer: PeerId | None = None) -> Any:
        conn = await self.inner.dial(addr, remote_peer=remote_peer)
        assert isinstance(conn, Connection)
        return self.wrap(conn)

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        async def wrapped(conn: Any) -> None:
            await handler(self.wrap(conn))

        return await self.inner.listen(addr, wrapped)


class DropsLastByteHarness(SimTransportHarness):
    """A transport that loses the last byte of every stream."""

    def make(self) -> Transport:
        return _WrappingTransport(super().make(), _DropsLastByte)


class IgnoresHalfCloseHarness(SimTransportHarness):
    """A transport whose close_write does nothing."""

    def make(self) -> Transport:
        return _WrappingTransport(super().make(), _IgnoresHalfClose)


class _WrongPeer(NoiseSecurity):
    async def secure_outbound(
        self, conn: Connection, local_key: KeyPair, remote_peer: PeerId | None
    ) -> NoiseConnection:
        secured = await super().secure_outbound(conn, local_key, remote_peer)
        secured.remote_peer = KeyPair.generate().peer_id
        return secured


class WrongPeerIdHarness(SecurityHarness):
    """Noise that reports a wrong remote peer id to the initiator."""

    def make(self) -> SecurityTransport:
        return _WrongPeer(self.config())


class _Plaintext(SecurityTransport):
    """Swaps public keys in the clear and then passes bytes through: no integrity."""

    protocol_id = "/broken-plaintext/1.0.0"

    async def _swap(self, conn: Connection, key: KeyPair) -> PeerId:
        await conn.write(key.public_key.to_protobuf())
        raw = await conn.read_exactly(36)
        return PublicKey.from_protobuf(raw).to_peer_id()

    async def secure_outbound(
        self, conn: Connection, local_key: KeyPair, remote_peer: PeerId | None
    ) -> Connection:
        peer = await self._swap(conn, local_key)
        if remote_peer is not None and peer != remote_peer:
            raise AuthenticationFailed("peer id mismatch")
        out = _Forward(conn)
        out.remote_peer, out.local_peer = peer, local_key.peer_id
        return out

    async def secure_inbound(self, conn: Connection, local_key: KeyPair) -> Connection:
        peer = await self._swap(conn, local_key)
        out = _Forward(conn)
        out.remote_peer, out.local_peer = peer, local_key.peer_id
        return out


class PlaintextHarness(SecurityHarness):
    """A "security" layer without encryption or integrity."""

    def make(self) -> SecurityTransport:
        return _Plaintext()


class _UnboundedStream(MuxedStream):
    """Write returns at once; a background task feeds the real stream (no backpressure)."""

    def __init__(self, inner: MuxedStream, conn: MuxedConnection) -> None:
        self.inner = inner
        self.conn = conn
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while (chunk := await self.queue.get()) is not None:
            await self.inner.write(chunk)
        await self.inner.close_write()

    @property
    def remote_peer(self) -> PeerId:
        return self.inner.remote_peer

    @property
    def stats(self) -> ConnectionStats:
        return self.inner.stats

    @property
    def muxed_conn(self) -> MuxedConnection:
        return self.conn

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.pump.done():
            raise ConnectionClosed("closed")
        self.queue.put_nowait(bytes(data))

    async def close_write(self) -> None:
        self.queue.put_nowait(None)
        await self.pump

    async def reset(self) -> None:
        self.pump.cancel()
        await self.inner.reset()

    async def close(self) -> None:
        await self.close_write()
        await self.inner.close()


class _ResetIsClose(_UnboundedStream):
    """Backpressure intact (writes straight through), but reset only closes."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.write(data)

    async def reset(self) -> None:
        self.pump.cancel()
        await self.inner.close()


class _WrappedMuxedConnection(MuxedConnection):
    def __init__(self, inner: MuxedConnection, wrap: type[_UnboundedStream]) -> None:
        self.inner = inner
        self.wrap = wrap
        self.local_peer, self.remote_peer = inner.local_peer, inner.remote_peer
        self.local_addr, self.remote_addr = inner.local_addr, inner.remote_addr
        self.is_initiator = inner.is_initiator
        self.stats = inner.stats

    async def open_stream(self) -> MuxedStream:
        return self.wrap(await self.inner.open_stream(), self)

    async def accept_stream(self) -> MuxedStream:
        return self.wrap(await self.inner.accept_stream(), self)

    async def close(self) -> None:
        await self.inner.close()

    async def abort(self) -> None:
        await self.inner.abort()

    @property
    def is_closed(self) -> bool:
        return self.inner.is_closed

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()


class _WrappingMuxer(StreamMuxer):
    protocol_id = "/broken-mux/1.0.0"

    def __init__(self, wrap: type[_UnboundedStream]) -> None:
        self.wrap = wrap

    def create(
        self, conn: Connection, *, is_initiator: bool, config: NetworkConfig
    ) -> MuxedConnection:
        inner = Yamux().create(conn, is_initiator=is_initiator, config=config)
        return _WrappedMuxedConnection(inner, self.wrap)


class NoBackpressureHarness(MuxerHarness):
    """yamux streams behind an unbounded write queue."""

    def make(self) -> StreamMuxer:
        return _WrappingMuxer(_UnboundedStream)


class ResetIsCloseHarness(MuxerHarness):
    """yamux streams whose reset is a graceful close."""

    def make(self) -> StreamMuxer:
        return _WrappingMuxer(_ResetIsClose)


#: harness class → (fixture name, suite module, the contract the suite must report).
BROKEN: dict[type, tuple[str, str, str]] = {
    DropsLastByteHarness: ("transport_harness", "test_transport", "transport.data-integrity"),
    IgnoresHalfCloseHarness: ("transport_harness", "test_transport", "transport.half-close"),
    WrongPeerIdHarness: ("security_harness", "test_security", "security.peer-id"),
    PlaintextHarness: ("security_harness", "test_security", "security.integrity"),
    NoBackpressureHarness: ("muxer_harness", "test_muxer", "muxer.flow-control"),
    ResetIsCloseHarness: ("muxer_harness", "test_muxer", "muxer.reset"),
}


class _CrashingItems:
    """A service whose handler trusts its path parameter (int() of any text)."""

    def register_routes(self, router: Router) -> None:
        @router.get("/items/{item_id}")
        async def item(request: Request) -> Response:
            return Response.from_json({"id": int(request.params["item_id"])})


class CrashingServiceHarness(RouterHarness):
    """A service that answers 500 to a non-numeric id."""

    def services(self) -> list[Service]:
        return [_CrashingItems()]

    def good_requests(self) -> list[tuple[str, str, bytes]]:
        return [("GET", "/items/7", b"")]


class _LaxRouter(Router):
    """Accepts a route even when another of the same method and shape exists."""

    def _add(self, routes: Sequence[Route]) -> None:
        for r in routes:
            self._insert(r)


class NoConflictCheckHarness(RouterHarness):
    """A router that never detects conflicting registrations."""

    def make_router(self) -> Router:
        return _LaxRouter()


BROKEN.update(
    {
        CrashingServiceHarness: ("router_harness", "test_router", "router.robustness"),
        NoConflictCheckHarness: ("router_harness", "test_router", "router.conflicts"),
    }
)


class _LyingRegistryBackend(RegistryBackend):
    """Resolves every name to a peer that never registered it."""

    async def resolve(self, name: str) -> DiscoveredPeer:
        found = await super().resolve(name)
        return attrs.evolve(found, peer_id=KeyPair.generate().peer_id)


class _ForgetfulRegistryBackend(RegistryBackend):
    """Says it registered, but never tells the registry."""

    async def register(self, name: str) -> None:
        return None


class LyingDiscoveryHarness(RegistryDiscoveryHarness):
    """A backend that redirects names to other peers."""

    def make_backend(self) -> DiscoveryBackend:
        return _LyingRegistryBackend([self._registry.full_addrs[0]])


class ForgetfulDiscoveryHarness(RegistryDiscoveryHarness):
    """A backend whose registrations go nowhere."""

    def make_backend(self) -> DiscoveryBackend:
        return _ForgetfulRegistryBackend([self._registry.full_addrs[0]])


class UnownedNamesHarness(SimNameDiscoveryHarness):
    """The simulator's name service claiming to own names (it does not)."""

    owns_names = True


BROKEN.update(
    {
        LyingDiscoveryHarness: ("discovery_harness", "test_discovery", "discovery.resolve"),
        ForgetfulDiscoveryHarness: ("discovery_harness", "test_discovery", "discovery.register"),
        UnownedNamesHarness: ("discovery_harness", "test_discovery", "discovery.owner"),
    }
)
