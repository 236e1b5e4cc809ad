"""Sans-IO AutoNAT server: rate limits, the v2 dial-request state machine, v1 decisions.

Nothing here touches a socket or a clock: times are passed in, dials are
events the adapter (:mod:`switchy.protocols.autonat.service`) carries out and
reports back.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import AddrPredicate, addr_host, is_relayed
from switchy.protocols.autonat.pb import (
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    V1DialResponse,
    V1Message,
    V1MessageType,
    V1Status,
    decode_frame,
    decode_v2,
    encode_frame,
    encode_v1,
    encode_v2,
    parse_addr,
)
from switchy.stack.errors import InvalidConfiguration, MessageTooLarge, ProtocolError
from switchy.stack.identity import PeerId

__all__ = [
    "MAX_DIAL_DATA",
    "MAX_V1_DIAL_ADDRS",
    "MIN_DIAL_DATA",
    "MIN_DIAL_DATA_CHUNK",
    "RATE_WINDOW",
    "DialBackNeeded",
    "RateLimiter",
    "ServerLimits",
    "V1Decision",
    "V2ServerSession",
    "select_v2_address",
    "v1_bad_request",
    "v1_decide",
    "v1_refusal",
    "v1_rejected",
    "v1_response",
]

#: Fewest and most dial-data bytes a server asks for (the v2 spec: "30k to 100k").
MIN_DIAL_DATA: Final = 30_000
MAX_DIAL_DATA: Final = 100_000
#: A ``DialDataResponse`` smaller than this, while more data is due, is refused: a
#: flood of tiny messages would cost us work per message instead of the client bytes.
MIN_DIAL_DATA_CHUNK: Final = 100
#: Most addresses a v1 server dials for one request (one after the other).
MAX_V1_DIAL_ADDRS: Final = 8
#: The rate limits count requests over this sliding window (seconds).
RATE_WINDOW: Final = 60.0


@attrs.frozen
class ServerLimits:
    """The server's limits (defaults: go-libp2p's values, rounded).

    ``per_peer``, ``total`` and ``dial_data`` are requests per :data:`RATE_WINDOW`;
    ``concurrent_per_peer`` and ``concurrent_total`` bound requests in flight.
    """

    per_peer: int = 12
    total: int = 60
    dial_data: int = 12
    concurrent_per_peer: int = 2
    concurrent_total: int = 16

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(ServerLimits):
            if getattr(self, field.name) < 1:
                raise InvalidConfiguration(f"ServerLimits.{field.name} must be at least 1")


class RateLimiter:
    """Sliding-window request limits per peer and overall, plus concurrency limits.

    Memory is bounded: the overall window holds at most ``limits.total`` entries,
    and a peer appears in the per-peer table only while it has an entry in it.
    """

    def __init__(self, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits()
        self._all: deque[tuple[float, PeerId]] = deque()
        self._peer: dict[PeerId, int] = {}
        self._dial_data: deque[float] = deque()
        self._active: dict[PeerId, int] = {}

    def _expire(self, now: float) -> None:
        while self._all and now - self._all[0][0] >= RATE_WINDOW:
            _, peer = self._all.popleft()
            left = self._peer[peer] - 1
            if left:
                self._peer[peer] = left
            else:
                del self._peer[peer]
        while self._dial_data and now - self._dial_data[0] >= RATE_WINDOW:
            self._dial_data.popleft()

    def admit(self, peer: PeerId, now: float) -> str | None:
        """Admit a request from ``peer`` (``None``) or say which limit refuses it.

        An admitted request must be ended with :meth:`release`.
        """
        self._expire(now)
        lim = self.limits
        if self._active.get(peer, 0) >= lim.concurrent_per_peer:
            return f"{lim.concurrent_per_peer} requests of this peer already in progress"
        if sum(self._active.values()) >= lim.concurrent_total:
            return f"{lim.concurrent_total} requests already in progress"
        if self._peer.get(peer, 0) >= lim.per_peer:
            return f"more than {lim.per_peer} requests of this peer per {RATE_WINDOW:g}s"
        if len(self._all) >= lim.total:
            return f"more than {lim.total} requests per {RATE_WINDOW:g}s"
        self._all.append((now, peer))
        self._peer[peer] = self._peer.get(peer, 0) + 1
        self._active[peer] = self._active.get(peer, 0) + 1
        return None

    def admit_dial_data(self, now: float) -> bool:
        """Whether one more request that needs dial data may go on (counted if so)."""
        self._expire(now)
        if len(self._dial_data) >= self.limits.dial_data:
            return False
        self._dial_data.append(now)
        return True

    def release(self, peer: PeerId) -> None:
        """An admitted request of ``peer`` ended."""
        left = self._active.get(peer, 0) - 1
        if left > 0:
            self._active[peer] = left
        else:
            self._active.pop(peer, None)

    @property
    def tracked_peers(self) -> int:
        """Peers with requests in the current window (for tests of the memory bound)."""
        return len(self._peer)


def _dialable(raw: bytes, *, can_dial: AddrPredicate, is_public: AddrPredicate) -> Multiaddr | None:
    addr = parse_addr(raw)
    if addr is None or is_relayed(addr) or addr_host(addr) is None:
        return None
    if not is_public(addr) or not can_dial(addr):
        return None
    return addr


def select_v2_address(
    addrs: tuple[bytes, ...], *, can_dial: AddrPredicate, is_public: AddrPredicate
) -> tuple[int, Multiaddr] | None:
    """The first address of a v2 request we are willing and able to dial, with its index."""
    for i, raw in enumerate(addrs):
        addr = _dialable(raw, can_dial=can_dial, is_public=is_public)
        if addr is not None:
            return i, addr
    return None


@attrs.frozen
class DialBackNeeded:
    """Event: dial ``addr`` back and send ``nonce``; then call :meth:`V2ServerSession.dial_done`."""

    addr: Multiaddr
    addr_idx: int
    nonce: int
    dial_data: bool


class _State(enum.Enum):
    REQUEST = "waiting for the DialRequest"
    DIAL_DATA = "waiting for dial data"
    DIALING = "dialing back"
    DONE = "done"


class V2ServerSession:
    """One ``/libp2p/autonat/2/dial-request`` stream on the server side.

    ``observed`` is the requester's address as we see it (the connection's remote
    address).  ``refusal`` (from the rate limiter, or for relayed connections) makes
    the session answer ``E_REQUEST_REJECTED`` at once.  ``admit_dial_data`` is asked
    before dial data is requested (the dial-data rate limit); ``dial_data_size`` is
    how many bytes to ask for.

    Feed received bytes to :meth:`receive_data`; send :meth:`data_to_send`; stop
    reading once :attr:`reading` is false.  :attr:`outcome` says what happened.
    A :class:`~switchy.stack.errors.ProtocolError` from :meth:`receive_data` means
    "reset the stream".
    """

    def __init__(
        self,
        observed: Multiaddr,
        *,
        can_dial: AddrPredicate,
        is_public: AddrPredicate,
        admit_dial_data: Callable[[], bool],
        dial_data_size: int,
        refusal: str | None = None,
    ) -> None:
        if not MIN_DIAL_DATA <= dial_data_size <= MAX_DIAL_DATA:
            raise InvalidConfiguration(
                f"dial_data_size must be within [{MIN_DIAL_DATA}, {MAX_DIAL_DATA}]"
            )
        self._observed_host = addr_host(observed)
        self._can_dial = can_dial
        self._is_public = is_public
        self._admit_dial_data = admit_dial_data
        self._dial_data_size = dial_data_size
        self._buf = bytearray()
        self._out = bytearray()
        self._state = _State.REQUEST
        self._pending: DialBackNeeded | None = None
        self._remaining = 0
        #: Dial-data bytes received (counted per the spec: the ``data`` fields only).
        self.dial_data_received = 0
        #: What happened, for logs and metrics (``None`` while in progress).
        self.outcome: str | None = None
        if refusal is not None:
            self._answer(DialResponse(ResponseStatus.E_REQUEST_REJECTED), f"rejected: {refusal}")

    @property
    def reading(self) -> bool:
        """Whether the session still wants bytes from the client."""
        return self._state in (_State.REQUEST, _State.DIAL_DATA)

    @property
    def done(self) -> bool:
        """Whether the final answer is queued."""
        return self._state is _State.DONE

    def data_to_send(self) -> bytes:
        """Bytes to write to the stream now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _answer(self, response: DialResponse, outcome: str) -> None:
        self._out += encode_frame(encode_v2(response))
        self._state = _State.DONE
        self.outcome = outcome

    def receive_data(self, data: bytes) -> list[DialBackNeeded]:
        """Take bytes from the client; returns the dial-back to make, once."""
        if not self.reading:
            return []
        self._buf += data
        events: list[DialBackNeeded] = []
        while self.reading:
            try:
                frame = decode_frame(self._buf)
            except MessageTooLarge as exc:
                self._answer(DialResponse(ResponseStatus.E_REQUEST_REJECTED), f"rejected: {exc}")
                break
            if frame is None:
                break
            message, used = frame
            del self._buf[:used]
            if self._state is _State.REQUEST:
                self._on_request(message, events)
            else:
                self._on_dial_data(message, events)
        return events

    def _on_request(self, message: bytes, events: list[DialBackNeeded]) -> None:
        try:
            msg = decode_v2(message)
        except MessageTooLarge as exc:  # too many or too long addresses
            self._answer(DialResponse(ResponseStatus.E_REQUEST_REJECTED), f"rejected: {exc}")
            return
        if not isinstance(msg, DialRequest):
            raise ProtocolError(f"expected a DialRequest, got a {type(msg).__name__}")
        chosen = select_v2_address(msg.addrs, can_dial=self._can_dial, is_public=self._is_public)
        if chosen is None:
            self._answer(
                DialResponse(ResponseStatus.E_DIAL_REFUSED),
                f"refused: none of {len(msg.addrs)} addresses is one we dial",
            )
            return
        idx, addr = chosen
        needs_data = self._observed_host is None or addr_host(addr) != self._observed_host
        pending = DialBackNeeded(addr, idx, msg.nonce, needs_data)
        if not needs_data:
            self._pending = pending
            self._state = _State.DIALING
            events.append(pending)
            return
        if not self._admit_dial_data():
            self._answer(
                DialResponse(ResponseStatus.E_REQUEST_REJECTED),
                "rejected: dial-data request rate limit",
            )
            return
        self._pending = pending
        self._remaining = self._dial_data_size
        self._state = _State.DIAL_DATA
        self._out += encode_frame(encode_v2(DialDataRequest(idx, self._dial_data_size)))

    def _on_dial_data(self, message: bytes, events: list[DialBackNeeded]) -> None:
        msg = decode_v2(message)
        if not isinstance(msg, DialDataResponse):
            raise ProtocolError(f"expected a DialDataResponse, got a {type(msg).__name__}")
        size = len(msg.data)
        if size < MIN_DIAL_DATA_CHUNK and size < self._remaining:
            raise ProtocolError(
                f"dial data chunk of {size} bytes is below the minimum of {MIN_DIAL_DATA_CHUNK}"
            )
        self.dial_data_received += size
        self._remaining -= size
        if self._remaining <= 0:
            assert self._pending is not None
            self._state = _State.DIALING
            events.append(self._pending)

    def dial_done(self, status: DialStatus) -> None:
        """The dial-back ended with ``status``: queue the ``DialResponse``."""
        if self._state is not _State.DIALING:
            raise InvalidConfiguration(f"dial_done while {self._state.value}")
        assert self._pending is not None
        self._answer(
            DialResponse(ResponseStatus.OK, self._pending.addr_idx, status),
            f"dialed: {status.name}",
        )

    def internal_error(self, reason: str) -> None:
        """Answer ``E_INTERNAL_ERROR`` (the dial-back could not be attempted)."""
        self._answer(DialResponse(ResponseStatus.E_INTERNAL_ERROR), f"internal error: {reason}")


# --- v1 ---------------------------------------------------------------------------------------


@attrs.frozen
class V1Decision:
    """What to do with a v1 request: dial ``addrs`` in order, or answer ``refusal`` at once."""

    addrs: tuple[Multiaddr, ...] = ()
    refusal: V1Message | None = None


def _v1_answer(status: V1Status, text: str | None = None, addr: bytes | None = None) -> V1Message:
    return V1Message(V1MessageType.DIAL_RESPONSE, None, V1DialResponse(status, text, addr))


def v1_decide(
    msg: V1Message,
    requester: PeerId,
    observed: Multiaddr,
    *,
    can_dial: AddrPredicate,
    is_public: AddrPredicate,
) -> V1Decision:
    """Check a v1 request: only addresses on the requester's observed host are dialed."""
    if msg.type != V1MessageType.DIAL or msg.dial is None:
        return V1Decision(refusal=_v1_answer(V1Status.E_BAD_REQUEST, "expected a DIAL message"))
    if msg.dial.id is not None and msg.dial.id != requester.to_bytes():
        return V1Decision(
            refusal=_v1_answer(V1Status.E_BAD_REQUEST, "the peer id is not the requester's")
        )
    host = addr_host(observed)
    chosen: list[Multiaddr] = []
    for raw in msg.dial.addrs:
        addr = _dialable(raw, can_dial=can_dial, is_public=is_public)
        if addr is None or host is None or addr_host(addr) != host or addr in chosen:
            continue
        chosen.append(addr)
        if len(chosen) == MAX_V1_DIAL_ADDRS:
            break
    if not chosen:
        return V1Decision(
            refusal=_v1_answer(
                V1Status.E_DIAL_REFUSED, "no address on the observed host that we dial"
            )
        )
    return V1Decision(addrs=tuple(chosen))


def v1_response(dialed: Multiaddr | None, errors: int) -> bytes:
    """The framed v1 answer after the dials: ``OK`` with the address, or ``E_DIAL_ERROR``."""
    if dialed is not None:
        msg = _v1_answer(V1Status.OK, None, dialed.to_bytes())
    else:
        msg = _v1_answer(V1Status.E_DIAL_ERROR, f"{errors} dial(s) failed")
    return encode_frame(encode_v1(msg))


def v1_refusal(msg: V1Message) -> bytes:
    """A refusal of :func:`v1_decide`, framed."""
    return encode_frame(encode_v1(msg))


def v1_bad_request(reason: str) -> bytes:
    """A framed v1 ``E_BAD_REQUEST`` naming what was wrong."""
    return encode_frame(encode_v1(_v1_answer(V1Status.E_BAD_REQUEST, reason[:200])))


def v1_rejected(reason: str) -> bytes:
    """A framed v1 ``E_DIAL_REFUSED`` for a request we do not serve (rate limit, relayed)."""
    return encode_frame(encode_v1(_v1_answer(V1Status.E_DIAL_REFUSED, reason[:200])))
