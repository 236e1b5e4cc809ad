"""Router (REST-like over msgpack): request and response readers, the body decoders."""

from __future__ import annotations

from _harness import chunks, expected, instrumented, main

with instrumented():
    from switchy.protocols.router.core import MessageReader
    from switchy.protocols.router.messages import Request


def test_one_input(data: bytes) -> None:
    mode = data[0] % 3 if data else 0
    body = data[1:]
    with expected():
        if mode < 2:
            reader = MessageReader("request" if mode == 0 else "response", max_body_size=4096)
            for piece in chunks(body):
                reader.receive_data(piece)
                if reader.done:
                    break
            reader.receive_eof()
        else:
            req = Request("POST", "/x", body=body)
            req.json()
    with expected():
        Request("POST", "/x", body=body).msgpack()


if __name__ == "__main__":
    main(test_one_input)
