"""identify: one message and a whole identify stream (varint-delimited, merged)."""

from __future__ import annotations

from _harness import expected, instrumented, main

with instrumented():
    from switchy.protocols.identify import decode_identify, decode_identify_stream, encode_identify


def test_one_input(data: bytes) -> None:
    with expected():
        info = decode_identify(data)
        encode_identify(info)  # what was accepted can be sent on
    with expected():
        decode_identify_stream(data)


if __name__ == "__main__":
    main(test_one_input)
