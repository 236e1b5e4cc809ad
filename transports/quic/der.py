"""The few pieces of ASN.1 DER the libp2p TLS certificate needs, strict and bounded.

Only definite, minimally encoded lengths and single-byte tags are accepted;
every length is checked against the bytes present.  This is enough for the
libp2p ``SignedKey`` structure and for walking a certificate's
``tbsCertificate`` to its ``SubjectPublicKeyInfo``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import attrs

from switchy.stack.errors import SerializationError

__all__ = [
    "MAX_DER_SIZE",
    "TAG_OCTET_STRING",
    "TAG_SEQUENCE",
    "Tlv",
    "der_children",
    "der_encode",
    "der_read",
    "der_read_one",
]

TAG_INTEGER: Final = 0x02
TAG_OCTET_STRING: Final = 0x04
TAG_SEQUENCE: Final = 0x30
#: Largest DER structure accepted (a certificate is a few hundred bytes).
MAX_DER_SIZE: Final = 64 * 1024
#: At most this many length bytes (4 bytes cover MAX_DER_SIZE many times over).
_MAX_LENGTH_BYTES: Final = 4


@attrs.frozen
class Tlv:
    """One DER element: ``tag``, the whole element ``data[start:end]`` and its content."""

    tag: int
    start: int
    content_start: int
    end: int

    def raw(self, data: bytes) -> bytes:
        """The element's full encoding (tag, length and content)."""
        return data[self.start : self.end]

    def content(self, data: bytes) -> bytes:
        """The element's content bytes."""
        return data[self.content_start : self.end]


def der_read(data: bytes, pos: int = 0, limit: int | None = None) -> Tlv:
    """Read the element starting at ``pos`` (not past ``limit``); SerializationError if bad."""
    end_limit = len(data) if limit is None else limit
    if end_limit > MAX_DER_SIZE:
        raise SerializationError(f"DER structure of {end_limit} bytes exceeds {MAX_DER_SIZE}")
    if pos + 2 > end_limit:
        raise SerializationError(f"truncated DER element at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise SerializationError(f"multi-byte DER tag at offset {pos} is not supported")
    first = data[pos + 1]
    p = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0:
            raise SerializationError(f"indefinite DER length at offset {pos}")
        if n > _MAX_LENGTH_BYTES:
            raise SerializationError(f"DER length of {n} bytes at offset {pos} is too long")
        if p + n > end_limit:
            raise SerializationError(f"truncated DER length at offset {pos}")
        length = int.from_bytes(data[p : p + n], "big")
        if length < 0x80 or data[p] == 0:
            raise SerializationError(f"non-minimal DER length at offset {pos}")
        p += n
    if p + length > end_limit:
        raise SerializationError(
            f"DER element at offset {pos} claims {length} bytes, only {end_limit - p} remain"
        )
    return Tlv(tag, pos, p, p + length)


def der_read_one(data: bytes, tag: int) -> Tlv:
    """Read ``data`` as exactly one element with ``tag`` (no trailing bytes)."""
    tlv = der_read(data)
    if tlv.tag != tag:
        raise SerializationError(f"expected DER tag 0x{tag:02x}, got 0x{tlv.tag:02x}")
    if tlv.end != len(data):
        raise SerializationError(f"{len(data) - tlv.end} trailing bytes after DER element")
    return tlv


def der_children(data: bytes, parent: Tlv) -> Iterator[Tlv]:
    """The elements inside a constructed element, in order."""
    pos = parent.content_start
    while pos < parent.end:
        child = der_read(data, pos, parent.end)
        yield child
        pos = child.end


def der_encode(tag: int, content: bytes) -> bytes:
    """Encode one element with a minimal definite length."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content
