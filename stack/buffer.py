"""The receive buffer shared by every Stream implementation."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ChunkBuffer", "shared_waiter"]


class ChunkBuffer:
    """Received chunks kept without copying; reads take from the front.

    ``take(n)`` returns at most ``n`` bytes (everything of the first chunk
    when ``n < 0``), slicing only when a read is smaller than a chunk.
    """

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._offset = 0
        #: Bytes buffered and not yet taken.
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes) -> None:
        """Buffer ``data`` (empty chunks are ignored)."""
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def push_front(self, data: bytes) -> None:
        """Put ``data`` back in front of everything buffered (an undone read)."""
        if not data:
            return
        if self._offset:
            self._chunks[0] = self._chunks[0][self._offset :]
            self._offset = 0
        self._chunks.appendleft(data)
        self.size += len(data)

    def take(self, max_bytes: int = -1) -> bytes:
        """Remove and return up to ``max_bytes`` from the front; ``b""`` when empty."""
        if not self._chunks:
            return b""
        head = self._chunks[0]
        off = self._offset
        avail = len(head) - off
        if max_bytes < 0 or max_bytes >= avail:
            self._chunks.popleft()
            self._offset = 0
            data = head if off == 0 else head[off:]
        else:
            data = head[off : off + max_bytes]
            self._offset = off + max_bytes
        self.size -= len(data)
        return data

    def clear(self) -> int:
        """Drop everything buffered; return how many bytes were dropped."""
        dropped = self.size
        self._chunks.clear()
        self._offset = 0
        self.size = 0
        return dropped


def shared_waiter(current: asyncio.Future[None] | None) -> asyncio.Future[None]:
    """``current`` while it is pending, else a new future: one wake-up for many waiters.

    Each waiter awaits it through :func:`asyncio.shield`, so that one waiter's
    cancellation does not cancel the future for the others.
    """
    if current is None or current.done():
        return asyncio.get_running_loop().create_future()
    return current
