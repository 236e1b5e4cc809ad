"""``switchy demo`` for several node counts (in process, a small perf transfer), and its limits."""

from __future__ import annotations

import asyncio
import re

import pytest

from switchy.demo import MAX_DEMO_NODES, MIN_DEMO_NODES, demo_names, run_demo
from switchy.stack.errors import InvalidConfiguration


@pytest.mark.parametrize("n", [2, 3, 4, 9, 20])
def test_demo_runs_every_step_for_n_nodes(n: int, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(asyncio.wait_for(run_demo(n, perf_bytes=256 * 1024), 120))
    out = capsys.readouterr().out
    names = demo_names(n)
    assert f"demo: {n} nodes" in out
    for name in names:  # every node started and closed: none was dropped or capped
        assert re.search(rf"^  {name} +12D3KooW\w+  listening on ", out, re.M), name
        assert f"   {name} closed" in out
    assert "unexpected" not in out
    assert "expecting another id is refused" in out
    assert f"{names[0]} looked up {names[-1]!r}" in out and "(signatures checked)" in out
    echoer = names[2] if n > 2 else names[1]
    assert f"{echoer} sent 'hello from {echoer}' to alice" in out
    assert "Connection statistics" in out and "mean ping" not in out
    assert re.search(r"alice  <-> bob    .*ping median \d+ us / p90 \d+ us", out), out


def test_demo_names_go_past_the_named_eight() -> None:
    names = demo_names(10)
    assert names[:3] == ["alice", "bob", "carol"] and names[8:] == ["node9", "node10"]
    assert len(set(demo_names(MAX_DEMO_NODES))) == MAX_DEMO_NODES


@pytest.mark.parametrize("n", [MIN_DEMO_NODES - 1, MAX_DEMO_NODES + 1, -3])
def test_demo_refuses_a_node_count_outside_its_limits(n: int) -> None:
    with pytest.raises(InvalidConfiguration, match=f"{MIN_DEMO_NODES} to {MAX_DEMO_NODES} nodes"):
        asyncio.run(run_demo(n))
