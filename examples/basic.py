"""The basic example: two nodes and a custom protocol.

Node A serves ``/example/echo-upper/1.0.0``: it reads one length-prefixed message and
answers it upper-cased.  Node B dials A by address (Noise-encrypted, yamux-multiplexed,
the protocol chosen by multistream-select) and asks.

Usage::

    python examples/basic.py                      # both nodes in one process
    python examples/basic.py serve [MULTIADDR]    # prints its address, serves until Ctrl-C
    python examples/basic.py ask MULTIADDR TEXT   # prints the answer
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from switchy.presets import default_node
from switchy.stack.node import Node
from switchy.stack.stream import MuxedStream

PROTOCOL = "/example/echo-upper/1.0.0"
#: Largest message either side accepts, in bytes.
MAX_MESSAGE = 64 * 1024


async def handle(stream: MuxedStream) -> None:
    """Read one message (UTF-8 text) and answer it upper-cased."""
    text = (await stream.recv_message(max_size=MAX_MESSAGE)).decode(errors="replace")
    await stream.send_message(text.upper().encode())


async def ask(node: Node, addr: str, text: str) -> str:
    """Open a stream to ``addr`` on the protocol, send ``text``, return the answer."""
    stream = await node.open_stream(addr, PROTOCOL)
    try:
        await stream.send_message(text.encode())
        answer = await stream.recv_message(max_size=MAX_MESSAGE)
    finally:
        await stream.close()
    return answer.decode()


async def demo() -> None:
    """Both nodes in one process."""
    async with default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as a, default_node() as b:
        a.handle(PROTOCOL, handle)
        print(f"A is {a.peer_id} at {a.full_addrs[0]}")
        print(f"B asks: {await ask(b, str(a.full_addrs[0]), 'hello, peer')}")


async def serve(listen: str) -> None:
    """Serve until interrupted; print the address first."""
    async with default_node(listen=[listen]) as a:
        a.handle(PROTOCOL, handle)
        print(a.full_addrs[0], flush=True)
        await asyncio.Event().wait()


async def client(addr: str, text: str) -> None:
    """Ask a serving node."""
    async with default_node() as b:
        print(await ask(b, addr, text))


def main(argv: list[str]) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("listen", nargs="?", default="/ip4/127.0.0.1/tcp/0")
    c = sub.add_parser("ask")
    c.add_argument("addr")
    c.add_argument("text")
    args = p.parse_args(argv)
    try:
        if args.cmd == "serve":
            asyncio.run(serve(args.listen))
        elif args.cmd == "ask":
            asyncio.run(client(args.addr, args.text))
        else:
            asyncio.run(demo())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
