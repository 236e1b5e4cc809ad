"""``python -m bench``'s bookkeeping: per-round ratios to the same-run anchor, goals, A/B.

Pure functions on made-up samples (no benchmark runs here: speed is measured in bench/).
"""

from __future__ import annotations

from typing import Any

from bench.__main__ import _ab, _summarise


def _samples(**groups: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return dict(groups)


def test_the_ratio_is_taken_per_round_then_the_median() -> None:
    # round 2 is slower for both figure and anchor (a busy machine): its ratio stays 0.5
    s = _samples(
        tcp=[
            {"stream_1proc_MBps": 500.0, "raw_tcp_MBps": 1000.0},
            {"stream_1proc_MBps": 100.0, "raw_tcp_MBps": 200.0},
            {"stream_1proc_MBps": 300.0, "raw_tcp_MBps": 500.0},
        ]
    )
    fig = _summarise(s)["tcp_stream_1proc"]
    assert fig["value"] == 300.0 and fig["samples"] == [500.0, 100.0, 300.0]
    assert fig["anchors"] == {"raw_tcp": 500.0}
    assert fig["ratio_to_anchor"] == {"raw_tcp": 0.5}
    assert fig["goal"] == ">= 0.5 x raw_tcp" and fig["goal_met"] is True


def test_an_at_most_goal_and_an_absolute_goal() -> None:
    s = _samples(
        ping=[{"ping_rtt_us": 200.0, "raw_tcp_rtt_us": 100.0}],
        **{
            "import": [
                {
                    "import_everyday_ms": 120.0,
                    "import_stack_node_ms": 80.0,
                    "import_asyncio_ms": 40.0,
                }
            ]
        },
    )
    out = _summarise(s)
    assert out["ping_rtt"]["goal"] == "<= 1.5 x raw_tcp" and out["ping_rtt"]["goal_met"] is False
    imp = out["import_everyday_names"]
    assert imp["goal"] == "<= 100.0 ms" and imp["goal_met"] is False
    assert imp["ratio_to_anchor"] == {"import_asyncio": 3.0}


def test_a_failed_worker_is_reported_not_averaged() -> None:
    s = _samples(streams=[{"_error": ["RuntimeError: boom"]}, {"streams_per_s": 1000.0}])
    fig = _summarise(s)["streams_open_close"]
    assert fig["value"] == 1000.0 and fig["errors"] == [["RuntimeError: boom"]]


def test_the_mesh_figure_names_its_size() -> None:
    s = _samples(sim=[{"sim_mesh_200_wall_s": 4.0, "sim_mesh_200_peak_rss_MB": 90.0}])
    out = _summarise(s)
    assert out["sim_mesh"]["value"] == 4.0 and out["sim_mesh_peak_rss"]["value"] == 90.0
    assert "sim_mesh_10k" not in out


def test_ab_divides_this_by_base_and_judges_goals_against_the_base() -> None:
    this = _summarise(_samples(streams=[{"streams_per_s": 7500.0}]))
    base = _summarise(_samples(streams=[{"streams_per_s": 3000.0}]))
    ab = _ab(this, base)["streams_open_close"]
    assert ab == {
        "base": 3000.0,
        "this": 7500.0,
        "this_over_base": 2.5,
        "goal": ">= 2.5 x base",
        "goal_met": True,
    }
