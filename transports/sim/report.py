"""A simulation's trace as one self-contained HTML page: topology, connections, flows, faults.

:func:`report_data` condenses a trace (:class:`~switchy.transports.sim.trace.TraceEvent`
objects, or the JSON lines ``switchy sim --trace`` writes, via :func:`parse_trace`) into
what a person looks at: the hosts and links, each connection's life (connect,
established, end and how it ended), the bytes sent between each pair of hosts over
time, and the fault events (drops, crashes, partitions, resets, timeouts, NAT events,
the scenario's notes).  :func:`render_report` puts that in one HTML page with inline
CSS, JavaScript and SVG; it loads nothing (its Content-Security-Policy forbids any
fetch, and the page counts attempts it blocked in ``data-blocked-requests`` on
``<body>``).  ``switchy sim --report report.html`` writes one.

Every list is bounded (:data:`MAX_CONNECTIONS`, :data:`MAX_FAULTS`,
:data:`MAX_FLOW_PAIRS`); what was left out is counted in the page.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from switchy.stack.errors import InvalidConfiguration
from switchy.transports.sim.trace import TraceEvent

__all__ = [
    "FAULT_KINDS",
    "FLOW_BINS",
    "MAX_CONNECTIONS",
    "MAX_FAULTS",
    "MAX_FLOW_PAIRS",
    "parse_trace",
    "render_report",
    "report_data",
    "write_report",
]

#: Most connections the page shows (the first ones opened); the rest are counted.
MAX_CONNECTIONS: Final = 2000
#: Most fault events the page lists (the first ones); the rest are counted.
MAX_FAULTS: Final = 2000
#: Host pairs whose traffic the flow chart shows (the busiest); the rest are summed.
MAX_FLOW_PAIRS: Final = 100
#: Time bins of the flow chart.
FLOW_BINS: Final = 120
#: Events shown as faults (``link`` only when it changes a link after the start).
FAULT_KINDS: Final = frozenset(
    {
        "drop",
        "duplicate",
        "crash",
        "restart",
        "partition",
        "heal",
        "hold",
        "release",
        "timeout",
        "reset",
        "refuse",
        "link",
        "nat",
        "nat_rst",
        "nat_clear",
        "nat_expire",
        "note",
    }
)
#: Events that end a connection, and the word the page uses for each.
_ENDINGS: Final = {"close": "closed", "reset": "reset", "timeout": "timed out"}
#: Longest trace line :func:`parse_trace` accepts.
_MAX_LINE: Final = 1 << 20


def parse_trace(lines: Iterable[str]) -> Iterator[TraceEvent]:
    """The events of a JSON-lines trace (as ``switchy sim --trace`` writes it).

    Raises :class:`~switchy.stack.errors.InvalidConfiguration` naming the line that is
    not a trace event.
    """
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if len(line) > _MAX_LINE:
                raise ValueError(f"longer than {_MAX_LINE} characters")
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            extra = obj.get("extra")
            if extra is not None and not isinstance(extra, dict):
                raise ValueError("extra is not an object")
            yield TraceEvent(
                float(obj["t"]),
                str(obj["kind"]),
                str(obj.get("src", "")),
                str(obj.get("dst", "")),
                int(obj.get("size", 0)),
                extra,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidConfiguration(f"trace line {n} is not a trace event: {exc}") from None


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``n2`` before ``n10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


def _fault_text(ev: TraceEvent) -> str:
    extra = dict(ev.extra or {})
    if ev.kind == "note":
        return str(extra.pop("text", ""))
    if ev.kind == "partition":
        return f"{' '.join(extra.get('a', []))} | {' '.join(extra.get('b', []))}"
    return ", ".join(f"{k}={extra[k]}" for k in sorted(extra))[:300]


def report_data(
    events: Iterable[TraceEvent],
    *,
    title: str = "simulation",
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the page shows, as JSON-ready data (see the module docstring)."""
    hosts: dict[str, dict[str, Any]] = {}
    links: dict[tuple[str, str], dict[str, Any]] = {}
    conns: dict[Any, dict[str, Any]] = {}
    faults: list[dict[str, Any]] = []
    omitted = {"connections": 0, "faults": 0, "pairs": 0}
    sends: list[tuple[float, str, str, int]] = []
    drops: list[float] = []
    end = 0.0

    def host(name: str) -> dict[str, Any]:
        h = hosts.get(name)
        if h is None:
            h = hosts[name] = {"name": name, "role": "other", "sent": 0, "received": 0}
        return h

    for ev in events:
        end = max(end, ev.time)
        for name in (ev.src, ev.dst):
            if name and "." not in name and ":" not in name:  # not an outside endpoint
                host(name)
        extra = ev.extra or {}
        kind = ev.kind
        if kind == "send":
            sends.append((ev.time, ev.src, ev.dst, ev.size))
            if ev.src in hosts:
                hosts[ev.src]["sent"] += ev.size
        elif kind == "deliver":
            if ev.dst in hosts:
                hosts[ev.dst]["received"] += ev.size
        elif kind == "link" and ev.time == 0.0:
            key = tuple(sorted((ev.src, ev.dst)))
            links[(key[0], key[1])] = {
                "a": key[0],
                "b": key[1],
                "latency": extra.get("latency"),
                "loss": extra.get("loss"),
                "up": extra.get("up", True),
            }
            continue
        if kind == "link":  # a change during the run: the link as it is now, and a fault
            key = tuple(sorted((ev.src, ev.dst)))
            link = links.setdefault((key[0], key[1]), {"a": key[0], "b": key[1], "up": True})
            if "up" in extra:
                link["up"] = bool(extra["up"])
        cid = extra.get("conn")
        if cid is not None and kind in ("connect", "accept", "established", "refuse", *_ENDINGS):
            c = conns.get(cid)
            if c is None and kind == "connect":
                if len(conns) >= MAX_CONNECTIONS:
                    omitted["connections"] += 1
                else:
                    conns[cid] = c = {
                        "id": cid,
                        "src": ev.src,
                        "dst": ev.dst,
                        "port": extra.get("port"),
                        "start": ev.time,
                        "up": None,
                        "end": None,
                        "how": "open",
                    }
                    for name in (ev.src, ev.dst):
                        host(name)["role"] = "node"
            if c is not None:
                if kind == "established" and c["up"] is None:
                    c["up"] = ev.time
                elif kind == "refuse":
                    c["end"], c["how"] = ev.time, "refused"
                elif kind in _ENDINGS and c["end"] is None:
                    c["end"], c["how"] = ev.time, _ENDINGS[kind]
        if kind in ("drop", "duplicate", "retransmit"):
            drops.append(ev.time)
        if kind in FAULT_KINDS:
            if len(faults) >= MAX_FAULTS:
                omitted["faults"] += 1
            else:
                faults.append(
                    {
                        "t": ev.time,
                        "kind": kind,
                        "src": ev.src,
                        "dst": ev.dst,
                        "text": _fault_text(ev),
                    }
                )
        if kind in ("crash", "restart") and ev.src:
            h = host(ev.src)
            h[kind] = h.get(kind, 0) + 1
    duration = max(end, 1e-9)
    width = duration / FLOW_BINS
    per_pair: dict[tuple[str, str], list[int]] = {}
    total = [0] * FLOW_BINS
    for t, src, dst, size in sends:
        b = min(int(t / width), FLOW_BINS - 1)
        series = per_pair.get((src, dst))
        if series is None:
            series = per_pair[(src, dst)] = [0] * FLOW_BINS
        series[b] += size
        total[b] += size
    busiest = sorted(per_pair.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    omitted["pairs"] = max(0, len(busiest) - MAX_FLOW_PAIRS)
    drop_bins = [0] * FLOW_BINS
    for t in drops:
        drop_bins[min(int(t / width), FLOW_BINS - 1)] += 1
    return {
        "title": title,
        "summary": dict(summary or {}),
        "duration": end,
        "hosts": sorted(hosts.values(), key=lambda h: (h["role"], _natural(h["name"]))),
        "links": sorted(links.values(), key=lambda link: (link["a"], link["b"])),
        "connections": list(conns.values()),
        "flows": {
            "bins": FLOW_BINS,
            "width": width,
            "total": total,
            "drops": drop_bins,  # drops, duplicates and retransmissions per bin
            "pairs": [
                {"src": s, "dst": d, "bytes": series} for (s, d), series in busiest[:MAX_FLOW_PAIRS]
            ],
        },
        "faults": faults,
        "omitted": omitted,
    }


def render_report(data: Mapping[str, Any]) -> str:
    """The HTML page of :func:`report_data`'s ``data``."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        _PAGE.replace("{{TITLE}}", html.escape(str(data.get("title", "simulation"))))
        .replace("{{CSS}}", _CSS)
        .replace("{{JS}}", _JS)
        .replace("{{DATA}}", blob)
    )


def write_report(
    path: str,
    events: Iterable[TraceEvent],
    *,
    title: str = "simulation",
    summary: Mapping[str, Any] | None = None,
) -> None:
    """Write the page of ``events`` to ``path``."""
    page = render_report(report_data(events, title=title, summary=summary))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}} — switchy simulation report</title>
<style>{{CSS}}</style>
</head>
<body data-rendered="no" data-blocked-requests="0" data-errors="0">
<header><h1>{{TITLE}}</h1><div id="summary"></div></header>
<section><h2>Topology</h2><p class="hint">Hosts (nodes with connections outside, routers
and other hosts inside) and links; click a host to highlight its connections.</p>
<div id="topology"></div></section>
<section><h2>Connections</h2><p class="hint">One row per connection: dialed, established
(dot), ended (colour: how).  Red lines: fault events.</p><div id="connections"></div></section>
<section><h2>Message flows</h2><p class="hint">Bytes sent over time: all traffic, losses
(red: drops, duplicates, retransmissions) and the busiest host pairs.</p>
<div id="flows"></div></section>
<section><h2>Fault events</h2><div id="faults"></div></section>
<script type="application/json" id="trace-data">{{DATA}}</script>
<script>{{JS}}</script>
</body>
</html>
"""

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#222;background:#fafafa}
h1{font-size:20px;margin:.6em 0 .2em}h2{font-size:16px;margin:1.2em 0 .3em}
.hint{color:#666;margin:.1em 0 .5em}section{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.2em 1em 1em;margin-top:1em;overflow-x:auto}
#summary span{display:inline-block;margin-right:1.2em}#summary b{font-weight:600}
svg text{font-size:11px;fill:#333}.link{stroke:#999;stroke-width:1.5}
.link.down{stroke:#d33;stroke-dasharray:4 3}.node circle{fill:#3b82f6;stroke:#fff}
.node.other circle{fill:#9ca3af}.node.crashed circle{fill:#d33}
.node.sel circle{stroke:#f59e0b;stroke-width:3}.conn-edge{stroke:#3b82f6;stroke-opacity:.25}
.conn-edge.sel{stroke:#f59e0b;stroke-opacity:1;stroke-width:2}
.conn rect{fill:#22c55e}.conn.reset rect{fill:#ef4444}.conn.timed-out rect{fill:#f97316}
.conn.refused rect{fill:#a855f7}.conn.open rect{fill:#60a5fa}.conn.sel rect{stroke:#f59e0b;
stroke-width:2}.fault-mark{stroke:#ef4444;stroke-opacity:.5}.axis{stroke:#bbb}
.flow-total{fill:none;stroke:#3b82f6;stroke-width:1.5}.drop-bar{fill:#ef4444}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}tr.fault.crash td,tr.fault.partition td{color:#b91c1c}
.legend span{display:inline-block;margin-right:1em}.sw{display:inline-block;width:10px;
height:10px;margin-right:4px;vertical-align:middle}
"""

_JS = r"""
(function () {
  "use strict";
  var body = document.body, blocked = 0, errors = 0;
  document.addEventListener("securitypolicyviolation", function () {
    blocked += 1; body.setAttribute("data-blocked-requests", String(blocked));
  });
  window.addEventListener("error", function () {
    errors += 1; body.setAttribute("data-errors", String(errors));
  });
  var D = JSON.parse(document.getElementById("trace-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function h(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function tip(e, text) { el("title", {}, e, text); }
  function fmt(t) { return t < 1 ? (t * 1000).toFixed(1) + " ms" : t.toFixed(3) + " s"; }
  function bytes(n) {
    return n >= 1048576 ? (n / 1048576).toFixed(1) + " MiB" :
      n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
  }
  var duration = Math.max(D.duration, 1e-9);

  // summary
  var sum = document.getElementById("summary");
  var facts = [["hosts", D.hosts.length], ["links", D.links.length],
    ["connections", D.connections.length], ["fault events", D.faults.length],
    ["virtual time", fmt(D.duration)]];
  for (var key in D.summary) { facts.push([key, D.summary[key]]); }
  facts.forEach(function (f) {
    var s = h("span", "fact", sum); h("b", "", s, f[0] + ": "); s.appendChild(
      document.createTextNode(String(f[1])));
  });
  var om = D.omitted;
  if (om.connections || om.faults || om.pairs) {
    h("div", "hint omitted", sum, "Not shown: " + om.connections + " connections, " +
      om.faults + " fault events, " + om.pairs + " host pairs (the page is bounded).");
  }

  // topology
  var W = 720, H = 520, cx = W / 2, cy = H / 2, pos = {};
  var nodes = D.hosts.filter(function (x) { return x.role === "node"; });
  var routers = D.hosts.filter(function (x) { return x.role !== "node"; });
  function ring(list, r) {
    list.forEach(function (x, i) {
      var a = 2 * Math.PI * i / Math.max(list.length, 1) - Math.PI / 2;
      pos[x.name] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
    });
  }
  ring(nodes, routers.length ? 220 : 210); ring(routers, nodes.length ? 110 : 200);
  var topo = el("svg", {width: W, height: H, id: "topology-svg"},
    document.getElementById("topology"));
  var crashed = {};
  D.faults.forEach(function (f) { if (f.kind === "crash") { crashed[f.src] = true; } });
  D.links.forEach(function (l) {
    if (!pos[l.a] || !pos[l.b]) { return; }
    var line = el("line", {x1: pos[l.a][0], y1: pos[l.a][1], x2: pos[l.b][0], y2: pos[l.b][1],
      "class": "link" + (l.up === false ? " down" : ""), "data-a": l.a, "data-b": l.b}, topo);
    tip(line, l.a + " — " + l.b + (l.latency != null ? ", latency " + fmt(l.latency) : "") +
      (l.loss ? ", loss " + (l.loss * 100).toFixed(1) + " %" : ""));
  });
  var edges = [];
  D.connections.forEach(function (c) {
    if (!pos[c.src] || !pos[c.dst]) { return; }
    var p = el("line", {x1: pos[c.src][0], y1: pos[c.src][1], x2: pos[c.dst][0],
      y2: pos[c.dst][1], "class": "conn-edge", "data-src": c.src, "data-dst": c.dst}, topo);
    edges.push(p);
  });
  D.hosts.forEach(function (x) {
    var g = el("g", {"class": "node " + x.role + (crashed[x.name] ? " crashed" : ""),
      "data-name": x.name, transform: "translate(" + pos[x.name][0] + "," + pos[x.name][1] + ")"},
      topo);
    el("circle", {r: x.role === "node" ? 9 : 6}, g);
    el("text", {x: 11, y: 4}, g, x.name);
    tip(g, x.name + " (" + x.role + "): sent " + bytes(x.sent) + ", received " +
      bytes(x.received) + (x.crash ? ", crashed " + x.crash + " times" : ""));
    g.addEventListener("click", function () { select(x.name); });
  });

  // connections
  var rowH = 14, left = 150, CW = 900, rows = D.connections.length;
  var CH = Math.max(rows * rowH + 30, 60);
  var csvg = el("svg", {width: left + CW + 20, height: CH, id: "connections-svg"},
    document.getElementById("connections"));
  function x(t) { return left + CW * t / duration; }
  el("line", {x1: left, y1: CH - 18, x2: left + CW, y2: CH - 18, "class": "axis"}, csvg);
  for (var i = 0; i <= 5; i++) {
    el("text", {x: x(duration * i / 5) - 10, y: CH - 4}, csvg, fmt(duration * i / 5));
  }
  D.faults.forEach(function (f) {
    if (f.kind === "drop" || f.kind === "duplicate") { return; }
    var m = el("line", {x1: x(f.t), y1: 0, x2: x(f.t), y2: CH - 18, "class": "fault-mark",
      "data-kind": f.kind}, csvg);
    tip(m, fmt(f.t) + " " + f.kind + " " + f.src + (f.dst ? " → " + f.dst : "") + " " + f.text);
  });
  var connEls = [];
  D.connections.forEach(function (c, i) {
    var endT = c.end == null ? duration : c.end;
    var how = c.how.replace(" ", "-");
    var g = el("g", {"class": "conn " + how, "data-id": String(c.id), "data-src": c.src,
      "data-dst": c.dst}, csvg);
    var y = i * rowH + 2;
    el("text", {x: 2, y: y + 10}, g, c.src + " → " + c.dst + " #" + c.id);
    el("rect", {x: x(c.start), y: y, width: Math.max(x(endT) - x(c.start), 2),
      height: rowH - 4, rx: 2}, g);
    if (c.up != null) { el("circle", {cx: x(c.up), cy: y + (rowH - 4) / 2, r: 2.5,
      fill: "#14532d"}, g); }
    tip(g, "connection " + c.id + ": " + c.src + " → " + c.dst + (c.port ? ":" + c.port : "") +
      ", dialed " + fmt(c.start) + (c.up != null ? ", up " + fmt(c.up) : "") +
      (c.end != null ? ", " + c.how + " " + fmt(c.end) : ", open at the end"));
    connEls.push(g);
  });
  var legend = h("div", "legend", document.getElementById("connections"));
  [["closed", "#22c55e"], ["reset", "#ef4444"], ["timed out", "#f97316"],
   ["refused", "#a855f7"], ["open at the end", "#60a5fa"]].forEach(function (l) {
    var s = h("span", "", legend); var sw = h("span", "sw", s); sw.style.background = l[1];
    s.appendChild(document.createTextNode(l[0]));
  });

  function select(name) {
    document.querySelectorAll(".node").forEach(function (n) {
      n.classList.toggle("sel", n.getAttribute("data-name") === name);
    });
    edges.concat(connEls).forEach(function (e) {
      var on = e.getAttribute("data-src") === name || e.getAttribute("data-dst") === name;
      e.classList.toggle("sel", on);
    });
  }

  // flows
  var F = D.flows, FW = 900, FH = 160, fl = 60, bins = F.bins;
  var fsvg = el("svg", {width: fl + FW + 20, height: FH + 30, id: "flows-svg"},
    document.getElementById("flows"));
  var peak = Math.max.apply(null, F.total.concat([1]));
  var dpeak = Math.max.apply(null, F.drops.concat([1]));
  var bw = FW / bins, pts = [];
  F.total.forEach(function (v, i) {
    pts.push((fl + i * bw + bw / 2).toFixed(1) + "," + (FH - FH * v / peak).toFixed(1));
    if (F.drops[i]) {
      var hgt = 30 * F.drops[i] / dpeak;
      var r = el("rect", {x: fl + i * bw, y: FH - hgt, width: Math.max(bw - 1, 1), height: hgt,
        "class": "drop-bar"}, fsvg);
      tip(r, F.drops[i] + " packets lost, duplicated or resent at " + fmt(i * F.width));
    }
  });
  var pl = el("polyline", {points: pts.join(" "), "class": "flow-total"}, fsvg);
  tip(pl, "bytes sent per " + fmt(F.width) + " (peak " + bytes(peak) + ")");
  el("line", {x1: fl, y1: FH, x2: fl + FW, y2: FH, "class": "axis"}, fsvg);
  el("text", {x: 0, y: 12}, fsvg, bytes(peak));
  el("text", {x: fl, y: FH + 16}, fsvg, "0");
  el("text", {x: fl + FW - 40, y: FH + 16}, fsvg, fmt(duration));
  var shown = F.pairs.slice(0, 40), ph = 12;
  var hsvg = el("svg", {width: fl + 100 + FW, height: shown.length * ph + 10,
    id: "pairs-svg"}, document.getElementById("flows"));
  var ppeak = 1;
  shown.forEach(function (p) { ppeak = Math.max(ppeak, Math.max.apply(null, p.bytes)); });
  shown.forEach(function (p, r) {
    var g = el("g", {"class": "flow", "data-src": p.src, "data-dst": p.dst}, hsvg);
    el("text", {x: 0, y: r * ph + 10}, g, p.src + " → " + p.dst);
    var sumB = 0;
    p.bytes.forEach(function (v, i) {
      sumB += v;
      if (!v) { return; }
      var c = el("rect", {x: fl + 100 + i * bw, y: r * ph + 1, width: Math.max(bw, 1),
        height: ph - 2, fill: "#1d4ed8", "fill-opacity": (0.15 + 0.85 * v / ppeak).toFixed(2)},
        g);
      tip(c, p.src + " → " + p.dst + ": " + bytes(v) + " at " + fmt(i * F.width));
    });
    tip(g, p.src + " → " + p.dst + ": " + bytes(sumB) + " in all");
  });

  // faults
  var ft = h("table", "", document.getElementById("faults"));
  var head = h("tr", "", h("thead", "", ft));
  ["time", "event", "from", "to", "details"].forEach(function (c) { h("th", "", head, c); });
  var tb = h("tbody", "", ft);
  D.faults.forEach(function (f) {
    var tr = h("tr", "fault " + f.kind, tb);
    tr.setAttribute("data-kind", f.kind);
    [fmt(f.t), f.kind, f.src, f.dst, f.text].forEach(function (c) { h("td", "", tr, c); });
  });
  if (!D.faults.length) { h("p", "hint", document.getElementById("faults"), "No faults."); }
  body.setAttribute("data-rendered", "ok");
})();
"""
