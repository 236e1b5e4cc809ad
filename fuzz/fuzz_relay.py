"""Circuit relay v2: HopMessage, StopMessage, reservation vouchers and their framing."""

from __future__ import annotations

from _harness import expected, instrumented, main

with instrumented():
    from switchy.transports.relay.pb import (
        decode_frame,
        decode_hop,
        decode_stop,
        decode_voucher,
        encode_hop,
        encode_stop,
    )


def test_one_input(data: bytes) -> None:
    with expected():
        encode_hop(decode_hop(data))
    with expected():
        encode_stop(decode_stop(data))
    with expected():
        decode_voucher(data)
    with expected():
        decode_frame(data)


if __name__ == "__main__":
    main(test_one_input)
