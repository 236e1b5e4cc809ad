"""Load over loopback: one node holding many inbound connections and echo streams at once,
then the same with the limits halved (clean refusals, the rest still served).

Smaller than ``bench/bench_load.py`` (1,000 connections, 10,000 streams) so that it stays
within a minute on a loaded 2-core machine; the bench prints the full figures.
"""

from __future__ import annotations

import asyncio

from bench.load import run_load

CONNS = 120
STREAMS = 1200


def test_node_holds_many_connections_and_streams_each_echoing_exactly() -> None:
    r = asyncio.run(asyncio.wait_for(run_load(CONNS, STREAMS), 120))
    assert r["connect"]["connected"] == CONNS and r["connect"]["refused"] == 0
    assert r["server_connections"] == CONNS
    s = r["streams"]
    assert s["echoed"] == STREAMS and s["wrong"] == 0 and s["refused"] == 0
    assert s["held"] == STREAMS and r["server_streams"] == STREAMS  # all open at once
    assert s["connections_alive"] == CONNS
    assert r["after"]["usage"] == {"system": {}}
    assert r["after"]["fds_over_base"] <= 0
    assert r["after"]["tasks_over_base"] <= 0


def test_limits_set_lower_refuse_cleanly_and_keep_serving_the_rest() -> None:
    half_c, half_s = CONNS // 2, STREAMS // 2
    r = asyncio.run(
        asyncio.wait_for(run_load(CONNS, STREAMS, limit_conns=half_c, limit_streams=half_s), 120)
    )
    assert r["connect"]["connected"] == half_c
    assert r["connect"]["refused"] == CONNS - half_c
    assert r["blocked"]["system/conns_inbound"] == CONNS - half_c
    s = r["streams"]
    assert s["echoed"] == half_s and s["wrong"] == 0
    assert s["refused"] == STREAMS - half_s
    assert r["server_streams"] == half_s
    assert s["connections_alive"] == half_c  # the connections within the limit still serve
    assert r["after"]["usage"] == {"system": {}}
    assert r["after"]["fds_over_base"] <= 0
    assert r["after"]["tasks_over_base"] <= 0
