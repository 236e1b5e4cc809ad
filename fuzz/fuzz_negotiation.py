"""multistream-select: the dialer's and the listener's sans-IO cores fed arbitrary bytes."""

from __future__ import annotations

from _harness import chunks, expected, instrumented, main

with instrumented():
    from switchy.stack.negotiation import DialerNegotiation, ListenerNegotiation

_SUPPORTED = ("/ipfs/ping/1.0.0", "/yamux/1.0.0", "/noise")


def test_one_input(data: bytes) -> None:
    mode = data[0] % 4 if data else 0
    pieces = chunks(data[1:])
    if mode == 0:
        core: DialerNegotiation | ListenerNegotiation = ListenerNegotiation(
            _SUPPORTED, lambda: list(_SUPPORTED)
        )
    elif mode == 1:
        core = DialerNegotiation(["/yamux/1.0.0", "/mplex/6.7.0"])
    elif mode == 2:
        core = DialerNegotiation(["/yamux/1.0.0"], lazy=True)
    else:
        core = DialerNegotiation([], list_only=True)
    with expected():
        for piece in pieces:
            core.receive_data(piece)
            core.data_to_send()
            if core.done:
                break


if __name__ == "__main__":
    main(test_one_input)
