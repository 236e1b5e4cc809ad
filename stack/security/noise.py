"""libp2p Noise (``/noise``): the asyncio adapter over :mod:`switchy.stack.security.noise_core`.

:class:`NoiseSecurity` is the :class:`~switchy.stack.security.SecurityTransport`; its
``secure_outbound``/``secure_inbound`` drive a
:class:`~switchy.stack.security.noise_core.NoiseHandshake` over a raw connection
within ``NetworkConfig.handshake_timeout`` and return a :class:`NoiseConnection`.
Any failure (bad bytes, bad signature, unexpected peer, timeout, cancellation)
resets the raw connection before the error propagates.

The sans-IO names are re-exported here for convenience.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any, Final

from switchy.stack.buffer import ChunkBuffer, shared_waiter
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionClosed, P2PError, P2PTimeout, fresh
from switchy.stack.identity import Entropy, KeyPair, PeerId, PublicKey
from switchy.stack.security import SecurityTransport
from switchy.stack.security.noise_core import (
    MAX_FRAME,
    MAX_PLAINTEXT,
    NOISE_PROTOCOL,
    PROTOCOL_NAME,
    SIGNATURE_PREFIX,
    TAG_SIZE,
    CipherState,
    HandshakeComplete,
    HandshakePayload,
    HandshakeState,
    NoiseCredentials,
    NoiseHandshake,
    NoiseTransport,
    decode_payload,
    encode_payload,
    x25519_public_key,
)
from switchy.stack.stream import Connection

__all__ = [
    "CLOSE_FLUSH_TIMEOUT",
    "MAX_FRAME",
    "MAX_PLAINTEXT",
    "MAX_WRITE_BATCH",
    "NOISE_PROTOCOL",
    "PROTOCOL_NAME",
    "SIGNATURE_PREFIX",
    "TAG_SIZE",
    "CipherState",
    "HandshakeComplete",
    "HandshakePayload",
    "HandshakeState",
    "NoiseConnection",
    "NoiseCredentials",
    "NoiseHandshake",
    "NoiseSecurity",
    "NoiseTransport",
    "decode_payload",
    "encode_payload",
    "x25519_public_key",
]

#: Plaintext encrypted into one buffer per underlying write (64 full frames, ~4 MiB);
#: larger writes go out in several underlying writes to bound the extra memory.
MAX_WRITE_BATCH: Final = 64 * MAX_PLAINTEXT
#: How long ``close()`` lets committed writes drain into a raw connection that is slow
#: to take them before it gives up on them.
CLOSE_FLUSH_TIMEOUT: Final = 5.0


class NoiseConnection(Connection):
    """An encrypted, authenticated :class:`Connection` over a raw one.

    ``read`` decrypts whole frames from whatever the raw connection delivers
    and keeps leftover plaintext; ``write`` frames and encrypts into one buffer
    and writes it with one underlying call (per :data:`MAX_WRITE_BATCH`).
    A write is committed whole before anything is encrypted: the raw connection
    takes the frames at once when it can (:meth:`try_write_nowait`), or the
    connection's own writer task sends them, so frames reach the wire complete and
    in nonce order whatever task is cancelled.  A frame that fails authentication
    resets the raw connection.
    """

    def __init__(
        self, raw: Connection, transport: NoiseTransport, local: PeerId, result: HandshakeComplete
    ) -> None:
        self._raw = raw
        self._cipher = transport
        self._plain = ChunkBuffer()
        self._eof = False
        self._error: P2PError | None = None
        # Sends a committed write the raw connection could not take at once.
        self._writer: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._write_error: P2PError | None = None
        self._write_closed = False
        self.local_addr = raw.local_addr
        self.remote_addr = raw.remote_addr
        self.is_limited = raw.is_limited
        self.local_peer = local
        self.remote_peer = result.remote_peer
        #: The remote's authenticated identity key.
        self.remote_public_key: PublicKey = result.remote_key
        #: Stream muxers the remote advertised in its Noise extensions (may be empty).
        self.remote_stream_muxers: tuple[str, ...] = result.remote_stream_muxers
        #: The Noise handshake hash of this session.
        self.handshake_hash: bytes = result.handshake_hash

    @property
    def raw(self) -> Connection:
        """The underlying (unencrypted) connection."""
        return self._raw

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        for plaintext in self._cipher.decrypt(data):
            self._plain.append(plaintext)

    async def read(self, max_bytes: int = -1) -> bytes:
        """Read at most ``max_bytes`` of plaintext (any amount if negative); ``b""`` at the end."""
        plain = self._plain
        while not plain:
            if self._error is not None:
                raise fresh(self._error)
            if self._eof or max_bytes == 0:
                return b""
            data = await self._raw.read(-1)
            if not data:
                self._eof = True
                pending = self._cipher.buffered
                if pending:
                    self._error = ConnectionClosed(
                        f"connection from {self.remote_peer} ended inside a Noise frame "
                        f"(truncated frame, {pending} bytes of it received)"
                    )
                    raise fresh(self._error)
                return b""
            try:
                self._feed(data)
            except P2PError as exc:
                self._error = fresh(exc)
                self._plain.clear()
                await _abort(self._raw)
                raise
        return plain.take(max_bytes)

    def _unread(self, data: bytes) -> bool:
        self._plain.push_front(data)
        return True

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if self._writer is not None or self._write_error is not None or self._write_closed:
            return False
        if data:
            self._commit(data)
        return True

    def _commit(self, data: bytes | bytearray | memoryview) -> None:
        """Take all of ``data`` (no write in progress): encrypt and send, or hand to the writer."""
        if len(data) <= MAX_WRITE_BATCH:
            ciphertext = self._cipher.encrypt(data)
            if not self._raw.try_write_nowait(ciphertext):
                self._start_writer(self._write_out(ciphertext, None))
            return
        # Large: encrypted batch by batch as the raw connection takes them (bounded memory).
        plain = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._start_writer(self._write_out(None, plain))

    def _start_writer(self, coro: Coroutine[Any, Any, None]) -> None:
        writer = self._writer = asyncio.get_running_loop().create_task(coro)
        # A callback, not a finally clause: a task cancelled before its first step
        # never runs its body.
        writer.add_done_callback(self._writer_done)

    async def _write_out(
        self, ciphertext: bytes | bytearray | None, plain: memoryview | None
    ) -> None:
        try:
            if ciphertext is not None:
                await self._raw.write(ciphertext)
            if plain is not None:
                encrypt = self._cipher.encrypt
                for off in range(0, len(plain), MAX_WRITE_BATCH):
                    await self._raw.write(encrypt(plain[off : off + MAX_WRITE_BATCH]))
        except P2PError as exc:
            self._write_error = fresh(exc)
        self._writer_done(None)  # idle now, not in the done callback a turn later

    def _writer_done(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and self._writer is not task:
            return  # already handled when the writer ended
        self._writer = None
        if (
            self._write_error is None
            and task is not None
            and (task.cancelled() or task.exception() is not None)
        ):
            self._write_error = ConnectionClosed(
                f"Noise connection to {self.remote_peer} stopped while writing"
            )
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)

    async def _wait_idle(self) -> None:
        """Wait until the writer sent what it holds (shielded: waiters share the future)."""
        while self._writer is not None:
            idle = self._idle = shared_waiter(self._idle)
            await asyncio.shield(idle)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and write all of ``data`` (see the class docstring for cancellation)."""
        if not data:
            return
        await self._wait_idle()  # our turn; nothing of ``data`` is committed before it
        if self._write_error is not None:
            raise fresh(self._write_error)
        if self._write_closed:
            raise ConnectionClosed(f"Noise connection to {self.remote_peer} is closed for writing")
        self._commit(data)
        await self._wait_idle()  # committed: a cancellation here still sends all of it
        if self._write_error is not None:
            raise fresh(self._write_error)

    async def close_write(self) -> None:
        """Half-close after every committed write went out (frames are self-delimiting)."""
        self._write_closed = True
        await self._wait_idle()
        await self._raw.close_write()

    async def reset(self) -> None:
        """Abort both directions (resets the raw connection)."""
        self._plain.clear()
        self._write_closed = True
        if self._writer is not None:
            self._writer.cancel()
        await self._raw.reset()

    async def close(self) -> None:
        """Send what was committed, then close the raw connection and stop reading."""
        self._plain.clear()
        self._eof = True
        self._write_closed = True
        try:
            if self._writer is not None:
                # Bounded: a peer that stopped reading must not hold the close forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                        await self._wait_idle()
                if self._writer is not None:
                    self._writer.cancel()
        finally:
            await self._raw.close()

    def __repr__(self) -> str:
        return f"<NoiseConnection {self.remote_peer} via {self._raw!r}>"


class NoiseSecurity(SecurityTransport):
    """The libp2p Noise security transport (``/noise``).

    ``config.handshake_timeout`` bounds each handshake.  ``entropy`` (default
    :func:`os.urandom`) supplies static and ephemeral keys, so a simulator can
    make runs reproducible.  One Noise static key (and its signed payload) is
    made per identity on first use.  ``stream_muxers``, when given, is
    advertised in our payload's extensions as an early-muxer hint; the remote's
    hint is exposed as :attr:`NoiseConnection.remote_stream_muxers`.
    """

    protocol_id = NOISE_PROTOCOL

    def __init__(
        self,
        config: NetworkConfig | None = None,
        entropy: Entropy | None = None,
        *,
        stream_muxers: Iterable[str] = (),
    ) -> None:
        #: Timeouts (``handshake_timeout``) come from here.
        self.config = config or NetworkConfig()
        #: Source of key material; ``None`` means the OS CSPRNG.
        self.entropy = entropy
        #: Stream muxers advertised in our handshake payload.
        self.stream_muxers = tuple(stream_muxers)
        self._credentials: dict[bytes, NoiseCredentials] = {}

    def credentials(self, identity: KeyPair) -> NoiseCredentials:
        """The (cached) Noise credentials of ``identity``."""
        key = identity.public_key.data
        creds = self._credentials.get(key)
        if creds is None:
            creds = NoiseCredentials.create(
                identity, entropy=self.entropy, stream_muxers=self.stream_muxers
            )
            self._credentials[key] = creds
        return creds

    async def secure_outbound(
        self, conn: Connection, local_key: KeyPair, remote_peer: PeerId | None
    ) -> NoiseConnection:
        """Handshake as the initiator; with ``remote_peer``, refuse any other identity."""
        hs = NoiseHandshake(
            True, self.credentials(local_key), expected_peer=remote_peer, entropy=self.entropy
        )
        return await self._run(conn, hs)

    async def secure_inbound(self, conn: Connection, local_key: KeyPair) -> NoiseConnection:
        """Handshake as the responder."""
        hs = NoiseHandshake(False, self.credentials(local_key), entropy=self.entropy)
        return await self._run(conn, hs)

    async def _run(self, conn: Connection, hs: NoiseHandshake) -> NoiseConnection:
        timeout = self.config.handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                out = hs.data_to_send()
                if out:
                    await conn.write(out)
                while not hs.complete:
                    data = await conn.read(-1)
                    if not data:
                        raise ConnectionClosed(
                            f"connection from {conn.remote_addr} closed during the Noise "
                            f"handshake ({hs.buffered} bytes of a partial message received)"
                        )
                    hs.receive_data(data)
                    out = hs.data_to_send()
                    if out:
                        await conn.write(out)
        except TimeoutError:
            await _abort(conn)
            raise P2PTimeout(
                f"Noise handshake with {conn.remote_addr} timed out after {timeout}s"
            ) from None
        except BaseException:
            # Bad bytes, authentication failure, cancellation: the raw connection is unusable.
            await _abort(conn)
            raise
        result = hs.result
        assert result is not None
        transport, leftover = hs.transport()
        secure = NoiseConnection(conn, transport, hs.credentials.peer_id, result)
        if leftover:
            try:
                secure._feed(leftover)
            except P2PError:
                await _abort(conn)
                raise
        return secure


async def _abort(conn: Connection) -> None:
    """Reset ``conn`` without letting a failing reset hide the error being handled."""
    with contextlib.suppress(P2PError, OSError):
        await conn.reset()
