"""Sans-IO codec of the DCUtR ``HolePunch`` message (libp2p specs, ``relay/DCUtR.md``).

``message HolePunch { required Type type = 1; repeated bytes ObsAddrs = 2; }``
with ``Type`` ``CONNECT = 100`` and ``SYNC = 300``, written by hand on
:mod:`switchy.stack.codec`.  Each message travels prefixed by its length as an
unsigned varint (:meth:`~switchy.stack.stream.Stream.send_message` with
:data:`MAX_MESSAGE_SIZE`).

The decoder never trusts its input: the message size (4 KiB, the spec's
limit), the number of addresses (:data:`MAX_OBS_ADDRS`) and each address's
size are checked, ``type`` must be present and known, a known field with the
wrong wire type is an error, and every error names what was wrong.  Unknown
fields are skipped (protobuf semantics); addresses that do not parse as
multiaddrs are skipped too (go-libp2p does the same), after being counted.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import multiaddr_from_bytes
from switchy.stack.codec import (
    frame_message,
    pb_bytes,
    pb_fields_typed,
    pb_varint,
    pb_want_bytes,
    pb_want_int,
    split_frame,
)
from switchy.stack.errors import MessageTooLarge, SerializationError

__all__ = [
    "DCUTR_PROTOCOL",
    "MAX_ADDR_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_OBS_ADDRS",
    "HolePunch",
    "HolePunchType",
    "decode_frame",
    "decode_holepunch",
    "encode_frame",
    "encode_holepunch",
]

#: The protocol id (spec).
DCUTR_PROTOCOL: Final = "/libp2p/dcutr"
#: Largest encoded message, length prefix excluded (spec: "larger than 4 KiB" refused).
MAX_MESSAGE_SIZE: Final = 4096
#: Most ``ObsAddrs`` entries one message may carry; more and the message is refused.
#: (go-libp2p announces a handful; 4 KiB would fit some 400 tiny entries.)
MAX_OBS_ADDRS: Final = 64
#: Largest single address in bytes (a multiaddr with a DNS name and a certhash fits).
MAX_ADDR_SIZE: Final = 512


class HolePunchType(enum.IntEnum):
    """``HolePunch.Type``."""

    CONNECT = 100
    SYNC = 300


@attrs.frozen
class HolePunch:
    """One DCUtR message: ``CONNECT`` with our addresses, or ``SYNC`` (no addresses)."""

    type: HolePunchType
    obs_addrs: tuple[Multiaddr, ...] = ()


def encode_holepunch(msg: HolePunch) -> bytes:
    """The protobuf bytes of ``msg``; :class:`MessageTooLarge` above the limits."""
    if len(msg.obs_addrs) > MAX_OBS_ADDRS:
        raise MessageTooLarge(
            f"HolePunch with {len(msg.obs_addrs)} addresses exceeds {MAX_OBS_ADDRS}"
        )
    out = pb_varint(1, int(msg.type))
    for addr in msg.obs_addrs:
        raw = addr.to_bytes()
        if len(raw) > MAX_ADDR_SIZE:
            raise MessageTooLarge(f"HolePunch address of {len(raw)} bytes exceeds {MAX_ADDR_SIZE}")
        out += pb_bytes(2, raw)
    if len(out) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"HolePunch of {len(out)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return out


def decode_holepunch(data: bytes) -> HolePunch:
    """Parse one ``HolePunch`` (without its length prefix).

    Raises :class:`MessageTooLarge` (size, address count, address size) and
    :class:`SerializationError` (malformed protobuf, missing or unknown type,
    wrong wire types), each naming what was wrong.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"HolePunch of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    kind: int | None = None
    addrs: list[Multiaddr] = []
    count = 0
    for field, wire_type, item in pb_fields_typed(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            kind = pb_want_int("HolePunch.type", wire_type, item)
        elif field == 2:
            value = pb_want_bytes("HolePunch.ObsAddrs", wire_type, item)
            count += 1
            if count > MAX_OBS_ADDRS:
                raise MessageTooLarge(f"HolePunch carries more than {MAX_OBS_ADDRS} addresses")
            if len(value) > MAX_ADDR_SIZE:
                raise MessageTooLarge(
                    f"HolePunch address of {len(value)} bytes exceeds {MAX_ADDR_SIZE}"
                )
            addr = multiaddr_from_bytes(value, MAX_ADDR_SIZE)
            if addr is not None:
                addrs.append(addr)
    if kind is None:
        raise SerializationError("HolePunch without its required type")
    try:
        typ = HolePunchType(kind)
    except ValueError:
        raise SerializationError(f"HolePunch of unknown type {kind}") from None
    return HolePunch(typ, tuple(addrs))


def encode_frame(msg: HolePunch) -> bytes:
    """``msg`` with its varint length prefix (what goes on the stream)."""
    return frame_message(encode_holepunch(msg), MAX_MESSAGE_SIZE, "HolePunch")


def decode_frame(data: bytes | bytearray) -> tuple[HolePunch, int] | None:
    """One framed message off ``data``: ``(message, bytes used)``, or None while short."""
    r = split_frame(data, MAX_MESSAGE_SIZE, "HolePunch")
    if r is None:
        return None
    body, used = r
    return decode_holepunch(body), used
