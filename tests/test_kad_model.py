"""The virtual-time Kademlia model at 100 nodes: lookups succeed in few rounds, also with
10% of the nodes crashed, and the run is deterministic."""

from __future__ import annotations

import random
from typing import Any

from switchy.protocols.kad.model import KadModel, summarize, table_fill
from switchy.protocols.kad.routing import kad_key


def _figures(seed: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    model = KadModel(100, seed=seed, refresh_buckets=4)
    rng = random.Random(seed)
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for label in ("up", "crashed"):
        if label == "crashed":
            model.crash(0.1)
            assert len(model.crashed) == 10
        live = [p for p in model.ids if p not in model.crashed]
        find = [model.lookup(rng.choice(live), rng.choice(live)) for _ in range(60)]
        close = [model.closest(rng.choice(live), kad_key(rng.randbytes(32))) for _ in range(20)]
        out[label] = (summarize(find, 100), summarize(close, 100))
    return out


def test_lookups_at_100_nodes() -> None:
    """Every find-peer and closest-peer lookup succeeds, within 4 rounds at the median,
    with all nodes up and with 10% crashed; the same seed gives the same figures."""
    figures = _figures(7)
    for label in ("up", "crashed"):
        find, close = figures[label]
        assert find["success_ratio"] == 1.0
        assert close["success_ratio"] == 1.0
        assert find["rounds_median"] <= 4
        assert close["rounds_median"] <= 4
        assert close["queries_mean"] <= 120
    assert _figures(7) == figures


def test_a_stall_time_makes_dead_peers_cheap() -> None:
    """Closest-k lookups (before a put) with 10% of the nodes crashed: with a 0.5 s stall
    time the median lookup takes a fraction of one 10 s query timeout, without it more
    than one; every lookup still finds the closest live node."""
    figures = {}
    for stall in (None, 0.5):
        model = KadModel(100, seed=3, refresh_buckets=4, stall=stall)
        model.crash(0.1)
        rng = random.Random(3)
        live = [p for p in model.ids if p not in model.crashed]
        close = [model.closest(rng.choice(live), kad_key(rng.randbytes(32))) for _ in range(20)]
        figures[stall] = summarize(close, 100)
        assert figures[stall]["success_ratio"] == 1.0
    assert figures[None]["latency_s_p50"] > 10.0
    assert figures[0.5]["latency_s_p50"] < 5.0


def test_records_survive_churn_when_republished() -> None:
    """Churn: each epoch 35% of the live nodes leave and as many join; records put once
    are still found in every epoch when their owners republish every 2 epochs, and
    without republishing some are lost (so the test can see the difference)."""
    kw: dict[str, Any] = {"epochs": 7, "leave": 0.35, "join": 14, "records": 8, "gets": 20}
    kept = KadModel(40, seed=4, refresh_buckets=2, stall=0.5).churn(republish_every=2, **kw)
    lost = KadModel(40, seed=4, refresh_buckets=2, stall=0.5).churn(republish_every=1000, **kw)
    assert [e.found_ratio for e in kept] == [1.0] * 7
    assert min(e.found_ratio for e in lost) < 1.0
    assert [e.epoch for e in kept] == list(range(1, 8))
    assert 35 <= kept[-1].live <= 45  # joins replace the nodes that left


def test_nodes_join_as_bootstrap_does() -> None:
    """Each node asks node 0, looks itself up and refreshes the buckets its table names
    (as KadDHT.bootstrap): at 200 nodes the tables then hold nearly every peer their
    buckets could hold; the bootstrap node knows peers, and no table names its owner."""
    model = KadModel(200, seed=5)
    assert table_fill(model.tables, model.ids) >= 0.99
    assert len(model.tables[0]) >= 60  # k per bucket: about 20 + 20 + 20 + 12 + 6 + ...
    assert all(t.local not in t for t in model.tables)
