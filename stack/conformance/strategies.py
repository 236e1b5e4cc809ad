"""Hypothesis strategies shipped with the conformance suites.

Use them in your own property tests too::

    from switchy.stack.conformance import strategies
    @given(strategies.messages(), strategies.chunkings())
    def test_mine(data, cuts): ...
"""

from __future__ import annotations

from hypothesis import strategies as st

from switchy.stack.negotiation import MAX_PROTOCOL_ID_LENGTH

__all__ = ["chunkings", "messages", "node_names", "paths", "protocol_ids"]


def messages(max_size: int = 1 << 20) -> st.SearchStrategy[bytes]:
    """Byte strings from empty to ``max_size``, biased to the edges (0, 1, large)."""
    return st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=64),
        st.binary(min_size=1, max_size=4096),
        st.integers(0, max_size).map(
            lambda n: bytes(range(256)) * (n // 256) + b"\x07" * (n % 256)
        ),
    )


def chunkings(max_cuts: int = 50) -> st.SearchStrategy[list[int]]:
    """Cut points for splitting a message into writes (see ``_util.chunks_of``)."""
    return st.lists(st.integers(0, 1 << 24), max_size=max_cuts)


def protocol_ids() -> st.SearchStrategy[str]:
    """Valid multistream-select protocol ids: ``/`` then text without newlines."""
    return (
        st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\n"),
            min_size=1,
            max_size=100,
        )
        .map(lambda s: "/" + s)
        .filter(lambda s: len(s.encode()) <= MAX_PROTOCOL_ID_LENGTH)
    )


def node_names(max_size: int = 63) -> st.SearchStrategy[str]:
    """Human names for discovery: letters, digits and ``-``, 1..``max_size`` characters."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
    return st.text(alphabet, min_size=1, max_size=max_size)


def paths() -> st.SearchStrategy[str]:
    """URL-like paths for the request router: ``/`` followed by segments (may be empty)."""
    segment = st.text(
        st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/?#"),
        max_size=20,
    )
    return st.lists(segment, max_size=6).map(lambda segs: "/" + "/".join(segs))
