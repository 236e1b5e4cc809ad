"""Security layer interface; the Noise implementation lives in :mod:`switchy.stack.security.noise`."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.stream import Connection

__all__ = ["SecurityTransport"]


class SecurityTransport(abc.ABC):
    """Turns a raw connection into an encrypted, authenticated one.

    The returned connection has ``remote_peer`` set to the authenticated peer,
    and keeps ``local_addr``/``remote_addr``/``is_limited`` of the raw one.
    """

    #: The protocol id negotiated with multistream-select (e.g. ``/noise``).
    protocol_id: str

    @abc.abstractmethod
    async def secure_outbound(
        self, conn: Connection, local_key: KeyPair, remote_peer: PeerId | None
    ) -> Connection:
        """Handshake as the initiator.

        When ``remote_peer`` is given and the remote authenticates as another
        peer, raise :class:`~switchy.stack.errors.AuthenticationFailed` (and close ``conn``).
        """

    @abc.abstractmethod
    async def secure_inbound(self, conn: Connection, local_key: KeyPair) -> Connection:
        """Handshake as the responder."""
