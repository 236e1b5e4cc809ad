"""The one exception hierarchy of switchy-p2p.

Every error the stack raises on purpose is a :class:`P2PError`.  Callers can
catch the base class, a family (``NetworkError``, ``ProtocolError``) or one
precise condition.  Each error's message names what was wrong.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar, overload

__all__ = [
    "AuthenticationFailed",
    "ConnectionClosed",
    "ConnectionFailed",
    "DiscoveryFailed",
    "FeatureNotSupported",
    "InvalidConfiguration",
    "InvalidPeerId",
    "MessageTooLarge",
    "NegotiationFailed",
    "NetworkError",
    "NoRoute",
    "P2PError",
    "P2PTimeout",
    "PeerNotFound",
    "ProtocolError",
    "RelayRefused",
    "RequestRefused",
    "ResourceLimitExceeded",
    "SerializationError",
    "SimulationDeadlock",
    "StreamRefused",
    "StreamReset",
    "UnsupportedAddress",
    "fresh",
]

_E = TypeVar("_E", bound=BaseException)


@overload
def fresh(exc: _E) -> _E: ...
@overload
def fresh(exc: None) -> None: ...
def fresh(exc: _E | None) -> _E | None:
    """A copy of the stored error ``exc`` without a traceback, to raise in its place.

    An object that keeps the error that ended it (a connection's close reason) and raises
    it on every later call would attach each raise's traceback, and with it the frames
    that reference the object itself, to the stored error: a reference cycle only the
    cyclic garbage collector frees (hundreds of MiB after a flood of connections).
    ``None`` gives ``None`` (``raise fresh(self._error) or Other(...)``).
    """
    if exc is None:
        return None
    try:
        new = copy.copy(exc)
    except Exception:  # an error whose constructor wants more than its args
        return exc.with_traceback(None)
    new.__traceback__ = None
    return new


class P2PError(Exception):
    """Base class of every error raised by the stack."""


class NetworkError(P2PError):
    """A failure of the network or of a connection."""


class ConnectionFailed(NetworkError):
    """A connection could not be established."""


class UnsupportedAddress(ConnectionFailed):
    """No configured transport can dial or listen on this multiaddr."""


class RelayRefused(ConnectionFailed):
    """A circuit relay refused a reservation or a relayed connection (``status`` says why)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        #: The relay's status code (``switchy.transports.relay.pb.Status``).
        self.status = status


class NoRoute(NetworkError):
    """There is no path to the destination (simulator routes, unreachable hosts)."""


class ConnectionClosed(NetworkError):
    """The connection or stream was closed; no more data can pass in that direction."""


class StreamReset(ConnectionClosed):
    """The stream was reset (abruptly aborted) by either side."""


class StreamRefused(StreamReset):
    """The peer refused a stream we opened: it reset it before acknowledging it (its
    limits or its accept backlog were full), so nothing we sent on it reached a handler.

    A :class:`StreamReset`, so code catching resets catches it too; unlike other resets
    it is no reason to ask the peer why (a second stream would be refused the same way).
    """


class FeatureNotSupported(P2PError):
    """The remote or the local configuration does not support a requested feature."""


class PeerNotFound(P2PError):
    """A peer is not known (no addresses, no connection)."""


class InvalidPeerId(P2PError, ValueError):
    """A peer id, key or multihash could not be parsed or does not match."""


class P2PTimeout(P2PError, TimeoutError):
    """An operation did not finish within its deadline."""


class DiscoveryFailed(P2PError):
    """A name could not be resolved by any configured discovery backend.

    ``tried`` lists, in order, what each backend that was tried answered (may be empty).
    """

    def __init__(self, message: str, *, tried: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tried = list(tried)


class RequestRefused(P2PError):
    """A remote service understood a request and refused it (a name taken, a limit reached…).

    ``code`` names the refusal as the service's protocol does (e.g. ``NAME_TAKEN``).
    """

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(P2PError):
    """The remote side broke a wire protocol (bad frame, bad state, bad field)."""


class NegotiationFailed(ProtocolError):
    """Protocol negotiation (multistream-select) found no common protocol."""


class SerializationError(ProtocolError):
    """Bytes could not be encoded or decoded (varint, protobuf, msgpack)."""


class AuthenticationFailed(P2PError):
    """A handshake failed, a signature was invalid, or the remote is not the expected peer."""


class InvalidConfiguration(P2PError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class ResourceLimitExceeded(P2PError):
    """A configured limit (streams, connections, sizes, buffers) was hit.

    Refusals of the resource manager (:mod:`switchy.stack.limits`) set ``scope`` (the
    scope's name: ``system``, ``peer:<id>``, ``ip:<address>``…), ``resource``
    (``conns_inbound``, ``streams``, ``memory``, ``rate``…) and ``limit``; other
    limits leave them empty.
    """

    def __init__(
        self, message: str, *, scope: str = "", resource: str = "", limit: int | None = None
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.resource = resource
        self.limit = limit


class MessageTooLarge(ResourceLimitExceeded, ProtocolError):
    """A message or frame is larger than the configured maximum."""


class SimulationDeadlock(P2PError):
    """A simulation stalled: nothing ready, no timer, main not finished (names the stuck tasks)."""
