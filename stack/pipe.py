"""An in-memory connection pair, for tests and for composing layers without sockets."""

from __future__ import annotations

import asyncio
from collections import deque

from multiaddr import Multiaddr

from switchy.stack.errors import ConnectionClosed, StreamReset
from switchy.stack.stream import Connection

__all__ = ["MemoryConnection", "memory_pipe"]

#: Bytes a side may have in flight to an unread peer before ``write`` blocks.
DEFAULT_PIPE_BUFFER = 256 * 1024


class MemoryConnection(Connection):
    """One end of :func:`memory_pipe`: a :class:`Connection` with real backpressure."""

    def __init__(self, local: Multiaddr, remote: Multiaddr, buffer_size: int) -> None:
        self.local_addr = local
        self.remote_addr = remote
        self._buffer_size = buffer_size
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._reset = False
        self._write_closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.peer: MemoryConnection | None = None

    async def read(self, max_bytes: int = -1) -> bytes:
        while not self._chunks:
            if self._reset:
                raise StreamReset("memory connection was reset")
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if 0 <= max_bytes < len(chunk):
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self.peer is not None and self._buffered < self._buffer_size:
            self.peer._writable.set()
        return chunk

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or self._reset:
            raise ConnectionClosed("write on a closed memory connection")
        peer = self.peer
        assert peer is not None
        if peer._reset or peer._eof:
            raise ConnectionClosed("the peer of this memory connection is gone")
        if not data:
            return
        while peer._buffered >= peer._buffer_size:
            self._writable.clear()
            await self._writable.wait()
            if self._write_closed or self._reset or peer._reset:
                raise ConnectionClosed("memory connection closed while writing")
        peer._chunks.append(bytes(data))
        peer._buffered += len(data)
        peer._readable.set()

    async def close_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if self.peer is not None:
            self.peer._eof = True
            self.peer._readable.set()

    async def reset(self) -> None:
        self._reset = True
        self._write_closed = True
        self._chunks.clear()
        self._readable.set()
        self._writable.set()
        if self.peer is not None and not self.peer._reset:
            self.peer._reset = True
            self.peer._chunks.clear()
            self.peer._readable.set()
            self.peer._writable.set()

    async def close(self) -> None:
        await self.close_write()
        self._chunks.clear()
        self._eof = True
        self._readable.set()


def memory_pipe(
    buffer_size: int = DEFAULT_PIPE_BUFFER,
) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected :class:`MemoryConnection` ends (must be used inside a running loop)."""
    a_addr = Multiaddr("/ip4/127.0.0.1/tcp/1")
    b_addr = Multiaddr("/ip4/127.0.0.1/tcp/2")
    a = MemoryConnection(a_addr, b_addr, buffer_size)
    b = MemoryConnection(b_addr, a_addr, buffer_size)
    a.peer, b.peer = b, a
    return a, b
