"""The whole comparison in one command; prints one JSON document.

``python -m bench [--quick] [--rounds N] [--loop asyncio|uvloop|both] [--ab REF]
[--only GROUP,...] [--pyperf-dir DIR]``

Every figure of the performance issue is measured beside its anchor in the same process
(:mod:`bench.worker`; one fresh process per group and round): QUIC against bare aioquic and
our TCP stream, the TCP stream against raw TCP, ping against a raw TCP round trip, the
router against aiohttp, import time against ``import asyncio``.  The ratio to the anchor is
taken in each round, then the median over the rounds is reported.

``--ab REF`` measures a second commit in the same run: ``REF`` is checked out in a detached
git worktree (under the system's temporary directory, kept for the next run) and its
``src/`` is put first on ``PYTHONPATH``, so the same benchmark code measures both commits.
The two are interleaved, group by group, in alternating order, so both see the same load
of a shared machine; ``ab`` in the output gives this tree's figure over ``REF``'s.
``--loop both`` does the same for asyncio's loop and uvloop.

``--pyperf-dir`` also writes one pyperf suite per variant (``pyperf compare_to a.json
b.json`` compares them with pyperf's significance test).  ``--sim-10k`` adds the
10,000-node mesh (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs

from bench.common import LOOP_ENV

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ["quic", "tcp", "ping", "connect", "streams", "router", "import", "sim"]


@attrs.frozen
class Figure:
    """One figure of the issue's table: where it comes from and what it is judged against."""

    name: str
    group: str
    key: str
    unit: str
    #: anchor name -> key of the same group, measured in the same process
    anchors: dict[str, str] = attrs.field(factory=dict)
    #: (anchor name, goal ratio, True when the ratio must be at least the goal)
    goal: tuple[str, float, bool] | None = None
    #: goal against the other commit of an A/B run: (ratio this/base, at least?)
    goal_vs_base: tuple[float, bool] | None = None


FIGURES = [
    Figure(
        "quic_stream_2proc",
        "quic",
        "quic_2proc_MBps",
        "MB/s",
        {"bare_aioquic": "bare_aioquic_2proc_MBps", "switchy_tcp": "tcp_2proc_MBps"},
        ("switchy_tcp", 0.5, True),
    ),
    Figure("tcp_stream_2proc", "quic", "tcp_2proc_MBps", "MB/s"),
    Figure(
        "tcp_stream_1proc",
        "tcp",
        "stream_1proc_MBps",
        "MB/s",
        {"raw_tcp": "raw_tcp_MBps"},
        ("raw_tcp", 0.5, True),
    ),
    Figure(
        "ping_rtt",
        "ping",
        "ping_rtt_us",
        "us",
        {"raw_tcp": "raw_tcp_rtt_us"},
        ("raw_tcp", 1.5, False),
    ),
    Figure(
        "new_connection_identify",
        "connect",
        "new_connection_ms",
        "ms",
        {"no_identify": "new_connection_no_identify_ms"},
        goal_vs_base=(0.5, False),
    ),
    Figure("new_connection_no_identify", "connect", "new_connection_no_identify_ms", "ms"),
    Figure("streams_open_close", "streams", "streams_per_s", "1/s", goal_vs_base=(2.5, True)),
    Figure(
        "router_1_inflight",
        "router",
        "router_1_req_per_s",
        "req/s",
        {"aiohttp": "aiohttp_1_req_per_s"},
        ("aiohttp", 1.0, True),
    ),
    Figure(
        "router_64_inflight",
        "router",
        "router_64_req_per_s",
        "req/s",
        {"aiohttp": "aiohttp_64_req_per_s"},
        ("aiohttp", 1.0, True),
    ),
    Figure(
        "router_1_median",
        "router",
        "router_1_median_us",
        "us",
        {"aiohttp": "aiohttp_1_median_us"},
        ("aiohttp", 1.0, False),
    ),
    Figure(
        "import_everyday_names",
        "import",
        "import_everyday_ms",
        "ms",
        {"import_asyncio": "import_asyncio_ms"},
    ),
    Figure("import_stack_node", "import", "import_stack_node_ms", "ms"),
    Figure("sim_mesh", "sim", "sim_mesh_{n}_wall_s", "s", goal_vs_base=(0.5, False)),
    Figure("sim_mesh_peak_rss", "sim", "sim_mesh_{n}_peak_rss_MB", "MB"),
    Figure("sim_mesh_10k", "sim10k", "sim_mesh_10000_wall_s", "s"),
    Figure("sim_mesh_10k_peak_rss", "sim10k", "sim_mesh_10000_peak_rss_MB", "MB"),
]

#: Absolute goals of the issue that have no anchor ratio (value, at most).
ABSOLUTE_GOALS = {"import_everyday_names": 100.0, "sim_mesh_10k": 300.0}


@attrs.frozen
class Variant:
    """What one worker process measures: a commit's ``src/`` and an event loop."""

    label: str
    src: Path
    loop: str


def _worktree(ref: str) -> Path:
    """A detached worktree of ``ref`` (made once, reused while it is at the same commit)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"switchy-bench-{sha[:12]}"
    if not (path / "src" / "switchy").is_dir():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), sha],
            capture_output=True,
            check=True,
        )
    return path / "src"


def _run_worker(variant: Variant, group: str, quick: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(variant.src), str(ROOT)])
    if variant.loop == "uvloop":
        env[LOOP_ENV] = "uvloop"
    else:
        env.pop(LOOP_ENV, None)
    cmd = [sys.executable, "-m", "bench.worker", group] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"_error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _key(fig: Figure, sample: dict[str, Any]) -> str | None:
    """The figure's key in a sample (the mesh's key names its size)."""
    if "{n}" not in fig.key:
        return fig.key if fig.key in sample else None
    prefix, suffix = fig.key.split("{n}")
    return next(
        (k for k in sample if k.startswith(prefix) and k.endswith(suffix) and "10000" not in k),
        None,
    )


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per figure: the median value, each anchor's median and the median per-round ratio."""
    out: dict[str, Any] = {}
    for fig in FIGURES:
        rounds = [s for s in samples.get(fig.group, []) if "_error" not in s]
        errors = [s["_error"] for s in samples.get(fig.group, []) if "_error" in s]
        values: list[float] = []
        anchors: dict[str, list[float]] = defaultdict(list)
        ratios: dict[str, list[float]] = defaultdict(list)
        for s in rounds:
            k = _key(fig, s)
            if k is None:
                continue
            values.append(s[k])
            for name, akey in fig.anchors.items():
                anchors[name].append(s[akey])
                ratios[name].append(s[k] / s[akey])
        if not values and not errors:
            continue
        entry: dict[str, Any] = {
            "value": _median(values),
            "unit": fig.unit,
            "samples": [round(v, 4) for v in values],
        }
        if fig.anchors:
            entry["anchors"] = {n: _median(v) for n, v in anchors.items()}
            entry["ratio_to_anchor"] = {n: _median(v) for n, v in ratios.items()}
        if fig.goal is not None and ratios.get(fig.goal[0]):
            name, target, at_least = fig.goal
            r = statistics.median(ratios[name])
            entry["goal"] = f"{'>=' if at_least else '<='} {target} x {name}"
            entry["goal_met"] = r >= target if at_least else r <= target
        if fig.name in ABSOLUTE_GOALS and values:
            entry["goal"] = f"<= {ABSOLUTE_GOALS[fig.name]} {fig.unit}"
            entry["goal_met"] = statistics.median(values) <= ABSOLUTE_GOALS[fig.name]
        if errors:
            entry["errors"] = errors
        out[fig.name] = entry
    return out


def _ab(this: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """This tree's figure over the base commit's, with the issue's goals against the base."""
    out: dict[str, Any] = {}
    for fig in FIGURES:
        a, b = base.get(fig.name, {}).get("value"), this.get(fig.name, {}).get("value")
        if not a or b is None:
            continue
        entry: dict[str, Any] = {"base": a, "this": b, "this_over_base": round(b / a, 3)}
        if fig.goal_vs_base is not None:
            target, at_least = fig.goal_vs_base
            entry["goal"] = f"{'>=' if at_least else '<='} {target} x base"
            entry["goal_met"] = b / a >= target if at_least else b / a <= target
        out[fig.name] = entry
    return out


#: How a figure's unit is given to pyperf (which knows seconds, bytes and plain numbers).
_PYPERF_UNITS = {"s": (1.0, "second"), "ms": (1e-3, "second"), "us": (1e-6, "second")}


def _write_pyperf(directory: Path, label: str, samples: dict[str, list[dict[str, Any]]]) -> None:
    """One pyperf suite for a variant: a benchmark per figure, a run per round."""
    import pyperf

    benches = []
    for fig in FIGURES:
        values = [s[k] for s in samples.get(fig.group, []) if (k := _key(fig, s)) is not None]
        if len(values) < 1:
            continue
        scale, unit = _PYPERF_UNITS.get(fig.unit, (1.0, "integer"))
        runs = [
            pyperf.Run(
                [v * scale], metadata={"name": fig.name, "unit": unit}, collect_metadata=False
            )
            for v in values
        ]
        benches.append(pyperf.Benchmark(runs))
    if benches:
        directory.mkdir(parents=True, exist_ok=True)
        pyperf.BenchmarkSuite(benches).dump(str(directory / f"{label}.json"), replace=True)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one JSON document."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    p.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    p.add_argument("--ab", metavar="REF", help="also measure commit REF, interleaved")
    p.add_argument("--only", help=f"comma-separated groups of {','.join(GROUPS)}")
    p.add_argument("--sim-10k", action="store_true", help="add the 10,000-node mesh")
    p.add_argument("--pyperf-dir", type=Path, help="write pyperf suites here")
    args = p.parse_args(argv)
    groups = args.only.split(",") if args.only else list(GROUPS)
    if args.sim_10k:
        groups.append("sim10k")
    rounds = args.rounds or (1 if args.quick else 3)
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    commits = [("this", ROOT / "src")]
    if args.ab:
        commits.append((f"base({args.ab})", _worktree(args.ab)))
    variants = [Variant(f"{c}/{lp}", src, lp) for c, src in commits for lp in loops]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        v.label: defaultdict(list) for v in variants
    }
    start = time.perf_counter()
    for r in range(rounds):
        for g in groups:
            order = variants if r % 2 == 0 else variants[::-1]
            # the simulator runs in virtual time on its own loop: one loop is enough
            for v in order:
                if g.startswith("sim") and v.loop != loops[0]:
                    continue
                print(f"[bench] round {r + 1}/{rounds} {g} {v.label}", file=sys.stderr)
                samples[v.label][g].append(_run_worker(v, g, args.quick))
    summaries = {label: _summarise(s) for label, s in samples.items()}
    doc: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "rounds": rounds,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - start, 1),
        "variants": summaries,
        "not_measured": {
            "js_libp2p_quic": "no js-libp2p QUIC peer on this machine (issue: about 62 MB/s "
            "on 2026-12-01, 4.6x switchy's QUIC then)",
        },
    }
    if args.ab:
        doc["ab"] = {
            lp: _ab(summaries[f"this/{lp}"], summaries[f"base({args.ab})/{lp}"]) for lp in loops
        }
    if args.pyperf_dir:
        for label, s in samples.items():
            _write_pyperf(args.pyperf_dir, label.replace("/", "-"), s)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
