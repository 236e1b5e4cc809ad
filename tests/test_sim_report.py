"""``switchy sim --report``: the HTML page of a run, its data, its bounds, and how headless
Chromium renders it (no network request, no script error, the expected elements)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from switchy.cli import main
from switchy.stack.errors import InvalidConfiguration
from switchy.transports.sim.report import (
    MAX_CONNECTIONS,
    MAX_FAULTS,
    parse_trace,
    render_report,
    report_data,
)
from switchy.transports.sim.trace import TraceEvent

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The only URL the page may contain: the SVG namespace (a name, never fetched).
SVG_NS = "http://www.w3.org/2000/svg"


def page_data(page: str) -> dict[str, Any]:
    """The JSON the page embeds (what its script renders)."""
    m = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S)
    assert m is not None
    data: dict[str, Any] = json.loads(m.group(1))
    return data


@pytest.fixture(scope="module")
def partition_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``switchy sim --scenario partition --nodes 4 --report ... --trace ...``, once."""
    out = tmp_path_factory.mktemp("report")
    report, trace = out / "report.html", out / "trace.jsonl"
    code = main(
        ["sim", "--scenario", "partition", "--nodes", "4", "--report", str(report),
         "--trace", str(trace)]
    )  # fmt: skip
    assert code == 0
    return report, trace


def test_the_report_holds_topology_connections_flows_and_faults(
    partition_run: tuple[Path, Path],
) -> None:
    report, trace = partition_run
    page = report.read_text()
    events = list(parse_trace(trace.read_text().splitlines()))  # --trace still written
    data = page_data(page)
    assert data == report_data(events, title=data["title"], summary=data["summary"])
    assert data["summary"]["scenario"] == "partition" and data["summary"]["result"] == "ok"
    assert [h["name"] for h in data["hosts"] if h["role"] == "node"] == ["n0", "n1", "n2", "n3"]
    conns = data["connections"]
    connects = [e for e in events if e.kind == "connect"]
    assert len(conns) == len(connects) > 0
    assert {c["how"] for c in conns} <= {"closed", "reset", "timed out", "refused", "open"}
    assert all(c["up"] is None or c["start"] <= c["up"] for c in conns)
    kinds = [f["kind"] for f in data["faults"]]
    assert "partition" in kinds and "heal" in kinds
    assert kinds.index("partition") < kinds.index("heal")
    sent = sum(e.size for e in events if e.kind == "send")
    assert sum(data["flows"]["total"]) == sent
    assert data["omitted"] == {"connections": 0, "faults": 0, "pairs": 0}
    # self-contained: no URL but the SVG namespace, no external reference at all
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls == {SVG_NS}
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "default-src 'none'" in page  # the browser refuses any fetch the page might try


def test_the_page_is_bounded_and_escapes_what_it_embeds() -> None:
    events = [
        TraceEvent(i * 0.001, "connect", "a", "b", 40, {"conn": i, "port": 1})
        for i in range(MAX_CONNECTIONS + 5)
    ]
    events += [TraceEvent(1.0, "note", "", "", 0, {"text": "</script><b>x"})] * (MAX_FAULTS + 3)
    data = report_data(events, title="<t>")
    assert len(data["connections"]) == MAX_CONNECTIONS
    assert data["omitted"]["connections"] == 5 and data["omitted"]["faults"] == 3
    page = render_report(data)
    assert "</script><b>" not in page and "<title>&lt;t&gt;" in page
    assert page_data(page)["faults"][0]["text"] == "</script><b>x"
    assert page_data(page)["title"] == "<t>"


def test_a_bad_trace_line_is_named() -> None:
    good = TraceEvent(0.5, "crash", "n1", "", 0, None).to_json()
    assert [e.kind for e in parse_trace([good, ""])] == ["crash"]
    for bad, why in (("{", "Expecting"), ("[1]", "not an object"), ('{"t": 1}', "kind")):
        with pytest.raises(InvalidConfiguration, match="trace line 2 is not a trace event") as e:
            list(parse_trace([good, bad]))
        assert why in str(e.value)


def _dump_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran, as headless Chromium has it."""
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # tests may run as root; the page is our own file
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _count(dom: str, pattern: str) -> int:
    return len(re.findall(pattern, dom))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_the_report_without_any_request(
    partition_run: tuple[Path, Path], tmp_path: Path
) -> None:
    report, _trace = partition_run
    data = page_data(report.read_text())
    dom = _dump_dom(report, tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs["data-rendered"] == "ok"  # the script ran to its end
    assert attrs["data-errors"] == "0" and attrs["data-blocked-requests"] == "0"
    assert _count(dom, r'<g class="node ') == len(data["hosts"])
    for host in data["hosts"]:
        assert f'data-name="{host["name"]}"' in dom
    assert _count(dom, r'<line [^>]*class="link') == len(data["links"])
    assert _count(dom, r'<g class="conn ') == len(data["connections"])
    assert _count(dom, r'<line [^>]*class="conn-edge"') == len(data["connections"])
    assert _count(dom, r'<tr class="fault ') == len(data["faults"])
    assert 'data-kind="partition"' in dom and 'data-kind="heal"' in dom
    assert _count(dom, r'<g class="flow"') == min(len(data["flows"]["pairs"]), 40) > 0
    assert 'class="flow-total"' in dom


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_request_detector_sees_a_blocked_fetch(
    partition_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """The check above is live: a page that tries to load something counts it."""
    report, _trace = partition_run
    probe = tmp_path / "probe.html"
    inject = (
        "<script>var i = document.createElement('img'); i.src = 'http://192.0.2.1/x.png';"
        " document.body.appendChild(i);</script></body>"
    )
    probe.write_text(report.read_text().replace("</body>", inject))
    dom = _dump_dom(probe, tmp_path / "profile")
    assert re.search(r'<body[^>]*data-blocked-requests="[1-9]', dom), dom[:500]
