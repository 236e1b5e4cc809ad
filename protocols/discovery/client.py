"""Client of ``/switchy/discovery/1.0.0``: register, refresh, unregister and look up names.

Every claim a registry returns is verified (signatures, the record's peer id,
the name asked for) before it is used, so a lying registry cannot redirect a
client to a peer that did not claim the name, nor change a peer's addresses.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from switchy.protocols.discovery.claims import NameClaim, open_name_claim
from switchy.protocols.discovery.codec import (
    DISCOVERY_PROTOCOL,
    MAX_FRAME_SIZE,
    ClientCore,
    Lookup,
    Refresh,
    Register,
    Request,
    Response,
    Status,
    Unregister,
)
from switchy.stack.addresses import split_peer
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    DiscoveryFailed,
    ProtocolError,
    RequestRefused,
)
from switchy.stack.identity import PeerId

if TYPE_CHECKING:
    from switchy.stack.node import Node, Target
    from switchy.stack.stream import MuxedStream

__all__ = ["lookup", "refresh", "register", "registry_request", "unregister"]


async def registry_request(node: Node, registry: Target, request: Request) -> Response:
    """Send one request to ``registry`` on a new stream; its response.

    Bounded by the node's ``request_timeout``.  Raises
    :class:`~switchy.stack.errors.ProtocolError` when the registry breaks the protocol.
    Counted and timed in the node's ``switchy_discovery_*`` metrics.
    """
    from switchy.protocols.discovery.metrics import record_request
    from switchy.stack.metrics import measure_clock

    clock = measure_clock()
    start = clock()
    status = "error"
    try:
        response = await _exchange(node, registry, request)
        status = response.status.name.lower()
        return response
    finally:
        kind = type(request).__name__.lower()
        record_request(node.metrics, "client", kind, status, clock() - start)


async def _exchange(node: Node, registry: Target, request: Request) -> Response:
    async with asyncio.timeout(node.config.request_timeout):
        stream = await _open_stream(node, registry)
        try:
            core = ClientCore()
            core.send_request(request)
            await stream.write(core.data_to_send())
            while True:
                data = await stream.read(MAX_FRAME_SIZE)
                if not data:
                    raise ConnectionClosed("the registry closed the stream without answering")
                responses = core.receive_data(data)
                if responses:
                    break
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
    return responses[0]


async def _open_stream(node: Node, registry: Target) -> MuxedStream:
    if not node.is_closed:
        return await node.open_stream(registry, DISCOVERY_PROTOCOL)
    # A closing node dials no more; a connection still open may carry a last request
    # (unregistering names on close).
    peer = registry if isinstance(registry, PeerId) else split_peer(registry)[1]
    conns = node.connections(peer) if peer is not None else []
    if not conns:
        raise ConnectionClosed(f"the node is closed and has no connection to {registry}")
    return await node.open_protocol_stream(conns[0], DISCOVERY_PROTOCOL)


def _refused(registry: Target, request: Request, response: Response) -> RequestRefused:
    what = type(request).__name__.upper()
    return RequestRefused(
        f"registry {registry} refused {what} {request.name!r}: "
        f"{response.status.name} {response.message}".rstrip(),
        code=response.status.name,
    )


async def register(node: Node, registry: Target, name: str, ttl: int, claim: bytes) -> int:
    """Register ``name`` with a signed claim for ``ttl`` seconds; the TTL granted.

    Raises :class:`~switchy.stack.errors.RequestRefused` (``code`` is the status name:
    ``NAME_TAKEN``, ``LIMIT_EXCEEDED``, ``BAD_RECORD`` …) when the registry refuses.
    """
    request = Register(name, ttl, claim)
    response = await registry_request(node, registry, request)
    if response.status != Status.OK:
        raise _refused(registry, request, response)
    return response.ttl


async def refresh(node: Node, registry: Target, name: str, ttl: int) -> int:
    """Extend our registration of ``name``; the TTL granted (``RequestRefused`` if refused)."""
    request = Refresh(name, ttl)
    response = await registry_request(node, registry, request)
    if response.status != Status.OK:
        raise _refused(registry, request, response)
    return response.ttl


async def unregister(node: Node, registry: Target, name: str) -> None:
    """Remove our registration of ``name`` (``RequestRefused`` if not ours or not there)."""
    request = Unregister(name)
    response = await registry_request(node, registry, request)
    if response.status != Status.OK:
        raise _refused(registry, request, response)


async def lookup(node: Node, registry: Target, name: str) -> NameClaim:
    """Who holds ``name`` at ``registry``: a verified claim.

    Raises :class:`~switchy.stack.errors.DiscoveryFailed` when the name is not
    registered, :class:`~switchy.stack.errors.AuthenticationFailed` when the registry
    answers with a claim that does not verify or is for another name, and
    :class:`~switchy.stack.errors.ProtocolError` for any other answer.
    """
    response = await registry_request(node, registry, Lookup(name))
    if response.status == Status.NOT_FOUND:
        raise DiscoveryFailed(f"{name!r} is not registered at {registry}")
    if response.status != Status.OK:
        raise ProtocolError(
            f"registry {registry} answered LOOKUP {name!r} with "
            f"{response.status.name} {response.message}".rstrip()
        )
    if not response.claim:
        raise ProtocolError(f"registry {registry} answered LOOKUP {name!r} without a claim")
    try:
        return open_name_claim(response.claim, name)
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(f"registry {registry} returned a bad claim: {exc}") from None
