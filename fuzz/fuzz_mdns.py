"""mDNS peer discovery: the sans-IO core fed arbitrary datagrams (queries and answers)."""

from __future__ import annotations

from _harness import expected, instrumented, main

with instrumented():
    from multiaddr import Multiaddr

    from switchy.protocols.discovery.mdns import MdnsCore
    from switchy.stack.identity import KeyPair

_CORE = MdnsCore(KeyPair.from_seed(b"m" * 32).peer_id, "fuzzpeer")
_CORE.addrs = [Multiaddr("/ip4/192.168.1.2/tcp/4001")]
_CORE.names = ["fuzz"]


def test_one_input(data: bytes) -> None:
    with expected():
        _CORE.receive(data)


if __name__ == "__main__":
    main(test_one_input)
