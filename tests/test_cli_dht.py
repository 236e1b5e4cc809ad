"""``switchy dht``: two servers, then client commands through them, as a user runs them."""

from __future__ import annotations

import json

from switchy.protocols.kad.records import pk_key
from switchy.stack.identity import KeyPair
from tests.test_cli import _run, _start, _stop


def test_dht_serve_put_get_find_peer_and_providers() -> None:
    """A record put through one server is got through the other; a peer and a provider
    are found; errors exit with a message, not a traceback."""
    first, addr1 = _start("dht", "serve")
    try:
        assert "/p2p/12D3KooW" in addr1
        second, addr2 = _start("dht", "serve", "--bootstrap", addr1)
        try:
            other = KeyPair.from_seed(b"c" * 32)
            key = "hex:" + pk_key(other.peer_id).hex()
            value = "hex:" + other.public_key.to_protobuf().hex()
            r = _run("dht", "put", key, value, "--bootstrap", addr1, "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["stored_at"] >= 1
            r = _run("dht", "get", key, "--bootstrap", addr2, "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["value_hex"] == other.public_key.to_protobuf().hex()
            peer2 = addr2.rsplit("/", 1)[1]
            r = _run("dht", "find-peer", peer2, "--bootstrap", addr1, "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["addrs"]
            r = _run("dht", "find-providers", "thing", "--bootstrap", addr1, "--json")
            assert json.loads(r.stdout) == {"providers": []}
            r = _run("dht", "put", "/nope/x", "v", "--bootstrap", addr1)
            assert r.returncode == 1 and "no validator" in r.stderr
            assert "Traceback" not in r.stderr
            r = _run("dht", "get", "/pk/x")
            assert r.returncode == 2 and "--bootstrap" in r.stderr
        finally:
            _stop(second)
    finally:
        _stop(first)
