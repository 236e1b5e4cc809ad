"""Local network discovery with multicast DNS, as libp2p's mDNS spec defines it.

Peers ask ``_p2p._udp.local PTR`` on ``224.0.0.251:5353``; every peer answers
(its own queries too) with ``_p2p._udp.local PTR <peer-name>._p2p._udp.local``
and, in the additional records, ``<peer-name>._p2p._udp.local TXT`` holding one
``dnsaddr=<multiaddr>/p2p/<peer id>`` string per address.  ``peer-name`` is a
random 32-character string, not the peer id.  We also answer the DNS-SD meta
query and direct TXT queries for our peer name.

Names: a node that registers names adds ``switchy-name=<name>`` strings to its
TXT record (other libp2p implementations only read ``dnsaddr=`` and ignore
them).  Such names are NOT authenticated: anyone on the link can announce any
name.  The peer id is authenticated when connecting (it is in every address).

:class:`MdnsCore` is the sans-IO part (datagrams in, datagrams and found
peers out); :class:`MdnsService` runs it on a UDP socket (IPv4) as a
discovery backend and emits found-peer events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import string
from collections.abc import Callable
from typing import Any, Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.discovery.backends import DiscoveredPeer, DiscoveryBackend
from switchy.protocols.discovery.codec import validate_name
from switchy.protocols.discovery.dns import (
    CLASS_FLAG,
    CLASS_IN,
    FLAG_AUTHORITATIVE,
    FLAG_RESPONSE,
    TYPE_ANY,
    TYPE_PTR,
    TYPE_TXT,
    DnsMessage,
    Question,
    Record,
    decode_dns,
    encode_dns,
)
from switchy.stack.addresses import split_peer, with_peer
from switchy.stack.errors import DiscoveryFailed, P2PError
from switchy.stack.identity import Entropy, PeerId
from switchy.stack.tasks import cancel_and_wait

__all__ = [
    "MDNS_GROUP",
    "MDNS_PORT",
    "SERVICE_NAME",
    "MdnsCore",
    "MdnsPeer",
    "MdnsService",
]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "_p2p._udp.local"
META_QUERY: Final = "_services._dns-sd._udp.local"
MDNS_GROUP: Final = "224.0.0.251"
MDNS_PORT: Final = 5353
#: TTL of the records we announce, in seconds.
RECORD_TTL: Final = 120
#: Length of the random peer name (the spec asks for at least 32 characters).
PEER_NAME_LENGTH: Final = 32
DNSADDR: Final = b"dnsaddr="
NAME_HINT: Final = b"switchy-name="
#: Least time between two multicast answers to queries (RFC 6762 asks for one second);
#: queries within it share one deferred answer.
MIN_ANSWER_INTERVAL: Final = 1.0
#: Interval of repeated queries while :meth:`MdnsService.resolve` waits.
RESOLVE_QUERY_INTERVAL: Final = 1.0
#: Most TXT strings we put in one answer (keeps it well within one datagram).
MAX_TXT_STRINGS: Final = 24
#: Most peers remembered from the network.
MAX_KNOWN_PEERS: Final = 1024
#: Most addresses / names kept per found peer.
MAX_PEER_ADDRS: Final = 32
MAX_PEER_NAMES: Final = 8


@attrs.frozen
class MdnsPeer:
    """A peer found on the local network."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    #: ``switchy-name=`` hints it announced (unauthenticated).
    names: tuple[str, ...] = ()


def random_peer_name(entropy: Entropy | None = None) -> str:
    """A random lower-case alphanumeric peer name of :data:`PEER_NAME_LENGTH` characters."""
    alphabet = string.ascii_lowercase + string.digits
    raw = (entropy or os.urandom)(PEER_NAME_LENGTH)
    return "".join(alphabet[b % len(alphabet)] for b in raw)


class MdnsCore:
    """The mDNS peer discovery state machine (no sockets, no clock).

    Set :attr:`addrs` and :attr:`names` to what we announce; feed received
    datagrams to :meth:`receive`, which returns the datagram to multicast in
    reply (or None) and the peers found in it.
    """

    def __init__(self, peer_id: PeerId, peer_name: str, service: str = SERVICE_NAME) -> None:
        self.peer_id = peer_id
        self.service = service
        self.instance = f"{peer_name}.{service}"
        self.addrs: list[Multiaddr] = []
        self.names: list[str] = []

    def query(self) -> bytes:
        """The "find all peers" query."""
        return encode_dns(DnsMessage(questions=(Question(self.service, TYPE_PTR),)))

    def _txt(self) -> Record:
        strings: list[bytes] = []
        for addr in self.addrs:
            value = DNSADDR + str(with_peer(addr, self.peer_id)).encode()
            if len(value) <= 255:
                strings.append(value)
        strings += [NAME_HINT + n.encode() for n in self.names]
        return Record(
            self.instance,
            TYPE_TXT,
            RECORD_TTL,
            CLASS_IN | CLASS_FLAG,
            strings=tuple(strings[:MAX_TXT_STRINGS]),
        )

    def announcement(self) -> bytes:
        """A response announcing us (sent unprompted, and in answer to queries)."""
        ptr = Record(self.service, TYPE_PTR, RECORD_TTL, target=self.instance)
        return encode_dns(
            DnsMessage(
                flags=FLAG_RESPONSE | FLAG_AUTHORITATIVE, answers=(ptr,), additionals=(self._txt(),)
            )
        )

    def receive(self, datagram: bytes) -> tuple[bytes | None, list[MdnsPeer]]:
        """Handle one datagram: ``(reply to multicast or None, peers found)``.

        Malformed datagrams raise :class:`~switchy.stack.errors.SerializationError`.
        """
        msg = decode_dns(datagram)
        if not msg.is_response:
            return self._answer(msg), []
        return None, self._peers(msg)

    def _answer(self, msg: DnsMessage) -> bytes | None:
        service = self.service.lower()
        instance = self.instance.lower()
        answers: list[Record] = []
        additionals: list[Record] = []
        for q in msg.questions:
            name, rtype = q.name.lower(), q.rtype
            if name == service and rtype in (TYPE_PTR, TYPE_ANY):
                answers.append(Record(self.service, TYPE_PTR, RECORD_TTL, target=self.instance))
                additionals.append(self._txt())
            elif name == instance and rtype in (TYPE_TXT, TYPE_ANY):
                answers.append(self._txt())
            elif name == META_QUERY and rtype in (TYPE_PTR, TYPE_ANY):
                answers.append(Record(META_QUERY, TYPE_PTR, RECORD_TTL, target=self.service))
        if not answers:
            return None
        return encode_dns(
            DnsMessage(
                flags=FLAG_RESPONSE | FLAG_AUTHORITATIVE,
                answers=tuple(answers),
                additionals=tuple(additionals),
            )
        )

    def _peers(self, msg: DnsMessage) -> list[MdnsPeer]:
        service = self.service.lower()
        records = (*msg.answers, *msg.additionals)
        instances = {
            r.target.lower()
            for r in msg.answers
            if r.rtype == TYPE_PTR and r.name.lower() == service
        }
        found: dict[PeerId, tuple[list[Multiaddr], list[str]]] = {}
        for r in records:
            if r.rtype != TYPE_TXT or r.name.lower() not in instances:
                continue
            addrs: dict[PeerId, list[Multiaddr]] = {}
            names: list[str] = []
            for s in r.strings:
                if s.startswith(DNSADDR):
                    parsed = _parse_dnsaddr(s[len(DNSADDR) :])
                    if parsed is not None:
                        addrs.setdefault(parsed[1], []).append(parsed[0])
                elif s.startswith(NAME_HINT):
                    with contextlib.suppress(UnicodeDecodeError, P2PError):
                        names.append(validate_name(s[len(NAME_HINT) :].decode()))
            for peer, peer_addrs in addrs.items():
                if peer == self.peer_id:
                    continue
                entry = found.setdefault(peer, ([], []))
                entry[0].extend(a for a in peer_addrs if a not in entry[0])
                # Names belong to the instance; only trust them for a single-peer record.
                if len(addrs) == 1:
                    entry[1].extend(n for n in names if n not in entry[1])
        return [
            MdnsPeer(p, tuple(a[:MAX_PEER_ADDRS]), tuple(n[:MAX_PEER_NAMES]))
            for p, (a, n) in found.items()
        ]


def _parse_dnsaddr(raw: bytes) -> tuple[Multiaddr, PeerId] | None:
    try:
        addr, peer = split_peer(raw.decode())
        str(addr)  # parse every component now
    except Exception:  # unparseable text or multiaddr: skip this address
        return None
    if peer is None or not str(addr):
        return None
    return addr, peer


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Hand the datagram to the service."""
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        """Log socket errors (ICMP and the like); the service goes on."""
        log.debug("mDNS socket error: %s", exc)


class MdnsService(DiscoveryBackend):
    """mDNS on an IPv4 interface: announces this node, finds peers, resolves names.

    ``interface`` is the IPv4 address of the interface to use (default: the
    system's choice).  Found peers' addresses go to the node's peer store and
    to the callbacks of :meth:`on_peer_found`.  :meth:`resolve` accepts a
    name announced with ``switchy-name=`` or a peer id in text form.
    """

    can_register = True

    def __init__(
        self,
        *,
        interface: str | None = None,
        query_interval: float = 60.0,
        group: str = MDNS_GROUP,
        port: int = MDNS_PORT,
        peer_name: str | None = None,
    ) -> None:
        super().__init__()
        self.interface = interface
        self.query_interval = query_interval
        self.group = group
        self.port = port
        self._peer_name = peer_name
        self.core: MdnsCore | None = None
        self.peers: dict[PeerId, MdnsPeer] = {}
        self._callbacks: list[Callable[[MdnsPeer], Any]] = []
        self._changed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._callback_tasks: set[asyncio.Future[Any]] = set()
        self._last_answer = -MIN_ANSWER_INTERVAL
        self._deferred: asyncio.TimerHandle | None = None

    @property
    def label(self) -> str:
        """``mDNS`` and the interface address, if one was given."""
        return "mDNS" + (f" on {self.interface}" if self.interface else "")

    def on_peer_found(self, callback: Callable[[MdnsPeer], Any]) -> None:
        """Call ``callback(peer)`` for every peer announcement heard (new or updated)."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Open the multicast socket, query once, and keep querying every ``query_interval``."""
        if self._transport is not None:
            return
        node = self._node()
        self.core = MdnsCore(node.peer_id, self._peer_name or random_peer_name(node.entropy))
        sock = self._socket()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_datagram), sock=sock
        )
        self._transport = transport
        self._task = asyncio.ensure_future(self._query_loop())
        self._task.set_name("switchy-mdns-query")

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("", self.port))
            local = socket.inet_aton(self.interface or "0.0.0.0")
            sock.setsockopt(
                socket.IPPROTO_IP,
                socket.IP_ADD_MEMBERSHIP,
                socket.inet_aton(self.group) + local,
            )
            if self.interface:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _refresh_core(self) -> MdnsCore:
        assert self.core is not None
        node = self._node()
        self.core.addrs = [split_peer(a)[0] for a in node.announced_addrs if _lan_usable(a)]
        return self.core

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, (self.group, self.port))

    async def _query_loop(self) -> None:
        while True:
            core = self._refresh_core()
            self._send(core.query())
            self._send(core.announcement())
            await asyncio.sleep(self.query_interval)

    def _on_datagram(self, data: bytes, source: Any) -> None:
        if self.core is None:
            return
        core = self._refresh_core()
        try:
            reply, found = core.receive(data)
        except P2PError as exc:
            log.debug("ignoring a malformed mDNS datagram from %s: %s", source, exc)
            return
        if reply is not None:
            self._answer(reply)
        for peer in found:
            self._found(peer)

    def _answer(self, reply: bytes) -> None:
        """Multicast ``reply`` now, or once the answer interval is over (one deferred at most)."""
        loop = asyncio.get_running_loop()
        wait = self._last_answer + MIN_ANSWER_INTERVAL - loop.time()
        if wait <= 0:
            self._last_answer = loop.time()
            self._send(reply)
        elif self._deferred is None:

            def send_later() -> None:
                self._deferred = None
                self._last_answer = loop.time()
                self._send(self._refresh_core().announcement())

            self._deferred = loop.call_later(wait, send_later)

    def _found(self, peer: MdnsPeer) -> None:
        if peer.peer_id not in self.peers and len(self.peers) >= MAX_KNOWN_PEERS:
            return
        self.peers[peer.peer_id] = peer
        node = self._node()
        node.peerstore.add_addrs(peer.peer_id, list(peer.addrs))
        self._changed.set()
        self._changed = asyncio.Event()
        for cb in self._callbacks:
            try:
                result = cb(peer)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._callback_tasks.add(task)
                    task.add_done_callback(self._callback_tasks.discard)
            except Exception:
                log.exception("mDNS peer-found callback failed")

    def _match(self, name: str) -> MdnsPeer | None:
        for peer in self.peers.values():
            if name in peer.names or name == str(peer.peer_id):
                return peer
        return None

    async def resolve(self, name: str) -> DiscoveredPeer:
        """Find a peer announcing ``name`` (or whose id is ``name``), querying the link."""
        if self._transport is None:
            raise DiscoveryFailed("mDNS is not running (the node has not started)")
        node = self._node()
        try:
            async with asyncio.timeout(node.config.discovery_timeout):
                while (peer := self._match(name)) is None:
                    self._send(self._refresh_core().query())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RESOLVE_QUERY_INTERVAL):
                            await self._changed.wait()
        except TimeoutError:
            raise DiscoveryFailed(
                f"no peer on the local network announced {name!r} "
                f"within {node.config.discovery_timeout:g} s"
            ) from None
        return DiscoveredPeer(name, peer.peer_id, peer.addrs, self.label, False)

    async def register(self, name: str) -> None:
        """Announce ``name`` (unauthenticated) in our TXT record from now on."""
        validate_name(name)
        if self.core is None:
            await self.start()
        core = self._refresh_core()
        if name not in core.names:
            core.names.append(name)
        self._send(core.announcement())

    async def stop(self) -> None:
        """Stop querying and close the socket."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        for task in list(self._callback_tasks):
            task.cancel()
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _lan_usable(addr: Multiaddr) -> bool:
    """Whether to announce ``addr`` on the link: not loopback, not unspecified, not /memory."""
    text = str(addr)
    return not (
        text.startswith(("/ip4/127.", "/ip6/::1/", "/ip4/0.0.0.0/", "/ip6/::/", "/memory/"))
    )
