"""A multi-peer chat on gossipsub: a room is a topic, every line a signed message.

Peers find each other by mDNS on the local network (``mdns=True``), by addresses
given (``peers``), or through a name registry (``registry`` + ``join``: connect to
the peer registered under a name; every member registers ``<room>/<nick>``).
Once connected to one member, messages reach the whole room through the mesh.

A chat message is a JSON object ``{"nick": str, "text": str}`` of at most
:data:`MAX_CHAT_MESSAGE` bytes published on the topic ``switchy-chat/<room>``;
anything else on the topic is rejected by the topic validator (and penalises its
sender).  The author shown is the signed message's source peer id together with
the claimed nickname.

:class:`ChatService` adds two stream protocols of our own (``specs/chat.md``):
direct messages (``/switchy/chat/dm/1.0.0``: ``/dm NICK text`` in the chat) and the
room's recent history for a peer that joins (``/switchy/chat/history/1.0.0``: the
last :data:`HISTORY_SIZE` lines a member saw, shown marked as history: they are
only as trustworthy as the member who tells them).

Input: on a terminal, with prompt_toolkit installed (the ``chat`` extra), lines are
typed at a prompt that incoming messages do not break: they are printed above it,
and the line being typed stays as it was (:func:`terminal_lines`).  Otherwise (not a
terminal, prompt_toolkit absent, or ``plain=True``) input is plain lines from stdin
(:func:`stdin_lines`); a program may hand :func:`run_chat` any async iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Final

from switchy.presets import default_node, listen_with_relays, relay_client
from switchy.protocols.discovery import RegistryBackend, connect_by_name, register_name
from switchy.protocols.discovery.mdns import MdnsPeer, MdnsService
from switchy.protocols.pubsub import PubSub, Received, ValidationResult
from switchy.stack.codec import decode_json
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidPeerId, P2PError, ProtocolError, SerializationError
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream
from switchy.stack.tasks import cancel_and_wait

__all__ = [
    "DM_PROTOCOL",
    "HISTORY_PROTOCOL",
    "HISTORY_SIZE",
    "MAX_CHAT_MESSAGE",
    "MAX_NICK",
    "ChatMessage",
    "ChatService",
    "chat_main",
    "chat_topic",
    "decode_chat",
    "encode_chat",
    "line_editor_available",
    "run_chat",
    "stdin_lines",
    "terminal_lines",
]

#: Largest chat message on the wire, in bytes.
MAX_CHAT_MESSAGE: Final = 16 * 1024
#: Longest nickname, in characters.
MAX_NICK: Final = 32
#: Direct messages: one length-prefixed chat message, answered ``ok`` or ``bad``.
DM_PROTOCOL: Final = "/switchy/chat/dm/1.0.0"
#: History: the room name asked, answered with a JSON list of recent lines.
HISTORY_PROTOCOL: Final = "/switchy/chat/history/1.0.0"
#: Lines of history a member keeps and hands out.
HISTORY_SIZE: Final = 50
#: Largest history answer, in bytes.
MAX_HISTORY_ANSWER: Final = HISTORY_SIZE * (MAX_CHAT_MESSAGE + 128)
#: Longest room name asked for, in bytes.
MAX_ROOM: Final = 256


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
    if msg.source is None:
        return None
    return parse_chat(msg.data, str(msg.source))


def parse_chat(data: bytes, source: str) -> ChatMessage | None:
    """The chat line ``data`` (a ``{"nick", "text"}`` object) by ``source``, or ``None``."""
    if len(data) > MAX_CHAT_MESSAGE:
        return None
    try:
        obj = decode_json(data, "chat line")
    except SerializationError:
        return None
    if not isinstance(obj, dict) or set(obj) != {"nick", "text"}:
        return None
    nick, text = obj["nick"], obj["text"]
    if not isinstance(nick, str) or not isinstance(text, str) or not 0 < len(nick) <= MAX_NICK:
        return None
    return ChatMessage(nick, text, source)


class ChatService(ProtocolService):
    """Direct messages and history for one room (see the module docstring)."""

    service_name = "chat"
    service_protocols = (DM_PROTOCOL, HISTORY_PROTOCOL)

    def __init__(self, room: str, nick: str, show: Callable[[str], None] = print) -> None:
        self.room, self.nick, self.show = room, nick, show
        #: The last lines seen in the room (``ChatMessage``), oldest first.
        self.history: deque[ChatMessage] = deque(maxlen=HISTORY_SIZE)
        #: Nicknames seen, with the peer that signed their last line.
        self.members: dict[str, PeerId] = {}
        self._node: Node | None = None

    def attach(self, node: Node) -> None:
        """Serve the direct-message and history protocols."""
        self._node = node
        node.handle(DM_PROTOCOL, self._on_dm)
        node.handle(HISTORY_PROTOCOL, self._on_history)

    def note(self, chat: ChatMessage) -> None:
        """Remember a line of the room (for history and for ``/dm NICK``)."""
        self.history.append(chat)
        with contextlib.suppress(InvalidPeerId):
            self.members[chat.nick] = PeerId.from_string(chat.source)

    def resolve(self, who: str) -> PeerId:
        """The peer of nickname ``who`` (last seen), or ``who`` read as a peer id."""
        if who in self.members:
            return self.members[who]
        try:
            return PeerId.from_string(who)
        except InvalidPeerId:
            raise ProtocolError(f"nobody called {who!r} has spoken in this room") from None

    def _n(self) -> Node:
        assert self._node is not None, "ChatService is not attached to a node"
        return self._node

    async def send_dm(self, peer: PeerId, text: str) -> None:
        """Send ``text`` to ``peer`` directly; raises :class:`ProtocolError` if refused."""
        stream = await self._n().open_stream(peer, DM_PROTOCOL)
        try:
            await stream.send_message(encode_chat(self.nick, text), max_size=MAX_CHAT_MESSAGE)
            answer = await stream.recv_message(max_size=16)
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
        if answer != b"ok":
            raise ProtocolError(f"{peer} refused the direct message: {answer!r}")

    async def _on_dm(self, stream: MuxedStream) -> None:
        data = await stream.recv_message(max_size=MAX_CHAT_MESSAGE)
        chat = parse_chat(data, str(stream.remote_peer))
        if chat is None:
            await stream.send_message(b"bad")
            return
        self.show(f"[dm] {chat}")
        await stream.send_message(b"ok")

    async def fetch_history(self, peer: PeerId) -> list[ChatMessage]:
        """The room's recent lines as ``peer`` saw them (malformed entries are dropped)."""
        stream = await self._n().open_stream(peer, HISTORY_PROTOCOL)
        try:
            await stream.send_message(self.room.encode(), max_size=MAX_ROOM)
            data = await stream.recv_message(max_size=MAX_HISTORY_ANSWER)
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
        try:
            items = decode_json(data, "history")
        except SerializationError:
            raise ProtocolError(f"{peer} sent a history that is not JSON") from None
        if not isinstance(items, list):
            raise ProtocolError(f"{peer} sent a history that is not a list")
        out = []
        for item in items[:HISTORY_SIZE]:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], str)):
                continue
            line = json.dumps({"nick": item[0], "text": item[1]}, ensure_ascii=False)
            chat = parse_chat(line.encode(), item[2])
            if chat is not None:
                out.append(chat)
        return out

    async def _on_history(self, stream: MuxedStream) -> None:
        room = await stream.recv_message(max_size=MAX_ROOM)
        lines = (
            [[c.nick, c.text, c.source] for c in self.history] if room == self.room.encode() else []
        )
        data = json.dumps(lines, ensure_ascii=False).encode()
        while len(data) > MAX_HISTORY_ANSWER and lines:
            lines.pop(0)
            data = json.dumps(lines, ensure_ascii=False).encode()
        await stream.send_message(data, max_size=MAX_HISTORY_ANSWER)


def _validate(msg: Received) -> ValidationResult:
    return ValidationResult.ACCEPT if decode_chat(msg) is not None else ValidationResult.REJECT


async def stdin_lines() -> AsyncIterator[str]:
    """Lines typed on stdin (read in a thread, so the event loop keeps running)."""
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        yield line.rstrip("\n")


def line_editor_available() -> bool:
    """Whether :func:`terminal_lines` can run here: stdin and stdout are terminals and
    prompt_toolkit (the ``chat`` extra) is installed."""
    try:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            return False
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
    try:
        return importlib.util.find_spec("prompt_toolkit") is not None
    except (ImportError, ValueError):  # a broken install, or blocked in sys.modules
        return False


@contextlib.contextmanager
def _above_the_prompt() -> Iterator[None]:
    """While inside, whatever is printed goes above the prompt_toolkit prompt."""
    from prompt_toolkit.patch_stdout import patch_stdout

    with patch_stdout(raw=True):
        yield


async def terminal_lines(prompt: str = "> ") -> AsyncIterator[str]:
    """Lines typed at a prompt_toolkit prompt (history, editing keys); Ctrl-D or Ctrl-C
    ends them.  Run it inside :func:`_above_the_prompt` so that output printed meanwhile
    (incoming messages) appears above the prompt and leaves the line being typed intact."""
    from prompt_toolkit import PromptSession

    session: PromptSession[str] = PromptSession()
    while True:
        try:
            line = await session.prompt_async(prompt)
        except (EOFError, KeyboardInterrupt):
            return
        yield line


async def run_chat(
    node: Node,
    pubsub: PubSub,
    room: str,
    nick: str,
    lines: AsyncIterator[str],
    show: Callable[[str], None] = print,
    chat_service: ChatService | None = None,
) -> None:
    """Chat in ``room`` as ``nick``: publish every line of ``lines``, ``show`` every message.

    Returns when ``lines`` ends or a line is ``/quit``; ``/peers`` shows the room's peers;
    with a ``chat_service``, ``/dm NICK TEXT`` sends a direct message and the room's
    lines are kept for history.
    """
    topic = chat_topic(room)
    pubsub.set_validator(topic, _validate)
    sub = pubsub.subscribe(topic)

    async def receive() -> None:
        async for msg in sub:
            chat = decode_chat(msg)
            if chat is not None and msg.source != node.peer_id:
                if chat_service is not None:
                    chat_service.note(chat)
                show(str(chat))

    receiver = asyncio.ensure_future(receive())
    try:
        async for line in lines:
            if line == "/quit":
                break
            if line == "/peers":
                show(f"* {len(pubsub.topic_peers(topic))} peers in {room}")
                continue
            if line.startswith("/dm ") and chat_service is not None:
                _, who, text = [*line.split(" ", 2), "", ""][:3]
                try:
                    await chat_service.send_dm(chat_service.resolve(who), text)
                    show(f"* sent to {who}")
                except (P2PError, ValueError) as exc:
                    show(f"* not sent to {who}: {exc}")
                continue
            if line.strip():
                try:
                    await pubsub.publish(topic, encode_chat(nick, line))
                except ValueError as exc:
                    show(f"* not sent: {exc}")
                    continue
                if chat_service is not None:
                    chat_service.note(ChatMessage(nick, line, str(node.peer_id)))
    finally:
        sub.close()
        await cancel_and_wait(receiver)


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
    relays: Sequence[str] = (),
    plain: bool = False,
    config: NetworkConfig | None = None,
) -> int:
    """The ``switchy chat`` program: start a node, find peers, chat until input ends.

    ``relays`` (multiaddrs ending in ``/p2p/<relay id>``): also listen through them,
    so that peers behind NATs reach us at the ``/p2p-circuit`` addresses shown.
    Without ``lines``, input comes from the line editor when
    :func:`line_editor_available` (and not ``plain``), else from stdin.
    ``config``: the node's network configuration (``switchy chat`` passes the one of
    ``SWITCHY_*`` and ``--limit``; default :class:`NetworkConfig`)."""
    editor = lines is None and not plain and line_editor_available()
    with _above_the_prompt() if editor else contextlib.nullcontext():
        if editor:
            lines = terminal_lines(f"{nick}> ")
        return await _chat_program(
            room, nick, listen, peers, mdns, registry, join, lines, show, relays, config
        )


async def _chat_program(
    room: str,
    nick: str,
    listen: Sequence[str],
    peers: Sequence[str],
    mdns: bool,
    registry: str | None,
    join: str | None,
    lines: AsyncIterator[str] | None,
    show: Callable[[str], None],
    relays: Sequence[str],
    config: NetworkConfig | None,
) -> int:
    pubsub = PubSub()
    chat_service = ChatService(room, nick, show)
    services: list[ProtocolService] = [pubsub, chat_service]
    found: list[MdnsPeer] = []
    mdns_service: MdnsService | None = None
    if mdns:
        mdns_service = MdnsService()
        mdns_service.on_peer_found(found.append)
        services.append(mdns_service)
    if registry is not None:
        services.append(RegistryBackend([registry]))
    if relays:
        services.append(relay_client(relays))
    async with default_node(services=services, config=config) as node:
        await listen_with_relays(node, list(listen), relays)
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
        for conn in node.connections()[:1]:
            with contextlib.suppress(P2PError, TimeoutError):
                async with asyncio.timeout(10):
                    for old in await chat_service.fetch_history(conn.remote_peer):
                        show(f"[history] {old}")
                        chat_service.note(old)
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
            await run_chat(node, pubsub, room, nick, lines or stdin_lines(), show, chat_service)
        finally:
            for task in dials:
                task.cancel()
    return 0


async def _quiet_connect(node: Node, peer: MdnsPeer) -> None:
    with contextlib.suppress(P2PError, TimeoutError):
        async with asyncio.timeout(10):
            await node.connect(peer.peer_id)
