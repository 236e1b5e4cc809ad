"""Multiaddr helpers: parsing with clear errors, ``/p2p/<id>`` handling, and the IP
address of a multiaddr or of a textual (socket) address."""

from __future__ import annotations

import functools
import ipaddress

from multiaddr import Multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from switchy.stack.errors import InvalidConfiguration, InvalidPeerId
from switchy.stack.identity import PeerId

__all__ = [
    "IP_PROTOCOLS",
    "P2P",
    "IPAddress",
    "ip_address_of",
    "ip_of",
    "multiaddr_from_bytes",
    "normalized_ip",
    "parse_multiaddr",
    "split_peer",
    "with_peer",
]

#: The multiaddr protocol naming a peer id.
P2P = "p2p"
#: The multiaddr protocols carrying an IP address.
IP_PROTOCOLS = frozenset({"ip4", "ip6"})

#: An IPv4 or IPv6 address.
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_multiaddr(addr: str | bytes | Multiaddr) -> Multiaddr:
    """Parse ``addr`` into a :class:`Multiaddr`; InvalidConfiguration names a malformed one."""
    if isinstance(addr, Multiaddr):
        return addr
    try:
        return Multiaddr(addr)
    except (MultiaddrError, ValueError, TypeError) as exc:
        # the library's text repeats the address twice more; its reason alone is enough
        reason = getattr(exc, "message", None) or str(exc)
        raise InvalidConfiguration(f"invalid multiaddr {addr!r}: {reason}") from None


def multiaddr_from_bytes(raw: bytes, max_size: int) -> Multiaddr | None:
    """The multiaddr in ``raw`` (a peer's binary address), or ``None`` when it is longer than
    ``max_size`` bytes, does not parse, or does not round-trip: for decoders that skip what
    they cannot read.

    ``Multiaddr(bytes)`` parses lazily and leniently (``str`` of ``2a151515`` works, ``len``
    raises), so only bytes that come back unchanged through the text form are taken.
    """
    if len(raw) > max_size:
        return None
    try:
        addr = Multiaddr(str(Multiaddr(raw)))
        if addr.to_bytes() != raw:
            return None
        len(addr)  # every component decodes
    except Exception:  # the multiaddr package raises several types for bad input
        return None
    return addr


def split_peer(addr: str | Multiaddr) -> tuple[Multiaddr, PeerId | None]:
    """Split a trailing ``/p2p/<id>`` off ``addr``.

    ``/ip4/1.2.3.4/tcp/1/p2p/12D3…`` gives ``(/ip4/1.2.3.4/tcp/1, PeerId(12D3…))``;
    an address without a trailing peer id gives ``(addr, None)``.  Only the
    last component is split, so relay addresses keep their inner ``/p2p/``.
    """
    ma = parse_multiaddr(addr)
    return _split_peer_cached(ma.to_bytes())


#: Distinct addresses whose split is remembered (parsing multiaddrs is slow).
_SPLIT_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_SPLIT_CACHE_SIZE)
def _split_peer_cached(packed: bytes) -> tuple[Multiaddr, PeerId | None]:
    ma = Multiaddr(packed)
    parts = ma.split()
    if not parts:
        return ma, None
    last = parts[-1]
    protos = last.protocols()
    if len(protos) == 1 and protos[0].name == P2P:
        try:
            peer = PeerId.from_string(last.value_for_protocol(P2P))
        except InvalidPeerId as exc:
            raise InvalidPeerId(f"bad peer id in {ma}: {exc}") from None
        rest = Multiaddr.join(*parts[:-1]) if len(parts) > 1 else Multiaddr("")
        return rest, peer
    return ma, None


def with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr:
    """``addr`` with ``/p2p/<peer>`` appended (replacing a trailing one)."""
    base, _ = split_peer(addr)
    return base.encapsulate(Multiaddr(f"/{P2P}/{peer}"))


def normalized_ip(text: str) -> IPAddress | None:
    """The IP address written in ``text`` (``"1.2.3.4"``, ``"fe80::1%eth0"``), or ``None``
    when it is not one.

    An IPv6 zone (``%eth0``) is dropped and an IPv4-mapped IPv6 address
    (``::ffff:1.2.3.4``, what a dual-stack socket reports for an IPv4 peer) is the IPv4
    address it carries, so one host has one address whichever socket saw it.
    """
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ip_of(addr: Multiaddr) -> str | None:
    """The IP address ``addr`` starts with (``/ip4/…`` or ``/ip6/…``), as written, else
    ``None`` (DNS names, relay circuits, the simulator's ``/memory``, malformed addresses)."""
    try:
        first = next(iter(addr.items()), None)
    except Exception:  # the multiaddr package raises several types for bad input
        return None
    if first is None or first[0].name not in IP_PROTOCOLS or first[1] is None:
        return None
    return str(first[1])


def ip_address_of(addr: Multiaddr) -> IPAddress | None:
    """The IP address ``addr`` starts with, parsed as written (an IPv4-mapped IPv6 address
    stays IPv6; :func:`normalized_ip` of :func:`ip_of` unwraps it), else ``None``."""
    text = ip_of(addr)
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
