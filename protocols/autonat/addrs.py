"""What AutoNAT needs to know about an address: which host it names, and whether it is public.

The *host* of an address is what the amplification rules compare: the IP of an
``/ip4`` or ``/ip6`` address (IPv4-mapped IPv6 counts as its IPv4 address), or
the simulated host of a ``/memory`` address.  Addresses without a host we can
compare (DNS names, relayed ``/p2p-circuit`` addresses) are never dialed back:
the server could not tell whether the requester is on that host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from multiaddr import Multiaddr

from switchy.stack.addresses import normalized_ip
from switchy.stack.config import NetworkConfig

__all__ = ["AddrPredicate", "addr_host", "is_public_addr", "is_relayed", "transport_shape"]

#: A yes/no question about an address (``is_public``, ``can_dial``).
AddrPredicate = Callable[[Multiaddr], bool]


def _parts(addr: Multiaddr) -> list[tuple[str, str | None]]:
    try:
        return [(p.name, None if v is None else str(v)) for p, v in addr.items()]
    except Exception:  # the multiaddr package raises several types for bad input
        return []


def addr_host(addr: Multiaddr) -> str | None:
    """``ip4:<ip>``, ``ip6:<ip>`` or ``memory:<host number>``; ``None`` for other addresses."""
    parts = _parts(addr)
    if not parts or any(name == "p2p-circuit" for name, _ in parts):
        return None
    name, value = parts[0]
    if value is None:
        return None
    if name in ("ip4", "ip6"):
        ip = normalized_ip(value)
        return None if ip is None else f"ip{ip.version}:{ip}"
    if name == "memory":
        # imported here: only simulated addresses need it (the simulator is not small)
        from switchy.transports.sim.network import sim_host_number

        host = sim_host_number(value)
        return None if host is None else f"memory:{host}"
    return None


def is_relayed(addr: Multiaddr) -> bool:
    """Whether ``addr`` goes through a circuit relay."""
    return any(name == "p2p-circuit" for name, _ in _parts(addr))


def is_public_addr(addr: Multiaddr, config: NetworkConfig | None = None) -> bool:
    """The default notion of "public": a globally routable IP, one in the
    ``public_networks`` of ``config``, or any simulated address.

    Loopback, private (RFC 1918, ULA), link-local and other special ranges are not
    public unless ``config`` names them.  Simulated ``/memory`` addresses count as
    public: the simulator is its own internet, where NAT boxes decide reachability.
    """
    host = addr_host(addr)
    if host is None:
        return False
    kind, _, value = host.partition(":")
    if kind == "memory":
        return True
    if config is not None:
        return config.is_public_ip(value)
    return ipaddress.ip_address(value).is_global


def transport_shape(addr: Multiaddr) -> tuple[str, ...]:
    """The protocol names of ``addr`` without values or ``/p2p`` (``('ip4', 'tcp')``).

    A client compares the shape of the address it asked about with the local
    address of the connection the nonce came on (the v2 spec's transport check).
    """
    return tuple(name for name, _ in _parts(addr) if name != "p2p")
