"""Kademlia DHT interop with py-libp2p 0.8.1's KadDHT (server mode), both directions:
values, providers and peers stored or known on one side are found from the other, and
each is in the other's routing table."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from switchy.presets import default_node
from switchy.protocols.kad.records import Validator, default_validators
from switchy.protocols.kad.service import KadDHT
from switchy.stack.identity import PeerId
from switchy.stack.node import Node
from switchy.transports.tcp import TcpTransport
from tests.interop.harness import PEER_SCRIPT, PEER_TIMEOUT

pytestmark = pytest.mark.interop


class AnyValue(Validator):
    """The test namespace ``/interop/``: any value, the first wins."""

    def validate(self, key: bytes, value: bytes) -> None:
        """Every value is valid."""


class DhtPeer:
    """A py-libp2p KadDHT server driven by JSON commands on its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.peer_id = PeerId.from_string(info["peer_id"])
        addr = next(a for a in info["addrs"] if "/tcp/" in a)
        self.addr = addr if "/p2p/" in addr else f"{addr}/p2p/{info['peer_id']}"

    async def do(self, op: str, **kw: Any) -> dict[str, Any]:
        """Run one command; return its JSON answer (failing the test when not ok)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), PEER_TIMEOUT)
            assert line, "py-libp2p dht peer exited"
            if line.startswith(b"{"):
                break
        result: dict[str, Any] = json.loads(line)
        assert result.get("ok"), f"py-libp2p {op} failed: {result.get('error')}"
        return result


@asynccontextmanager
async def dht_peer(python: Path) -> AsyncIterator[DhtPeer]:
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(PEER_SCRIPT),
        "dht",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), PEER_TIMEOUT)
        assert line, "py-libp2p dht peer exited before printing its addresses"
        yield DhtPeer(proc, json.loads(line))
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def our_node(bootstrap: list[str]) -> tuple[Node, KadDHT]:
    validators: dict[str, Validator] = {**default_validators(), "interop": AnyValue()}
    dht = KadDHT(mode="server", bootstrap=bootstrap, validators=validators)
    node = default_node(
        transports=[TcpTransport()], services=[dht], listen=["/ip4/127.0.0.1/tcp/0"]
    )
    return node, dht


def test_values_providers_and_peers_both_ways(interop_python: Path) -> None:
    async def main() -> None:
        async with dht_peer(interop_python) as py:
            a, dht_a = our_node([py.addr])
            async with a:
                await dht_a.bootstrap()
                b, dht_b = our_node([str(a.full_addrs[0])])
                async with b:
                    await dht_b.bootstrap()
                    await py.do("connect", addr=str(a.full_addrs[0]))
                    # both in each other's routing tables
                    assert py.peer_id in (dht_a.table or [])
                    assert str(a.peer_id) in (await py.do("table"))["peers"]
                    # a value put through py-libp2p is found by us, and the other way round
                    await py.do("put", key="/interop/from-py", value=b"hello from py".hex())
                    assert await dht_b.get_value(b"/interop/from-py") == b"hello from py"
                    assert await dht_a.put_value(b"/interop/from-us", b"hello from us") >= 1
                    got = await py.do("get", key="/interop/from-us")
                    assert got["value"] == b"hello from us".hex()
                    # providers (opaque keys: a sha2-256 multihash)
                    k1 = bytes.fromhex("1220" + "0a" * 32)
                    k2 = bytes.fromhex("1220" + "0b" * 32)
                    assert (await py.do("provide", key=k1.hex()))["provided"]
                    found = await dht_b.find_providers(k1)
                    assert py.peer_id in [p for p, _ in found]
                    assert await dht_b.provide(k2) >= 1
                    providers = (await py.do("providers", key=k2.hex()))["providers"]
                    assert str(b.peer_id) in [p for p, _ in providers]
                    # peers
                    addrs = await dht_b.find_peer(py.peer_id)
                    assert any("/tcp/" in str(x) for x in addrs)
                    found_b = (await py.do("find_peer", peer=str(b.peer_id)))["addrs"]
                    assert found_b and any(str(b.listen_addrs[0]) in x for x in found_b)

    asyncio.run(asyncio.wait_for(main(), 180))
