"""Connection statistics (latency samples, their median and percentiles, the bound) and the
node's metrics registry (registration, label bounds, histograms, the rcmgr collector)."""

from __future__ import annotations

import asyncio
import time

import pytest

from switchy.stack.metrics import (
    MAX_LABEL_SETS,
    MAX_LATENCY_SAMPLES,
    OVERFLOW_LABEL,
    ConnectionStats,
    MetricsRegistry,
    loop_time,
    rcmgr_collector,
)
from switchy.transports.sim import Simulation, run_simulation


def test_median_and_p90_are_not_dragged_by_one_slow_sample() -> None:
    stats = ConnectionStats(opened_at=0.0)
    assert stats.median_latency is None and stats.p90_latency is None
    for _ in range(19):
        stats.record_latency(0.0004)
    stats.record_latency(2.0)  # a ping queued behind connection setup or a bulk transfer
    assert stats.average_latency == pytest.approx((19 * 0.0004 + 2.0) / 20)
    assert stats.median_latency == pytest.approx(0.0004)
    assert stats.p90_latency == pytest.approx(0.0004)
    assert stats.latency_quantile(1.0) == 2.0
    assert stats.latency_quantile(0.0) == pytest.approx(0.0004)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        stats.latency_quantile(1.5)


def test_recent_samples_are_bounded() -> None:
    stats = ConnectionStats(opened_at=0.0)
    for i in range(MAX_LATENCY_SAMPLES * 3):
        stats.record_latency(float(i))
    assert len(stats.recent_latencies) == MAX_LATENCY_SAMPLES
    assert stats.latency_samples == MAX_LATENCY_SAMPLES * 3
    assert min(stats.recent_latencies) == MAX_LATENCY_SAMPLES * 2  # the oldest went first


# --- the node's metrics registry ---------------------------------------------------------


def test_registration_is_get_or_create_and_checks_kind_and_labels() -> None:
    reg = MetricsRegistry()
    c = reg.counter("x_total", "x", ("a",))
    assert reg.counter("x_total", "again", ("a",)) is c
    with pytest.raises(ValueError, match="registered as a counter"):
        reg.gauge("x_total", "x", ("a",))
    with pytest.raises(ValueError, match="labels"):
        reg.counter("x_total", "x", ("b",))
    with pytest.raises(ValueError, match="invalid metric name"):
        reg.counter("1bad name", "x")
    with pytest.raises(ValueError, match=r"has labels \('a',\)"):
        c.labels("1", "2")
    c.labels("v").inc()
    c.labels("v").inc(2)
    assert c.value("v") == 3 and c.value("never") == 0


def test_label_combinations_are_bounded() -> None:
    reg = MetricsRegistry()
    c = reg.counter("p_total", "p", ("protocol",))
    for i in range(MAX_LABEL_SETS + 50):
        c.labels(f"/made-up/{i}").inc()
    fam = c.family()
    assert len(fam.samples) == MAX_LABEL_SETS + 1
    assert c.value(OVERFLOW_LABEL) == 50


def test_histogram_buckets_are_cumulative() -> None:
    reg = MetricsRegistry()
    h = reg.histogram("h_seconds", "h", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v)
    ((_, value),) = h.family().samples
    assert not isinstance(value, float)
    assert value.cumulative() == [(0.1, 1), (1.0, 3), (float("inf"), 4)]
    assert value.sum == pytest.approx(4.05) and value.count == 4


def test_rcmgr_collector_exports_use_limits_and_refusals_of_a_fake_manager() -> None:
    state: dict[str, dict[str, tuple[int, int | None, int]]] = {
        "system": {
            "connections_inbound": (3, 128, 0),
            "connections_outbound": (1, 128, 0),
            "streams_inbound": (10, 2048, 4),
            "memory": (4096, 128 << 20, 1),
        },
        "peer:12D3KooWfake": {"streams_outbound": (2, None, 0), "fds": (1, 8, 0)},
    }
    reg = MetricsRegistry()
    reg.add_collector(rcmgr_collector(lambda: state))
    fams = {f.name: dict(f.samples) for f in reg.collect()}
    assert fams["libp2p_rcmgr_connections"] == {
        ("inbound", "system"): 3.0,
        ("outbound", "system"): 1.0,
    }
    assert fams["libp2p_rcmgr_streams"][("outbound", "peer:12D3KooWfake")] == 2.0
    assert fams["libp2p_rcmgr_memory"] == {("system",): 4096.0}
    assert fams["libp2p_rcmgr_fds"] == {("peer:12D3KooWfake",): 1.0}
    assert fams["libp2p_rcmgr_limit"][("system", "memory")] == float(128 << 20)
    assert ("peer:12D3KooWfake", "streams_outbound") not in fams["libp2p_rcmgr_limit"]
    assert fams["libp2p_rcmgr_blocked_resources"][("inbound", "system", "streams_inbound")] == 4
    assert fams["libp2p_rcmgr_blocked_resources"][("", "system", "memory")] == 1
    state["system"]["memory"] = (0, 128 << 20, 2)  # read again at each scrape
    fams = {f.name: dict(f.samples) for f in reg.collect()}
    assert fams["libp2p_rcmgr_memory"] == {("system",): 0.0}


def test_loop_time_is_the_running_loops_clock_else_the_monotonic_clock() -> None:
    before = time.monotonic()
    outside = loop_time()
    assert before <= outside <= time.monotonic()

    async def main(sim: Simulation) -> None:
        loop = asyncio.get_running_loop()
        start = loop_time()
        assert start == loop.time() == sim.now
        await asyncio.sleep(3600)  # virtual: the loop's clock, not the wall's, moves
        assert loop_time() == loop.time()
        assert loop_time() - start == pytest.approx(3600)
        stats = ConnectionStats()
        assert stats.opened_at == loop.time()

    run_simulation(main, seed=1)
