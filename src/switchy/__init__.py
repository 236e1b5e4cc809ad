"""switchy-p2p: direct, encrypted device-to-device connections, wire-compatible with libp2p.

The everyday names are here (``from switchy import Node, KeyPair, Router``); the layers
live in :mod:`switchy.stack` (the core), :mod:`switchy.transports` and
:mod:`switchy.protocols`.  ``python -m switchy`` is the command line.
"""

from __future__ import annotations

import logging

from switchy.protocols.router import Request, Response, Router
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
    StreamReset,
    UnsupportedAddress,
)
from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream, Stream

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
    "StreamReset",
    "UnsupportedAddress",
    "__version__",
    "parse_multiaddr",
]

# A library logs under "switchy." and leaves handlers to the application.
logging.getLogger("switchy").addHandler(logging.NullHandler())
