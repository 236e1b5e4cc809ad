"""A small DNS message codec (RFC 1035), enough for mDNS service discovery.

Encodes and decodes headers, questions and resource records; PTR, SRV, TXT,
A and AAAA data are decoded into fields, other types are kept as raw bytes.
Names are written uncompressed and read with compression pointers, which
must point backwards (no loops).  Every count, length and offset is checked
against the bytes present and against the limits below.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import attrs

from switchy.stack.errors import MessageTooLarge, SerializationError

__all__ = [
    "CLASS_IN",
    "MAX_DNS_MESSAGE",
    "TYPE_A",
    "TYPE_AAAA",
    "TYPE_ANY",
    "TYPE_PTR",
    "TYPE_SRV",
    "TYPE_TXT",
    "DnsMessage",
    "Question",
    "Record",
    "decode_dns",
    "encode_dns",
]

TYPE_A: Final = 1
TYPE_PTR: Final = 12
TYPE_TXT: Final = 16
TYPE_AAAA: Final = 28
TYPE_SRV: Final = 33
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
#: Top bit of a class: "unicast response wanted" in questions, "cache flush" in records.
CLASS_FLAG: Final = 0x8000
#: Flag bit of a response (QR) and of an authoritative answer (AA).
FLAG_RESPONSE: Final = 0x8000
FLAG_AUTHORITATIVE: Final = 0x0400

#: Largest message accepted or produced (the mDNS maximum, RFC 6762 §17).
MAX_DNS_MESSAGE: Final = 9000
#: Most questions plus records accepted in one message.
MAX_DNS_ENTRIES: Final = 256
MAX_LABEL: Final = 63
MAX_NAME: Final = 255
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


@attrs.frozen
class Question:
    """A question: ``name`` (without trailing dot), type, class (top bit included)."""

    name: str
    rtype: int
    rclass: int = CLASS_IN


@attrs.frozen
class Record:
    """A resource record; the data field that applies to ``rtype`` is set.

    PTR: ``target``; SRV: ``priority``, ``weight``, ``port``, ``target``;
    TXT: ``strings``; A/AAAA: ``address``; anything else: ``raw``.
    """

    name: str
    rtype: int
    ttl: int
    rclass: int = CLASS_IN
    target: str = ""
    strings: tuple[bytes, ...] = ()
    address: str = ""
    priority: int = 0
    weight: int = 0
    port: int = 0
    raw: bytes = b""


@attrs.frozen
class DnsMessage:
    """A DNS message."""

    id: int = 0
    flags: int = 0
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        """Whether the QR bit is set."""
        return bool(self.flags & FLAG_RESPONSE)


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("utf-8")
        if not 1 <= len(raw) <= MAX_LABEL:
            raise SerializationError(f"DNS label {label!r} must be 1 to {MAX_LABEL} bytes")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise SerializationError(f"DNS name {name!r} exceeds {MAX_NAME} bytes")
    return bytes(out)


def _encode_rdata(rr: Record) -> bytes:
    if rr.rtype == TYPE_PTR:
        return _encode_name(rr.target)
    if rr.rtype == TYPE_SRV:
        return struct.pack("!HHH", rr.priority, rr.weight, rr.port) + _encode_name(rr.target)
    if rr.rtype == TYPE_TXT:
        out = bytearray()
        for s in rr.strings or (b"",):
            if len(s) > 255:
                raise SerializationError(f"TXT string of {len(s)} bytes exceeds 255")
            out.append(len(s))
            out += s
        return bytes(out)
    if rr.rtype == TYPE_A:
        return ipaddress.IPv4Address(rr.address).packed
    if rr.rtype == TYPE_AAAA:
        return ipaddress.IPv6Address(rr.address).packed
    return rr.raw


def encode_dns(msg: DnsMessage) -> bytes:
    """The wire form of ``msg`` (uncompressed names)."""
    out = bytearray(
        _HEADER.pack(
            msg.id,
            msg.flags,
            len(msg.questions),
            len(msg.answers),
            len(msg.authorities),
            len(msg.additionals),
        )
    )
    for q in msg.questions:
        out += _encode_name(q.name) + struct.pack("!HH", q.rtype, q.rclass)
    for rr in (*msg.answers, *msg.authorities, *msg.additionals):
        rdata = _encode_rdata(rr)
        out += _encode_name(rr.name) + _RR.pack(rr.rtype, rr.rclass, rr.ttl, len(rdata)) + rdata
    if len(out) > MAX_DNS_MESSAGE:
        raise MessageTooLarge(f"DNS message of {len(out)} bytes exceeds {MAX_DNS_MESSAGE}")
    return bytes(out)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Read a (possibly compressed) name at ``pos``; return it and the position after it."""
    labels: list[str] = []
    total = 0
    end: int | None = None
    floor = pos  # a pointer must point before the name that uses it: no loops
    while True:
        if pos >= len(data):
            raise SerializationError("DNS name runs past the end of the message")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise SerializationError("truncated DNS compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise SerializationError(f"DNS compression pointer to {target} does not point back")
            if end is None:
                end = pos + 2
            pos = floor = target
            continue
        if length & 0xC0:
            raise SerializationError(f"unsupported DNS label type 0x{length & 0xC0:02x}")
        pos += 1
        if length == 0:
            break
        if pos + length > len(data):
            raise SerializationError("DNS label runs past the end of the message")
        total += length + 1
        if total > MAX_NAME:
            raise SerializationError(f"DNS name exceeds {MAX_NAME} bytes")
        try:
            labels.append(data[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise SerializationError("DNS label is not UTF-8") from None
        pos += length
    return ".".join(labels), end if end is not None else pos


def _read_record(data: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(data, pos)
    if pos + _RR.size > len(data):
        raise SerializationError("truncated DNS resource record header")
    rtype, rclass, ttl, rdlength = _RR.unpack_from(data, pos)
    pos += _RR.size
    end = pos + rdlength
    if end > len(data):
        raise SerializationError(f"DNS record data of {rdlength} bytes runs past the message")
    rdata = data[pos:end]
    base = Record(name, rtype, ttl, rclass)
    if rtype == TYPE_PTR:
        target, after = _read_name(data, pos)
        if after != end:
            raise SerializationError("DNS PTR data length does not match its name")
        return attrs.evolve(base, target=target), end
    if rtype == TYPE_SRV:
        if rdlength < 7:
            raise SerializationError("DNS SRV data is too short")
        priority, weight, port = struct.unpack_from("!HHH", data, pos)
        target, after = _read_name(data, pos + 6)
        if after != end:
            raise SerializationError("DNS SRV data length does not match its name")
        return attrs.evolve(base, priority=priority, weight=weight, port=port, target=target), end
    if rtype == TYPE_TXT:
        strings: list[bytes] = []
        i = 0
        while i < len(rdata):
            n = rdata[i]
            if i + 1 + n > len(rdata):
                raise SerializationError("DNS TXT string runs past its record")
            strings.append(rdata[i + 1 : i + 1 + n])
            i += 1 + n
        return attrs.evolve(base, strings=tuple(strings)), end
    if rtype in (TYPE_A, TYPE_AAAA):
        size = 4 if rtype == TYPE_A else 16
        if rdlength != size:
            raise SerializationError(f"DNS address data is {rdlength} bytes, not {size}")
        return attrs.evolve(base, address=str(ipaddress.ip_address(rdata))), end
    return attrs.evolve(base, raw=rdata), end


def decode_dns(data: bytes) -> DnsMessage:
    """Parse a DNS message; :class:`SerializationError` names what is malformed."""
    if len(data) > MAX_DNS_MESSAGE:
        raise MessageTooLarge(f"DNS message of {len(data)} bytes exceeds {MAX_DNS_MESSAGE}")
    if len(data) < _HEADER.size:
        raise SerializationError(f"DNS message of {len(data)} bytes is shorter than its header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd + an + ns + ar > MAX_DNS_ENTRIES:
        raise SerializationError(f"DNS message claims {qd + an + ns + ar} entries")
    pos = _HEADER.size
    questions: list[Question] = []
    for _ in range(qd):
        name, pos = _read_name(data, pos)
        if pos + 4 > len(data):
            raise SerializationError("truncated DNS question")
        rtype, rclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        questions.append(Question(name, rtype, rclass))
    sections: list[list[Record]] = [[], [], []]
    for section, count in zip(sections, (an, ns, ar), strict=True):
        for _ in range(count):
            rr, pos = _read_record(data, pos)
            section.append(rr)
    return DnsMessage(
        ident, flags, tuple(questions), tuple(sections[0]), tuple(sections[1]), tuple(sections[2])
    )
