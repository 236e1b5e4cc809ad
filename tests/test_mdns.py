"""mDNS: the DNS codec, the sans-IO discovery core, and two peers in network namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import string
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.discovery.dns import (
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    DnsMessage,
    Question,
    Record,
    decode_dns,
    encode_dns,
)
from switchy.protocols.discovery.mdns import (
    SERVICE_NAME,
    MdnsCore,
    MdnsPeer,
    MdnsService,
    _lan_usable,
    random_peer_name,
)
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import DiscoveryFailed, MessageTooLarge, ProtocolError, SerializationError
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node
from switchy.transports.sim import SimTransport, Simulation, run_simulation

A = KeyPair.from_seed(b"A" * 32).peer_id
B = KeyPair.from_seed(b"B" * 32).peer_id
A_ADDR = Multiaddr("/ip4/192.0.2.1/tcp/4001")
B_ADDR = Multiaddr("/ip4/192.0.2.2/tcp/4002")

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
records = st.one_of(
    st.builds(Record, names, st.just(TYPE_PTR), st.integers(0, 2**32 - 1), target=names),
    st.builds(
        Record,
        names,
        st.just(TYPE_TXT),
        st.integers(0, 2**32 - 1),
        strings=st.lists(st.binary(max_size=255), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Record,
        names,
        st.just(TYPE_SRV),
        st.integers(0, 2**32 - 1),
        target=names,
        priority=st.integers(0, 65535),
        weight=st.integers(0, 65535),
        port=st.integers(0, 65535),
    ),
    st.builds(Record, names, st.just(TYPE_A), st.just(60), address=st.ip_addresses(v=4).map(str)),
    st.builds(
        Record, names, st.just(TYPE_AAAA), st.just(60), address=st.ip_addresses(v=6).map(str)
    ),
    st.builds(Record, names, st.just(99), st.just(60), raw=st.binary(max_size=20)),
)
messages = st.builds(
    DnsMessage,
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.lists(st.builds(Question, names, st.integers(0, 65535)), max_size=3).map(tuple),
    st.lists(records, max_size=3).map(tuple),
    st.lists(records, max_size=2).map(tuple),
    st.lists(records, max_size=3).map(tuple),
)


@given(messages)
def test_dns_messages_round_trip(msg: DnsMessage) -> None:
    assert decode_dns(encode_dns(msg)) == msg


@given(st.binary(max_size=120))
def test_dns_garbage_is_an_error_never_a_crash(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_dns(data)


def test_dns_query_bytes_and_compression_pointers() -> None:
    query = encode_dns(DnsMessage(questions=(Question(SERVICE_NAME, TYPE_PTR),)))
    assert query == (
        bytes.fromhex("000000000001000000000000")
        + b"\x04_p2p\x04_udp\x05local\x00"
        + b"\x00\x0c\x00\x01"
    )
    # An answer whose name and PTR target point back at the question's name (offset 12).
    answer = (
        bytes.fromhex("000084000001000100000000")
        + b"\x04_p2p\x04_udp\x05local\x00\x00\x0c\x00\x01"
        + b"\xc0\x0c\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x07"
        + b"\x04peer\xc0\x0c"
    )
    msg = decode_dns(answer)
    assert msg.is_response
    assert msg.answers == (
        Record(SERVICE_NAME, TYPE_PTR, 120, CLASS_IN, target="peer._p2p._udp.local"),
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00" * 11, "shorter than its header"),
        (bytes.fromhex("000000000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01", "point back"),
        (bytes.fromhex("000000000001000000000000") + b"\x05ab", "past the end"),
        (bytes.fromhex("000000000001000000000000") + b"\x40a\x00", "label type"),
        (bytes.fromhex("0000000000ff00ff00ff00ff"), "claims 1020 entries"),
        (bytes.fromhex("000000000001000000000000") + b"\x00\x00", "truncated DNS question"),
        (
            bytes.fromhex("000000000000000100000000")
            + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x03abc",
            "not 4",
        ),
        (
            bytes.fromhex("000000000000000100000000")
            + b"\x00\x00\x10\x00\x01\x00\x00\x00\x00\x00\x02\x05a",
            "TXT string runs past",
        ),
        (
            bytes.fromhex("000000000000000100000000")
            + b"\x00\x00\x10\x00\x01\x00\x00\x00\x00\x00\x09",
            "runs past the message",
        ),
    ],
)
def test_malformed_dns_names_the_problem(data: bytes, error: str) -> None:
    with pytest.raises(SerializationError, match=error):
        decode_dns(data)


def test_dns_limits() -> None:
    with pytest.raises(MessageTooLarge):
        decode_dns(b"\x00" * 9001)
    with pytest.raises(SerializationError, match="1 to 63"):
        encode_dns(DnsMessage(questions=(Question("x" * 64, TYPE_PTR),)))
    with pytest.raises(SerializationError, match="exceeds 255"):
        encode_dns(DnsMessage(questions=(Question(".".join(["x" * 60] * 5), TYPE_PTR),)))
    with pytest.raises(SerializationError, match="TXT string"):
        encode_dns(DnsMessage(answers=(Record("a", TYPE_TXT, 1, strings=(b"x" * 256,)),)))


def test_two_cores_find_each_other_with_names() -> None:
    a = MdnsCore(A, random_peer_name())
    b = MdnsCore(B, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    a.addrs, b.addrs = [A_ADDR], [B_ADDR]
    b.names = ["living-room"]
    reply, found = b.receive(a.query())
    assert found == [] and reply is not None
    answer = decode_dns(reply)
    assert answer.answers[0] == Record(
        SERVICE_NAME, TYPE_PTR, 120, target=f"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.{SERVICE_NAME}"
    )
    txt = answer.additionals[0]
    assert txt.rtype == TYPE_TXT and txt.name == answer.answers[0].target
    assert txt.strings == (f"dnsaddr={B_ADDR}/p2p/{B}".encode(), b"switchy-name=living-room")
    nothing, peers = a.receive(reply)
    assert nothing is None
    assert [(p.peer_id, p.addrs, p.names) for p in peers] == [(B, (B_ADDR,), ("living-room",))]
    # Our own announcements (and queries we answer ourselves) find no one.
    assert a.receive(a.announcement()) == (None, [])
    own_reply, _ = a.receive(a.query())
    assert own_reply is not None and a.receive(own_reply)[1] == []
    # Direct TXT query and the DNS-SD meta query are answered; unrelated queries are not.
    direct = encode_dns(DnsMessage(questions=(Question(b.instance, TYPE_TXT),)))
    assert decode_dns(b.receive(direct)[0] or b"").answers[0].strings == txt.strings
    meta = encode_dns(DnsMessage(questions=(Question("_services._dns-sd._udp.local", TYPE_PTR),)))
    assert decode_dns(b.receive(meta)[0] or b"").answers[0].target == SERVICE_NAME
    other = encode_dns(DnsMessage(questions=(Question("_http._tcp.local", TYPE_PTR),)))
    assert b.receive(other) == (None, [])


@given(
    st.lists(st.integers(1, 65535), min_size=1, max_size=8, unique=True),
    st.lists(st.sampled_from(["tv", "radio", "living-room", "küche"]), max_size=3, unique=True),
)
def test_any_announcement_is_found_as_sent(ports: list[int], names: list[str]) -> None:
    a, b = MdnsCore(A, "a" * 32), MdnsCore(B, "b" * 32)
    b.addrs = [Multiaddr(f"/ip4/192.0.2.2/tcp/{p}") for p in ports]
    b.names = names
    reply, _ = b.receive(a.query())
    assert reply is not None
    peers = a.receive(reply)[1]
    assert [(p.peer_id, list(p.addrs), list(p.names)) for p in peers] == [(B, b.addrs, names)]


def test_core_skips_bad_txt_entries_and_untrusted_names() -> None:
    core = MdnsCore(A, "a" * 32)
    inst = f"x.{SERVICE_NAME}"
    ptr = Record(SERVICE_NAME, TYPE_PTR, 120, target=inst)
    txt = Record(
        inst,
        TYPE_TXT,
        120,
        strings=(
            b"dnsaddr=/ip4/192.0.2.9/tcp/1",  # no /p2p: skipped
            b"dnsaddr=not a multiaddr",
            b"dnsaddr=\xff\xfe",
            f"dnsaddr={B_ADDR}/p2p/{B}".encode(),
            f"dnsaddr={A_ADDR}/p2p/{A}".encode(),  # two peers in one record
            b"switchy-name=tv",
            b"other=ignored",
        ),
    )
    stray = Record(
        f"y.{SERVICE_NAME}", TYPE_TXT, 120, strings=(f"dnsaddr={B_ADDR}/p2p/{A}".encode(),)
    )
    reply = encode_dns(DnsMessage(flags=0x8400, answers=(ptr,), additionals=(txt, stray)))
    peers = core.receive(reply)[1]
    # B is found; names are dropped as the record mixes two peers; A (ourselves) is skipped;
    # the TXT of an instance no PTR named is ignored.
    assert [(p.peer_id, p.addrs, p.names) for p in peers] == [(B, (B_ADDR,), ())]


def test_lan_address_filter_and_peer_names() -> None:
    assert _lan_usable(Multiaddr("/ip4/169.254.7.1/tcp/1"))
    for bad in ("/ip4/127.0.0.1/tcp/1", "/ip4/0.0.0.0/tcp/1", "/ip6/::1/tcp/1", "/memory/4001"):
        assert not _lan_usable(Multiaddr(bad))
    name = random_peer_name()
    assert len(name) == 32 and set(name) <= set(string.ascii_lowercase + string.digits)


# --- two peers in two network namespaces ------------------------------------------------


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair (169.254.77.1 and .2)."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("mDNS namespace test needs Linux and iproute2 ('ip')")
    if os.geteuid() != 0:
        pytest.skip("mDNS namespace test needs root to create network namespaces (ip netns)")
    tag = uuid.uuid4().hex[:6]
    ns = (f"swa-{tag}", f"swb-{tag}")
    made: list[str] = []
    try:
        for n in ns:
            _run("ip", "netns", "add", n)
            made.append(n)
        _run(
            "ip",
            "link",
            "add",
            f"va{tag}",
            "netns",
            ns[0],
            "type",
            "veth",
            "peer",
            "name",
            f"vb{tag}",
            "netns",
            ns[1],
        )
        for n, dev, addr in (
            (ns[0], f"va{tag}", "169.254.77.1"),
            (ns[1], f"vb{tag}", "169.254.77.2"),
        ):
            _run("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", n, "link", "set", dev, "up")
            _run("ip", "-n", n, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        pytest.skip(f"cannot create network namespaces here: {reason}")
    try:
        yield ns
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


def test_mdns_between_two_network_namespaces(namespaces: tuple[str, str]) -> None:
    script = str(Path(__file__).with_name("netns_mdns_peer.py"))
    root = str(Path(__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    serve = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            namespaces[0],
            sys.executable,
            script,
            "serve",
            "169.254.77.1",
            "kitchen",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert line, f"serving peer failed: {serve.stderr.read() if serve.stderr else ''}"
        server_id = json.loads(line)["peer_id"]
        find = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                namespaces[1],
                sys.executable,
                script,
                "find",
                "169.254.77.2",
                "kitchen",
            ],
            capture_output=True,
            text=True,
            timeout=40,
            env=env,
            cwd=root,
        )
        assert find.returncode == 0, find.stderr
        result = json.loads(find.stdout.strip().splitlines()[-1])
        assert result["peer_id"] == server_id
        assert result["names"] == ["kitchen"]
        assert result["pings"] == 3
        assert server_id in result["events"]
        assert all(a.startswith("/ip4/169.254.77.1/tcp/") for a in result["addrs"])
    finally:
        serve.communicate(input="", timeout=20)
    assert serve.returncode == 0, serve.stderr


class _FakeDatagramTransport:
    """Stands in for the multicast socket: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_mdns_service_adapter_in_virtual_time() -> None:
    """Answers are rate-limited, resolve re-queries, found peers reach callbacks and the store."""

    async def main(sim: Simulation) -> None:
        sim.network.add_host("a")
        config = NetworkConfig(discovery_timeout=3)
        node = Node(transports=[SimTransport(sim.network, "a")], config=config)
        mdns = MdnsService(peer_name="a" * 32)
        mdns.attach(node)  # not in services: start() would open a real socket
        with pytest.raises(DiscoveryFailed, match="not running"):
            await mdns.resolve("kitchen")
        fake = _FakeDatagramTransport()
        mdns.core = MdnsCore(node.peer_id, "a" * 32)
        mdns._transport = cast(Any, fake)
        events: list[MdnsPeer] = []
        mdns.on_peer_found(events.append)
        remote = MdnsCore(B, "b" * 32)
        remote.addrs, remote.names = [B_ADDR], ["kitchen"]
        # Six queries at once: one answer now, one deferred answer a second later.
        for _ in range(6):
            mdns._on_datagram(remote.query(), ("192.0.2.2", 5353))
        assert len(fake.sent) == 1 and decode_dns(fake.sent[0]).is_response
        await asyncio.sleep(1.0)
        assert len(fake.sent) == 2
        mdns._on_datagram(b"\x00garbage", ("192.0.2.2", 5353))  # ignored
        # resolve() queries every second until someone announces the name.
        fake.sent.clear()
        task = asyncio.ensure_future(mdns.resolve("kitchen"))
        await asyncio.sleep(2.5)
        assert len(fake.sent) == 3 and not decode_dns(fake.sent[0]).is_response
        mdns._on_datagram(remote.announcement(), ("192.0.2.2", 5353))
        found = await task
        assert (found.peer_id, found.addrs, found.verified) == (B, (B_ADDR,), False)
        assert [e.peer_id for e in events] == [B]
        assert node.peerstore.addrs(B) == [B_ADDR]
        # By peer id too; an unknown name fails after the discovery timeout.
        assert (await mdns.resolve(str(B))).peer_id == B
        start = sim.now
        with pytest.raises(DiscoveryFailed, match="within 3 s"):
            await mdns.resolve("nobody")
        assert sim.now - start == pytest.approx(3.0)
        await mdns.stop()
        assert fake.closed

    run_simulation(main, seed=1)
