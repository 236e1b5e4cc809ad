"""Harnesses: how the conformance suites build the implementation under test.

A third party subclasses one harness per kind of part and returns it from a
pytest fixture (see :mod:`switchy.stack.conformance`):

* :class:`TransportHarness` — ``make()`` returns a fresh
  :class:`~switchy.stack.transport.Transport`;
* :class:`SecurityHarness` — ``make()`` returns a
  :class:`~switchy.stack.security.SecurityTransport`;
* :class:`MuxerHarness` — ``make()`` returns a :class:`~switchy.stack.mux.StreamMuxer`;
* :class:`NodeHarness` — ``make_node(**kw)`` returns a :class:`~switchy.stack.node.Node` and
  says how to reach it.

Every harness runs the suite's coroutines through :meth:`Harness.run`.  Here, in the
core, that is a fresh :func:`asyncio.run` in real time: the suite's "this must not
happen within N seconds" checks wait :attr:`Harness.quiet_period` real seconds.
Harnesses that run in virtual time on the simulator (no wall time spent waiting)
and the built-in harnesses of the project's own parts live above the core, in
:mod:`switchy.conformance` (``VirtualTimeHarness``, ``TcpTransportHarness``, ...),
with the suites of the protocols (router, discovery, a remote peer).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from switchy.stack.config import NetworkConfig

if TYPE_CHECKING:
    from switchy.stack.mux import StreamMuxer
    from switchy.stack.node import Node
    from switchy.stack.security import SecurityTransport
    from switchy.stack.transport import Transport

__all__ = [
    "Harness",
    "MuxerHarness",
    "NodeHarness",
    "SecurityHarness",
    "TransportHarness",
]

_T = TypeVar("_T")


class Harness:
    """Common part: how coroutines run, and how long "never" is."""

    #: Seconds a check waits for something that must happen.
    patience: float = 5.0
    #: Seconds a check watches for something that must NOT happen (e.g. a write that
    #: must block); short for real-time harnesses, where it is spent on every run.
    quiet_period: float = 0.5

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``main()`` to completion on a fresh event loop (real time) and return its
        result; virtual-time harnesses override this (see
        :class:`switchy.conformance.VirtualTimeHarness`)."""

        async def wrapped() -> _T:
            return await main()

        return asyncio.run(wrapped())

    def config(self) -> NetworkConfig:
        """The NetworkConfig the suite passes to muxers and transports."""
        return NetworkConfig(keepalive_interval=0, close_timeout=0.5)


class TransportHarness(Harness):
    """Builds the transport under test."""

    #: Address the suite listens on (port 0 or the transport's equivalent).
    listen_addr: str = "/ip4/127.0.0.1/tcp/0"
    #: Bytes written to a peer that reads nothing: more than the transport may buffer.
    backpressure_bytes: int = 64 * 1024 * 1024

    @abc.abstractmethod
    def make(self) -> Transport:
        """A fresh transport, called inside :meth:`run` (one per simulated endpoint)."""

    @abc.abstractmethod
    def unreachable_addr(self) -> str:
        """An address :meth:`make`'s transport can dial but where nobody listens."""

    def unsupported_addr(self) -> str:
        """An address the transport must refuse with UnsupportedAddress."""
        return "/dns4/example.invalid/udp/1/webrtc-direct"


class SecurityHarness(Harness):
    """Builds the security transport under test; the raw link is a memory pipe."""

    @abc.abstractmethod
    def make(self) -> SecurityTransport:
        """A fresh security transport (called inside :meth:`run`)."""


class MuxerHarness(Harness):
    """Builds the stream muxer under test; it runs over a memory pipe."""

    @abc.abstractmethod
    def make(self) -> StreamMuxer:
        """A fresh muxer (called inside :meth:`run`)."""


class NodeHarness(Harness):
    """Builds nodes with the parts under test."""

    #: Connections between the nodes go through a relay (and must say so: ``is_limited``).
    relayed: bool = False

    @abc.abstractmethod
    def make_node(self, name: str, **kwargs: Any) -> Node:
        """A node (not started); ``kwargs`` go to :class:`~switchy.stack.node.Node`."""

    @abc.abstractmethod
    def listen_addr(self) -> str:
        """Where a node made by :meth:`make_node` listens."""

    def partition(self, a: str, b: str) -> Any:
        """Cut the network between the nodes named ``a`` and ``b``; None when unsupported."""
        return None

    def heal(self, handle: Any) -> None:
        """Undo :meth:`partition`."""
