"""yamux: the sans-IO session (both roles) fed arbitrary frames, with local actions mixed in."""

from __future__ import annotations

from _harness import chunks, expected, instrumented, main

with instrumented():
    from switchy.stack.mux.yamux_core import DataReceived, StreamOpened, YamuxSession


def test_one_input(data: bytes) -> None:
    initiator = bool(data and data[0] & 0x80)
    session = YamuxSession(initiator, max_streams=8, max_ack_backlog=4)
    with expected():
        own = session.open_stream()
        session.send_data(own, b"x" * 100)
        for i, piece in enumerate(chunks(data)):
            events = session.receive_data(piece, now=float(i))
            for ev in events:
                if isinstance(ev, StreamOpened):
                    if i % 3 == 2:
                        session.reset_stream(ev.stream_id, refused=True)
                    else:
                        session.accept_stream(ev.stream_id)
                elif isinstance(ev, DataReceived) and ev.stream_id in session.stream_ids():
                    session.consume(ev.stream_id, len(ev.data), float(i))
                    if i % 4 == 1:
                        session.send_data(ev.stream_id, ev.data)
                        session.close_stream(ev.stream_id)
            if i % 2:
                session.data_to_send()


if __name__ == "__main__":
    main(test_one_input)
