"""HTTP over switchy: the server and client cores (h11 with our limits), Range headers."""

from __future__ import annotations

from _harness import chunks, expected, instrumented, main

with instrumented():
    import h11

    from switchy.protocols.http.core import ClientCore, ServerCore, parse_range


def test_one_input(data: bytes) -> None:
    mode = data[0] % 3 if data else 0
    body = data[1:]
    with expected():
        if mode == 2:
            parse_range(body, 1000)
            return
        core: ServerCore | ClientCore
        if mode == 0:
            core = ServerCore()
        else:
            core = ClientCore()
            core.request(b"GET", b"/", [])
            core.send(h11.EndOfMessage())
        for piece in [*chunks(body), b""]:
            core.receive(piece)
            while True:
                event = core.next_event()
                if (
                    event is h11.NEED_DATA
                    or event is h11.PAUSED
                    or isinstance(event, h11.ConnectionClosed)
                ):
                    break
            if event is h11.PAUSED:
                break


if __name__ == "__main__":
    main(test_one_input)
