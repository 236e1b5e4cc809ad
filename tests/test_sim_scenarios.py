"""The ready-made scenarios (switchy.scenarios) and ``switchy sim``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from switchy.cli import main
from switchy.scenarios import MAX_SCENARIO_NODES, SCENARIOS, run_scenario
from switchy.stack.errors import InvalidConfiguration

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_meets_its_expectations(name: str) -> None:
    result = run_scenario(name, seed=5, nodes=8)
    assert result.ok, result.problems
    assert result.events > 0 and len(result.digest) == 64
    assert result.virtual_s > 0


def test_partition_scenario_figures() -> None:
    f = run_scenario("partition", seed=2, nodes=6).figures
    assert f["cross_pings_before"] == f["pairs"] == 6
    assert f["cross_pings_during"] == 0
    assert f["within_pings_during"] == f["within_pairs"] == 6
    assert f["left_nodes_cut_off"] == 3
    assert f["cross_pings_after_heal"] == 6
    assert f["healed_at_s"] > f["partitioned_at_s"]


def test_lossy_scenario_loses_packets_but_no_data() -> None:
    # (a seed whose run drops several packets on the core link: 64 packets at 5% loss)
    f = run_scenario("lossy", seed=8, nodes=8).figures
    assert f["core_link_drops"] > 0
    assert f["echoes_intact"] == f["pairs"] == 4
    assert f["bytes_echoed"] == 4 * 2 * 256 * 1024
    # 2 MB/s bottleneck: 1 MiB each way cannot finish faster than ~0.5 s virtual.
    assert f["slowest_echo_s"] >= 4 * 256 * 1024 / 2_000_000


def test_a_mesh_of_120_nodes() -> None:
    result = run_scenario("mesh", seed=11, nodes=120)
    assert result.ok, result.problems
    assert result.figures["pings_ok"] == 120 * 3 * 3
    assert result.figures["connections"] >= 120 * 3  # both ends count each connection


def test_same_seed_same_result_different_seed_different_trace() -> None:
    a = run_scenario("mesh", seed=3, nodes=6)
    b = run_scenario("mesh", seed=3, nodes=6)
    c = run_scenario("mesh", seed=4, nodes=6)
    assert a.to_dict() | {"wall_s": 0} == b.to_dict() | {"wall_s": 0}
    assert a.digest != c.digest


def test_bad_arguments() -> None:
    with pytest.raises(InvalidConfiguration, match="unknown scenario 'nope'"):
        run_scenario("nope")
    with pytest.raises(InvalidConfiguration, match="2 to"):
        run_scenario("mesh", nodes=1)
    with pytest.raises(InvalidConfiguration, match="2 to"):
        run_scenario("mesh", nodes=MAX_SCENARIO_NODES + 1)


def _cli(args: list[str], hashseed: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchy.cli", "sim", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONHASHSEED=hashseed, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _without_wall(out: str) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(out)
    d.pop("wall_s")
    return d


def test_cli_is_deterministic_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    args = ["--scenario", "lossy", "--nodes", "6", "--seed", "3", "--json"]
    one = _cli([*args, "--trace", str(tmp_path / "1.jsonl")], "1")
    two = _cli([*args, "--trace", str(tmp_path / "2.jsonl")], "987")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert _without_wall(one.stdout) == _without_wall(two.stdout)
    trace = (tmp_path / "1.jsonl").read_text()
    assert trace == (tmp_path / "2.jsonl").read_text()
    lines = trace.splitlines()
    assert len(lines) == _without_wall(one.stdout)["events"]
    assert all("t" in json.loads(line) for line in lines[:50])
    other = _cli(["--scenario", "lossy", "--nodes", "6", "--seed", "4", "--json"], "1")
    assert _without_wall(other.stdout)["digest"] != _without_wall(one.stdout)["digest"]


def test_cli_failure_prints_the_seed_and_exits_non_zero() -> None:
    failed = _cli(["--nodes", "4", "--seed", "9"], "0", SIMULATOR_DEFAULT_PACKET_LOSS="1.0")
    assert failed.returncode == 1
    assert "FAILED: ping_sessions_failed is 12, expected 0" in failed.stdout
    assert "rerun with --seed 9" in failed.stderr


def test_cli_text_output_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--scenario", "partition", "--nodes", "4", "--seed", "abc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scenario partition: 4 nodes, seed 'abc'")
    assert "cross_pings_after_heal: 4" in out and out.rstrip().endswith("ok")
    assert main(["sim", "--nodes", "1"]) == 2  # bad input
    assert "a scenario needs 2 to" in capsys.readouterr().err
