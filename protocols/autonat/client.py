"""Sans-IO AutoNAT client: the v2 dial-request state machine, v1 answers, and the verdicts."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import transport_shape
from switchy.protocols.autonat.pb import (
    DIAL_DATA_CHUNK,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    V1DialResponse,
    V1Message,
    V1MessageType,
    V1PeerInfo,
    V1Status,
    decode_frame,
    decode_v2,
    encode_frame,
    encode_v1,
    encode_v2,
)
from switchy.protocols.autonat.server import MAX_DIAL_DATA
from switchy.stack.errors import ProtocolError
from switchy.stack.identity import PeerId

__all__ = [
    "MAX_CLIENT_DIAL_DATA",
    "Result",
    "V2ClientSession",
    "Verdict",
    "v1_request",
    "v1_verdict",
    "v2_verdict",
]

#: Most dial data a client sends for one request (the spec's upper bound of 100 kB).
MAX_CLIENT_DIAL_DATA: Final = MAX_DIAL_DATA


class Verdict(enum.Enum):
    """What one server's answer says about one address."""

    #: The server reached us on the address (v2: and the nonce came back on it).
    REACHABLE = "reachable"
    #: The server tried the address and could not connect.
    UNREACHABLE = "unreachable"
    #: The server would not dial the address (not on our observed host, not a transport
    #: it has, private...): no information.
    REFUSED = "refused"
    #: The server did not serve the request (rate limit, relayed connection).
    REJECTED = "rejected"
    #: Anything else (protocol error, unverified claim, timeout): no information.
    ERROR = "error"


@attrs.frozen
class Result:
    """One server's answer about one address."""

    addr: Multiaddr
    server: PeerId
    #: 2 or 1: the AutoNAT version spoken.
    version: int
    verdict: Verdict
    #: A readable reason (status names, errors).
    detail: str = ""

    @property
    def conclusive(self) -> bool:
        """Whether the answer counts towards reachability (reachable or unreachable)."""
        return self.verdict in (Verdict.REACHABLE, Verdict.UNREACHABLE)


class V2ClientSession:
    """One ``/libp2p/autonat/2/dial-request`` stream on the client side.

    Send :meth:`data_to_send` (first the request, then dial data if asked and
    accepted), feed received bytes to :meth:`receive_data` until :attr:`response`
    is set.  A dial-data request over ``max_dial_data`` bytes, or for an index
    outside the request, raises :class:`~switchy.stack.errors.ProtocolError`
    (reset the stream: the spec's way to decline the cost).
    """

    def __init__(
        self,
        addrs: Sequence[Multiaddr],
        nonce: int,
        *,
        max_dial_data: int = MAX_CLIENT_DIAL_DATA,
    ) -> None:
        self.addrs = list(addrs)
        self.nonce = nonce
        self.max_dial_data = max_dial_data
        self._buf = bytearray()
        self._out = bytearray(encode_frame(encode_v2(DialRequest.of(self.addrs, nonce))))
        #: The dial-data request received, if any.
        self.dial_data_request: DialDataRequest | None = None
        #: The final answer, once received.
        self.response: DialResponse | None = None

    def data_to_send(self) -> bytes:
        """Bytes to write now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server."""
        self._buf += data
        while self.response is None:
            frame = decode_frame(self._buf)
            if frame is None:
                return
            message, used = frame
            del self._buf[:used]
            msg = decode_v2(message)
            if isinstance(msg, DialResponse):
                if msg.status == ResponseStatus.OK and msg.addr_idx >= len(self.addrs):
                    raise ProtocolError(
                        f"DialResponse names address {msg.addr_idx} of {len(self.addrs)}"
                    )
                self.response = msg
            elif isinstance(msg, DialDataRequest):
                self._on_dial_data_request(msg)
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from the server")

    def _on_dial_data_request(self, msg: DialDataRequest) -> None:
        if self.dial_data_request is not None:
            raise ProtocolError("a second DialDataRequest")
        if msg.addr_idx >= len(self.addrs):
            raise ProtocolError(
                f"DialDataRequest names address {msg.addr_idx} of {len(self.addrs)}"
            )
        if msg.num_bytes > self.max_dial_data:
            raise ProtocolError(
                f"server asks {msg.num_bytes} bytes of dial data, we send at most "
                f"{self.max_dial_data}"
            )
        self.dial_data_request = msg
        chunk = encode_frame(encode_v2(DialDataResponse(bytes(DIAL_DATA_CHUNK))))
        self._out += chunk * math.ceil(msg.num_bytes / DIAL_DATA_CHUNK)


def _shape_matches(asked: Multiaddr, local: Multiaddr) -> bool:
    # Compare the transport part only: an IPv4 address may arrive IPv4-mapped.
    return transport_shape(asked)[1:] == transport_shape(local)[1:]


def v2_verdict(
    session: V2ClientSession, server: PeerId, dial_back_local: Multiaddr | None
) -> Result:
    """The verdict of a finished v2 exchange.

    ``dial_back_local`` is the local address of the connection on which our nonce
    arrived (``None`` when it never did).  A claimed success without our nonce, or
    with it on a connection of another transport, is discarded (``ERROR``).
    """
    r = session.response
    first = session.addrs[0]
    if r is None:
        return Result(first, server, 2, Verdict.ERROR, "no DialResponse")
    if not isinstance(r.status, ResponseStatus):
        return Result(first, server, 2, Verdict.ERROR, f"unknown response status {r.status}")
    if r.status == ResponseStatus.E_DIAL_REFUSED:
        return Result(first, server, 2, Verdict.REFUSED, "E_DIAL_REFUSED")
    if r.status == ResponseStatus.E_REQUEST_REJECTED:
        return Result(first, server, 2, Verdict.REJECTED, "E_REQUEST_REJECTED")
    if r.status != ResponseStatus.OK:
        return Result(first, server, 2, Verdict.ERROR, r.status.name)
    addr = session.addrs[r.addr_idx]
    if r.dial_status == DialStatus.OK:
        if dial_back_local is None:
            return Result(addr, server, 2, Verdict.ERROR, "dial-back OK claimed, no nonce came")
        if not _shape_matches(addr, dial_back_local):
            return Result(
                addr,
                server,
                2,
                Verdict.ERROR,
                f"nonce came over another transport: {dial_back_local}",
            )
        return Result(addr, server, 2, Verdict.REACHABLE, "dial-back OK, nonce verified")
    if r.dial_status == DialStatus.E_DIAL_ERROR:
        return Result(addr, server, 2, Verdict.UNREACHABLE, "E_DIAL_ERROR")
    name = r.dial_status.name if isinstance(r.dial_status, DialStatus) else str(r.dial_status)
    return Result(addr, server, 2, Verdict.ERROR, f"dial status {name}")


def v1_request(peer: PeerId, addrs: Sequence[Multiaddr]) -> bytes:
    """A framed v1 ``DIAL`` request for ``addrs``."""
    info = V1PeerInfo(peer.to_bytes(), tuple(a.to_bytes() for a in addrs))
    return encode_frame(encode_v1(V1Message(V1MessageType.DIAL, info)))


def v1_verdict(msg: V1Message, asked: Multiaddr, server: PeerId) -> Result:
    """The verdict of a v1 answer to a request about ``asked`` alone."""
    r: V1DialResponse | None = msg.dial_response
    if msg.type != V1MessageType.DIAL_RESPONSE or r is None:
        return Result(asked, server, 1, Verdict.ERROR, "the answer is not a DIAL_RESPONSE")
    text = f": {r.status_text}" if r.status_text else ""
    if r.status == V1Status.OK:
        return Result(asked, server, 1, Verdict.REACHABLE, f"OK{text}")
    if r.status == V1Status.E_DIAL_ERROR:
        return Result(asked, server, 1, Verdict.UNREACHABLE, f"E_DIAL_ERROR{text}")
    if r.status == V1Status.E_DIAL_REFUSED:
        return Result(asked, server, 1, Verdict.REFUSED, f"E_DIAL_REFUSED{text}")
    name = r.status.name if isinstance(r.status, V1Status) else f"status {r.status}"
    return Result(asked, server, 1, Verdict.ERROR, f"{name}{text}")
