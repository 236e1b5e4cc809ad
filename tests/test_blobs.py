"""File transfer (/switchy/blobs/1.0.0): integrity, resume, bad providers, unsafe names, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import attrs
import pytest

import switchy.protocols.blobs as blobs_module
from switchy.presets import default_node
from switchy.protocols.blobs import (
    CHUNK_SIZE,
    CHUNKS_PER_REQUEST,
    PIPELINE,
    BlobCorrupt,
    BlobService,
    DirEntry,
    DirManifest,
    Manifest,
    Progress,
    Ticket,
    decode_manifest,
    fetch,
    safe_relpath,
)
from switchy.stack.errors import P2PError, ProtocolError, SerializationError
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node
from switchy.transports.tcp import TcpTransport

TCP = "/ip4/127.0.0.1/tcp/0"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "file_transfer.py"


class CountingBlobs(BlobService):
    """Counts the chunks served; corrupts chunk ``bad`` the first ``times`` times."""

    def __init__(self, bad: int = -1, times: int = 0) -> None:
        super().__init__()
        self.served: list[int] = []
        self.bad, self.times = bad, times

    def read_chunk(self, path: Path, index: int) -> bytes:
        self.served.append(index)
        data = super().read_chunk(path, index)
        if index == self.bad and self.times > 0:
            self.times -= 1
            return bytes([data[0] ^ 1]) + data[1:]
        return data


def node(*services: BlobService) -> Node:
    return default_node(transports=[TcpTransport()], services=list(services), listen=[TCP])


def make_file(tmp: Path, size: int = 5 * CHUNK_SIZE + 1234) -> Path:
    path = tmp / "src" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(size))
    return path


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_transfer_is_verified_and_reports_progress(tmp_path: Path) -> None:
    src = make_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        blobs = CountingBlobs()
        async with node(blobs) as a, node() as b:
            ticket = blobs.add_file(src)
            assert Ticket.parse(str(ticket)) == ticket
            events: list[Progress] = []
            path = await fetch(b, ticket, out, progress=events.append)
            assert path == out / "data.bin"
            assert path.read_bytes() == src.read_bytes()
            assert not (out / "data.bin.part").exists()
            assert events[0] == Progress(0, src.stat().st_size, 0)
            assert events[-1].done == src.stat().st_size
            assert [e.done for e in events] == sorted(e.done for e in events)
            assert sorted(blobs.served) == list(range(6))
            del a

    run(main())


def test_resume_moves_only_the_missing_chunks(tmp_path: Path) -> None:
    src = make_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    data = src.read_bytes()
    # An interrupted transfer left chunks 0-2 and a torn chunk 3.
    (out / "data.bin.part").write_bytes(data[: 3 * CHUNK_SIZE] + b"torn")

    async def main() -> None:
        blobs = CountingBlobs()
        async with node(blobs), node() as b:
            events: list[Progress] = []
            path = await fetch(b, blobs.add_file(src), out, progress=events.append)
            assert path.read_bytes() == data
            assert sorted(blobs.served) == [3, 4, 5]
            assert events[0].resumed == 3 * CHUNK_SIZE

    run(main())


@pytest.mark.parametrize(("times", "fails"), [(1, False), (2, True)])
def test_a_wrong_chunk_is_refetched_then_fails(tmp_path: Path, times: int, fails: bool) -> None:
    src = make_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        blobs = CountingBlobs(bad=2, times=times)
        async with node(blobs), node() as b:
            ticket = blobs.add_file(src)
            if fails:
                with pytest.raises(BlobCorrupt, match="chunk 2 failed its hash twice"):
                    await fetch(b, ticket, out)
                assert not (out / "data.bin").exists()
            else:
                path = await fetch(b, ticket, out)
                assert path.read_bytes() == src.read_bytes()
                assert blobs.served.count(2) == 2

    run(main())


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/b", "..", ""])
def test_unsafe_names_are_never_written(tmp_path: Path, name: str) -> None:
    src = make_file(tmp_path, 1000)
    out = tmp_path / "out" / "inner"
    out.mkdir(parents=True)

    async def main() -> None:
        blobs = BlobService()
        async with node(blobs) as a, node() as b:
            real = Manifest.of_file(src)
            evil = attrs.evolve(real, name=name)
            blobs._files[evil.root] = (src, evil)
            ticket = Ticket(a.peer_id, tuple(a.full_addrs), evil.root)
            with pytest.raises(ProtocolError, match="unsafe file name"):
                await fetch(b, ticket, out)
        assert list(out.iterdir()) == [] and sorted(p.name for p in out.parent.iterdir()) == [
            "inner"
        ]

    run(main())


def test_a_ticket_for_another_peer_or_content(tmp_path: Path) -> None:
    src = make_file(tmp_path, 1000)

    async def main() -> None:
        blobs = BlobService()
        async with node(blobs), node() as b:
            ticket = blobs.add_file(src)
            other = KeyPair.from_seed(b"\x07" * 32).peer_id
            addrs = tuple(a.decapsulate("/p2p") for a in ticket.addrs)
            with pytest.raises(P2PError):
                await fetch(b, Ticket(other, addrs, ticket.root), tmp_path)
            with pytest.raises(ProtocolError, match="not-found"):
                await fetch(b, attrs.evolve(ticket, root=b"\x00" * 32), tmp_path)

    run(main())
    for bad in ("", "blob1", "blob1!!!", "nope" + str(Ticket.parse)):
        with pytest.raises(SerializationError):
            Ticket.parse(bad)


def test_cli_send_and_receive(tmp_path: Path) -> None:
    src = make_file(tmp_path, 3 * CHUNK_SIZE + 5)
    out = tmp_path / "out"
    out.mkdir()
    sender = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "send", str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sender.stdout is not None
        ticket = sender.stdout.readline().strip()
        r = subprocess.run(
            [sys.executable, "-m", "switchy", "receive", ticket, "--out", str(out), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()) == out / "data.bin"
        assert (out / "data.bin").read_bytes() == src.read_bytes()
        lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
        events = [e for e in lines if "done" in e]
        assert events[-1] == {"done": src.stat().st_size, "total": src.stat().st_size, "resumed": 0}
        assert {"route": "direct"} in lines
    finally:
        sender.send_signal(signal.SIGINT)
        sender.wait(timeout=20)


def test_several_receivers_at_once(tmp_path: Path) -> None:
    src = make_file(tmp_path, 3 * CHUNK_SIZE + 77)
    outs = [tmp_path / f"out{i}" for i in range(3)]
    for o in outs:
        o.mkdir()

    async def main() -> None:
        blobs = CountingBlobs()
        async with node(blobs), node() as b, node() as c, node() as d:
            ticket = blobs.add_file(src)
            paths = await asyncio.gather(
                *(fetch(n, ticket, o) for n, o in zip((b, c, d), outs, strict=True))
            )
            for p in paths:
                assert p.read_bytes() == src.read_bytes()
            assert sorted(blobs.served) == sorted(list(range(4)) * 3)

    run(main())


def test_requests_are_pipelined_and_a_large_file_arrives_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = CHUNKS_PER_REQUEST * (PIPELINE + 2) + 3
    src = make_file(tmp_path, n * CHUNK_SIZE - 99)
    out = tmp_path / "out"
    out.mkdir()
    requests: list[int] = []
    sent: list[int] = []
    all_sent = asyncio.Event()
    real_header = blobs_module._header

    def counting_header(obj: dict[str, Any]) -> bytes:
        if obj.get("op") == "chunks":
            sent.append(obj["first"])
            if len(sent) == PIPELINE:
                all_sent.set()
        return real_header(obj)

    monkeypatch.setattr(blobs_module, "_header", counting_header)

    async def main() -> None:
        blobs = CountingBlobs()
        real = blobs._serve_chunks

        async def spy(stream: Any, entry: Any, req: dict[str, Any]) -> None:
            requests.append(req["first"])
            if len(requests) == 1:
                # the receiver sends PIPELINE requests before the first answer
                await asyncio.wait_for(all_sent.wait(), 20)
            await real(stream, entry, req)

        blobs._serve_chunks = spy  # type: ignore[method-assign]
        async with node(blobs), node() as b:
            path = await fetch(b, blobs.add_file(src), out)
            assert path.read_bytes() == src.read_bytes()
            assert sorted(blobs.served) == list(range(n))

    run(main())
    assert requests == sent == list(range(0, n, CHUNKS_PER_REQUEST))


def test_a_directory_arrives_with_its_tree_and_skips_symlinks(tmp_path: Path) -> None:
    top = tmp_path / "photos"
    (top / "2026" / "dec").mkdir(parents=True)
    (top / "empty").mkdir()
    files = {
        "a.txt": b"alpha",
        "2026/b.bin": os.urandom(2 * CHUNK_SIZE + 5),
        "2026/dec/c.bin": os.urandom(100),
        "zero": b"",
    }
    for rel, data in files.items():
        (top / rel).write_bytes(data)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not to be sent")
    (top / "link").symlink_to(secret)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        blobs = BlobService()
        async with node(blobs), node() as b:
            events: list[Progress] = []
            ticket = blobs.add_dir(top)
            path = await fetch(b, ticket, out, progress=events.append)
            assert path == out / "photos"
            got = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
            assert got == files
            total = sum(len(d) for d in files.values())
            assert events[-1] == Progress(total, total, 0)
            # a second fetch finds everything in place and moves nothing
            again: list[Progress] = []
            await fetch(b, ticket, out, progress=again.append)
            assert again[-1] == Progress(total, total, total)

    run(main())
    assert not (out / "photos" / "link").exists()


@pytest.mark.parametrize(
    "bad", ["../evil", "/etc/evil", "a/../../evil", "a//b", "./a", "a/", "x\\y", ""]
)
def test_unsafe_directory_paths_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ProtocolError, match="unsafe path"):
        safe_relpath(bad)
    src = make_file(tmp_path, 1000)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        blobs = BlobService()
        async with node(blobs) as a, node() as b:
            real = blobs.add_file(src)
            evil = DirManifest("d", (DirEntry(bad, 1000, real.root),))
            blobs._dirs[evil.root] = evil.encode()
            with pytest.raises(ProtocolError, match="unsafe path"):
                await fetch(b, Ticket(a.peer_id, tuple(a.full_addrs), evil.root), out)

    run(main())
    assert list(out.iterdir()) == []


def test_a_symlinked_directory_in_the_target_is_not_followed(tmp_path: Path) -> None:
    top = tmp_path / "d"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "f").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "sub").symlink_to(elsewhere)

    async def main() -> None:
        blobs = BlobService()
        async with node(blobs), node() as b:
            with pytest.raises(ProtocolError, match="not a plain directory"):
                await fetch(b, blobs.add_dir(top), out)

    run(main())
    assert list(elsewhere.iterdir()) == []


def test_manifests_decode_and_reject_malformed_input() -> None:
    m = Manifest("f", CHUNK_SIZE + 1, (b"\x01" * 32, b"\x02" * 32))
    assert decode_manifest(m.encode()) == m
    d = DirManifest("d", (DirEntry("a/b", 3, b"\x03" * 32),))
    assert decode_manifest(d.encode()) == d
    assert Manifest.decode(m.encode()) == m
    with pytest.raises(SerializationError, match="directory manifest"):
        Manifest.decode(d.encode())
    wrong_hash = m.encode().replace(b'"blake3"', b'"sha256"')
    header_len = wrong_hash[0]
    with pytest.raises(SerializationError, match="is not 'blake3'"):
        decode_manifest(bytes([header_len]) + wrong_hash[1:])
    enc = d.encode()
    for bad in (enc[:-1], enc + b"x", enc.replace(b'"count": 1', b'"count": 2')):
        with pytest.raises(SerializationError):
            decode_manifest(bad)
    with pytest.raises(SerializationError):
        decode_manifest(m.encode()[:-1])


def test_the_manifest_is_encoded_and_hashed_once_not_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_file(tmp_path, 2 * CHUNK_SIZE)
    hashed: list[bytes] = []
    framed: list[str] = []
    from blake3 import blake3 as real_blake3

    from switchy.stack.codec import frame_message as real_frame

    def blake3(data: bytes = b"") -> Any:
        hashed.append(bytes(data))
        return real_blake3(data)

    def frame_message(message: bytes, max_size: int, what: str = "message") -> bytes:
        framed.append(what)
        return real_frame(message, max_size, what)

    monkeypatch.setattr(blobs_module, "blake3", blake3)
    monkeypatch.setattr(blobs_module, "frame_message", frame_message)
    manifest = Manifest.of_file(src)
    hashed.clear()
    assert manifest.root == manifest.root and manifest.encode() == manifest.encode()
    assert hashed == [manifest.encode()] and framed == ["manifest header"]

    async def main() -> None:
        blobs = BlobService()
        async with node(blobs) as a, node() as b:
            hashed.clear()
            framed.clear()
            ticket = blobs.add_file(src)  # hashes the chunks and, once, the manifest
            encoding = Manifest.of_file(src).encode()
            assert hashed.count(encoding) == 1
            for n in range(2):
                out = tmp_path / f"out{n}"
                out.mkdir()
                assert (await fetch(b, ticket, out)).read_bytes() == src.read_bytes()
            # each receiver checks the manifest against the root once; the provider
            # neither encodes nor hashes it again (one "manifest header" above, for the
            # second Manifest.of_file)
            assert hashed.count(encoding) == 1 + 2
            assert framed.count("manifest header") == 2
            del a

    run(main())
