"""A multi-peer chat on gossipsub: a room is a topic, every line a signed message.

Peers find each other by mDNS on the local network (``mdns=True``), by addresses
given (``peers``), or through a name registry (``registry`` + ``join``: connect to
the peer registered under a name; every member registers ``<room>/<nick>``).
Once connected to one member, messages reach the whole room through the mesh.

A chat message is a JSON object ``{"nick": str, "text": str}`` of at most
:data:`MAX_CHAT_MESSAGE` bytes published on the topic ``switchy-chat/<room>``;
anything else on the topic is rejected by the topic validator (and penalises its
sender).  The author shown is the signed message's source peer id together with
the claimed nickname.  Not here yet (issue 19): direct messages, history on join,
a full-screen line editor (the input is plain lines: stdin, or any async iterator).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from switchy.presets import default_node
from switchy.protocols.discovery import RegistryBackend, connect_by_name, register_name
from switchy.protocols.discovery.mdns import MdnsPeer, MdnsService
from switchy.protocols.pubsub import PubSub, Received, ValidationResult
from switchy.stack.errors import P2PError
from switchy.stack.node import Node, ProtocolService

__all__ = [
    "MAX_CHAT_MESSAGE",
    "MAX_NICK",
    "ChatMessage",
    "chat_main",
    "chat_topic",
    "decode_chat",
    "encode_chat",
    "run_chat",
    "stdin_lines",
]

#: Largest chat message on the wire, in bytes.
MAX_CHAT_MESSAGE: Final = 16 * 1024
#: Longest nickname, in characters.
MAX_NICK: Final = 32


def chat_topic(room: str) -> str:
    """The gossipsub topic of ``room``."""
    return f"switchy-chat/{room}"


class ChatMessage:
    """A decoded chat line: ``nick``, ``text`` and the signed ``source`` peer id (text)."""

    __slots__ = ("nick", "source", "text")

    def __init__(self, nick: str, text: str, source: str) -> None:
        self.nick = nick
        self.text = text
        self.source = source

    def __str__(self) -> str:
        return f"<{self.nick}@{self.source[-6:]}> {self.text}"


def encode_chat(nick: str, text: str) -> bytes:
    """The wire form of one chat line; raises ``ValueError`` when too long."""
    if not nick or len(nick) > MAX_NICK:
        raise ValueError(f"a nickname has 1 to {MAX_NICK} characters")
    data = json.dumps({"nick": nick, "text": text}, ensure_ascii=False).encode()
    if len(data) > MAX_CHAT_MESSAGE:
        raise ValueError(f"a chat message is at most {MAX_CHAT_MESSAGE} bytes")
    return data


def decode_chat(msg: Received) -> ChatMessage | None:
    """The chat line in ``msg``, or ``None`` when it is not a well-formed one."""
    if len(msg.data) > MAX_CHAT_MESSAGE or msg.source is None:
        return None
    try:
        obj = json.loads(msg.data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or set(obj) != {"nick", "text"}:
        return None
    nick, text = obj["nick"], obj["text"]
    if not isinstance(nick, str) or not isinstance(text, str) or not 0 < len(nick) <= MAX_NICK:
        return None
    return ChatMessage(nick, text, str(msg.source))


def _validate(msg: Received) -> ValidationResult:
    return ValidationResult.ACCEPT if decode_chat(msg) is not None else ValidationResult.REJECT


async def stdin_lines() -> AsyncIterator[str]:
    """Lines typed on stdin (read in a thread, so the event loop keeps running)."""
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        yield line.rstrip("\n")


async def run_chat(
    node: Node,
    pubsub: PubSub,
    room: str,
    nick: str,
    lines: AsyncIterator[str],
    show: Callable[[str], None] = print,
) -> None:
    """Chat in ``room`` as ``nick``: publish every line of ``lines``, ``show`` every message.

    Returns when ``lines`` ends or a line is ``/quit``; ``/peers`` shows the room's peers.
    """
    topic = chat_topic(room)
    pubsub.set_validator(topic, _validate)
    sub = pubsub.subscribe(topic)

    async def receive() -> None:
        async for msg in sub:
            chat = decode_chat(msg)
            if chat is not None and msg.source != node.peer_id:
                show(str(chat))

    receiver = asyncio.ensure_future(receive())
    try:
        async for line in lines:
            if line == "/quit":
                break
            if line == "/peers":
                show(f"* {len(pubsub.topic_peers(topic))} peers in {room}")
                continue
            if line.strip():
                try:
                    await pubsub.publish(topic, encode_chat(nick, line))
                except ValueError as exc:
                    show(f"* not sent: {exc}")
    finally:
        sub.close()
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver


async def chat_main(
    *,
    room: str,
    nick: str,
    listen: Sequence[str] = ("/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"),
    peers: Sequence[str] = (),
    mdns: bool = False,
    registry: str | None = None,
    join: str | None = None,
    lines: AsyncIterator[str] | None = None,
    show: Callable[[str], None] = print,
) -> int:
    """The ``switchy chat`` program: start a node, find peers, chat until input ends."""
    pubsub = PubSub()
    services: list[ProtocolService] = [pubsub]
    found: list[MdnsPeer] = []
    mdns_service: MdnsService | None = None
    if mdns:
        mdns_service = MdnsService()
        mdns_service.on_peer_found(found.append)
        services.append(mdns_service)
    if registry is not None:
        services.append(RegistryBackend([registry]))
    async with default_node(services=services, listen=list(listen)) as node:
        show(f"* {nick} in room {room!r} as {node.peer_id}")
        for addr in node.full_addrs:
            show(f"* listening on {addr}")
        for peer in peers:
            try:
                await node.connect(peer)
            except P2PError as exc:
                show(f"* could not reach {peer}: {exc}")
        if registry is not None:
            await register_name(node, f"{room}/{nick}")
            if join is not None:
                try:
                    await connect_by_name(node, f"{room}/{join}")
                except P2PError as exc:
                    show(f"* could not join {join}: {exc}")
        dials: set[asyncio.Task[None]] = set()
        if mdns_service is not None:

            def connect_found(peer: MdnsPeer) -> None:
                if peer.peer_id != node.peer_id and not node.connections(peer.peer_id):
                    task = asyncio.ensure_future(_quiet_connect(node, peer))
                    dials.add(task)
                    task.add_done_callback(dials.discard)

            for heard in found:
                connect_found(heard)
            mdns_service.on_peer_found(connect_found)
        try:
            await run_chat(node, pubsub, room, nick, lines or stdin_lines(), show)
        finally:
            for task in dials:
                task.cancel()
    return 0


async def _quiet_connect(node: Node, peer: MdnsPeer) -> None:
    with contextlib.suppress(P2PError, TimeoutError):
        async with asyncio.timeout(10):
            await node.connect(peer.peer_id)
