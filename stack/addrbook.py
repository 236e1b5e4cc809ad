"""The address manager: what a node announces, what others saw of it, and its reachability.

A node's :attr:`~switchy.stack.node.Node.addresses` is an :class:`AddressBook`.
It knows no protocol: identify feeds it the address a peer observed
(:meth:`AddressBook.observe`), a reachability service (AutoNAT) feeds it
verdicts (:meth:`AddressBook.set_address_reachability`,
:meth:`AddressBook.report_reachability`), and protocols read from it.

Observed addresses (our choices, as go-libp2p does)
    An observation counts only when the connection's local side is one of our
    listen addresses (so it says something about the mapping of a listening
    port), the connection is direct (not ``is_limited``) and neither end is a
    loopback address.  Observers are grouped: an IPv4 address, an IPv6 /56,
    or whatever the transport names (:meth:`~switchy.stack.transport.Transport.observer_group`;
    a simulated host).  Each observer group holds one vote per listen address
    (its latest observation), while its connection is open and for
    :data:`OBSERVATION_TTL` seconds after.  An
    observed address is **confirmed** once :data:`CONFIRM_THRESHOLD` distinct
    groups voted for it, or once AutoNAT found it reachable; AutoNAT finding
    it unreachable withdraws it.  The others are **candidates** (for hole
    punching): :meth:`AddressBook.candidates`.

Announced addresses
    :meth:`AddressBook.announced`: the listen addresses with wildcards
    expanded to the interface addresses (:mod:`switchy.stack.interfaces`),
    then the confirmed external addresses.  When that set changes, the
    callbacks of :meth:`AddressBook.on_changed` run (identify pushes and signs
    a new peer record).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import ip_address_of, normalized_ip, split_peer
from switchy.stack.interfaces import expand_wildcard, is_wildcard
from switchy.stack.metrics import loop_time

__all__ = [
    "CONFIRM_THRESHOLD",
    "MAX_OBSERVATIONS",
    "OBSERVATION_TTL",
    "AddressBook",
    "Observation",
    "Reachability",
    "addr_shape",
    "ip_observer_group",
    "is_loopback_addr",
]

log = logging.getLogger(__name__)

#: Distinct observer groups that must report an address before it is confirmed.
CONFIRM_THRESHOLD: Final = 4
#: An observation counts for this long (seconds) unless renewed.
OBSERVATION_TTL: Final = 30 * 60.0
#: Observations (observer group, listen address) kept at most; the oldest go first.
MAX_OBSERVATIONS: Final = 256
#: IPv6 observers in one prefix of this length are one observer.
IPV6_OBSERVER_PREFIX: Final = 56


class Reachability(enum.Enum):
    """Whether others can dial an address (or the node)."""

    PUBLIC = "public"
    PRIVATE = "private"
    UNKNOWN = "unknown"


@attrs.frozen
class Observation:
    """One observer group's latest report of how it sees one of our listen addresses."""

    observed: Multiaddr
    local: Multiaddr
    group: str
    at: float


def is_loopback_addr(addr: Multiaddr) -> bool:
    """Whether ``addr`` names a loopback IP."""
    ip = ip_address_of(addr)
    return ip is not None and ip.is_loopback


def ip_observer_group(host: str) -> str | None:
    """The observer group of an IP: the IPv4 address itself, or the IPv6 /56 prefix."""
    ip = normalized_ip(host)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        net = ipaddress.IPv6Network(f"{ip}/{IPV6_OBSERVER_PREFIX}", strict=False)
        return f"ip6:{net}"
    return f"ip4:{ip}"


def addr_shape(addr: Multiaddr) -> tuple[str, ...]:
    """The protocol names of ``addr`` without values or ``/p2p`` (``('ip4', 'tcp')``)."""
    try:
        return tuple(p.name for p, _ in addr.items() if p.name != "p2p")
    except Exception:  # the multiaddr package raises several types for bad input
        return ()


def _port_part(addr: Multiaddr) -> tuple[tuple[str, str | None], ...]:
    """Everything of ``addr`` after its first (host) component."""
    try:
        return tuple((p.name, None if v is None else str(v)) for p, v in list(addr.items())[1:])
    except Exception:  # the multiaddr package raises several types for bad input
        return ()


Callback = Callable[..., Any]


class AddressBook:
    """A node's own addresses: observed, confirmed, announced; and its reachability.

    ``listen_addrs`` gives the node's listen addresses, ``spawn`` runs a
    callback's coroutine as a node task, ``clock`` is the time source
    (the running loop's, virtual under the simulator).  Thresholds are
    arguments so tests and special deployments can change them.
    """

    def __init__(
        self,
        listen_addrs: Callable[[], list[Multiaddr]],
        *,
        spawn: Callable[[Any], object] | None = None,
        clock: Callable[[], float] | None = None,
        threshold: int = CONFIRM_THRESHOLD,
        ttl: float = OBSERVATION_TTL,
    ) -> None:
        self._listen_addrs = listen_addrs
        self._spawn = spawn
        self._clock = clock
        self.threshold = threshold
        self.ttl = ttl
        # (group, listen address) -> observation; oldest first
        self._obs: OrderedDict[tuple[str, Multiaddr], Observation] = OrderedDict()
        self._alive: dict[tuple[str, Multiaddr], Callable[[], bool]] = {}
        self._verdicts: dict[Multiaddr, Reachability] = {}
        self._reachability = Reachability.UNKNOWN
        self._change_callbacks: list[Callback] = []
        self._reach_callbacks: list[Callback] = []
        self._last: tuple[Multiaddr, ...] | None = None

    # --- time and callbacks ---------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else loop_time()

    def _call(self, callbacks: list[Callback], *args: Any) -> None:
        for cb in list(callbacks):
            try:
                out = cb(*args)
            except Exception:
                log.exception("address book callback failed")
                continue
            if out is not None and hasattr(out, "__await__"):
                if self._spawn is not None:
                    self._spawn(out)
                else:
                    out.close()

    def on_changed(self, callback: Callback) -> None:
        """Call ``callback()`` (may return a coroutine) when :meth:`announced` changes."""
        self._change_callbacks.append(callback)

    def on_reachability_changed(self, callback: Callback) -> None:
        """Call ``callback(old, new)`` (may return a coroutine) when :attr:`reachability`
        changes."""
        self._reach_callbacks.append(callback)

    # --- observations ---------------------------------------------------------------------

    def _listen_match(self, local: Multiaddr) -> Multiaddr | None:
        """The listen address ``local`` (a connection's local side) is, if any."""
        base = split_peer(local)[0]
        for listen in self._listen_addrs():
            if listen == base:
                return listen
            if (
                is_wildcard(listen)
                and _port_part(listen) == _port_part(base)
                and addr_shape(listen) == addr_shape(base)
            ):
                return listen
        return None

    def observe(
        self,
        observed: Multiaddr,
        *,
        local: Multiaddr,
        remote: Multiaddr,
        group: str | None,
        limited: bool = False,
        alive: Callable[[], bool] | None = None,
    ) -> bool:
        """Count ``observed`` (our address as a peer reported it on a connection whose
        local side is ``local`` and remote side ``remote``; ``group`` names the
        observer, see the module docstring).  While ``alive()`` (the connection is
        open) the observation stays fresh; afterwards it lasts ``ttl`` seconds.
        Returns whether it counted."""
        reason = None
        listen = self._listen_match(local)
        if limited:
            reason = "relayed connection"
        elif group is None:
            reason = "observer has no group"
        elif is_loopback_addr(remote) or is_loopback_addr(local) or is_loopback_addr(observed):
            reason = "loopback"
        elif listen is None:
            reason = f"local side {local} is not a listen address"
        elif addr_shape(observed) != addr_shape(local):
            reason = f"{observed} is not of the transport of {local}"
        if reason is not None:
            log.debug("observed address %s not counted: %s", observed, reason)
            return False
        assert group is not None and listen is not None
        key = (group, listen)
        self._obs.pop(key, None)
        self._obs[key] = Observation(split_peer(observed)[0], listen, group, self._now())
        self._alive.pop(key, None)
        if alive is not None:
            self._alive[key] = alive
        while len(self._obs) > MAX_OBSERVATIONS:
            old, _ = self._obs.popitem(last=False)
            self._alive.pop(old, None)
        self.check()
        return True

    def _live(self) -> list[Observation]:
        now = self._now()
        for key, alive in list(self._alive.items()):
            if alive():  # its connection is open: the observation is current
                self._obs[key] = attrs.evolve(self._obs[key], at=now)
            else:
                del self._alive[key]
        for key in [k for k, o in self._obs.items() if now - o.at >= self.ttl]:
            del self._obs[key]
        return list(self._obs.values())

    def observers(self, addr: Multiaddr) -> int:
        """How many distinct observer groups report ``addr`` now."""
        return len({o.group for o in self._live() if o.observed == addr})

    def observed(self) -> list[Multiaddr]:
        """Every observed address that is not one of our own (listen or interface)
        addresses, the most observers first."""
        own = set(self.interface_addrs())
        counts: dict[Multiaddr, set[str]] = {}
        for o in self._live():
            if o.observed not in own:
                counts.setdefault(o.observed, set()).add(o.group)
        return sorted(counts, key=lambda a: -len(counts[a]))

    def confirmed(self) -> list[Multiaddr]:
        """External addresses we announce: observed by enough groups or found reachable
        by AutoNAT, and not found unreachable (our own addresses are not external)."""
        out = []
        for a in self.observed():
            verdict = self._verdicts.get(a)
            if verdict is Reachability.PRIVATE:
                continue
            if verdict is Reachability.PUBLIC or self.observers(a) >= self.threshold:
                out.append(a)
        own = set(self.interface_addrs())
        for a, v in self._verdicts.items():
            if v is Reachability.PUBLIC and a not in out and a not in own:
                out.append(a)
        return out

    def candidates(self) -> list[Multiaddr]:
        """Observed addresses that are not confirmed (for hole punching), most observers
        first."""
        confirmed = set(self.confirmed())
        return [a for a in self.observed() if a not in confirmed]

    # --- reachability ---------------------------------------------------------------------

    def set_address_reachability(self, addr: Multiaddr, state: Reachability) -> None:
        """Record a reachability service's verdict on one of our addresses."""
        if state is Reachability.UNKNOWN:
            self._verdicts.pop(addr, None)
        else:
            self._verdicts[addr] = state
        self.check()

    def address_reachability(self, addr: Multiaddr) -> Reachability:
        """The last verdict on ``addr`` (``unknown`` without one)."""
        return self._verdicts.get(addr, Reachability.UNKNOWN)

    @property
    def reachability(self) -> Reachability:
        """The node's reachability, as the reachability service reported it."""
        return self._reachability

    def report_reachability(self, state: Reachability) -> None:
        """Set the node's reachability (called by AutoNAT); callbacks run on a change."""
        old = self._reachability
        if state is old:
            return
        self._reachability = state
        log.info("reachability: %s -> %s", old.value, state.value)
        self._call(self._reach_callbacks, old, state)

    # --- announced ------------------------------------------------------------------------

    def interface_addrs(self) -> list[Multiaddr]:
        """The listen addresses, wildcards expanded to interface addresses."""
        out: list[Multiaddr] = []
        for a in self._listen_addrs():
            for e in expand_wildcard(a):
                if e not in out:
                    out.append(e)
        return out

    def announced(self) -> list[Multiaddr]:
        """What we tell others: :meth:`interface_addrs` then :meth:`confirmed`."""
        out = self.interface_addrs()
        for a in self.confirmed():
            if a not in out:
                out.append(a)
        return out

    def check(self) -> bool:
        """Run the change callbacks if :meth:`announced` changed since the last check."""
        now = tuple(self.announced())
        if now == self._last:
            return False
        self._last = now
        self._call(self._change_callbacks)
        return True

    def retain_verdicts(self, keep: Iterable[Multiaddr]) -> None:
        """Drop the verdicts on addresses not in ``keep`` (addresses we no longer have)."""
        wanted = set(keep)
        for a in [a for a in self._verdicts if a not in wanted]:
            del self._verdicts[a]
        self.check()
