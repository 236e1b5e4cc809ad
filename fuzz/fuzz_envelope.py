"""Signed envelopes and peer records: parse and verify arbitrary bytes, keys and peer ids."""

from __future__ import annotations

from _harness import expected, instrumented, main

with instrumented():
    from switchy.stack.envelope import PeerRecord, open_envelope, open_peer_record
    from switchy.stack.identity import PeerId, PublicKey


def test_one_input(data: bytes) -> None:
    mode = data[0] % 4 if data else 0
    body = data[1:]
    with expected():
        if mode == 0:
            open_peer_record(body)
        elif mode == 1:
            open_envelope(body, "libp2p-peer-record")
        elif mode == 2:
            record = PeerRecord.decode(body)
            record.encode()
        else:
            PublicKey.from_protobuf(body)
    if mode == 3:
        with expected():
            PeerId.from_bytes(body)
        with expected():
            PeerId.from_string(body.decode("utf-8", "replace"))


if __name__ == "__main__":
    main(test_one_input)
