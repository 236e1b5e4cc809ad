"""The other protobuf codecs peers send us: AutoNAT v1/v2, DCUtR, Kademlia, gossipsub."""

from __future__ import annotations

from _harness import expected, instrumented, main

with instrumented():
    from switchy.protocols.autonat import pb as autonat
    from switchy.protocols.dcutr import pb as dcutr
    from switchy.protocols.kad import pb as kad
    from switchy.protocols.pubsub import pb as pubsub


def test_one_input(data: bytes) -> None:
    mode = data[0] % 8 if data else 0
    body = data[1:]
    with expected():
        if mode == 0:
            autonat.decode_v2(body)
        elif mode == 1:
            autonat.decode_v1(body)
        elif mode == 2:
            autonat.decode_dial_back(body)
            autonat.decode_dial_back_response(body)
        elif mode == 3:
            dcutr.encode_holepunch(dcutr.decode_holepunch(body))
        elif mode == 4:
            dcutr.decode_frame(body)
        elif mode == 5:
            kad.encode_message(kad.decode_message(body))
        elif mode == 6:
            kad.decode_frame(body)
        else:
            pubsub.encode_rpc(pubsub.decode_rpc(body))


if __name__ == "__main__":
    main(test_one_input)
