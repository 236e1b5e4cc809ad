"""The virtual-time Kademlia model at 100 nodes: lookups succeed in few rounds, also with
10% of the nodes crashed, and the run is deterministic."""

from __future__ import annotations

import random
from typing import Any

from switchy.protocols.kad.model import KadModel, summarize
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
