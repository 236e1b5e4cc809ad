"""Turns a raw transport connection into a secured, multiplexed connection.

raw connection → multistream-select a security protocol → handshake →
multistream-select a muxer → :class:`~switchy.stack.mux.MuxedConnection`.
Transports that bring their own security and streams (QUIC) skip this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    InvalidConfiguration,
    NegotiationFailed,
    P2PError,
    P2PTimeout,
)
from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.mux import MuxedConnection, StreamMuxer
from switchy.stack.negotiation import (
    confirm_protocol,
    handle_protocol,
    propose_lazily,
    select_protocol,
)
from switchy.stack.security import SecurityTransport
from switchy.stack.stream import Connection

__all__ = ["Upgrader"]


class Upgrader:
    """Negotiates and applies a security layer and a muxer, in preference order."""

    def __init__(
        self,
        key: KeyPair,
        security: Sequence[SecurityTransport],
        muxers: Sequence[StreamMuxer],
        config: NetworkConfig,
    ) -> None:
        if not security:
            raise InvalidConfiguration("a node needs at least one security transport")
        if not muxers:
            raise InvalidConfiguration("a node needs at least one stream muxer")
        self.key = key
        self.config = config
        self._security = {s.protocol_id: s for s in security}
        self._muxers = {m.protocol_id: m for m in muxers}
        self._security_ids = [s.protocol_id for s in security]
        self._muxer_ids = [m.protocol_id for m in muxers]

    @property
    def security_protocols(self) -> list[str]:
        """Security protocol ids in preference order."""
        return list(self._security_ids)

    @property
    def muxer_protocols(self) -> list[str]:
        """Muxer protocol ids in preference order."""
        return list(self._muxer_ids)

    async def upgrade_outbound(
        self, raw: Connection, remote_peer: PeerId | None
    ) -> MuxedConnection:
        """Upgrade a connection we dialed; verify the remote is ``remote_peer`` if given."""
        return await self._upgrade(raw, remote_peer, initiator=True)

    async def upgrade_inbound(
        self, raw: Connection, remote_peer: PeerId | None = None
    ) -> MuxedConnection:
        """Upgrade a connection we accepted (or, after a simultaneous open, one whose
        responder role was agreed on); verify the remote is ``remote_peer`` if given."""
        return await self._upgrade(raw, remote_peer, initiator=False)

    async def _upgrade(
        self, raw: Connection, remote_peer: PeerId | None, *, initiator: bool
    ) -> MuxedConnection:
        timeout = self.config.handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                if initiator:
                    # With a single choice, propose optimistically: the proposal travels
                    # with the first handshake message and the answer is checked lazily.
                    if len(self._security_ids) == 1:
                        sec_id = self._security_ids[0]
                        channel = await propose_lazily(raw, sec_id)
                    else:
                        sec_id = await select_protocol(raw, self._security_ids)
                        channel = raw
                    secure = await self._security[sec_id].secure_outbound(
                        channel, self.key, remote_peer
                    )
                    if len(self._muxer_ids) == 1:
                        # The proposal travels with the last handshake message, but the
                        # connection is not reported before the listener confirmed it.
                        mux_id = self._muxer_ids[0]
                        secure = await propose_lazily(secure, mux_id)
                        await _confirm_muxer(secure, mux_id)
                    else:
                        mux_id = await select_protocol(secure, self._muxer_ids)
                else:
                    sec_id = await handle_protocol(raw, self._security.__contains__)
                    secure = await self._security[sec_id].secure_inbound(raw, self.key)
                    mux_id = await handle_protocol(secure, self._muxers.__contains__)
        except TimeoutError:
            await raw.reset()
            raise P2PTimeout(
                f"connection upgrade with {raw.remote_addr} timed out after {timeout}s"
            ) from None
        except (P2PError, OSError):
            await raw.reset()
            raise
        if remote_peer is not None and secure.remote_peer != remote_peer:
            await secure.reset()
            raise AuthenticationFailed(
                f"dialed {remote_peer} but the remote authenticated as {secure.remote_peer}"
            )
        muxed = self._muxers[mux_id].create(secure, is_initiator=initiator, config=self.config)
        muxed.security_protocol = sec_id
        return muxed


async def _confirm_muxer(secure: Connection, mux_id: str) -> None:
    """Wait for the listener's answer to the optimistic muxer proposal.

    Raises :class:`NegotiationFailed` naming the muxer when it was refused.
    """
    try:
        await confirm_protocol(secure)
    except NegotiationFailed as exc:
        raise NegotiationFailed(
            f"the remote {secure.remote_peer} refused the stream muxer {mux_id!r}: {exc}"
        ) from None
