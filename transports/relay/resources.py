"""The relay's bookkeeping as a pure state machine: reservations, circuits, limits.

Every decision of the hop service (accept a reservation, accept a circuit)
is made here from the :class:`~switchy.transports.relay.config.RelayConfig` and the
current state, with the time passed in, so it is tested without sockets or
clocks.  Peers are keyed by :class:`~switchy.stack.identity.PeerId`; the "IP" of a
peer is any hashable key the adapter derives from the connection's address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

import attrs

from switchy.stack.identity import PeerId
from switchy.transports.relay.config import RelayConfig
from switchy.transports.relay.pb import Status

__all__ = ["RelayResources", "ReservationSlot"]


@attrs.define
class ReservationSlot:
    """One peer's reservation: when it ends (loop clock) and where the peer connects from."""

    expires: float
    ip: Hashable


class RelayResources:
    """Reservations and circuits of one relay, checked against its limits."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.reservations: dict[PeerId, ReservationSlot] = {}
        self._per_ip: Counter[Hashable] = Counter()
        self.circuits = 0
        self._circuits_per_peer: Counter[PeerId] = Counter()
        self._circuits_per_ip: Counter[Hashable] = Counter()
        self._pending: Counter[PeerId] = Counter()

    # --- reservations ---------------------------------------------------------------------

    def reserve(self, peer: PeerId, ip: Hashable, now: float) -> tuple[Status, float]:
        """Grant or renew ``peer``'s reservation: ``(OK, expiry)`` or ``(refusal, 0)``.

        A renewal always succeeds (it holds no new slot); a new reservation
        needs a free slot overall and for its IP.
        """
        self.expire(now)
        expires = now + self.config.reservation_ttl
        slot = self.reservations.get(peer)
        if slot is not None:
            if slot.ip != ip:
                if self._per_ip[ip] >= self.config.max_reservations_per_ip:
                    return Status.RESERVATION_REFUSED, 0.0
                self._release_ip(slot.ip)
                self._per_ip[ip] += 1
                slot.ip = ip
            slot.expires = expires
            return Status.OK, expires
        if len(self.reservations) >= self.config.max_reservations:
            return Status.RESERVATION_REFUSED, 0.0
        if self._per_ip[ip] >= self.config.max_reservations_per_ip:
            return Status.RESERVATION_REFUSED, 0.0
        self.reservations[peer] = ReservationSlot(expires, ip)
        self._per_ip[ip] += 1
        return Status.OK, expires

    def has_reservation(self, peer: PeerId, now: float) -> bool:
        """Whether ``peer`` holds a reservation that has not expired."""
        slot = self.reservations.get(peer)
        return slot is not None and slot.expires > now

    def drop(self, peer: PeerId) -> bool:
        """Forget ``peer``'s reservation (it disconnected); whether it had one."""
        slot = self.reservations.pop(peer, None)
        if slot is None:
            return False
        self._release_ip(slot.ip)
        return True

    def expire(self, now: float) -> list[PeerId]:
        """Drop every reservation that ended at or before ``now``; return their peers."""
        gone = [p for p, s in self.reservations.items() if s.expires <= now]
        for p in gone:
            self.drop(p)
        return gone

    def _release_ip(self, ip: Hashable) -> None:
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def reservations_from(self, ip: Hashable) -> int:
        """Reservations currently held from ``ip``."""
        return self._per_ip.get(ip, 0)

    # --- circuits -------------------------------------------------------------------------

    def open_circuit(
        self, src: PeerId, dst: PeerId, now: float, src_ip: Hashable | None = None
    ) -> Status:
        """Account for a circuit ``src → dst`` (from ``src_ip``, when known).

        OK, PERMISSION_DENIED (to itself), NO_RESERVATION or RESOURCE_LIMIT_EXCEEDED.
        """
        if src == dst:
            return Status.PERMISSION_DENIED
        if not self.has_reservation(dst, now):
            return Status.NO_RESERVATION
        if self.circuits >= self.config.max_circuits:
            return Status.RESOURCE_LIMIT_EXCEEDED
        per_peer = self.config.max_circuits_per_peer
        if self._circuits_per_peer[src] >= per_peer or self._circuits_per_peer[dst] >= per_peer:
            return Status.RESOURCE_LIMIT_EXCEEDED
        if src_ip is not None:
            if self._circuits_per_ip[src_ip] >= self.config.max_circuits_per_ip:
                return Status.RESOURCE_LIMIT_EXCEEDED
            self._circuits_per_ip[src_ip] += 1
        self.circuits += 1
        self._circuits_per_peer[src] += 1
        self._circuits_per_peer[dst] += 1
        return Status.OK

    def close_circuit(self, src: PeerId, dst: PeerId, src_ip: Hashable | None = None) -> None:
        """Release a circuit accounted by :meth:`open_circuit` (with the same ``src_ip``)."""
        if src_ip is not None:
            self._circuits_per_ip[src_ip] -= 1
            if self._circuits_per_ip[src_ip] <= 0:
                del self._circuits_per_ip[src_ip]
        self.circuits -= 1
        for p in (src, dst):
            self._circuits_per_peer[p] -= 1
            if self._circuits_per_peer[p] <= 0:
                del self._circuits_per_peer[p]

    def circuits_of(self, peer: PeerId) -> int:
        """Open circuits from or to ``peer``."""
        return self._circuits_per_peer.get(peer, 0)

    # --- requests in progress -------------------------------------------------------------

    def begin_request(self, peer: PeerId) -> bool:
        """Count a hop request being handled for ``peer``; False when it has too many."""
        if self._pending[peer] >= self.config.max_pending_per_peer:
            return False
        self._pending[peer] += 1
        return True

    def end_request(self, peer: PeerId) -> None:
        """A request counted by :meth:`begin_request` is done."""
        self._pending[peer] -= 1
        if self._pending[peer] <= 0:
            del self._pending[peer]
