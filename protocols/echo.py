"""Echo (``/echo/1.0.0``): every byte back until the remote closes its write side."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from switchy.stack.node import Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.node import Target
    from switchy.stack.stream import MuxedStream

__all__ = ["ECHO_PROTOCOL", "EchoService", "echo"]

ECHO_PROTOCOL: Final = "/echo/1.0.0"


async def handle_echo(stream: MuxedStream) -> None:
    """Write back every chunk read, then half-close when the remote has."""
    async for chunk in stream:
        await stream.write(chunk)
    await stream.close_write()


class EchoService(ProtocolService):
    """Serves ``/echo/1.0.0``."""

    service_name = "echo"
    service_protocols = (ECHO_PROTOCOL,)

    def attach(self, node: Node) -> None:
        node.handle(ECHO_PROTOCOL, handle_echo)


async def echo(node: Node, target: Target, data: bytes) -> bytes:
    """Send ``data`` to ``target``'s echo service and return what came back."""
    stream = await node.open_stream(target, ECHO_PROTOCOL)
    try:

        async def send() -> None:
            await stream.write(data)
            await stream.close_write()

        sender = asyncio.ensure_future(send())
        received = await stream.read_all(limit=max(len(data), 1))
        await sender
    except BaseException:
        await stream.reset()
        raise
    await stream.close()
    return received
