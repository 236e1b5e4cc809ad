"""The pubsub RPC codec: round trips, the wire layout, and bad input bounded."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.protocols.pubsub.pb import (
    MAX_IDS_PER_ENTRY,
    MAX_MESSAGE_ID_SIZE,
    MAX_PX_PEERS,
    MAX_RPC_SIZE,
    MAX_TOPIC_SIZE,
    RPC,
    SIGNING_PREFIX,
    Control,
    Graft,
    IHave,
    IWant,
    Message,
    PeerInfo,
    Prune,
    SubOpts,
    decode_rpc,
    encode_rpc,
    signing_bytes,
)
from switchy.stack.codec import pb_bytes, pb_varint
from switchy.stack.errors import MessageTooLarge, SerializationError

topics = st.text(max_size=20)
ids = st.binary(max_size=48)
opt_bytes = st.none() | st.binary(max_size=40)
messages = st.builds(
    Message,
    topic=topics,
    data=st.binary(max_size=100),
    from_=opt_bytes,
    seqno=opt_bytes,
    signature=opt_bytes,
    key=opt_bytes,
)
prunes = st.builds(
    Prune,
    topic=topics,
    peers=st.lists(st.builds(PeerInfo, st.binary(max_size=40), opt_bytes), max_size=4).map(tuple),
    backoff=st.none() | st.integers(0, 1 << 40),
)
controls = st.builds(
    Control,
    ihave=st.lists(st.builds(IHave, topics, st.lists(ids, max_size=5).map(tuple)), max_size=3).map(
        tuple
    ),
    iwant=st.lists(
        st.builds(IWant, st.lists(ids, min_size=1, max_size=5).map(tuple)), max_size=2
    ).map(tuple),
    graft=st.lists(st.builds(Graft, topics), max_size=3).map(tuple),
    prune=st.lists(prunes, max_size=3).map(tuple),
    idontwant=st.lists(
        st.builds(IWant, st.lists(ids, min_size=1, max_size=3).map(tuple)), max_size=2
    ).map(tuple),
)
rpcs = st.builds(
    RPC,
    subscriptions=st.lists(st.builds(SubOpts, st.booleans(), topics), max_size=4).map(tuple),
    publish=st.lists(messages, max_size=4).map(tuple),
    control=st.none() | controls,
)


def _normal(rpc: RPC) -> RPC:
    # An empty control message is not sent; an empty IWANT decodes as an empty one.
    if rpc.control is not None and rpc.control.is_empty():
        return RPC(rpc.subscriptions, rpc.publish, None)
    return rpc


@given(rpcs)
def test_round_trip(rpc: RPC) -> None:
    assert decode_rpc(encode_rpc(rpc)) == _normal(rpc)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_serialization_errors(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        decode_rpc(data)


def test_wire_layout_of_field_numbers() -> None:
    m = Message(topic="t", data=b"d", from_=b"F", seqno=b"S", signature=b"G", key=b"K")
    # Message: from=1 data=2 seqno=3 topic=4 signature=5 key=6, in number order.
    assert encode_rpc(RPC(publish=(m,))) == pb_bytes(
        2,
        pb_bytes(1, b"F")
        + pb_bytes(2, b"d")
        + pb_bytes(3, b"S")
        + pb_bytes(4, b"t")
        + pb_bytes(5, b"G")
        + pb_bytes(6, b"K"),
    )
    sub = encode_rpc(RPC(subscriptions=(SubOpts(True, "x"),)))
    assert sub == pb_bytes(1, pb_varint(1, 1) + pb_bytes(2, b"x"))
    ctl = Control(graft=(Graft("g"),), prune=(Prune("p", (PeerInfo(b"P"),), 60),))
    assert encode_rpc(RPC(control=ctl)) == pb_bytes(
        3,
        pb_bytes(3, pb_bytes(1, b"g"))
        + pb_bytes(4, pb_bytes(1, b"p") + pb_bytes(2, pb_bytes(1, b"P")) + pb_varint(3, 60)),
    )
    # The signature covers the prefix and the message without signature and key.
    assert signing_bytes(m) == SIGNING_PREFIX + (
        pb_bytes(1, b"F") + pb_bytes(2, b"d") + pb_bytes(3, b"S") + pb_bytes(4, b"t")
    )


def test_unknown_fields_are_skipped() -> None:
    data = encode_rpc(RPC(subscriptions=(SubOpts(True, "x"),))) + pb_varint(9, 7)
    assert decode_rpc(data) == RPC(subscriptions=(SubOpts(True, "x"),))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pb_bytes(1, pb_bytes(2, b"x" * (MAX_TOPIC_SIZE + 1))), "exceeds"),
        (pb_bytes(1, pb_bytes(2, b"\xff")), "not UTF-8"),
        (pb_bytes(1, pb_varint(1, 1)), "lacks a topic"),
        (pb_bytes(2, pb_bytes(2, b"data")), "lacks a topic"),
        (pb_bytes(2, pb_bytes(4, b"a") + pb_bytes(4, b"b")), "more than one topic"),
        (pb_varint(2, 5), "length-delimited"),
        (pb_bytes(3, pb_bytes(2, pb_bytes(1, b"i" * (MAX_MESSAGE_ID_SIZE + 1)))), "exceeds"),
        (pb_bytes(3, pb_bytes(3, b"")), "GRAFT lacks a topic"),
        (pb_bytes(3, b"") + pb_bytes(3, b""), "more than one control"),
        (pb_bytes(1, b"\x0a\xff"), "malformed"),
    ],
)
def test_malformed_rpcs_are_named(data: bytes, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        decode_rpc(data)


def test_list_limits() -> None:
    many_ids = b"".join(pb_bytes(1, b"i") for _ in range(MAX_IDS_PER_ENTRY + 1))
    with pytest.raises(SerializationError, match=f"more than {MAX_IDS_PER_ENTRY} ids"):
        decode_rpc(pb_bytes(3, pb_bytes(2, many_ids)))
    peers = b"".join(pb_bytes(2, pb_bytes(1, b"p")) for _ in range(MAX_PX_PEERS + 1))
    with pytest.raises(SerializationError, match=f"more than {MAX_PX_PEERS} peers"):
        decode_rpc(pb_bytes(3, pb_bytes(4, pb_bytes(1, b"t") + peers)))
    subs = b"".join(pb_bytes(1, pb_bytes(2, b"t")) for _ in range(1001))
    with pytest.raises(SerializationError, match="more than 1000 subscriptions"):
        decode_rpc(subs)
    with pytest.raises(MessageTooLarge):
        decode_rpc(b"\x00" * (MAX_RPC_SIZE + 1))
