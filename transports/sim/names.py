"""A simulated name service: ``register(name, peer)`` and ``lookup(name)``.

Lookups take the config's discovery delay in virtual time and answer with
what is registered when the delay is over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import attrs
from multiaddr import Multiaddr

from switchy.stack.errors import DiscoveryFailed, InvalidConfiguration
from switchy.stack.identity import PeerId
from switchy.transports.sim.network import Network

__all__ = ["NameRecord", "NameService"]


@attrs.frozen
class NameRecord:
    """What a name resolves to: a peer id and its addresses."""

    name: str
    peer: PeerId
    addrs: tuple[Multiaddr, ...] = ()


class NameService:
    """Maps names to peers on a simulated network."""

    def __init__(self, network: Network) -> None:
        self._net = network
        self._records: dict[str, NameRecord] = {}

    def register(self, name: str, peer: PeerId, addrs: Iterable[Multiaddr] = ()) -> NameRecord:
        """Make ``name`` resolve to ``peer`` (replacing an earlier registration)."""
        if not isinstance(name, str) or not name:
            raise InvalidConfiguration(f"a name must be a non-empty string, got {name!r}")
        if not isinstance(peer, PeerId):
            raise InvalidConfiguration(f"register needs a PeerId, got {type(peer).__name__}")
        record = NameRecord(name, peer, tuple(addrs))
        self._records[name] = record
        self._net._record("register", name, str(peer), len(record.addrs))
        return record

    def unregister(self, name: str) -> None:
        """Forget ``name`` (no error if it is not registered)."""
        self._records.pop(name, None)

    async def lookup(self, name: str) -> NameRecord:
        """Resolve ``name`` after the discovery delay; :class:`DiscoveryFailed` if unknown."""
        delay = self._net.config.discovery_delay
        if delay:
            await asyncio.sleep(delay)
        record = self._records.get(name)
        self._net._record(
            "lookup", name, str(record.peer) if record else "", 0, {"found": record is not None}
        )
        if record is None:
            raise DiscoveryFailed(f"name {name!r} is not registered in the simulated name service")
        return record

    def __contains__(self, name: object) -> bool:
        return name in self._records
