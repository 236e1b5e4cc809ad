"""Write the seed corpus (``fuzz/corpus/<harness>/``) from the stack's own encoders.

Run once after a wire format changes: ``python fuzz/make_corpus.py``.  The seeds are small
valid messages (a mode byte first where the harness has modes), from fixed keys, so the
fuzzer starts from inputs that pass the first checks.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from multiaddr import Multiaddr

from switchy.protocols.autonat import pb as autonat
from switchy.protocols.dcutr import pb as dcutr
from switchy.protocols.discovery import codec as disco
from switchy.protocols.discovery.claims import seal_name_claim
from switchy.protocols.discovery.mdns import MdnsCore
from switchy.protocols.identify import IdentifyInfo, encode_identify
from switchy.protocols.kad import pb as kad
from switchy.protocols.pubsub import pb as pubsub
from switchy.protocols.router.core import (
    encode_body,
    encode_request_head,
    encode_response_head,
)
from switchy.stack.envelope import PeerRecord, seal_peer_record
from switchy.stack.identity import KeyPair
from switchy.stack.negotiation import encode_line
from switchy.stack.security.noise_core import NoiseCredentials, NoiseHandshake
from switchy.transports.quic.tls import encode_signed_key, make_certificate
from switchy.transports.relay import pb as relay

HERE = Path(__file__).parent
KEY = KeyPair.from_seed(b"k" * 32)
OTHER = KeyPair.from_seed(b"o" * 32)
ADDR = Multiaddr("/ip4/192.0.2.1/tcp/4001")
QUIC = Multiaddr("/ip4/192.0.2.1/udp/4001/quic-v1")


def _noise() -> list[bytes]:
    # the same keys and ephemerals as fuzz_noise.py, so messages 1 and 2 fit its states
    alice_c = NoiseCredentials.create(KeyPair.from_seed(b"a" * 32), static=b"\x01" * 32)
    bob_c = NoiseCredentials.create(KeyPair.from_seed(b"b" * 32), static=b"\x02" * 32)
    alice = NoiseHandshake(True, alice_c, ephemeral=b"\x04" * 32)
    bob = NoiseHandshake(False, bob_c, ephemeral=b"\x03" * 32)
    m1 = alice.data_to_send()
    bob.receive_data(m1)
    m2 = bob.data_to_send()
    return [b"\x00" + bob_c.payload, b"\x01" + m1, b"\x02" + m2, b"\x03" + bob_c.payload]


def _quic() -> list[bytes]:
    from switchy.transports.quic.core import Libp2pQuicConnection, make_configuration

    cert = make_certificate(KeyPair.from_seed(b"c" * 32))
    client = Libp2pQuicConnection(
        configuration=make_configuration(cert, is_client=True), max_inbound_streams=8
    )
    client.connect(("127.0.0.1", 4433), 0.0)
    params = client._serialize_transport_parameters()
    initial = client.datagrams_to_send(0.0)[0][0]
    return [b"\x00" + initial, b"\x01" + initial[:64], b"\x02" + params]


def seeds() -> dict[str, list[bytes]]:
    """Harness name -> seed inputs."""
    record = seal_peer_record(KEY, PeerRecord(KEY.peer_id, 1, (ADDR, QUIC)))
    claim = seal_name_claim(KEY, "alice", (ADDR,), 1)
    info = IdentifyInfo(
        protocol_version="ipfs/0.1.0",
        agent_version="switchy/fuzz",
        public_key=KEY.public_key,
        listen_addrs=[ADDR, QUIC],
        observed_addr=ADDR,
        protocols=["/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"],
        signed_peer_record=record,
    )
    ident = encode_identify(info)
    peer = relay.Peer(OTHER.peer_id, (ADDR,))
    cert = make_certificate(KEY)
    signed = encode_signed_key(KEY.public_key.to_protobuf(), b"\x00" * 64)
    mdns_other = MdnsCore(OTHER.peer_id, "otherpeer")
    mdns_other.addrs = [Multiaddr(f"/ip4/192.168.1.3/tcp/4001/p2p/{OTHER.peer_id}")]
    mdns_other.names = ["bob"]
    header = encode_line("/multistream/1.0.0")
    return {
        "negotiation": [
            b"\x00" + header + encode_line("/ipfs/ping/1.0.0"),
            b"\x00" + header + encode_line("ls"),
            b"\x01" + header + encode_line("/yamux/1.0.0"),
            b"\x01" + header + encode_line("na"),
            b"\x03" + header + b"\x1d" + encode_line("/a") + encode_line("/b") + b"\n",
        ],
        "yamux": [
            bytes.fromhex("00 0001 0001 00000002 00000000".replace(" ", ""))
            + bytes.fromhex("00000000000000020000000568656c6c6f")
            + bytes.fromhex("000200010000000000000007")
            + bytes.fromhex("000300000000000000000000"),
            b"\x80"
            + bytes.fromhex("000100020000000100040000")
            + bytes.fromhex("000000040000000100000000"),
        ],
        "noise": _noise(),
        "identify": [ident, b"".join([bytes([len(ident) & 0x7F | 0x80, len(ident) >> 7]), ident])],
        "envelope": [
            b"\x00" + record,
            b"\x01" + record,
            b"\x02" + PeerRecord(KEY.peer_id, 1, (ADDR,)).encode(),
            b"\x03" + KEY.public_key.to_protobuf(),
            b"\x03" + KEY.peer_id.to_bytes(),
        ],
        "relay": [
            relay.encode_hop(relay.HopMessage(relay.HopType.CONNECT, peer=peer)),
            relay.encode_hop(
                relay.HopMessage(
                    relay.HopType.STATUS,
                    reservation=relay.Reservation(1_800_000_000, (ADDR,), record),
                    limit=relay.Limit(120, 1 << 17),
                    status=relay.Status.OK,
                )
            ),
            relay.encode_stop(relay.StopMessage(relay.StopType.CONNECT, peer=peer)),
        ],
        "discovery": [
            b"\x00" + disco.encode_message(disco.Register("alice", 3600, claim)),
            b"\x01"
            + disco.encode_frame(disco.Register("alice", 3600, claim))
            + disco.encode_frame(disco.Lookup("alice")),
            b"\x02" + claim,
            b"\x03" + disco.encode_frame(disco.Response(disco.Status.OK, "", 60, claim)),
        ],
        "router": [
            b"\x00"
            + encode_request_head("POST", "/echo", {"a": "1"}, {"content-type": "x"}, 5)
            + encode_body(b"hello"),
            b"\x01"
            + encode_response_head(200, {"content-type": "application/json"}, None)
            + encode_body(b'{"a": [1, 2]}'),
            b"\x02" + b'{"a": [1, 2, {"b": null}]}',
        ],
        "mdns": [MdnsCore(KEY.peer_id, "x").query(), mdns_other.announcement()],
        "wire_codecs": [
            b"\x00" + autonat.encode_v2(autonat.DialRequest.of([ADDR, QUIC], 7)),
            b"\x03" + dcutr.encode_holepunch(dcutr.HolePunch(dcutr.HolePunchType.CONNECT, (ADDR,))),
            b"\x05"
            + kad.encode_message(
                kad.KadMessage(
                    kad.MessageType.FIND_NODE,
                    key=KEY.peer_id.to_bytes(),
                    closer_peers=kad.peers_of([(OTHER.peer_id, [ADDR])]),
                )
            ),
            b"\x07"
            + pubsub.encode_rpc(
                pubsub.RPC(
                    subscriptions=(pubsub.SubOpts(True, "news"),),
                    publish=(pubsub.Message("news", b"hi", seqno=b"\x00" * 8),),
                )
            ),
        ],
        "http": [
            b"\x00GET /x HTTP/1.1\r\nHost: p2p\r\nContent-Length: 2\r\n\r\nhi",
            b"\x01HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            b"\x02bytes=0-99",
        ],
        "quic": _quic(),
        "tls": [b"\x00" + cert.der, b"\x01" + signed, b"\x02" + signed],
    }


def main() -> int:
    """Write every seed (named by its hash), replacing the old corpus."""
    for name, items in seeds().items():
        folder = HERE / "corpus" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for item in items:
            (folder / hashlib.sha256(item).hexdigest()[:16]).write_bytes(item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
