"""ChunkBuffer: never loses, duplicates or reorders bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.buffer import ChunkBuffer


@given(
    st.lists(st.binary(max_size=100), max_size=20),
    st.lists(st.integers(1, 150) | st.just(-1), min_size=1),
)
def test_takes_return_exactly_what_was_appended(chunks: list[bytes], sizes: list[int]) -> None:
    buf = ChunkBuffer()
    for c in chunks:
        buf.append(c)
    assert buf.size == sum(map(len, chunks))
    out = bytearray()
    i = 0
    while buf:
        n = sizes[i % len(sizes)]
        piece = buf.take(n)
        assert piece
        assert n < 0 or len(piece) <= n
        out += piece
        i += 1
    assert bytes(out) == b"".join(chunks)
    assert buf.take() == b"" and len(buf) == 0


def test_clear_reports_dropped_bytes() -> None:
    buf = ChunkBuffer()
    buf.append(b"abc")
    buf.append(b"")
    buf.append(b"de")
    assert buf.take(0) == b""
    assert buf.take(2) == b"ab"
    assert buf.clear() == 3
    assert not buf
