"""Connection statistics: latency samples, their median and percentiles, and the bound."""

from __future__ import annotations

import pytest

from switchy.stack.metrics import MAX_LATENCY_SAMPLES, ConnectionStats


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
