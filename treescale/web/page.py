"""The status page: one HTML file, no build step, that draws the tree and refreshes.

The page fetches ``/_treescale/status`` (see `treescale.web.status`) every few
seconds and draws the tree as SVG: each node a circle coloured by its state, its
name under it, and the figures its relay reported; the links of the node serving
the page labelled with their rates; and the rebalance's progress as a bar.
Everything it shows comes from that one JSON document, so the page holds no logic
an operator could not read there too.
"""

from twisted.web.resource import Resource
from twisted.web.server import Request

REFRESH_SECONDS = 2

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>treescale status</title>
<style>
  body { font: 14px/1.4 sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  #summary { margin-bottom: 1em; color: #555; }
  #problem { color: #b71c1c; font-weight: bold; }
  svg text { font-size: 12px; text-anchor: middle; }
  .node circle { stroke: #333; stroke-width: 1.5; }
  .up circle { fill: #2e7d32; }
  .down circle { fill: #c62828; }
  .edge { stroke: #888; stroke-width: 2; }
  .edge.down { stroke: #c62828; stroke-dasharray: 6 4; }
  .rate { font-size: 11px; fill: #1565c0; }
  #rebalance { margin: .3em 0 1em; }
  #rebalance progress { width: 20em; vertical-align: middle; }
  .legend span { display: inline-block; width: .9em; height: .9em;
                 border-radius: 50%; margin: 0 .3em 0 1em; vertical-align: -.1em; }
</style>
</head>
<body>
<h1>treescale: <span id="cluster">…</span></h1>
<div id="summary">loading…</div>
<div id="problem"></div>
<div id="rebalance"></div>
<svg id="tree" width="100%" height="320" role="img"
     aria-label="the tree of nodes"></svg>
<div class="legend">
  <span style="background:#2e7d32"></span>up
  <span style="background:#c62828"></span>down (no link from this node)
</div>
<script>
"use strict";
const REFRESH_MS = __REFRESH__ * 1000;
const SVG = "http://www.w3.org/2000/svg";

function human(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return value.toFixed(unit ? 1 : 0) + " " + units[unit];
}

function rebalanceText(rebalance) {
  // Chunks moved and left over every relay, or nothing when none is moving any.
  if (!rebalance || !rebalance.total) return null;
  const t = rebalance.total;
  const all = t.chunks_moved + t.chunks_left;
  if (t.chunks_left === 0 && t.records_left === 0) {
    return { text: "rebalance: nothing left to move", done: all, all: all };
  }
  return {
    text: "rebalance: " + t.chunks_moved + " of " + all + " chunks moved (" +
      human(t.bytes_moved) + " of " + human(t.bytes_moved + t.bytes_left) + "), " +
      t.records_left + " records left",
    done: t.chunks_moved, all: Math.max(all, 1)
  };
}

function drawRebalance(rebalance) {
  const box = document.getElementById("rebalance");
  const progress = rebalanceText(rebalance);
  box.replaceChildren();
  if (progress === null) return;
  const bar = document.createElement("progress");
  bar.max = progress.all;
  bar.value = progress.done;
  const words = document.createElement("span");
  words.textContent = " " + progress.text;
  box.append(bar, words);
}

function rateText(rate) {
  return "\u2193 " + human(rate.received) + "/s \u2191 " + human(rate.sent) + "/s";
}

function layout(nodes) {
  // Leaves take the next column; a parent sits over the middle of its children.
  const children = {};
  let root = null;
  for (const node of nodes) {
    children[node.name] = [];
  }
  for (const node of nodes) {
    if (node.parent === null) root = node.name;
    else children[node.parent].push(node.name);
  }
  const place = {};
  let column = 0;
  function visit(name, depth) {
    const kids = children[name].slice().sort();
    if (kids.length === 0) {
      place[name] = { x: column++, depth: depth };
    } else {
      for (const kid of kids) visit(kid, depth + 1);
      const xs = kids.map(k => place[k].x);
      place[name] = { x: (Math.min(...xs) + Math.max(...xs)) / 2, depth: depth };
    }
  }
  if (root !== null) visit(root, 0);
  return { place: place, columns: Math.max(column, 1) };
}

function element(kind, attributes, text) {
  const made = document.createElementNS(SVG, kind);
  for (const [key, value] of Object.entries(attributes)) made.setAttribute(key, value);
  if (text !== undefined) made.textContent = text;
  return made;
}

function draw(status) {
  document.getElementById("cluster").textContent = status.cluster;
  document.getElementById("summary").textContent =
    "seen from " + status.node + ": " + status.relays_up + " of " + status.relays +
    " relays up, " + status.replicas + " replicas per chunk, topology version " +
    status.topology_version + "; updated " + new Date().toLocaleTimeString();
  document.getElementById("problem").textContent = "";
  drawRebalance(status.rebalance);
  const rates = status.link_rates || {};

  const svg = document.getElementById("tree");
  const width = svg.clientWidth || 800;
  const { place, columns } = layout(status.tree);
  const depth = Math.max(...Object.values(place).map(p => p.depth), 0);
  svg.setAttribute("height", String(140 * (depth + 1) + 20));
  const x = p => (p.x + 0.5) * width / columns;
  const y = p => 40 + 140 * p.depth;
  svg.replaceChildren();

  const byName = {};
  for (const node of status.tree) byName[node.name] = node;
  for (const node of status.tree) {
    if (node.parent === null || !place[node.name] || !place[node.parent]) continue;
    const a = place[node.parent], b = place[node.name];
    svg.appendChild(element("line", {
      class: "edge " + node.state, x1: x(a), y1: y(a) + 64, x2: x(b), y2: y(b) - 24
    }));
    // A link of the node serving the page is labelled with its rate.
    const peer = node.parent === status.node ? node.name :
      (node.name === status.node ? node.parent : null);
    if (peer !== null && rates[peer]) {
      svg.appendChild(element("text", {
        class: "rate", "data-link": peer,
        x: (x(a) + x(b)) / 2, y: (y(a) + 64 + y(b) - 24) / 2
      }, rateText(rates[peer])));
    }
  }
  for (const node of status.tree) {
    const p = place[node.name];
    if (!p) continue;
    const group = element("g", {
      class: "node " + node.state, "data-name": node.name, "data-state": node.state
    });
    group.appendChild(element("circle", { cx: x(p), cy: y(p), r: 22 }));
    group.appendChild(element("text", { x: x(p), y: y(p) + 40 }, node.name));
    const facts = [node.roles.join("+")];
    if (node.chunks !== null) facts.push(node.chunks + " chunks");
    if (node.bytes !== null) facts.push(human(node.bytes));
    if (node.drain) facts.push("draining");
    group.appendChild(element("text", { x: x(p), y: y(p) + 56 }, facts.join(" · ")));
    svg.appendChild(group);
  }
}

async function refresh() {
  try {
    const answer = await fetch("/_treescale/status", { cache: "no-store" });
    if (!answer.ok) throw new Error("status answered " + answer.status);
    draw(await answer.json());
  } catch (error) {
    document.getElementById("problem").textContent =
      "cannot read the status: " + error.message;
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script>
</body>
</html>
"""


def page_html(refresh_seconds: int = REFRESH_SECONDS) -> bytes:
    """The page, refreshing every `refresh_seconds`."""
    return PAGE.replace("__REFRESH__", str(refresh_seconds)).encode("utf-8")


class StatusPage(Resource):
    """Serves the page itself; the data comes from ``/_treescale/status``."""

    isLeaf = True

    def __init__(self, refresh_seconds: int = REFRESH_SECONDS) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._body = page_html(refresh_seconds)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self._body
