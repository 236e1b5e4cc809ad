"""``switchy chat --relay`` and ``switchy send --relay``: listening through a circuit relay,
driven from the command line (subprocesses) against an in-process relay on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import attrs

from switchy.chat import chat_topic, decode_chat, encode_chat
from switchy.presets import default_node
from switchy.protocols.blobs import Ticket, fetch
from switchy.protocols.pubsub import PubSub
from switchy.transports.relay import RelayConfig, RelayService

LOCAL = "/ip4/127.0.0.1/tcp/0"
UNLIMITED = RelayConfig(limit_data=0, limit_duration=0)
ENV = {**os.environ, "SWITCHY_HOLE_PUNCHING": "0"}  # keep the circuits relayed


async def switchy(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchy",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def test_send_through_a_relay_puts_the_circuit_in_the_ticket(tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(300_000))
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        relay = default_node(services=[RelayService(UNLIMITED)], listen=[LOCAL])
        async with relay:
            proc = await switchy("send", str(src), "--relay", str(relay.full_addrs[0]))
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                ticket = Ticket.parse(line.decode().strip())
                circuits = tuple(a for a in ticket.addrs if "/p2p-circuit" in str(a))
                assert circuits, ticket.addrs
                assert all(str(relay.peer_id) in str(a) for a in circuits)
                assert any("/p2p-circuit" not in str(a) for a in ticket.addrs)  # direct too
                # Fetched through the relay alone: only the circuit addresses are given.
                only_relayed = attrs.evolve(ticket, addrs=circuits)
                client = default_node(hole_punching=False)
                async with client:
                    path = await asyncio.wait_for(fetch(client, only_relayed, out), 60)
                    conns = client.connections(ticket.peer)
                    assert conns and all(c.is_limited for c in conns)
                assert path.read_bytes() == src.read_bytes()
            finally:
                await stop(proc)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_chat_through_a_relay_listens_on_a_circuit_address() -> None:
    async def main() -> None:
        relay = default_node(services=[RelayService(UNLIMITED)], listen=[LOCAL])
        async with relay:
            proc = await switchy(
                "chat", "--nick", "carol", "--listen", LOCAL, "--relay", str(relay.full_addrs[0])
            )
            try:
                assert proc.stdout is not None and proc.stdin is not None
                circuit = None
                async with asyncio.timeout(60):
                    while circuit is None:
                        line = (await proc.stdout.readline()).decode()
                        assert line, "chat ended early"
                        if line.startswith("* listening on") and "/p2p-circuit" in line:
                            circuit = line.split()[-1]
                assert str(relay.peer_id) in circuit
                ps = PubSub()
                client = default_node(services=[ps], hole_punching=False)
                async with client:
                    sub = ps.subscribe(chat_topic("lobby"))
                    conn = await client.connect(circuit)
                    assert conn.is_limited
                    topic = chat_topic("lobby")
                    await asyncio.wait_for(ps.wait_for_peers(topic, 1, mesh=True), 30)
                    proc.stdin.write(b"hello through the relay\n")
                    await proc.stdin.drain()
                    chat = decode_chat(await asyncio.wait_for(sub.get(), 20))
                    assert chat is not None
                    assert (chat.nick, chat.text) == ("carol", "hello through the relay")
                    await ps.publish(topic, encode_chat("dan", "hi carol"))
                    async with asyncio.timeout(20):
                        while b"<dan@" not in (line_b := await proc.stdout.readline()):
                            assert line_b, "chat ended early"
                    assert line_b.decode().rstrip().endswith("> hi carol")
                proc.stdin.close()
                assert await asyncio.wait_for(proc.wait(), 20) == 0
            finally:
                await stop(proc)

    asyncio.run(asyncio.wait_for(main(), 120))
