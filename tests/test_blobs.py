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

from switchy.presets import default_node
from switchy.protocols.blobs import (
    CHUNK_SIZE,
    BlobCorrupt,
    BlobService,
    Manifest,
    Progress,
    Ticket,
    fetch,
)
from switchy.stack.errors import P2PError, ProtocolError, SerializationError
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node
from switchy.transports.tcp import TcpTransport

TCP = "/ip4/127.0.0.1/tcp/0"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "send_file.py"


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
        events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
        assert events[-1] == {"done": src.stat().st_size, "total": src.stat().st_size, "resumed": 0}
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
