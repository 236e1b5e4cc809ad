"""The connection gater: which addresses and peers a node talks to at all.

A node asks its gater twice about every connection: with the remote *address*
before anything is spent on it (an inbound connection before the security
handshake, a dial before the transport starts), and with the authenticated *peer
id* after the handshake (and before a dial when the peer is known).  A refused
inbound connection is closed; a refused dial raises
:class:`~switchy.stack.errors.ConnectionFailed` naming the rule.

Rules, in order: a denied peer or address is refused; when allow lists are set,
only what they name is accepted; then the callback (if any) decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Literal

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import ip_of, normalized_ip
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import PeerId

__all__ = ["ConnectionGater", "GateCheck"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class GateCheck:
    """What the gater's callback is asked about: ``peer`` is ``None`` before the handshake."""

    direction: Literal["inbound", "outbound"]
    addr: Multiaddr | None
    peer: PeerId | None


def _net(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidConfiguration(f"gater: {text!r} is not an IP network") from None


class ConnectionGater:
    """Allow and deny lists of peer ids and IP networks, and an optional callback
    ``callback(GateCheck) -> bool`` (``False`` refuses)."""

    def __init__(
        self,
        *,
        allow_peers: Iterable[PeerId] = (),
        deny_peers: Iterable[PeerId] = (),
        allow_networks: Iterable[str] = (),
        deny_networks: Iterable[str] = (),
        callback: Callable[[GateCheck], bool] | None = None,
    ) -> None:
        self.allow_peers: set[PeerId] = set(allow_peers)
        self.deny_peers: set[PeerId] = set(deny_peers)
        self.allow_networks: list[Network] = [_net(n) for n in allow_networks]
        self.deny_networks: list[Network] = [_net(n) for n in deny_networks]
        self.callback = callback
        #: Refusals so far, by stage (``"addr"``, ``"peer"``).
        self.refused: dict[str, int] = {"addr": 0, "peer": 0}

    def deny_peer(self, peer: PeerId) -> None:
        """Refuse ``peer`` from now on (open connections are the caller's to close)."""
        self.deny_peers.add(peer)

    def deny_network(self, network: str) -> None:
        """Refuse addresses in ``network`` (CIDR) from now on."""
        self.deny_networks.append(_net(network))

    def _addr_refusal(self, addr: Multiaddr) -> str | None:
        ip = ip_of(addr)
        a = None if ip is None else normalized_ip(ip)
        if ip is None or a is None:
            return None  # not an IP address (a relay circuit, the simulator's names…)
        for n in self.deny_networks:
            if a in n:
                return f"address {ip} is in the denied network {n}"
        if self.allow_networks and not any(a in n for n in self.allow_networks):
            return f"address {ip} is in no allowed network"
        return None

    def check_addr(self, direction: Literal["inbound", "outbound"], addr: Multiaddr) -> str | None:
        """Before the handshake: ``None`` to go on, else why ``addr`` is refused."""
        reason = self._addr_refusal(addr)
        cb = self.callback
        if reason is None and cb is not None and not cb(GateCheck(direction, addr, None)):
            reason = f"the gater's callback refused {addr}"
        if reason is not None:
            self.refused["addr"] += 1
        return reason

    def check_peer(
        self, direction: Literal["inbound", "outbound"], peer: PeerId, addr: Multiaddr | None
    ) -> str | None:
        """With the peer id known: ``None`` to go on, else why ``peer`` is refused."""
        reason: str | None = None
        if peer in self.deny_peers:
            reason = f"peer {peer} is denied"
        elif self.allow_peers and peer not in self.allow_peers:
            reason = f"peer {peer} is not in the allowed peers"
        elif self.callback is not None and not self.callback(GateCheck(direction, addr, peer)):
            reason = f"the gater's callback refused peer {peer}"
        if reason is not None:
            self.refused["peer"] += 1
        return reason
