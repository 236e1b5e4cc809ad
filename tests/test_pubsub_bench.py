"""The pubsub benchmark's own arithmetic (bench/bench_pubsub.py), on a few nodes in virtual time."""

from __future__ import annotations

import math

from bench.bench_pubsub import _dijkstra, scenario


def test_dijkstra_takes_the_cheapest_path_over_the_graph() -> None:
    graph = {0: {1: 1.0, 2: 5.0}, 1: {0: 1.0, 2: 1.0}, 2: {0: 5.0, 1: 1.0, 3: 2.0}, 3: {2: 2.0}}
    assert _dijkstra(graph, 0) == {0: 0.0, 1: 1.0, 2: 2.0, 3: 4.0}
    assert 4 not in _dijkstra({**graph, 4: {}}, 0)  # unreachable: absent, not infinite


def test_the_overlay_anchor_is_a_lower_bound_of_every_delivery() -> None:
    out = scenario("clean", 30, 3, 4, seed=2)
    assert out["delivery_ratio"] == 1.0
    stretch = out["stretch"]
    # No message beats the shortest path over the connections the nodes have ...
    assert stretch["overlay"]["min"] >= 1.0 - 1e-9, stretch
    assert stretch["mesh"]["min"] >= stretch["overlay"]["min"] - 1e-9, stretch
    # ... and that path is never shorter than the direct route through the switch.
    assert stretch["direct"]["p50"] >= stretch["overlay"]["p50"] - 1e-9, stretch
    assert not math.isnan(out["latency_ms"]["p99"])


def test_the_sybil_scenario_delivers_no_spam() -> None:
    out = scenario("sybil", 40, 4, 4, seed=3)
    assert out["sybil"]["sybils"] == 2
    assert out["sybil"]["spam_deliveries_to_honest"] == 0
    assert out["sybil"]["invalid_signature_drops_total"] > 0
    assert out["delivery_ratio"] == 1.0


def test_the_partition_scenario_reports_both_sides() -> None:
    out = scenario("partition", 30, 4, 4, seed=4)
    during = out["during_partition"]
    assert during["messages"] == 2
    assert during["own_side_delivery_ratio"] == 1.0
    assert during["other_side_receptions"] == during["other_side_receptions_after_heal"]
    assert out["delivery_ratio"] == 1.0  # the messages published after the heal
