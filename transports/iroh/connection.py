"""An iroh connection as a :class:`~switchy.stack.mux.MuxedConnection`; its bi-streams as streams.

iroh (QUIC, TLS 1.3 with raw Ed25519 keys) brings security and multiplexing, so a
connection goes to the node ready, like QUIC's.  Each bi-stream is one
:class:`IrohStream`, negotiated with multistream-select by the node as usual.

Cancellation safety: the bindings' calls are Rust futures that are *dropped* when the
awaiting Python task is cancelled (a ``write_all`` dropped half-way leaves part of the
data sent).  So no application task awaits a send: ``write`` commits its bytes to the
stream (all of them, or none while it waits for its turn) and the stream's own writer
task hands them to iroh; reading is done by the stream's reader task into a bounded
buffer (at most :data:`RECV_BUFFER` bytes ahead of the application; iroh's flow control
holds the rest at the sender).  Control calls (reset, stop) run in connection tasks too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from switchy.stack.errors import ConnectionClosed, P2PError, ResourceLimitExceeded, StreamReset
from switchy.stack.metrics import ConnectionStats
from switchy.stack.mux import BufferedMuxedStream, MuxedConnection
from switchy.stack.stream import MuxedStream
from switchy.transports.iroh import ffi
from switchy.transports.iroh.address import peer_id_of

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.config import NetworkConfig
    from switchy.stack.identity import PeerId

__all__ = [
    "IROH_MUXER",
    "IROH_SECURITY",
    "MAX_PENDING_INBOUND",
    "READ_CHUNK",
    "RECV_BUFFER",
    "WRITE_CHUNK",
    "IrohConnection",
    "IrohStream",
]

log = logging.getLogger(__name__)

#: Most bytes one ``read`` call asks iroh for.
READ_CHUNK: Final = 256 * 1024
#: Bytes a stream's reader task buffers ahead of the application before it pauses.
RECV_BUFFER: Final = 1024 * 1024
#: Most bytes handed to iroh per call (a larger write is sent in pieces of this size).
WRITE_CHUNK: Final = 1024 * 1024
#: Inbound streams not yet accepted by the node; newer ones are reset beyond this.
MAX_PENDING_INBOUND: Final = 256
#: Names reported as the connection's security and muxer (for info / identify).
IROH_SECURITY: Final = "iroh-tls"
IROH_MUXER: Final = "iroh-quic"
#: Application error code of our stream resets and stops, and of connection close.
RESET_CODE: Final = 0
CLOSE_CODE: Final = 0
ABORT_CODE: Final = 1


class IrohStream(BufferedMuxedStream["IrohConnection"]):
    """One iroh bi-stream (the :class:`~switchy.stack.stream.Stream` contract)."""

    __slots__ = (
        "_fin_wanted",
        "_kick",
        "_pending",
        "_reader",
        "_recv",
        "_room",
        "_send",
        "_write_error",
        "_writer",
    )

    def __init__(self, conn: IrohConnection, bi: Any, stream_id: int) -> None:
        super().__init__(conn, stream_id, conn._config.max_message_size)
        self._send = bi.send()
        self._recv = bi.recv()
        self._pending: bytes | None = None
        self._fin_wanted = False
        self._write_error: ConnectionClosed | None = None
        self._kick = asyncio.Event()
        self._room: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader = conn._spawn(self._read_loop(), f"iroh-read-{stream_id}")
        self._reader.add_done_callback(self._task_done)

    # --- connection-level tasks ---------------------------------------------------------

    async def _read_loop(self) -> None:
        stats = self._conn.stats
        try:
            while True:
                while len(self._buf) >= RECV_BUFFER:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
                data = await self._recv.read(READ_CHUNK)
                if not data:
                    self._eof = True
                    break
                stats.bytes_received += len(data)
                stats.messages_received += 1
                if self._read_closed or self._error is not None:
                    continue
                if not self._reserve(len(data)):
                    self._over_budget(len(data))
                    return
                self._buf.append(data)
                self._wake_reader()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = ffi.map_error(exc, f"iroh stream {self._id}")
            if self._error is None and not self._read_closed:
                self._error = err if isinstance(err, ConnectionClosed) else StreamReset(str(err))
        finally:
            self._wake_reader()

    async def _write_loop(self) -> None:
        send = self._send
        try:
            while True:
                data = self._pending
                if data is not None:
                    for off in range(0, len(data), WRITE_CHUNK):
                        await ffi.write_all(send, data[off : off + WRITE_CHUNK])
                    self._pending = None
                    self._wake_writer()
                elif self._fin_wanted:
                    await send.finish()
                    # Wait until the peer has everything (or stopped): a graceful connection
                    # close waits for this, so no in-flight data is cut off.
                    with contextlib.suppress(Exception):
                        await send.stopped()
                    return
                else:
                    self._kick.clear()
                    await self._kick.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = ffi.map_error(exc, f"iroh stream {self._id}: write")
            self._write_error = err if isinstance(err, ConnectionClosed) else StreamReset(str(err))
            self._write_closed = True
            self._pending = None
            self._wake_writer()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = self._conn._spawn(self._write_loop(), f"iroh-write-{self._id}")
            self._writer.add_done_callback(self._task_done)
        self._kick.set()

    def _task_done(self, _task: asyncio.Task[None]) -> None:
        # a done callback, not the loops' ``finally``: there the task is not done yet
        self._conn._maybe_forget(self)

    def _over_budget(self, n: int) -> None:
        """Received data does not fit the memory the stream's scopes allow: reset it."""
        log.debug("iroh stream %d over its memory budget (%d bytes more); resetting", self._id, n)
        self._error = self._error or StreamReset(
            f"iroh stream {self._id} reset: over its memory budget"
        )
        self._reset_now()

    def _on_connection_closed(self, error: ConnectionClosed) -> None:
        if self._error is None and not self._eof:
            self._error = error
        if not self._write_closed or self._pending is not None:
            self._write_closed = True
            self._write_error = self._write_error or error
        self._pending = None
        self._wake_reader()
        self._wake_writer()

    @property
    def _done(self) -> bool:
        reader_done = self._reader.done()
        writer_done = self._writer is None or self._writer.done()
        return reader_done and writer_done and self._write_closed

    # --- Stream API -----------------------------------------------------------------------

    def _consumed(self, n: int) -> None:
        room = self._room
        if room is not None and len(self._buf) < RECV_BUFFER:
            self._room = None
            if not room.done():
                room.set_result(None)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._write_closed and not data:
            return
        # Our turn comes once an earlier (perhaps cancelled) write is all handed to iroh;
        # nothing of ``data`` is committed before, so a cancellation there sends none of it.
        while self._pending is not None and not self._write_closed:
            await self._wait_writer()
        if self._write_closed:
            raise self._write_error or ConnectionClosed(
                f"iroh stream {self._id} is closed for writing"
            )
        self._pending = bytes(data)
        self._count_sent(len(data))
        self._start_writer()
        # Committed: the writer task sends all of it even if this task is cancelled now.
        while self._pending is not None:
            await self._wait_writer()
        if self._write_error is not None:
            raise self._write_error

    async def close_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        self._fin_wanted = True
        self._start_writer()

    async def reset(self) -> None:
        if self._error is None:
            self._error = StreamReset(f"iroh stream {self._id} was reset locally")
        self._reset_now()

    def _reset_now(self) -> None:
        self._release(self._buf.clear())
        write_open = (
            not self._write_closed
            or self._pending is not None
            or (self._writer is not None and not self._writer.done())
        )
        self._write_closed = True
        self._write_error = self._write_error or self._error
        self._pending = None
        if self._writer is not None:
            self._writer.cancel()
        read_open = not self._reader.done()
        self._reader.cancel()
        self._read_closed = True
        self._conn._control(self, reset_send=write_open, stop_recv=read_open)
        self._wake_reader()
        self._wake_writer()

    async def close(self) -> None:
        if not self._read_closed:
            self._read_closed = True
            self._release(self._buf.clear())
            self._consumed(0)
            self._wake_reader()
            if not self._eof and not self._reader.done():
                self._reader.cancel()
                self._conn._control(self, reset_send=False, stop_recv=True)
        await self.close_write()

    def __repr__(self) -> str:
        who = self._conn.remote_peer.fmt_short()
        return f"<IrohStream {self._id} {self.protocol or ''} to {who}>"


class IrohConnection(MuxedConnection):
    """One iroh connection: authenticated (TLS with the endpoint's Ed25519 key), multiplexed."""

    def __init__(
        self,
        conn: Any,
        *,
        is_initiator: bool,
        local_peer: PeerId,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        config: NetworkConfig,
        on_closed: Any = None,
    ) -> None:
        self._conn = conn
        self._config = config
        self._on_closed = on_closed
        self.remote_peer = peer_id_of(conn.remote_id().to_bytes())
        self.local_peer = local_peer
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.is_initiator = is_initiator
        self.security_protocol = IROH_SECURITY
        self.muxer_protocol = IROH_MUXER
        self.stats = ConnectionStats()
        self._ids = itertools.count(0 if is_initiator else 1, 2)
        self._streams: set[IrohStream] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbound: deque[IrohStream] = deque()
        self._inbound_waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._close_error: ConnectionClosed | None = None
        self._done = asyncio.Event()
        self._acceptor = self._spawn(self._accept_loop(), "iroh-accept-streams")

    # --- tasks ----------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _control(self, stream: IrohStream, *, reset_send: bool, stop_recv: bool) -> None:
        """Reset ``stream``'s send side / stop its receive side, from a connection task."""

        async def run() -> None:
            with contextlib.suppress(Exception):
                if reset_send:
                    await stream._send.reset(RESET_CODE)
                if stop_recv:
                    await stream._recv.stop(RESET_CODE)
            self._maybe_forget(stream)

        if not self._done.is_set():
            self._spawn(run(), f"iroh-control-{stream._id}")

    def _maybe_forget(self, stream: IrohStream) -> None:
        if stream._done:
            self._streams.discard(stream)
            stream._scope_done()

    async def _accept_loop(self) -> None:
        try:
            while True:
                bi = await self._conn.accept_bi()
                st = IrohStream(self, bi, next(self._ids))
                self._streams.add(st)
                refusal = ""
                if len(self._inbound) >= MAX_PENDING_INBOUND:
                    refusal = "too many unaccepted streams"
                else:
                    try:
                        st._scope = self._open_stream_scope("inbound")
                    except ResourceLimitExceeded as exc:
                        refusal = str(exc)
                if refusal:
                    log.debug("%r: refusing stream %d: %s", self, st._id, refusal)
                    await st.reset()
                    continue
                self._inbound.append(st)
                self._wake_acceptor()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = ffi.map_error(exc, f"iroh connection to {self.remote_peer.fmt_short()}")
            reason = self._conn.close_reason() if hasattr(self._conn, "close_reason") else None
            self._terminate(
                ConnectionClosed(f"{err}" + (f" ({reason})" if reason else ""))
                if not isinstance(err, ConnectionClosed) or reason
                else err
            )

    def _wake_acceptor(self) -> None:
        w = self._inbound_waiter
        if w is not None:
            self._inbound_waiter = None
            if not w.done():
                w.set_result(None)

    def _terminate(self, error: ConnectionClosed) -> None:
        if self._done.is_set():
            return
        self._closing = True
        self._close_error = self._close_error or error
        for st in list(self._streams):
            st._on_connection_closed(error)
            st._scope_done()
        self._streams.clear()
        self.stats.closed_at = self.stats.closed_at or asyncio.get_running_loop().time()
        self._done.set()
        self._wake_acceptor()
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()
        if self._on_closed is not None:
            self._on_closed(self)

    # --- MuxedConnection ------------------------------------------------------------------

    async def open_stream(self) -> MuxedStream:
        if self._closing:
            raise self._close_error or ConnectionClosed("iroh connection is closed")
        scope = self._open_stream_scope("outbound")  # raises ResourceLimitExceeded
        try:
            try:
                bi = await self._conn.open_bi()
            except P2PError:
                raise
            except Exception as exc:
                raise ffi.map_error(exc, "iroh open_bi") from exc
            if self._closing:
                raise self._close_error or ConnectionClosed("iroh connection is closed")
        except BaseException:
            if scope is not None:
                scope.done()
            raise
        st = IrohStream(self, bi, next(self._ids))
        st._scope = scope
        self._streams.add(st)
        return st

    async def accept_stream(self) -> MuxedStream:
        while not self._inbound:
            if self._closing:
                raise self._close_error or ConnectionClosed("iroh connection is closed")
            waiter = self._inbound_waiter = asyncio.get_running_loop().create_future()
            await waiter
        return self._inbound.popleft()

    async def close(self) -> None:
        if self._done.is_set():
            return
        self._closing = True
        self._close_error = self._close_error or ConnectionClosed("iroh connection was closed")
        self._wake_acceptor()
        writers = [st._writer for st in self._streams if st._writer is not None]
        pending = [w for w in writers if not w.done()]
        if pending:  # flush what was written (and its FIN) before closing
            with contextlib.suppress(Exception):
                await asyncio.wait(pending, timeout=self._config.close_timeout)
        with contextlib.suppress(Exception):
            self._conn.close(CLOSE_CODE, b"closed")
        self._terminate(self._close_error)

    async def abort(self) -> None:
        if self._done.is_set():
            return
        for st in list(self._streams):
            st._on_connection_closed(StreamReset("iroh connection was aborted"))
        with contextlib.suppress(Exception):
            self._conn.close(ABORT_CODE, b"aborted")
        self._terminate(ConnectionClosed("iroh connection was aborted"))

    @property
    def is_closed(self) -> bool:
        return self._closing or self._done.is_set()

    async def wait_closed(self) -> None:
        await self._done.wait()

    @property
    def rtt(self) -> float | None:
        """iroh's round-trip estimate of the selected path (seconds), if it has one."""
        with contextlib.suppress(Exception):
            paths = self._conn.paths()
            for p in paths:
                if p.is_selected:
                    return float(p.rtt_ms) / 1000
        return None

    @property
    def iroh_connection(self) -> Any:
        """The bindings' ``Connection`` underneath (for what switchy does not wrap)."""
        return self._conn

    def __repr__(self) -> str:
        return f"<IrohConnection to {self.remote_peer.fmt_short()} {len(self._streams)} streams>"
