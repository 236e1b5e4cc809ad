"""File transfer: ``/switchy/blobs/1.0.0`` (specs/blobs.md), tickets, verified and resumable.

A file is cut into chunks of :data:`CHUNK_SIZE` bytes; its *manifest* is its size,
name and the SHA-256 of every chunk, and its *root* the SHA-256 of the manifest
encoding.  A :class:`Ticket` (one copyable string) carries the provider's peer id,
addresses and the root.  :func:`fetch` gets the manifest, checks it against the
root, then fetches the chunks it lacks, checking each one as it arrives (a wrong
chunk is refetched once, then the transfer fails with :class:`BlobCorrupt`).
The partial file (``NAME.part``) is the resume state: a restarted fetch hashes
the chunks already there and moves only the missing ones.  Memory stays bounded
by one request's chunks (:data:`CHUNKS_PER_REQUEST`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.codec import frame_message, split_frame
from switchy.stack.errors import MessageTooLarge, P2PError, ProtocolError, SerializationError
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream

__all__ = [
    "BLOBS_PROTOCOL",
    "CHUNKS_PER_REQUEST",
    "CHUNK_SIZE",
    "MAX_CHUNKS",
    "BlobCorrupt",
    "BlobService",
    "Manifest",
    "Progress",
    "Ticket",
    "fetch",
    "safe_name",
]

BLOBS_PROTOCOL: Final = "/switchy/blobs/1.0.0"
#: Bytes per chunk (the last chunk may be shorter).
CHUNK_SIZE: Final = 256 * 1024
#: Most chunks in one file (a 64 GiB file at 256 KiB per chunk).
MAX_CHUNKS: Final = 256 * 1024
#: Chunks asked for in one request (bounds the receiver's memory: 4 MiB).
CHUNKS_PER_REQUEST: Final = 16
#: Largest JSON request or response header, in bytes.
MAX_HEADER_SIZE: Final = 4096
#: Largest manifest encoding: the header and 32 bytes per chunk.
MAX_MANIFEST_SIZE: Final = MAX_HEADER_SIZE + 32 * MAX_CHUNKS
#: Longest file name in a manifest, in UTF-8 bytes.
MAX_NAME_SIZE: Final = 255
#: Ticket text prefix (the format version).
TICKET_PREFIX: Final = "blob1"


class BlobCorrupt(ProtocolError):
    """The provider sent bytes that do not match the hashes (manifest or chunk)."""


def safe_name(name: str) -> str:
    """``name`` if it is a plain file name (no directory parts, ``..``, NUL or absolute
    path); raises :class:`ProtocolError` otherwise."""
    if (
        not name
        or len(name.encode()) > MAX_NAME_SIZE
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
    ):
        raise ProtocolError(f"unsafe file name in manifest: {name!r}")
    return name


@attrs.frozen
class Manifest:
    """A file's size, name and chunk hashes."""

    name: str
    size: int
    hashes: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The manifest encoding: a length-prefixed JSON header, then the hashes."""
        header = json.dumps({"name": self.name, "size": self.size, "chunk": CHUNK_SIZE}).encode()
        return frame_message(header, MAX_HEADER_SIZE, "manifest header") + b"".join(self.hashes)

    @property
    def root(self) -> bytes:
        """The SHA-256 of the encoding: what a ticket names."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse a manifest; raises :class:`SerializationError` when malformed."""
        if len(data) > MAX_MANIFEST_SIZE:
            raise SerializationError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_SIZE}")
        frame = split_frame(data, MAX_HEADER_SIZE, "manifest header")
        if frame is None:
            raise SerializationError("truncated manifest header")
        raw, used = frame
        try:
            header = json.loads(raw)
            name, size, chunk = header["name"], header["size"], header["chunk"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise SerializationError("malformed manifest header") from None
        if not isinstance(name, str) or not isinstance(size, int) or chunk != CHUNK_SIZE:
            raise SerializationError("manifest header has wrong types or chunk size")
        count = _chunk_count(size)
        rest = data[used:]
        if count > MAX_CHUNKS or len(rest) != 32 * count:
            raise SerializationError(
                f"manifest of a {size}-byte file lists {len(rest) // 32} hashes"
            )
        return cls(name, size, tuple(rest[i : i + 32] for i in range(0, len(rest), 32)))

    @classmethod
    def of_file(cls, path: Path) -> Manifest:
        """Hash ``path`` chunk by chunk (bounded memory)."""
        hashes = []
        size = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                hashes.append(hashlib.sha256(chunk).digest())
                size += len(chunk)
        if len(hashes) > MAX_CHUNKS:
            raise MessageTooLarge(f"{path} has more than {MAX_CHUNKS} chunks")
        return cls(path.name, size, tuple(hashes))


def _chunk_count(size: int) -> int:
    if size < 0:
        raise SerializationError("negative file size")
    return (size + CHUNK_SIZE - 1) // CHUNK_SIZE


@attrs.frozen
class Ticket:
    """What a receiver needs: the provider's peer id and addresses, and the root hash."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...]
    root: bytes

    def __str__(self) -> str:
        body = json.dumps(
            {"p": str(self.peer), "a": [str(a) for a in self.addrs], "r": self.root.hex()},
            separators=(",", ":"),
        ).encode()
        return TICKET_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Ticket:
        """Parse a ticket string; raises :class:`SerializationError` naming the problem."""
        text = text.strip()
        if not text.startswith(TICKET_PREFIX) or len(text) > 8192:
            raise SerializationError(f"a ticket starts with {TICKET_PREFIX!r} (max 8 KiB)")
        raw = text[len(TICKET_PREFIX) :]
        try:
            obj = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            root = bytes.fromhex(obj["r"])
            peer = PeerId.from_string(obj["p"])
            addrs = tuple(Multiaddr(a) for a in obj["a"])
        except (ValueError, KeyError, TypeError, RecursionError, P2PError) as exc:
            raise SerializationError(f"malformed ticket: {exc}") from None
        if len(root) != 32:
            raise SerializationError("a ticket's root hash has 32 bytes")
        return cls(peer, addrs, root)


class _Frames:
    """Varint-length-prefixed frames read from a stream, never trusting a length."""

    def __init__(self, stream: MuxedStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def read(self, max_size: int, what: str) -> bytes:
        while True:
            frame = split_frame(self.buf, max_size, what)
            if frame is not None:
                data, used = frame
                del self.buf[:used]
                return data
            chunk = await self.stream.read(65536)
            if not chunk:
                raise ProtocolError(f"stream ended inside a {what}")
            self.buf += chunk


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: "[" nested a few thousand deep
        raise SerializationError(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise SerializationError(f"{what} is not a JSON object")
    return obj


class BlobService(ProtocolService):
    """Serves added files by root hash on ``/switchy/blobs/1.0.0``."""

    def __init__(self) -> None:
        self._files: dict[bytes, tuple[Path, Manifest]] = {}
        self._node: Node | None = None

    def attach(self, node: Node) -> None:
        """Register the protocol handler."""
        self._node = node
        node.handle(BLOBS_PROTOCOL, self._serve)

    def add_file(self, path: str | os.PathLike[str]) -> Ticket:
        """Hash ``path`` and serve it; returns its ticket (the node must be listening)."""
        p = Path(path)
        manifest = Manifest.of_file(p)
        self._files[manifest.root] = (p, manifest)
        assert self._node is not None, "BlobService is not attached to a node"
        return Ticket(self._node.peer_id, tuple(self._node.full_addrs), manifest.root)

    def read_chunk(self, path: Path, index: int) -> bytes:
        """The bytes of chunk ``index`` of ``path`` (a hook for tests of bad providers)."""
        with path.open("rb") as f:
            f.seek(index * CHUNK_SIZE)
            return f.read(CHUNK_SIZE)

    async def _serve(self, stream: MuxedStream) -> None:
        frames = _Frames(stream)
        try:
            while True:
                try:
                    req = _json(await frames.read(MAX_HEADER_SIZE, "blob request"), "request")
                except ProtocolError:
                    return  # the receiver closed, or spoke garbage: end the stream
                entry = self._files.get(_root(req.get("root")))
                if entry is None:
                    await stream.write(_header({"status": "not-found"}))
                    continue
                path, manifest = entry
                if req.get("op") == "manifest":
                    body = manifest.encode()
                    await stream.write(_header({"status": "ok", "length": len(body)}) + body)
                elif req.get("op") == "chunks":
                    first, count = req.get("first"), req.get("count")
                    n = len(manifest.hashes)
                    if (
                        not isinstance(first, int)
                        or not isinstance(count, int)
                        or not 0 <= first < n
                        or not 0 < count <= CHUNKS_PER_REQUEST
                    ):
                        await stream.write(_header({"status": "bad-request"}))
                        continue
                    await stream.write(_header({"status": "ok"}))
                    for i in range(first, min(n, first + count)):
                        await stream.write(frame_message(self.read_chunk(path, i), CHUNK_SIZE))
                else:
                    await stream.write(_header({"status": "bad-request"}))
        except P2PError:
            return
        finally:
            await stream.close()


def _root(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        return b""
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b""


def _header(obj: dict[str, Any]) -> bytes:
    return frame_message(json.dumps(obj).encode(), MAX_HEADER_SIZE, "blob header")


@attrs.frozen
class Progress:
    """A progress event: bytes ``done`` of ``total``; ``resumed`` were already on disk."""

    done: int
    total: int
    resumed: int


async def fetch(
    node: Node,
    ticket: Ticket,
    out_dir: str | os.PathLike[str],
    *,
    progress: Callable[[Progress], None] | None = None,
) -> Path:
    """Fetch the ticket's file into ``out_dir``; returns its path.

    Resumes from ``NAME.part`` if present.  Raises :class:`BlobCorrupt` when the
    provider's bytes do not match (after one refetch of a bad chunk),
    :class:`ProtocolError` for an unsafe name or a refused request, and the
    node's connection errors (a ticket of another peer fails authentication).
    """
    out = Path(out_dir)
    await node.connect(_target(ticket))
    stream = await node.open_stream(ticket.peer, BLOBS_PROTOCOL)
    frames = _Frames(stream)
    try:
        root = ticket.root.hex()
        await stream.write(_header({"op": "manifest", "root": root}))
        head = _json(await frames.read(MAX_HEADER_SIZE, "blob header"), "response")
        if head.get("status") != "ok":
            raise ProtocolError(f"the provider refused the manifest: {head.get('status')}")
        body = await _read_exact(frames, head.get("length"), MAX_MANIFEST_SIZE)
        if hashlib.sha256(body).digest() != ticket.root:
            raise BlobCorrupt("the manifest does not match the ticket's root hash")
        manifest = Manifest.decode(body)
        name = safe_name(manifest.name)
        final = out / name
        part = out / (name + ".part")
        if part.is_symlink() or final.is_symlink():
            raise ProtocolError(f"refusing to write through a symlink at {part}")
        missing, resumed = _missing_chunks(part, manifest)
        done = resumed
        if progress:
            progress(Progress(done, manifest.size, resumed))
        with part.open("r+b" if part.exists() else "w+b") as f:
            for start in range(0, len(missing), CHUNKS_PER_REQUEST):
                batch = _runs(missing[start : start + CHUNKS_PER_REQUEST])
                for first, count in batch:
                    chunks = await _get_chunks(stream, frames, root, first, count)
                    for i, data in zip(range(first, first + count), chunks, strict=True):
                        if hashlib.sha256(data).digest() != manifest.hashes[i]:
                            (data,) = await _get_chunks(stream, frames, root, i, 1)
                            if hashlib.sha256(data).digest() != manifest.hashes[i]:
                                raise BlobCorrupt(f"chunk {i} failed its hash twice")
                        f.seek(i * CHUNK_SIZE)
                        f.write(data)
                        done += len(data)
                    if progress:
                        progress(Progress(done, manifest.size, resumed))
            f.truncate(manifest.size)
        part.replace(final)
        return final
    finally:
        await stream.close()


def _target(ticket: Ticket) -> Multiaddr | PeerId:
    for a in ticket.addrs:
        text = str(a)
        return a if "/p2p/" in text else Multiaddr(f"{text}/p2p/{ticket.peer}")
    return ticket.peer


async def _read_exact(frames: _Frames, length: object, limit: int) -> bytes:
    """``length`` raw bytes after a header (checked against ``limit``)."""
    if not isinstance(length, int) or not 0 <= length <= limit:
        raise SerializationError(f"announced length {length!r} is not in 0..{limit}")
    while len(frames.buf) < length:
        chunk = await frames.stream.read(65536)
        if not chunk:
            raise ProtocolError("stream ended inside a manifest")
        frames.buf += chunk
    data = bytes(frames.buf[:length])
    del frames.buf[:length]
    return data


async def _get_chunks(
    stream: MuxedStream, frames: _Frames, root: str, first: int, count: int
) -> list[bytes]:
    await stream.write(_header({"op": "chunks", "root": root, "first": first, "count": count}))
    head = _json(await frames.read(MAX_HEADER_SIZE, "blob header"), "response")
    if head.get("status") != "ok":
        raise ProtocolError(f"the provider refused chunks {first}+{count}: {head.get('status')}")
    return [await frames.read(CHUNK_SIZE, "chunk") for _ in range(count)]


def _missing_chunks(part: Path, manifest: Manifest) -> tuple[list[int], int]:
    if not part.exists():
        return list(range(len(manifest.hashes))), 0
    missing = []
    have = 0
    with part.open("rb") as f:
        for i, h in enumerate(manifest.hashes):
            f.seek(i * CHUNK_SIZE)
            data = f.read(CHUNK_SIZE)
            expected = min(CHUNK_SIZE, manifest.size - i * CHUNK_SIZE)
            if len(data) >= expected and hashlib.sha256(data[:expected]).digest() == h:
                have += expected
            else:
                missing.append(i)
    return missing, have


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs
