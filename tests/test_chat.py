"""The gossipsub chat: library API with three peers, the example as a subprocess, bad input."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

from switchy.chat import DM_PROTOCOL, ChatService, chat_topic, decode_chat, encode_chat, run_chat
from switchy.presets import default_node
from switchy.protocols.pubsub import PubSub, Received
from switchy.stack.identity import KeyPair
from switchy.transports.tcp import TcpTransport

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chat.py"
TCP = "/ip4/127.0.0.1/tcp/0"


class Screen:
    """What a chat showed, with a way to wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def show(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait_for(self, fragment: str) -> str:
        async with asyncio.timeout(20):
            while True:
                for line in self.lines:
                    if fragment in line:
                        return line
                self._changed.clear()
                await self._changed.wait()


async def queue_lines(q: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (line := await q.get()) is not None:
        yield line


def test_three_peers_chat_through_a_line_of_connections() -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            ps = [PubSub() for _ in range(3)]
            nodes = [
                await stack.enter_async_context(
                    default_node(transports=[TcpTransport()], services=[p], listen=[TCP])
                )
                for p in ps
            ]
            await nodes[1].connect(nodes[0].full_addrs[0])
            await nodes[2].connect(nodes[1].full_addrs[0])
            screens = [Screen() for _ in nodes]
            inputs: list[asyncio.Queue[str | None]] = [asyncio.Queue() for _ in nodes]
            chats = [
                asyncio.ensure_future(run_chat(n, p, "lobby", nick, queue_lines(q), sc.show))
                for n, p, nick, q, sc in zip(
                    nodes, ps, ["alice", "bob", "carol"], inputs, screens, strict=True
                )
            ]
            topic = chat_topic("lobby")
            await asyncio.wait_for(ps[1].wait_for_peers(topic, 2, mesh=True), 20)
            await asyncio.wait_for(ps[0].wait_for_peers(topic, 1, mesh=True), 20)
            await asyncio.wait_for(ps[2].wait_for_peers(topic, 1, mesh=True), 20)
            inputs[0].put_nowait("hi from alice")
            line = await screens[2].wait_for("hi from alice")
            assert line.startswith("<alice@") and line.endswith("> hi from alice")
            await screens[1].wait_for("hi from alice")
            inputs[2].put_nowait("carol here")
            await screens[0].wait_for("carol here")
            inputs[1].put_nowait("/peers")
            assert await screens[1].wait_for("peers in lobby") == "* 2 peers in lobby"
            # Malformed chat messages are rejected by the topic validator, not shown.
            await ps[0].publish(topic, b"\xffnot json")
            await ps[0].publish(topic, json.dumps({"nick": "", "text": "x"}).encode())
            inputs[0].put_nowait("after the junk")
            await screens[2].wait_for("after the junk")
            assert not any("not json" in x or "> x" in x for x in screens[2].lines)
            assert ps[1].router.dropped["rejected"] == 2
            for q in inputs:
                q.put_nowait("/quit")
            await asyncio.wait_for(asyncio.gather(*chats), 10)
            # Alice's own lines are not echoed to her.
            assert not any("hi from alice" in x for x in screens[0].lines)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_chat_codec_limits() -> None:
    who = KeyPair.from_seed(b"\x01" * 32).peer_id
    ok = Received("t", encode_chat("bob", "hello"), b"id", who, None, who)
    chat = decode_chat(ok)
    assert chat is not None and (chat.nick, chat.text) == ("bob", "hello")
    for bad in (
        b"[]",
        b'{"nick": "b"}',
        b'{"nick": 1, "text": "x"}',
        b'{"nick":"b","text":"x","y":1}',
    ):
        assert decode_chat(Received("t", bad, b"id", who, None, who)) is None
    assert decode_chat(Received("t", encode_chat("b", "x"), b"id", None, None, who)) is None
    for nick, text in (("", "x"), ("n" * 33, "x"), ("n", "x" * 20000)):
        try:
            encode_chat(nick, text)
        except ValueError:
            continue
        raise AssertionError(f"{nick!r} {len(text)} accepted")


def test_example_chat_as_a_subprocess() -> None:
    async def main() -> None:
        ps = PubSub()
        async with default_node(transports=[TcpTransport()], services=[ps], listen=[TCP]) as node:
            sub = ps.subscribe(chat_topic("lobby"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLE),
                "--nick",
                "dave",
                "--listen",
                TCP,
                "--peer",
                str(node.full_addrs[0]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                first = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert first.startswith(b"* dave in room 'lobby' as 12D3KooW")
                await asyncio.wait_for(ps.wait_for_peers(chat_topic("lobby"), 1, mesh=True), 30)
                proc.stdin.write(b"hello from the example\n")
                await proc.stdin.drain()
                msg = await asyncio.wait_for(sub.get(), 20)
                chat = decode_chat(msg)
                assert chat is not None and (chat.nick, chat.text) == (
                    "dave",
                    "hello from the example",
                )
                await ps.publish(chat_topic("lobby"), encode_chat("erin", "hi dave"))
                async with asyncio.timeout(20):
                    while b"<erin@" not in (line := await proc.stdout.readline()):
                        assert line, "the example ended early"
                assert line.decode().rstrip().endswith("> hi dave")
                proc.stdin.close()
                assert await asyncio.wait_for(proc.wait(), 20) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    asyncio.run(asyncio.wait_for(main(), 90))


def test_direct_messages_and_history_on_join() -> None:
    """``/dm NICK text`` reaches only that peer on /switchy/chat/dm/1.0.0; a malformed
    direct message is answered ``bad`` and not shown; a peer joining later gets the
    room's recent lines from a member (/switchy/chat/history/1.0.0), and none for
    another room."""

    async def main() -> None:
        async with AsyncExitStack() as stack:
            screens = [Screen() for _ in range(3)]
            nicks = ["alice", "bob", "carol"]
            ps = [PubSub() for _ in range(3)]
            cs = [ChatService("lobby", n, sc.show) for n, sc in zip(nicks, screens, strict=True)]
            nodes = [
                await stack.enter_async_context(
                    default_node(transports=[TcpTransport()], services=[p, c], listen=[TCP])
                )
                for p, c in zip(ps, cs, strict=True)
            ]
            await nodes[1].connect(nodes[0].full_addrs[0])
            inputs: list[asyncio.Queue[str | None]] = [asyncio.Queue() for _ in nodes]
            chats = [
                asyncio.ensure_future(
                    run_chat(
                        nodes[i],
                        ps[i],
                        "lobby",
                        nicks[i],
                        queue_lines(inputs[i]),
                        screens[i].show,
                        cs[i],
                    )
                )
                for i in range(2)
            ]
            topic = chat_topic("lobby")
            await asyncio.wait_for(ps[0].wait_for_peers(topic, 1, mesh=True), 20)
            await asyncio.wait_for(ps[1].wait_for_peers(topic, 1, mesh=True), 20)
            inputs[0].put_nowait("first line")
            await screens[1].wait_for("first line")
            inputs[1].put_nowait("/dm alice psst")
            assert await screens[1].wait_for("* sent to") == "* sent to alice"
            dm = await screens[0].wait_for("[dm]")
            assert dm.startswith("[dm] <bob@") and dm.endswith("> psst")
            inputs[1].put_nowait("/dm nobody hello")
            assert "nobody called 'nobody'" in await screens[1].wait_for("not sent to nobody")
            # a malformed direct message
            stream = await nodes[1].open_stream(nodes[0].peer_id, DM_PROTOCOL)
            await stream.send_message(b"\\xffjunk")
            assert await stream.recv_message(max_size=16) == b"bad"
            await stream.close()
            # carol joins later and asks alice for the history
            await nodes[2].connect(nodes[0].full_addrs[0])
            old = await cs[2].fetch_history(nodes[0].peer_id)
            assert [(c.nick, c.text) for c in old] == [("alice", "first line")]
            assert old[0].source == str(nodes[0].peer_id)
            other = ChatService("elsewhere", "dave")
            other._node = nodes[2]
            assert await other.fetch_history(nodes[0].peer_id) == []
            for q in inputs[:2]:
                q.put_nowait("/quit")
            await asyncio.wait_for(asyncio.gather(*chats), 10)
            assert not any("junk" in x for x in screens[0].lines)
            assert not any("[dm]" in x for x in screens[2].lines)

    asyncio.run(asyncio.wait_for(main(), 60))
