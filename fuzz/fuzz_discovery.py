"""Discovery registry protocol: messages, and the server's and client's stream cores."""

from __future__ import annotations

from _harness import chunks, expected, instrumented, main

with instrumented():
    from switchy.protocols.discovery.claims import open_name_claim
    from switchy.protocols.discovery.codec import (
        ClientCore,
        Lookup,
        ServerCore,
        decode_message,
        encode_message,
    )
    from switchy.protocols.discovery.registry import NameRegistry, RegistryLimits
    from switchy.stack.identity import KeyPair

_PEER = KeyPair.from_seed(b"p" * 32).peer_id


def test_one_input(data: bytes) -> None:
    mode = data[0] % 4 if data else 0
    body = data[1:]
    with expected():
        if mode == 0:
            encode_message(decode_message(body))
        elif mode == 1:  # the registry serving whatever requests the bytes carry
            server = ServerCore()
            registry = NameRegistry(RegistryLimits())
            for i, piece in enumerate(chunks(body)):
                for request in server.receive_data(piece):
                    server.send_response(registry.handle(_PEER, request, float(i)))
                server.data_to_send()
        elif mode == 2:
            open_name_claim(body)
        else:
            client = ClientCore()
            client.send_request(Lookup("alice"))
            client.data_to_send()
            for piece in chunks(body):
                client.receive_data(piece)


if __name__ == "__main__":
    main(test_one_input)
