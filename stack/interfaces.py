"""This machine's interface addresses, and wildcard listen addresses expanded to them.

A node listening on ``0.0.0.0`` or ``::`` must announce the addresses others can
dial, never the wildcard.  On Linux the IPv4 address of each interface comes
from ``SIOCGIFADDR`` and the IPv6 ones from ``/proc/net/if_inet6``; elsewhere
from the host name's addresses.  IPv6 link-local addresses are left out (a
multiaddr cannot carry their zone).  The answer is cached for
:data:`INTERFACE_CACHE_TTL` seconds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
import time
from typing import Final

from multiaddr import Multiaddr

from switchy.stack.addresses import IPAddress, ip_address_of

__all__ = [
    "INTERFACE_CACHE_TTL",
    "expand_wildcard",
    "interface_addresses",
    "is_wildcard",
]

#: How long an interface list is reused before the system is asked again (seconds).
INTERFACE_CACHE_TTL: Final = 10.0
#: Linux ioctl: the IPv4 address of an interface.
_SIOCGIFADDR: Final = 0x8915
#: Interfaces considered at most (bounds the work of one lookup).
MAX_INTERFACES: Final = 256

_cache: tuple[float, tuple[IPAddress, ...]] | None = None


def _linux_ipv4() -> list[ipaddress.IPv4Address]:
    import fcntl

    out: list[ipaddress.IPv4Address] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex()[:MAX_INTERFACES]:
            with contextlib.suppress(OSError):
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
                out.append(ipaddress.IPv4Address(res[20:24]))
    return out


def _linux_ipv6() -> list[ipaddress.IPv6Address]:
    out: list[ipaddress.IPv6Address] = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as f:
        for line in f.readlines()[:MAX_INTERFACES]:
            parts = line.split()
            if not parts or len(parts[0]) != 32:
                continue
            with contextlib.suppress(ValueError):
                ip = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
                if not ip.is_link_local:
                    out.append(ip)
    return out


def _fallback() -> list[IPAddress]:
    out: list[IPAddress] = [ipaddress.IPv4Address("127.0.0.1")]
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None)[:MAX_INTERFACES]:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if not ip.is_link_local:
                    out.append(ip)
    return out


def interface_addresses() -> list[IPAddress]:
    """The IP addresses of this machine's interfaces (loopback first, no duplicates)."""
    global _cache
    now = time.monotonic()
    if _cache is not None and now - _cache[0] < INTERFACE_CACHE_TTL:
        return list(_cache[1])
    found: list[IPAddress]
    if sys.platform.startswith("linux"):
        found = [*_linux_ipv4(), *_linux_ipv6()]
        if not found:
            found = _fallback()
    else:
        found = _fallback()
    unique = sorted(set(found), key=lambda ip: (not ip.is_loopback, ip.version, ip.packed))
    _cache = (now, tuple(unique))
    return unique


def is_wildcard(addr: Multiaddr) -> bool:
    """Whether ``addr`` starts with the unspecified address (``0.0.0.0`` or ``::``)."""
    ip = ip_address_of(addr)
    return ip is not None and ip.is_unspecified


def expand_wildcard(addr: Multiaddr) -> list[Multiaddr]:
    """``addr`` with a wildcard IP replaced by each interface address of its family;
    ``[addr]`` for any other address."""
    if not is_wildcard(addr):
        return [addr]
    items = list(addr.items())
    family = items[0][0].name
    version = 4 if family == "ip4" else 6
    rest = str(addr)[len(f"/{family}/{items[0][1]}") :]
    return [
        Multiaddr(f"/{family}/{ip}{rest}") for ip in interface_addresses() if ip.version == version
    ]
