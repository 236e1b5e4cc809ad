"""switchy-p2p: direct, encrypted device-to-device connections, wire-compatible with libp2p.

The everyday names are here (``from switchy import default_node, Node, KeyPair, Router``);
the layers live in :mod:`switchy.stack` (the core, which knows no concrete transport or
protocol), :mod:`switchy.transports` and :mod:`switchy.protocols`; :func:`default_node`
(:mod:`switchy.presets`) puts the everyday node together.  ``python -m switchy`` is the
command line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from switchy.protocols.router import Request, Response, Router, request
from switchy.stack import __version__
from switchy.stack.addresses import parse_multiaddr
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    DiscoveryFailed,
    FeatureNotSupported,
    InvalidConfiguration,
    InvalidPeerId,
    MessageTooLarge,
    NegotiationFailed,
    NetworkError,
    NoRoute,
    P2PError,
    P2PTimeout,
    PeerNotFound,
    ProtocolError,
    RelayRefused,
    RequestRefused,
    ResourceLimitExceeded,
    SerializationError,
    SimulationDeadlock,
    StreamRefused,
    StreamReset,
    UnsupportedAddress,
)
from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream, Stream

if TYPE_CHECKING:
    from switchy.presets import default_node

__all__ = [
    "AuthenticationFailed",
    "ConnectionClosed",
    "ConnectionFailed",
    "DiscoveryFailed",
    "FeatureNotSupported",
    "InvalidConfiguration",
    "InvalidPeerId",
    "KeyPair",
    "MessageTooLarge",
    "MuxedStream",
    "NegotiationFailed",
    "NetworkConfig",
    "NetworkError",
    "NoRoute",
    "Node",
    "P2PError",
    "P2PTimeout",
    "PeerId",
    "PeerNotFound",
    "ProtocolError",
    "ProtocolService",
    "RelayRefused",
    "Request",
    "RequestRefused",
    "ResourceLimitExceeded",
    "Response",
    "Router",
    "SerializationError",
    "SimulationDeadlock",
    "Stream",
    "StreamRefused",
    "StreamReset",
    "UnsupportedAddress",
    "__version__",
    "default_node",
    "parse_multiaddr",
    "request",
]

# A library logs under "switchy." and leaves handlers to the application.
logging.getLogger("switchy").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    """``default_node`` is imported on first use: the preset pulls in every transport
    (QUIC's aioquic and cryptography's x509 among them), which ``import switchy`` alone
    need not pay for."""
    if name == "default_node":
        from switchy.presets import default_node

        return default_node
    raise AttributeError(f"module 'switchy' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, ``default_node`` included before its first use."""
    return sorted({*globals(), *__all__})
