"""The sans-IO core of DCUtR: the two roles' state machines, address choice, backoff.

Roles (libp2p specs ``relay/DCUtR.md``): ``A`` dialed the relayed connection,
``B`` accepted it.  ``B`` opens the ``/libp2p/dcutr`` stream and drives the
exchange (:class:`PunchInitiator`); ``A`` answers (:class:`PunchResponder`)::

    B: CONNECT(B's addrs) ──────────▶ A        B starts the RTT timer
    B ◀────────── CONNECT(A's addrs) :A
    B: SYNC ───────────────────────▶ A        B waits RTT/2, A acts at once
    TCP:  both dial (simultaneous open); A is the client of everything above
    QUIC: A dials; B sprays random UDP packets at A's addresses

Each attempt is a fresh exchange (a fresh RTT sample); ``B`` makes at most
:data:`MAX_ATTEMPTS`.  The machines take messages and times and return what to
send and what to do; they never sleep, dial or touch a socket.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import AddrPredicate, addr_host, is_relayed
from switchy.protocols.dcutr.pb import HolePunch, HolePunchType
from switchy.stack.addresses import split_peer
from switchy.stack.errors import P2PError, ProtocolError

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_PUNCH_ADDRS",
    "PunchBackoff",
    "PunchInitiator",
    "PunchPlan",
    "PunchResponder",
    "Role",
    "select_addrs",
]

#: Attempts ``B`` makes before the upgrade counts as failed (spec: "retry twice").
MAX_ATTEMPTS: Final = 3
#: Most addresses one attempt dials or sprays (the rest of a peer's list is ignored).
MAX_PUNCH_ADDRS: Final = 8


class Role(enum.Enum):
    """Our role in one hole punch."""

    #: Dialed the relayed connection; answers CONNECT; dials at SYNC; the client.
    A = "A"
    #: Accepted the relayed connection; opens the stream, times the RTT; the server.
    B = "B"


@attrs.frozen
class PunchPlan:
    """What to do once the exchange is over: after ``delay`` seconds, punch ``addrs``.

    ``rtt`` is the measured round trip through the relay (``None`` for ``A``,
    which does not measure).
    """

    role: Role
    addrs: tuple[Multiaddr, ...]
    delay: float
    rtt: float | None


def select_addrs(
    addrs: Iterable[Multiaddr],
    *,
    is_public: AddrPredicate,
    can_dial: AddrPredicate,
    own: Iterable[Multiaddr] = (),
    limit: int = MAX_PUNCH_ADDRS,
) -> tuple[Multiaddr, ...]:
    """The addresses of a peer worth punching: at most ``limit``, in the peer's order.

    Kept: addresses with a comparable host (IP or simulated host) that
    ``is_public`` accepts and a transport of ours ``can_dial``.  Dropped:
    relayed addresses, loopback and other non-public ones, our own addresses,
    duplicates (a trailing ``/p2p`` does not make an address new).
    """
    mine = {a.to_bytes() for a in own}
    seen: set[bytes] = set()
    out: list[Multiaddr] = []
    for addr in addrs:
        if len(out) >= limit:
            break
        try:
            base = split_peer(addr)[0]
        except P2PError:
            continue
        raw = base.to_bytes()
        if raw in seen or raw in mine:
            continue
        seen.add(raw)
        if is_relayed(base) or addr_host(base) is None:
            continue
        if not is_public(base) or not can_dial(base):
            continue
        out.append(base)
    return tuple(out)


class PunchInitiator:
    """``B``'s side of one attempt: CONNECT, time the answer, SYNC, then the plan."""

    def __init__(self, our_addrs: Sequence[Multiaddr]) -> None:
        self._addrs = tuple(our_addrs)
        self._sent_at: float | None = None
        self._done = False

    def start(self, now: float) -> HolePunch:
        """The CONNECT to send now (starts the RTT timer)."""
        if self._sent_at is not None:
            raise ProtocolError("this DCUtR attempt already started")
        self._sent_at = now
        return HolePunch(HolePunchType.CONNECT, self._addrs)

    def receive(self, msg: HolePunch, now: float) -> tuple[HolePunch, float, tuple[Multiaddr, ...]]:
        """A's answer arrived at ``now``: ``(SYNC to send, rtt, A's addresses)``.

        Raises :class:`ProtocolError` for anything but a CONNECT after ours.
        """
        if self._sent_at is None or self._done:
            raise ProtocolError(f"unexpected DCUtR {msg.type.name}: no CONNECT of ours pending")
        if msg.type is not HolePunchType.CONNECT:
            raise ProtocolError(f"expected a DCUtR CONNECT in answer, got {msg.type.name}")
        self._done = True
        rtt = max(0.0, now - self._sent_at)
        return HolePunch(HolePunchType.SYNC), rtt, msg.obs_addrs

    @staticmethod
    def plan(addrs: tuple[Multiaddr, ...], rtt: float) -> PunchPlan:
        """B punches ``addrs`` half a round trip after its SYNC went out."""
        return PunchPlan(Role.B, addrs, rtt / 2, rtt)


class PunchResponder:
    """``A``'s side of one attempt: answer CONNECT with ours, act on SYNC."""

    def __init__(self, our_addrs: Sequence[Multiaddr]) -> None:
        self._addrs = tuple(our_addrs)
        self._their: tuple[Multiaddr, ...] | None = None
        self._done = False

    @property
    def expects(self) -> HolePunchType:
        """The message type expected next."""
        return HolePunchType.CONNECT if self._their is None else HolePunchType.SYNC

    def receive(self, msg: HolePunch) -> HolePunch | PunchPlan:
        """B's CONNECT gives our CONNECT to send; B's SYNC gives the plan (dial now).

        Raises :class:`ProtocolError` for a message out of order.
        """
        if self._done:
            raise ProtocolError(f"unexpected DCUtR {msg.type.name} after SYNC")
        if msg.type is not self.expects:
            raise ProtocolError(f"expected a DCUtR {self.expects.name}, got {msg.type.name}")
        if self._their is None:
            self._their = msg.obs_addrs
            return HolePunch(HolePunchType.CONNECT, self._addrs)
        self._done = True
        return PunchPlan(Role.A, self._their, 0.0, None)


class PunchBackoff:
    """Per-peer rate limit: after a failed upgrade, no new one before the backoff ends.

    The backoff starts at ``base`` seconds and doubles per consecutive failure up
    to ``cap``; a success clears it.  At most ``max_peers`` peers are remembered
    (the oldest are forgotten first), so the table has a bound.
    """

    def __init__(self, *, base: float = 60.0, cap: float = 3600.0, max_peers: int = 1024) -> None:
        self.base = base
        self.cap = cap
        self.max_peers = max_peers
        self._state: OrderedDict[object, tuple[int, float]] = OrderedDict()

    def allowed(self, peer: object, now: float) -> bool:
        """Whether a punch with ``peer`` may start at ``now``."""
        state = self._state.get(peer)
        return state is None or now >= state[1]

    def retry_at(self, peer: object) -> float | None:
        """When the next punch with ``peer`` may start (None: any time)."""
        state = self._state.get(peer)
        return None if state is None else state[1]

    def failed(self, peer: object, now: float) -> float:
        """Record a failed upgrade; returns the backoff applied."""
        failures = self._state.pop(peer, (0, 0.0))[0] + 1
        delay = float(min(self.cap, self.base * 2.0 ** (failures - 1)))
        self._state[peer] = (failures, now + delay)
        while len(self._state) > self.max_peers:
            self._state.popitem(last=False)
        return delay

    def succeeded(self, peer: object) -> None:
        """Record a successful upgrade: the peer's backoff is cleared."""
        self._state.pop(peer, None)
