"""The iroh transport: :class:`IrohTransport` dials and listens on ``…/iroh`` multiaddrs.

One transport owns at most one iroh endpoint (one identity: the node's Ed25519 key is the
endpoint's secret key), bound on the first ``listen`` (at its address) or ``dial`` (an
ephemeral port on all interfaces).  Every connection carries the ALPN :data:`ALPN`; its
bi-streams are negotiated with multistream-select like any muxer's streams.

The endpoint is built from iroh's *minimal* preset with relays disabled unless
``relay_urls`` are given: nothing goes online (no n0 relays, no DNS/pkarr discovery) unless
asked.  A dial is bounded by ``NetworkConfig.dial_timeout`` (iroh has no connect timeout
of its own).  :meth:`IrohTransport.shutdown` (called by the node's ``close``) closes the
endpoint; endpoints still open at interpreter exit are closed by an exit hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

from multiaddr import Multiaddr

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidConfiguration,
    P2PError,
    UnsupportedAddress,
)
from switchy.stack.transport import ConnectionHandler, Listener, Transport
from switchy.transports.iroh import ffi
from switchy.transports.iroh.address import (
    endpoint_id_of,
    iroh_multiaddr,
    parse_iroh_addr,
)
from switchy.transports.iroh.connection import ABORT_CODE, IrohConnection

if TYPE_CHECKING:
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import Connection

__all__ = ["ALPN", "IrohListener", "IrohTransport"]

log = logging.getLogger(__name__)

#: The ALPN of switchy over iroh: each bi-stream then starts with multistream-select.
ALPN: Final = b"/switchy/iroh/1"


class IrohListener(Listener):
    """The transport's endpoint accepting connections."""

    def __init__(self, transport: IrohTransport, addrs: list[Multiaddr]) -> None:
        self._transport = transport
        self._addrs = addrs

    @property
    def addrs(self) -> list[Multiaddr]:
        return list(self._addrs)

    async def close(self) -> None:
        self._transport._stop_accepting()


class IrohTransport(Transport):
    """An iroh endpoint as a switchy transport (see the module docstring).

    ``key`` is only needed outside a node.  ``relay_urls`` enables those iroh relays (none
    by default).  ``alpn`` replaces :data:`ALPN` (both ends must agree).
    """

    name = "iroh"

    def __init__(
        self,
        config: NetworkConfig | None = None,
        *,
        key: KeyPair | None = None,
        relay_urls: tuple[str, ...] | list[str] = (),
        alpn: bytes = ALPN,
    ) -> None:
        self.config = config or NetworkConfig()
        self._key = key
        self._relay_urls = list(relay_urls)
        self.alpn = alpn
        self._endpoint: Any = None
        self._binding: asyncio.Lock | None = None
        self._handler: ConnectionHandler | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._connections: set[IrohConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        self._key = key
        self.config = config

    @property
    def endpoint(self) -> Any:
        """The bindings' ``Endpoint`` (``None`` before the first listen or dial)."""
        return self._endpoint

    # --- the endpoint ---------------------------------------------------------------------

    async def _ensure_endpoint(self, bind_addr: str | None) -> Any:
        ffi.register_loop()
        if self._binding is None:
            self._binding = asyncio.Lock()
        async with self._binding:
            if self._endpoint is not None and not self._endpoint.is_closed():
                return self._endpoint
            if self._key is None:
                raise InvalidConfiguration(
                    "IrohTransport needs an identity: pass key= or add it to a Node"
                )
            iroh = ffi.load()
            relay = (
                iroh.RelayMode.custom_from_urls(self._relay_urls)
                if self._relay_urls
                else iroh.RelayMode.disabled()
            )
            options = iroh.EndpointOptions(
                preset=iroh.preset_minimal(),
                bind_addr=bind_addr,
                secret_key=self._key.seed,
                alpns=[],  # nothing is accepted before listen()
                relay_mode=relay,
            )
            try:
                ep = await iroh.Endpoint.bind(options)
            except Exception as exc:
                raise ffi.map_error(exc, f"binding an iroh endpoint on {bind_addr}") from exc
            ffi.track(ep)
            if ep.id().to_bytes() != self._key.public_bytes:
                await ep.close()
                raise AuthenticationFailed("iroh endpoint id differs from our Ed25519 key")
            self._endpoint = ep
            return ep

    # --- Transport ------------------------------------------------------------------------

    def can_dial(self, addr: Multiaddr) -> bool:
        return parse_iroh_addr(addr) is not None

    def can_listen(self, addr: Multiaddr) -> bool:
        parsed = parse_iroh_addr(addr)
        return parsed is not None and parsed.direct is not None

    def observer_group(self, addr: Multiaddr) -> str | None:
        from switchy.stack.addrbook import ip_observer_group

        parsed = parse_iroh_addr(addr)
        if parsed is None or parsed.direct is None:
            return None
        return ip_observer_group(parsed.direct.rpartition(":")[0].strip("[]"))

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        parsed = parse_iroh_addr(addr)
        if parsed is None or parsed.direct is None:
            raise UnsupportedAddress(f"iroh cannot listen on {addr} (want /ip4/…/udp/N/iroh)")
        if self._endpoint is not None and not self._endpoint.is_closed():
            raise InvalidConfiguration(
                "an iroh transport binds one endpoint: listen before dialing, once"
            )
        ep = await self._ensure_endpoint(parsed.direct)
        ep.set_alpns([self.alpn])
        self._handler = handler
        self._acceptor = self._spawn(self._accept_loop(ep), "iroh-accept")
        host = parsed.direct.rpartition(":")[0]
        v6 = host.startswith("[")
        assert self._key is not None
        # An iroh address is only dialable with its endpoint id: the listener says it.
        addrs = [
            iroh_multiaddr(s, peer=self._key.peer_id)
            for s in ep.bound_sockets()
            if s.startswith("[") == v6 and (s.rpartition(":")[0] == host or not v6)
        ]
        return IrohListener(self, addrs)

    async def dial(
        self, addr: Multiaddr, *, remote_peer: PeerId | None = None
    ) -> Connection | MuxedConnection:
        parsed = parse_iroh_addr(addr)
        if parsed is None:
            raise UnsupportedAddress(f"iroh cannot dial {addr}")
        if remote_peer is not None and parsed.peer is not None and remote_peer != parsed.peer:
            raise InvalidConfiguration(f"{addr} names peer {parsed.peer}, not {remote_peer}")
        peer = remote_peer or parsed.peer
        if peer is None:
            raise InvalidConfiguration(f"an iroh dial needs the endpoint id: add /p2p/… to {addr}")
        iroh = ffi.load()
        endpoint_id = iroh.EndpointId.from_bytes(endpoint_id_of(peer))
        ep = await self._ensure_endpoint(None)
        target = iroh.EndpointAddr(
            endpoint_id, parsed.relay_url, [parsed.direct] if parsed.direct else []
        )
        timeout = self.config.dial_timeout
        # The connect runs in its own task: a dial abandoned by its caller (cancelled, or past
        # the timeout) drops the Rust future there, not in the caller's task.
        attempt = self._spawn(ep.connect(target, self.alpn), "iroh-connect")
        try:
            async with asyncio.timeout(timeout):
                conn = await asyncio.shield(attempt)
        except TimeoutError:
            attempt.cancel()
            raise ConnectionFailed(
                f"iroh dial of {addr} did not connect within {timeout}s"
            ) from None
        except asyncio.CancelledError:
            attempt.cancel()
            raise
        except P2PError:
            raise
        except Exception as exc:
            raise ffi.map_error(exc, f"iroh dial of {addr}") from exc
        remote = iroh_multiaddr(parsed.direct or _selected_path(conn), relay_url=parsed.relay_url)
        return self._wrap(conn, is_initiator=True, remote_addr=remote, doing=f"iroh dial of {addr}")

    def _wrap(
        self, conn: Any, *, is_initiator: bool, remote_addr: Multiaddr, doing: str
    ) -> IrohConnection:
        """Our connection around a fresh one of the bindings.  Its first calls (the remote
        id, the bound sockets) fail when it closed at once: their errors are mapped like
        every other iroh error (``doing`` names the dial or accept), and it is closed."""
        assert self._key is not None
        try:
            local = self._local_addr()
            c = IrohConnection(
                conn,
                is_initiator=is_initiator,
                local_peer=self._key.peer_id,
                local_addr=local,
                remote_addr=remote_addr,
                config=self.config,
                on_closed=self._connections.discard,
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.close(ABORT_CODE, b"failed")
            raise ffi.map_error(exc, doing) from exc
        self._connections.add(c)
        return c

    def _local_addr(self) -> Multiaddr:
        socks = self._endpoint.bound_sockets() if self._endpoint is not None else []
        return iroh_multiaddr(socks[0] if socks else None)

    async def _accept_loop(self, ep: Any) -> None:
        while True:
            try:
                incoming = await ep.accept_next()
            except Exception as exc:
                log.debug("iroh endpoint stopped accepting: %s", ffi.map_error(exc, "accept"))
                return
            if incoming is None:
                return
            self._spawn(self._handshake(incoming), "iroh-handshake")

    async def _handshake(self, incoming: Any) -> None:
        try:
            async with asyncio.timeout(self.config.dial_timeout):
                remote = await incoming.remote_addr()
                accepting = await incoming.accept()
                conn = await accepting.connect()
        except Exception as exc:  # a peer that fails its handshake is not our error
            log.debug("iroh handshake failed: %s", ffi.map_error(exc, "accepting"))
            return
        try:
            alpn = conn.alpn()
        except Exception as exc:
            log.debug("iroh handshake failed: %s", ffi.map_error(exc, "accepting"))
            return
        if alpn != self.alpn or self._handler is None:
            with contextlib.suppress(Exception):
                conn.close(ABORT_CODE, b"unexpected ALPN")
            return
        sock = getattr(remote, "addr", None)
        try:
            wrapped = self._wrap(
                conn,
                is_initiator=False,
                remote_addr=iroh_multiaddr(str(sock) if sock else None),
                doing="accepting",
            )
        except P2PError as exc:  # the peer's connection failed at once: not our error
            log.debug("iroh handshake failed: %s", exc)
            return
        try:
            await self._handler(wrapped)
        except Exception:
            log.exception("iroh connection handler failed")
            await wrapped.abort()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _stop_accepting(self) -> None:
        self._handler = None
        if self._endpoint is not None and not self._endpoint.is_closed():
            with contextlib.suppress(Exception):
                self._endpoint.set_alpns([])
        if self._acceptor is not None:
            self._acceptor.cancel()
            self._acceptor = None

    async def shutdown(self) -> None:
        """Close every connection and the endpoint (the node calls this as it closes)."""
        self._stop_accepting()
        for c in list(self._connections):
            with contextlib.suppress(Exception):
                await c.abort()
        for t in list(self._tasks):
            t.cancel()
        ep, self._endpoint = self._endpoint, None
        if ep is not None and not ep.is_closed():
            ffi.register_loop()
            with contextlib.suppress(Exception):
                await ep.close()
        ffi.release_loop()

    def __repr__(self) -> str:
        state = "unbound" if self._endpoint is None else f"{len(self._connections)} connections"
        return f"<IrohTransport {state}>"


def _selected_path(conn: Any) -> str | None:
    with contextlib.suppress(Exception):
        for p in conn.paths():
            if p.is_selected and p.is_ip:
                return str(p.remote_addr)
    return None
