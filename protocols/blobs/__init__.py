"""File transfer: ``/switchy/blobs/1.0.0`` (specs/blobs.md), tickets, verified and resumable.

A file is cut into chunks of :data:`CHUNK_SIZE` bytes; its *manifest* is its size,
name and the BLAKE3-256 hash of every chunk, and its *root* the BLAKE3 hash of the
manifest encoding.  A directory's manifest (:class:`DirManifest`) lists its files' relative
paths, sizes and roots.  A :class:`Ticket` (one copyable string) carries the
provider's peer id, addresses and the root.  :func:`fetch` gets the manifest, checks
it against the root, then fetches the chunks it lacks, checking each one as it
arrives (a wrong chunk is refetched once, then the transfer fails with
:class:`BlobCorrupt`).  The partial file (``NAME.part``) is the resume state: a
restarted fetch hashes the chunks already there and moves only the missing ones.

Speed: the receiver keeps up to :data:`PIPELINE` requests outstanding (the provider
answers them in order, so it never waits for the next request), and file reads,
hashing and writes run in worker threads, :data:`IO_BATCH` chunks per job (one
thread hand-off per batch, not per chunk) and at most :data:`IO_JOBS` jobs per
transfer at a time, while the event loop moves the next bytes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Final

import attrs
from blake3 import blake3
from multiaddr import Multiaddr

from switchy.stack.codec import decode_json, decode_uvarint, frame_message, split_frame
from switchy.stack.errors import MessageTooLarge, P2PError, ProtocolError, SerializationError
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream

__all__ = [
    "BLOBS_PROTOCOL",
    "CHUNKS_PER_REQUEST",
    "CHUNK_SIZE",
    "HASH",
    "IO_BATCH",
    "IO_JOBS",
    "MAX_CHUNKS",
    "MAX_DIR_ENTRIES",
    "PIPELINE",
    "BlobCorrupt",
    "BlobService",
    "DirEntry",
    "DirManifest",
    "Manifest",
    "Progress",
    "Ticket",
    "decode_manifest",
    "fetch",
    "safe_name",
    "safe_relpath",
]

BLOBS_PROTOCOL: Final = "/switchy/blobs/1.0.0"
#: Bytes per chunk (the last chunk may be shorter).
CHUNK_SIZE: Final = 256 * 1024
#: Most chunks in one file (a 64 GiB file at 256 KiB per chunk).
MAX_CHUNKS: Final = 256 * 1024
#: Chunks asked for in one request.
CHUNKS_PER_REQUEST: Final = 16
#: Requests a receiver keeps outstanding on one stream (the provider answers in order).
PIPELINE: Final = 4
#: Chunks read (provider) or hashed and written (receiver) by one worker-thread job.
IO_BATCH: Final = 4
#: Worker-thread jobs of one transfer at a time (bounds memory: IO_BATCH * IO_JOBS chunks,
#: 2 MiB, on each side).
IO_JOBS: Final = 2
#: Largest JSON request or response header, in bytes.
MAX_HEADER_SIZE: Final = 4096
#: Largest manifest encoding: the header and 32 bytes per chunk.
MAX_MANIFEST_SIZE: Final = MAX_HEADER_SIZE + 32 * MAX_CHUNKS
#: Longest file name in a manifest, in UTF-8 bytes.
MAX_NAME_SIZE: Final = 255
#: Most files in one directory manifest.
MAX_DIR_ENTRIES: Final = 10_000
#: Longest relative path in a directory manifest, in UTF-8 bytes.
MAX_PATH_SIZE: Final = 1024
#: Deepest relative path in a directory manifest (components).
MAX_PATH_DEPTH: Final = 32
#: The hash of chunks, manifests and roots (named in every file manifest): BLAKE3-256.
HASH: Final = "blake3"
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


def safe_relpath(path: str) -> tuple[str, ...]:
    """The components of a relative ``/``-separated path, each a :func:`safe_name`;
    raises :class:`ProtocolError` for an absolute path, ``..``, ``.``, empty parts or
    a path too long or deep."""
    parts = path.split("/")
    if not path or len(path.encode()) > MAX_PATH_SIZE or len(parts) > MAX_PATH_DEPTH:
        raise ProtocolError(f"unsafe path in directory manifest: {path!r}")
    try:
        return tuple(safe_name(p) for p in parts)
    except ProtocolError:
        raise ProtocolError(f"unsafe path in directory manifest: {path!r}") from None


@attrs.frozen
class Manifest:
    """A file's size, name and chunk hashes."""

    name: str
    size: int
    hashes: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The manifest encoding: a length-prefixed JSON header, then the hashes (made
        once: a provider sends it for every request)."""
        return self._encoding

    @functools.cached_property
    def _encoding(self) -> bytes:
        header = {"name": self.name, "size": self.size, "chunk": CHUNK_SIZE, "hash": HASH}
        return frame_message(json.dumps(header).encode(), MAX_HEADER_SIZE, "manifest header") + (
            b"".join(self.hashes)
        )

    @functools.cached_property
    def root(self) -> bytes:
        """The BLAKE3 hash of the encoding: what a ticket names (computed once)."""
        return blake3(self._encoding).digest()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse a file manifest; raises :class:`SerializationError` when malformed."""
        found = decode_manifest(data)
        if not isinstance(found, Manifest):
            raise SerializationError("expected a file manifest, got a directory manifest")
        return found

    @classmethod
    def of_file(cls, path: Path) -> Manifest:
        """Hash ``path`` chunk by chunk (bounded memory)."""
        hashes = []
        size = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                hashes.append(blake3(chunk).digest())
                size += len(chunk)
        if len(hashes) > MAX_CHUNKS:
            raise MessageTooLarge(f"{path} has more than {MAX_CHUNKS} chunks")
        return cls(path.name, size, tuple(hashes))


@attrs.frozen
class DirEntry:
    """One file of a directory: its relative ``/``-separated path, size and root."""

    path: str
    size: int
    root: bytes


@attrs.frozen
class DirManifest:
    """A directory: its name and its files (relative paths, sizes, roots), sorted by path."""

    name: str
    entries: tuple[DirEntry, ...]

    def encode(self) -> bytes:
        """A length-prefixed JSON header ``{"kind": "dir", ...}``, then a length-prefixed
        JSON list of ``[path, size, root hex]`` (made once)."""
        return self._encoding

    @functools.cached_property
    def _encoding(self) -> bytes:
        header = json.dumps({"kind": "dir", "name": self.name, "count": len(self.entries)})
        body = json.dumps(
            [[e.path, e.size, e.root.hex()] for e in self.entries], separators=(",", ":")
        ).encode()
        return frame_message(header.encode(), MAX_HEADER_SIZE, "manifest header") + frame_message(
            body, MAX_MANIFEST_SIZE, "directory listing"
        )

    @functools.cached_property
    def root(self) -> bytes:
        """The BLAKE3 hash of the encoding: what a ticket names (computed once)."""
        return blake3(self._encoding).digest()

    @property
    def size(self) -> int:
        """Total bytes of the files."""
        return sum(e.size for e in self.entries)


def decode_manifest(data: bytes) -> Manifest | DirManifest:
    """Parse a file or directory manifest; raises :class:`SerializationError` when malformed."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise SerializationError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_SIZE}")
    frame = split_frame(data, MAX_HEADER_SIZE, "manifest header")
    if frame is None:
        raise SerializationError("truncated manifest header")
    raw, used = frame
    header = _json(raw, "manifest header")
    if header.get("kind") == "dir":
        return _decode_dir(header, data[used:])
    name, size, chunk = header.get("name"), header.get("size"), header.get("chunk")
    if not isinstance(name, str) or not isinstance(size, int) or chunk != CHUNK_SIZE:
        raise SerializationError("manifest header has wrong types or chunk size")
    if header.get("hash") != HASH:
        raise SerializationError(f"manifest hash {header.get('hash')!r} is not {HASH!r}")
    count = _chunk_count(size)
    rest = data[used:]
    if count > MAX_CHUNKS or len(rest) != 32 * count:
        raise SerializationError(f"manifest of a {size}-byte file lists {len(rest) // 32} hashes")
    return Manifest(name, size, tuple(rest[i : i + 32] for i in range(0, len(rest), 32)))


def _decode_dir(header: dict[str, Any], rest: bytes) -> DirManifest:
    name, count = header.get("name"), header.get("count")
    if not isinstance(name, str) or not isinstance(count, int) or not 0 <= count <= MAX_DIR_ENTRIES:
        raise SerializationError(f"directory manifest header is malformed (count {count!r})")
    frame = split_frame(rest, MAX_MANIFEST_SIZE, "directory listing")
    if frame is None or frame[1] != len(rest):
        raise SerializationError("directory listing is truncated or followed by extra bytes")
    listing = decode_json(frame[0], "directory listing")
    if not isinstance(listing, list) or len(listing) != count:
        raise SerializationError(f"directory listing does not hold {count} entries")
    entries = []
    for item in listing:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or item[1] < 0
            or len(_root(item[2])) != 32
        ):
            raise SerializationError(f"malformed directory entry {item!r:.80}")
        entries.append(DirEntry(item[0], item[1], _root(item[2])))
    return DirManifest(name, tuple(entries))


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
            obj = decode_json(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), "ticket")
            root = bytes.fromhex(obj["r"])
            peer = PeerId.from_string(obj["p"])
            addrs = tuple(Multiaddr(a) for a in obj["a"])
        except (ValueError, KeyError, TypeError, P2PError) as exc:
            raise SerializationError(f"malformed ticket: {exc}") from None
        if len(root) != 32:
            raise SerializationError("a ticket's root hash has 32 bytes")
        return cls(peer, addrs, root)


def _json(data: bytes, what: str) -> dict[str, Any]:
    obj = decode_json(data, what)
    if not isinstance(obj, dict):
        raise SerializationError(f"{what} is not a JSON object")
    return obj


class BlobService(ProtocolService):
    """Serves added files and directories by root hash on ``/switchy/blobs/1.0.0``."""

    service_name = "blobs"
    service_protocols = (BLOBS_PROTOCOL,)

    def __init__(self) -> None:
        self._files: dict[bytes, tuple[Path, Manifest]] = {}
        self._dirs: dict[bytes, bytes] = {}
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
        return self._ticket(manifest.root)

    def add_dir(self, path: str | os.PathLike[str]) -> Ticket:
        """Hash every regular file under ``path`` and serve the directory; returns its
        ticket.  Symbolic links and special files are left out (never followed)."""
        top = Path(path)
        entries = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for fname in sorted(filenames):
                p = Path(dirpath, fname)
                if p.is_symlink() or not p.is_file():
                    continue
                manifest = Manifest.of_file(p)
                self._files[manifest.root] = (p, manifest)
                rel = PurePosixPath(*p.relative_to(top).parts)
                entries.append(DirEntry(str(rel), manifest.size, manifest.root))
                if len(entries) > MAX_DIR_ENTRIES:
                    raise MessageTooLarge(f"{top} holds more than {MAX_DIR_ENTRIES} files")
        entries.sort(key=lambda e: e.path)
        d = DirManifest(top.resolve().name, tuple(entries))
        self._dirs[d.root] = d.encode()
        return self._ticket(d.root)

    def _ticket(self, root: bytes) -> Ticket:
        assert self._node is not None, "BlobService is not attached to a node"
        return Ticket(self._node.peer_id, tuple(self._node.full_addrs), root)

    def read_chunk(self, path: Path, index: int) -> bytes:
        """The bytes of chunk ``index`` of ``path`` (runs in a worker thread; a hook for
        tests of bad providers)."""
        with path.open("rb") as f:
            f.seek(index * CHUNK_SIZE)
            return f.read(CHUNK_SIZE)

    def _framed_chunks(self, path: Path, indices: range) -> list[bytes]:
        """Worker thread: the chunks with their length prefixes (the copy stays off the loop)."""
        return [frame_message(self.read_chunk(path, i), CHUNK_SIZE, "chunk") for i in indices]

    async def _serve(self, stream: MuxedStream) -> None:
        try:
            while True:
                try:
                    raw = await stream.recv_message(max_size=MAX_HEADER_SIZE)
                    req = _json(raw, "request")
                except P2PError:
                    return  # the receiver closed, or spoke garbage: end the stream
                root = _root(req.get("root"))
                entry = self._files.get(root)
                op = req.get("op")
                if op == "manifest" and root in self._dirs:
                    body = self._dirs[root]
                    await stream.write(_header({"status": "ok", "length": len(body)}) + body)
                elif entry is None:
                    await stream.write(_header({"status": "not-found"}))
                elif op == "manifest":
                    body = entry[1].encode()
                    await stream.write(_header({"status": "ok", "length": len(body)}) + body)
                elif op == "chunks":
                    await self._serve_chunks(stream, entry, req)
                else:
                    await stream.write(_header({"status": "bad-request"}))
        except P2PError:
            return
        finally:
            await stream.close()

    async def _serve_chunks(
        self, stream: MuxedStream, entry: tuple[Path, Manifest], req: dict[str, Any]
    ) -> None:
        path, manifest = entry
        first, count = req.get("first"), req.get("count")
        n = len(manifest.hashes)
        if (
            not isinstance(first, int)
            or not isinstance(count, int)
            or not 0 <= first < n
            or not 0 < count <= CHUNKS_PER_REQUEST
        ):
            await stream.write(_header({"status": "bad-request"}))
            return
        await stream.write(_header({"status": "ok"}))
        last = min(n, first + count)
        batches = [range(i, min(last, i + IO_BATCH)) for i in range(first, last, IO_BATCH)]
        # Read the next batch in a worker thread while this one is written.
        nxt = asyncio.ensure_future(asyncio.to_thread(self._framed_chunks, path, batches[0]))
        try:
            for k in range(len(batches)):
                frames = await nxt
                if k + 1 < len(batches):
                    job = asyncio.to_thread(self._framed_chunks, path, batches[k + 1])
                    nxt = asyncio.ensure_future(job)
                for data in frames:
                    await stream.write(data)
        finally:
            if not nxt.done():
                nxt.cancel()


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
    """Fetch the ticket's file or directory into ``out_dir``; returns its path.

    Resumes from ``NAME.part`` files if present.  Raises :class:`BlobCorrupt` when the
    provider's bytes do not match (after one refetch of a bad chunk),
    :class:`ProtocolError` for an unsafe name or path or a refused request, and the
    node's connection errors (a ticket of another peer fails authentication).
    """
    out = Path(out_dir)
    await node.connect(_target(ticket))
    stream = await node.open_stream(ticket.peer, BLOBS_PROTOCOL)
    try:
        top = await _get_manifest(stream, ticket.root)
        if isinstance(top, Manifest):
            tracker = _Tracker(top.size, progress)
            return await _fetch_file(stream, ticket.root, top, out, safe_name(top.name), tracker)
        base = out / safe_name(top.name)
        plan = [(e, safe_relpath(e.path)) for e in top.entries]
        tracker = _Tracker(top.size, progress)
        for e, parts in plan:
            parent = _make_dirs(out, (top.name, *parts[:-1]))
            manifest = await _get_manifest(stream, e.root)
            if not isinstance(manifest, Manifest) or manifest.size != e.size:
                raise BlobCorrupt(f"the manifest of {e.path!r} does not match its entry")
            await _fetch_file(stream, e.root, manifest, parent, parts[-1], tracker)
        if not top.entries:
            _make_dirs(out, (top.name,))
        tracker.report()
        return base
    finally:
        await stream.close()


class _Tracker:
    """Progress over one fetch (a file or all files of a directory)."""

    def __init__(self, total: int, sink: Callable[[Progress], None] | None) -> None:
        self.total, self.sink = total, sink
        self.done = self.resumed = 0

    def report(self) -> None:
        if self.sink is not None:
            self.sink(Progress(self.done, self.total, self.resumed))


def _make_dirs(out: Path, parts: tuple[str, ...]) -> Path:
    """``out/parts...``, created as needed; refuses any existing part that is not a real
    directory (a symlink could lead outside ``out``)."""
    p = out
    for part in parts:
        p = p / part
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise ProtocolError(f"refusing to write through {p}: not a plain directory")
        if not p.exists():
            p.mkdir()
    return p


async def _get_manifest(stream: MuxedStream, root: bytes) -> Manifest | DirManifest:
    await stream.write(_header({"op": "manifest", "root": root.hex()}))
    head = _json(await stream.recv_message(max_size=MAX_HEADER_SIZE), "response")
    if head.get("status") != "ok":
        raise ProtocolError(f"the provider refused the manifest: {head.get('status')}")
    length = head.get("length")
    if not isinstance(length, int) or not 0 <= length <= MAX_MANIFEST_SIZE:
        raise SerializationError(f"announced length {length!r} is not in 0..{MAX_MANIFEST_SIZE}")
    body = await stream.read_exactly(length)
    if blake3(body).digest() != root:
        raise BlobCorrupt("the manifest does not match the ticket's root hash")
    return decode_manifest(body)


async def _fetch_file(
    stream: MuxedStream, root: bytes, manifest: Manifest, out: Path, name: str, tracker: _Tracker
) -> Path:
    final = out / name
    part = out / (name + ".part")
    if part.is_symlink() or final.is_symlink():
        raise ProtocolError(f"refusing to write through a symlink at {part}")
    if final.is_file() and not part.exists():
        # already here from an earlier fetch (e.g. of a directory that was interrupted)?
        lacking, have = await asyncio.to_thread(_missing_chunks, final, manifest)
        if not lacking and final.stat().st_size == manifest.size:
            tracker.done += have
            tracker.resumed += have
            tracker.report()
            return final
    missing, resumed = await asyncio.to_thread(_missing_chunks, part, manifest)
    tracker.done += resumed
    tracker.resumed += resumed
    tracker.report()
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await _Receiver(stream, root.hex(), manifest, fd, tracker).run(missing)
        os.ftruncate(fd, manifest.size)
    finally:
        os.close(fd)
    part.replace(final)
    return final


class _Receiver:
    """Pipelined chunk requests on one stream; hashing and writing in worker threads."""

    def __init__(
        self, stream: MuxedStream, root: str, manifest: Manifest, fd: int, tracker: _Tracker
    ) -> None:
        self.stream, self.root, self.manifest, self.fd = stream, root, manifest, fd
        self.tracker = tracker
        self.retried: set[int] = set()
        self.todo: deque[tuple[int, int]] = deque()
        self.sent: deque[tuple[int, int]] = deque()
        #: Hash-and-write jobs in chunk order: their (index, size) and the future of the
        #: indices that failed their hash.
        self.writes: deque[tuple[list[tuple[int, int]], asyncio.Future[list[int]]]] = deque()

    async def run(self, missing: list[int]) -> None:
        for start in range(0, len(missing), CHUNKS_PER_REQUEST):
            self.todo.extend(_runs(missing[start : start + CHUNKS_PER_REQUEST]))
        try:
            while self.todo or self.sent or self.writes:
                while self.todo and len(self.sent) < PIPELINE:
                    first, count = self.todo.popleft()
                    req = {"op": "chunks", "root": self.root, "first": first, "count": count}
                    await self.stream.write(_header(req))
                    self.sent.append((first, count))
                if self.sent:
                    await self._receive(*self.sent.popleft())
                else:
                    await self._settle(0)
        finally:
            for _, fut in self.writes:
                fut.cancel()
            # Worker threads cannot be stopped: let those running finish with the file.
            await asyncio.gather(*(f for _, f in self.writes), return_exceptions=True)

    async def _receive(self, first: int, count: int) -> None:
        head = _json(await self.stream.recv_message(max_size=MAX_HEADER_SIZE), "response")
        if head.get("status") != "ok":
            raise ProtocolError(
                f"the provider refused chunks {first}+{count}: {head.get('status')}"
            )
        batch: list[tuple[int, list[bytes], bytes]] = []
        sizes: list[tuple[int, int]] = []
        for i in range(first, first + count):
            pieces, size = await self._read_chunk()
            batch.append((i, pieces, self.manifest.hashes[i]))
            sizes.append((i, size))
            if len(batch) == IO_BATCH or i == first + count - 1:
                await self._settle(IO_JOBS - 1)
                job = asyncio.to_thread(_check_and_write, self.fd, batch)
                self.writes.append((sizes, asyncio.ensure_future(job)))
                batch, sizes = [], []

    async def _read_chunk(self) -> tuple[list[bytes], int]:
        """One length-prefixed chunk as the pieces the stream delivered (no copy here:
        the worker thread hashes and writes them one by one)."""
        prefix = bytearray()
        while True:
            b = await self.stream.read(1)
            if not b:
                raise ProtocolError("stream ended before a chunk")
            prefix += b
            if b[0] < 0x80 or len(prefix) >= 9:
                break
        decoded = decode_uvarint(prefix)
        if decoded is None or decoded[0] == 0:
            raise SerializationError("malformed or empty chunk length")
        size = decoded[0]
        if size > CHUNK_SIZE:
            raise MessageTooLarge(f"chunk of {size} bytes announced, the limit is {CHUNK_SIZE}")
        pieces = []
        left = size
        while left:
            piece = await self.stream.read(left)
            if not piece:
                raise ProtocolError("stream ended inside a chunk")
            pieces.append(piece)
            left -= len(piece)
        return pieces, size

    async def _settle(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are in flight, in order."""
        while len(self.writes) > keep:
            sizes, fut = self.writes[0]
            bad = await fut
            self.writes.popleft()
            for i, size in sizes:
                if i not in bad:
                    self.tracker.done += size
                elif i in self.retried:
                    raise BlobCorrupt(f"chunk {i} failed its hash twice")
                else:
                    self.retried.add(i)
                    self.todo.appendleft((i, 1))
            self.tracker.report()


def _check_and_write(fd: int, batch: list[tuple[int, list[bytes], bytes]]) -> list[int]:
    """Worker thread: write each chunk (index, pieces, expected hash) of ``batch`` at its
    offset if its hash matches; returns the indices that did not match."""
    bad = []
    for index, pieces, expected in batch:
        h = blake3()
        for piece in pieces:
            h.update(piece)
        if h.digest() != expected:
            bad.append(index)
            continue
        offset = index * CHUNK_SIZE
        for piece in pieces:
            view = memoryview(piece)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
    return bad


def _target(ticket: Ticket) -> Multiaddr | PeerId:
    for a in ticket.addrs:
        text = str(a)
        return a if "/p2p/" in text else Multiaddr(f"{text}/p2p/{ticket.peer}")
    return ticket.peer


def _missing_chunks(part: Path, manifest: Manifest) -> tuple[list[int], int]:
    """Worker thread: the chunks ``part`` lacks (or holds wrong), and the bytes it has."""
    if not part.exists():
        return list(range(len(manifest.hashes))), 0
    missing = []
    have = 0
    with part.open("rb") as f:
        for i, h in enumerate(manifest.hashes):
            f.seek(i * CHUNK_SIZE)
            data = f.read(CHUNK_SIZE)
            expected = min(CHUNK_SIZE, manifest.size - i * CHUNK_SIZE)
            if len(data) >= expected and blake3(data[:expected]).digest() == h:
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
