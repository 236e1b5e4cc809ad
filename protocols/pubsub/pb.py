"""Sans-IO codec of the libp2p pubsub RPC (``pubsub/README.md``, ``pubsub/gossipsub/``).

The ``RPC`` protobuf is written by hand on :mod:`switchy.stack.codec`, fields in
number order.  Field numbers (libp2p ``rpc.proto``)::

    RPC         subscriptions=1 (SubOpts) publish=2 (Message) control=3 (ControlMessage)
    SubOpts     subscribe=1 (bool) topicid=2 (string)
    Message     from=1 data=2 seqno=3 topic=4 signature=5 key=6
    Control     ihave=1 iwant=2 graft=3 prune=4 idontwant=5
    IHave       topicID=1 messageIDs=2      IWant     messageIDs=1
    Graft       topicID=1                   Prune     topicID=1 peers=2 (PeerInfo) backoff=3
    PeerInfo    peerID=1 signedPeerRecord=2 IDontWant messageIDs=1

Decoders never trust the input: the RPC size, every topic, message id and peer
record length, and the number of entries of every list are checked against the
explicit limits below, a known field with the wrong wire type is an error, and
errors name what was wrong.  Unknown fields are skipped (protobuf semantics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Final

import attrs

from switchy.stack.codec import pb_bytes, pb_fields_typed, pb_varint, pb_want_bytes, pb_want_int
from switchy.stack.errors import SerializationError

__all__ = [
    "MAX_CONTROL_ENTRIES",
    "MAX_IDS_PER_ENTRY",
    "MAX_MESSAGES_PER_RPC",
    "MAX_MESSAGE_ID_SIZE",
    "MAX_PEER_RECORD_SIZE",
    "MAX_PX_PEERS",
    "MAX_RPC_SIZE",
    "MAX_SUBSCRIPTIONS_PER_RPC",
    "MAX_TOPIC_SIZE",
    "RPC",
    "SIGNING_PREFIX",
    "Control",
    "Graft",
    "IHave",
    "IWant",
    "Message",
    "PeerInfo",
    "Prune",
    "SubOpts",
    "decode_message",
    "decode_rpc",
    "encode_message",
    "encode_rpc",
    "signing_bytes",
]

#: Largest RPC accepted or sent, in bytes (the go and rust default: 1 MiB).
MAX_RPC_SIZE: Final = 1 << 20
#: Largest topic name, in bytes.
MAX_TOPIC_SIZE: Final = 1024
#: Largest message id, in bytes (the default id, ``from ‖ seqno``, is about 46).
MAX_MESSAGE_ID_SIZE: Final = 256
#: Most subscription changes in one RPC.
MAX_SUBSCRIPTIONS_PER_RPC: Final = 1000
#: Most published messages in one RPC.
MAX_MESSAGES_PER_RPC: Final = 1000
#: Most IHAVE / IWANT / GRAFT / PRUNE / IDONTWANT entries of each kind in one RPC.
MAX_CONTROL_ENTRIES: Final = 1000
#: Most message ids in one IHAVE / IWANT / IDONTWANT entry (the spec's max IHAVE length).
MAX_IDS_PER_ENTRY: Final = 5000
#: Most peers offered in one PRUNE's peer exchange (the go and rust default).
MAX_PX_PEERS: Final = 16
#: Largest signed peer record carried by peer exchange, in bytes.
MAX_PEER_RECORD_SIZE: Final = 4096
#: What a message signature covers is this prefix and the message without signature/key.
SIGNING_PREFIX: Final = b"libp2p-pubsub:"


@attrs.frozen
class SubOpts:
    """A subscription change: ``subscribe`` (else unsubscribe) to ``topic``."""

    subscribe: bool
    topic: str


@attrs.frozen
class Message:
    """A published message.  ``from_``/``seqno``/``signature``/``key`` are optional on the wire."""

    topic: str
    data: bytes = b""
    from_: bytes | None = None
    seqno: bytes | None = None
    signature: bytes | None = None
    key: bytes | None = None


@attrs.frozen
class IHave:
    """Gossip: the sender has these message ids of ``topic``."""

    topic: str
    ids: tuple[bytes, ...] = ()


@attrs.frozen
class IWant:
    """A request for the full messages of these ids."""

    ids: tuple[bytes, ...] = ()


@attrs.frozen
class Graft:
    """The sender added us to its mesh of ``topic``."""

    topic: str


@attrs.frozen
class PeerInfo:
    """A peer offered by peer exchange: its id and, optionally, a signed peer record."""

    peer_id: bytes
    signed_record: bytes | None = None


@attrs.frozen
class Prune:
    """The sender removed us from its mesh of ``topic`` (v1.1: with PX peers and backoff s)."""

    topic: str
    peers: tuple[PeerInfo, ...] = ()
    backoff: int | None = None


@attrs.frozen
class Control:
    """The control part of an RPC."""

    ihave: tuple[IHave, ...] = ()
    iwant: tuple[IWant, ...] = ()
    graft: tuple[Graft, ...] = ()
    prune: tuple[Prune, ...] = ()
    idontwant: tuple[IWant, ...] = ()

    def is_empty(self) -> bool:
        """Whether there is no control entry at all."""
        return not (self.ihave or self.iwant or self.graft or self.prune or self.idontwant)


@attrs.frozen
class RPC:
    """One pubsub RPC: subscription changes, messages and control."""

    subscriptions: tuple[SubOpts, ...] = ()
    publish: tuple[Message, ...] = ()
    control: Control | None = None


# --- encoding -----------------------------------------------------------------------------


def _encode_message(m: Message, *, for_signing: bool = False) -> bytes:
    out = bytearray()
    if m.from_ is not None:
        out += pb_bytes(1, m.from_)
    out += pb_bytes(2, m.data)
    if m.seqno is not None:
        out += pb_bytes(3, m.seqno)
    out += pb_bytes(4, m.topic.encode())
    if not for_signing:
        if m.signature is not None:
            out += pb_bytes(5, m.signature)
        if m.key is not None:
            out += pb_bytes(6, m.key)
    return bytes(out)


def signing_bytes(m: Message) -> bytes:
    """What a message's signature covers: the prefix and the message without signature/key."""
    return SIGNING_PREFIX + _encode_message(m, for_signing=True)


def encode_message(m: Message) -> bytes:
    """The protobuf encoding of one ``Message``."""
    return _encode_message(m)


def _encode_control(c: Control) -> bytes:
    out = bytearray()
    for ih in c.ihave:
        body = pb_bytes(1, ih.topic.encode()) + b"".join(pb_bytes(2, i) for i in ih.ids)
        out += pb_bytes(1, body)
    for iw in c.iwant:
        out += pb_bytes(2, b"".join(pb_bytes(1, i) for i in iw.ids))
    for g in c.graft:
        out += pb_bytes(3, pb_bytes(1, g.topic.encode()))
    for p in c.prune:
        pbody = bytearray(pb_bytes(1, p.topic.encode()))
        for info in p.peers:
            pi = bytearray(pb_bytes(1, info.peer_id))
            if info.signed_record is not None:
                pi += pb_bytes(2, info.signed_record)
            pbody += pb_bytes(2, bytes(pi))
        if p.backoff is not None:
            pbody += pb_varint(3, p.backoff)
        out += pb_bytes(4, bytes(pbody))
    for idw in c.idontwant:
        out += pb_bytes(5, b"".join(pb_bytes(1, i) for i in idw.ids))
    return bytes(out)


def encode_rpc(rpc: RPC) -> bytes:
    """The protobuf encoding of ``rpc`` (without the length prefix)."""
    out = bytearray()
    for s in rpc.subscriptions:
        out += pb_bytes(1, pb_varint(1, int(s.subscribe)) + pb_bytes(2, s.topic.encode()))
    for m in rpc.publish:
        out += pb_bytes(2, _encode_message(m))
    if rpc.control is not None and not rpc.control.is_empty():
        out += pb_bytes(3, _encode_control(rpc.control))
    return bytes(out)


# --- decoding -----------------------------------------------------------------------------


def _fields(data: bytes, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    try:
        yield from pb_fields_typed(data, max_size=MAX_RPC_SIZE)
    except SerializationError as exc:
        raise SerializationError(f"malformed {what}: {exc}") from None


def _topic(value: int | bytes, wt: int, what: str) -> str:
    raw = pb_want_bytes(what, wt, value)
    if len(raw) > MAX_TOPIC_SIZE:
        raise SerializationError(f"{what} of {len(raw)} bytes exceeds {MAX_TOPIC_SIZE}")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SerializationError(f"{what} is not UTF-8") from None


def _msg_id(value: int | bytes, wt: int, what: str) -> bytes:
    raw = pb_want_bytes(what, wt, value)
    if len(raw) > MAX_MESSAGE_ID_SIZE:
        raise SerializationError(f"{what} of {len(raw)} bytes exceeds {MAX_MESSAGE_ID_SIZE}")
    return raw


def _count(items: Sized, limit: int, what: str) -> None:
    if len(items) > limit:
        raise SerializationError(f"more than {limit} {what} in one RPC")


def _decode_subopts(data: bytes) -> SubOpts:
    subscribe = False
    topic: str | None = None
    for f, wt, v in _fields(data, "SubOpts"):
        if f == 1:
            subscribe = bool(pb_want_int("SubOpts.subscribe", wt, v))
        elif f == 2:
            topic = _topic(v, wt, "SubOpts.topicid")
    if topic is None:
        raise SerializationError("SubOpts lacks a topic")
    return SubOpts(subscribe, topic)


def decode_message(data: bytes) -> Message:
    """Decode one ``Message``; raises :class:`SerializationError` when malformed."""
    vals: dict[int, bytes] = {}
    topic: str | None = None
    for f, wt, v in _fields(data, "Message"):
        if f == 4:
            if topic is not None:
                raise SerializationError("a Message with more than one topic")
            topic = _topic(v, wt, "Message.topic")
        elif f in (1, 2, 3, 5, 6):
            vals[f] = pb_want_bytes(f"Message field {f}", wt, v)
    if topic is None:
        raise SerializationError("Message lacks a topic")
    return Message(
        topic=topic,
        data=vals.get(2, b""),
        from_=vals.get(1),
        seqno=vals.get(3),
        signature=vals.get(5),
        key=vals.get(6),
    )


def _ids(data: bytes, field: int, what: str) -> tuple[bytes, ...]:
    ids: list[bytes] = []
    for f, wt, v in _fields(data, what):
        if f == field:
            ids.append(_msg_id(v, wt, f"{what} message id"))
            if len(ids) > MAX_IDS_PER_ENTRY:
                raise SerializationError(f"more than {MAX_IDS_PER_ENTRY} ids in one {what}")
    return tuple(ids)


def _decode_prune(data: bytes) -> Prune:
    topic: str | None = None
    peers: list[PeerInfo] = []
    backoff: int | None = None
    for f, wt, v in _fields(data, "PRUNE"):
        if f == 1:
            topic = _topic(v, wt, "PRUNE.topicID")
        elif f == 2:
            pid: bytes | None = None
            rec: bytes | None = None
            for pf, pwt, pv in _fields(pb_want_bytes("PRUNE.peers", wt, v), "PeerInfo"):
                if pf == 1:
                    pid = pb_want_bytes("PeerInfo.peerID", pwt, pv)
                    if len(pid) > MAX_MESSAGE_ID_SIZE:
                        raise SerializationError(f"PeerInfo.peerID of {len(pid)} bytes")
                elif pf == 2:
                    rec = pb_want_bytes("PeerInfo.signedPeerRecord", pwt, pv)
                    if len(rec) > MAX_PEER_RECORD_SIZE:
                        raise SerializationError(
                            f"signed peer record of {len(rec)} bytes exceeds {MAX_PEER_RECORD_SIZE}"
                        )
            if pid is not None:
                peers.append(PeerInfo(pid, rec))
                if len(peers) > MAX_PX_PEERS:
                    raise SerializationError(f"more than {MAX_PX_PEERS} peers in one PRUNE")
        elif f == 3:
            backoff = pb_want_int("PRUNE.backoff", wt, v)
    if topic is None:
        raise SerializationError("PRUNE lacks a topic")
    return Prune(topic, tuple(peers), backoff)


def _decode_control(data: bytes) -> Control:
    ihave: list[IHave] = []
    iwant: list[IWant] = []
    graft: list[Graft] = []
    prune: list[Prune] = []
    idontwant: list[IWant] = []
    for f, wt, v in _fields(data, "ControlMessage"):
        if f == 1:
            body = pb_want_bytes("IHAVE", wt, v)
            topic = ""
            for hf, hwt, hv in _fields(body, "IHAVE"):
                if hf == 1:
                    topic = _topic(hv, hwt, "IHAVE.topicID")
            ihave.append(IHave(topic, _ids(body, 2, "IHAVE")))
            _count(ihave, MAX_CONTROL_ENTRIES, "IHAVE entries")
        elif f == 2:
            iwant.append(IWant(_ids(pb_want_bytes("IWANT", wt, v), 1, "IWANT")))
            _count(iwant, MAX_CONTROL_ENTRIES, "IWANT entries")
        elif f == 3:
            gtopic: str | None = None
            for gf, gwt, gv in _fields(pb_want_bytes("GRAFT", wt, v), "GRAFT"):
                if gf == 1:
                    gtopic = _topic(gv, gwt, "GRAFT.topicID")
            if gtopic is None:
                raise SerializationError("GRAFT lacks a topic")
            graft.append(Graft(gtopic))
            _count(graft, MAX_CONTROL_ENTRIES, "GRAFT entries")
        elif f == 4:
            prune.append(_decode_prune(pb_want_bytes("PRUNE", wt, v)))
            _count(prune, MAX_CONTROL_ENTRIES, "PRUNE entries")
        elif f == 5:
            idontwant.append(IWant(_ids(pb_want_bytes("IDONTWANT", wt, v), 1, "IDONTWANT")))
            _count(idontwant, MAX_CONTROL_ENTRIES, "IDONTWANT entries")
    return Control(tuple(ihave), tuple(iwant), tuple(graft), tuple(prune), tuple(idontwant))


def decode_rpc(data: bytes, known: Mapping[bytes, Message] | None = None) -> RPC:
    """Decode one RPC (without its length prefix).

    ``known`` maps encoded messages to their decoded form: a ``publish`` entry found
    there (a further copy of a message we hold) is taken from it, not decoded again.
    Raises :class:`SerializationError` when it is malformed or exceeds a limit,
    and :class:`~switchy.stack.errors.MessageTooLarge` above :data:`MAX_RPC_SIZE`.
    """
    subs: list[SubOpts] = []
    msgs: list[Message] = []
    control: Control | None = None
    for f, wt, v in pb_fields_typed(data, max_size=MAX_RPC_SIZE):
        if f == 1:
            subs.append(_decode_subopts(pb_want_bytes("RPC.subscriptions", wt, v)))
            _count(subs, MAX_SUBSCRIPTIONS_PER_RPC, "subscriptions")
        elif f == 2:
            raw = pb_want_bytes("RPC.publish", wt, v)
            m = known.get(raw) if known is not None else None
            msgs.append(decode_message(raw) if m is None else m)
            _count(msgs, MAX_MESSAGES_PER_RPC, "messages")
        elif f == 3:
            if control is not None:
                raise SerializationError("an RPC with more than one control message")
            control = _decode_control(pb_want_bytes("RPC.control", wt, v))
    return RPC(tuple(subs), tuple(msgs), control)
