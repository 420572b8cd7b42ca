// A service's metrics over the last hour as three charts (requests by response class,
// latency p50/p95/p99, instances), drawn as inline SVG from DOM nodes (no chart library, no
// HTML strings), each with a title, a description and a table of the same numbers for
// screen readers and for reading exact values. Data: GET .../services/S/metrics?window=1h,
// refreshed every 10 s while the page is open.

import { get } from "./api.js";
import { errorBox, h, replace, table } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 150;
const PAD = { left: 64, right: 8, top: 8, bottom: 20 };
const CLASSES = ["2xx", "3xx", "4xx", "5xx", "1xx"];
const PERCENTILES = ["p50", "p95", "p99"];

/** An SVG element with attributes and children (never markup from strings). */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const time = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const round = (n) => (n >= 100 ? Math.round(n) : Math.round(n * 100) / 100);

/** The frame of one chart: axes, the max label, the window's start and end; returns [svg, x, y]. */
function frame(id, title, description, series, max, unit) {
  const end = series.points.length ? series.points[series.points.length - 1].endTime : Math.floor(Date.now() / 1000);
  const start = end - series.windowSeconds;
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / series.windowSeconds) * plotW;
  const y = (v) => PAD.top + plotH - (max > 0 ? (v / max) * plotH : 0);
  const svg = s(
    "svg",
    {
      id,
      class: "chart",
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-labelledby": `${id}-title ${id}-desc`,
    },
    s("title", { id: `${id}-title` }, title),
    s("desc", { id: `${id}-desc` }, description),
    s("line", { class: "axis", x1: PAD.left, y1: PAD.top + plotH, x2: WIDTH - PAD.right, y2: PAD.top + plotH }),
    s("line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: PAD.top + plotH }),
    s("text", { class: "tick", x: PAD.left - 4, y: PAD.top + 10, "text-anchor": "end" }, `${round(max)}${unit}`),
    s("text", { class: "tick", x: PAD.left - 4, y: PAD.top + plotH, "text-anchor": "end" }, `0${unit}`),
    s("text", { class: "tick", x: PAD.left, y: HEIGHT - 4 }, time(start)),
    s("text", { class: "tick", x: WIDTH - PAD.right, y: HEIGHT - 4, "text-anchor": "end" }, time(end))
  );
  return [svg, x, y];
}

function legend(names, prefix) {
  return h("ul", { class: "legend" }, names.map((name) => h("li", { class: `${prefix}-${name}` }, name)));
}

function requestsChart(series) {
  const max = Math.max(1, ...series.points.map((p) => CLASSES.reduce((sum, c) => sum + p.requests[c], 0)));
  const total = series.totalRequests;
  const description = `Requests answered per ${series.stepSeconds} seconds, stacked by response class. Totals: ${CLASSES.map((c) => `${c} ${total[c]}`).join(", ")}.`;
  const [svg, x, y] = frame("chart-requests", "Request count by response class", description, series, max, "");
  const barWidth = Math.max(1.5, ((WIDTH - PAD.left - PAD.right) * series.stepSeconds) / series.windowSeconds - 0.5);
  for (const point of series.points) {
    let below = 0;
    for (const c of CLASSES) {
      const n = point.requests[c];
      if (!n) continue;
      const top = y(below + n);
      svg.append(
        s("rect", { class: `bar class-${c}`, "data-class": c, "data-count": n, x: x(point.endTime) - barWidth, y: top, width: barWidth, height: y(below) - top },
          s("title", {}, `${time(point.endTime)}: ${n} × ${c}`))
      );
      below += n;
    }
  }
  const rows = CLASSES.filter((c) => c !== "1xx" || total[c]).map((c) => h("tr", {}, h("th", { scope: "row" }, c), h("td", { "data-class": c }, String(total[c]))));
  return h(
    "figure",
    { class: "chart-figure" },
    h("figcaption", {}, h("h3", {}, "Request count by response class")),
    svg,
    legend(CLASSES.slice(0, 4), "class"),
    table("Requests in the window by response class", ["Class", "Requests"], rows, { id: "table-requests" })
  );
}

function latencyChart(series) {
  const withLatency = series.points.filter((p) => p.latencyMs);
  const max = Math.max(1, ...withLatency.map((p) => p.latencyMs.p99));
  const total = series.totalLatencyMs;
  const description = total
    ? `Latency percentiles per ${series.stepSeconds} seconds, in milliseconds. Over the window: p50 ${round(total.p50)} ms, p95 ${round(total.p95)} ms, p99 ${round(total.p99)} ms.`
    : "No request was answered in the window, so there is no latency to show.";
  const [svg, x, y] = frame("chart-latency", "Request latency p50, p95 and p99", description, series, max, " ms");
  for (const p of PERCENTILES) {
    const coordinates = withLatency.map((point) => `${x(point.endTime).toFixed(1)},${y(point.latencyMs[p]).toFixed(1)}`);
    if (coordinates.length > 1) svg.append(s("polyline", { class: `line pct-${p}`, points: coordinates.join(" ") }));
    for (const point of withLatency) {
      svg.append(
        s("circle", { class: `dot pct-${p}`, "data-percentile": p, cx: x(point.endTime), cy: y(point.latencyMs[p]), r: 2.5 },
          s("title", {}, `${time(point.endTime)}: ${p} ${round(point.latencyMs[p])} ms`))
      );
    }
  }
  const rows = total ? PERCENTILES.map((p) => h("tr", {}, h("th", { scope: "row" }, p), h("td", { "data-percentile": p }, String(round(total[p]))))) : [];
  return h(
    "figure",
    { class: "chart-figure" },
    h("figcaption", {}, h("h3", {}, "Request latency")),
    svg,
    legend(PERCENTILES, "pct"),
    table("Latency over the window (milliseconds)", ["Percentile", "Milliseconds"], rows, { id: "table-latency" })
  );
}

function instancesChart(series) {
  const counts = series.points.map((p) => ({ t: p.endTime, active: p.instances.active, all: p.instances.active + p.instances.idle }));
  const max = Math.max(1, ...counts.map((c) => c.all));
  const now = counts.length ? counts[counts.length - 1] : { active: 0, all: 0 };
  const description = `Instances at the end of each ${series.stepSeconds} seconds: all and active (serving a request). Now ${now.all} (${now.active} active); peak ${series.peakInstances}.`;
  const [svg, x, y] = frame("chart-instances", "Instance count", description, series, max, "");
  for (const [key, name] of [["all", "all"], ["active", "active"]]) {
    const steps = counts.map((c) => `${x(c.t).toFixed(1)},${y(c[key]).toFixed(1)}`);
    if (steps.length > 1) svg.append(s("polyline", { class: `line inst-${name}`, points: steps.join(" ") }));
    if (steps.length === 1) svg.append(s("circle", { class: `dot inst-${name}`, cx: x(counts[0].t), cy: y(counts[0][key]), r: 2.5 }));
  }
  const rows = [
    h("tr", {}, h("th", { scope: "row" }, "Now"), h("td", { "data-instances": "now" }, String(now.all)), h("td", {}, String(now.active))),
    h("tr", {}, h("th", { scope: "row" }, "Peak in the window"), h("td", { "data-instances": "peak" }, String(series.peakInstances)), h("td", {}, "")),
  ];
  return h(
    "figure",
    { class: "chart-figure" },
    h("figcaption", {}, h("h3", {}, "Instance count")),
    svg,
    legend(["all", "active"], "inst"),
    table("Instances", ["When", "Instances", "Active"], rows, { id: "table-instances" })
  );
}

/** The metrics section's content; keeps itself current until the page is left. */
export function metricsPanel(ctx, location, name) {
  const path = `/wharf/v1/projects/${encodeURIComponent(ctx.project)}/locations/${encodeURIComponent(location)}/services/${encodeURIComponent(name)}/metrics?window=1h`;
  const panel = h("div", { class: "charts", id: "service-metrics", "aria-live": "off" }, h("p", {}, "Loading metrics…"));
  let timer = null;
  let stopped = false;
  const load = async () => {
    try {
      const series = await get(path);
      replace(
        panel,
        h("p", { class: "hint" }, `The last hour, one point per ${series.stepSeconds} s; the last point is the interval in progress. Updated ${new Date().toLocaleTimeString()}.`),
        requestsChart(series),
        latencyChart(series),
        instancesChart(series)
      );
    } catch (error) {
      replace(panel, errorBox(error));
    }
    if (!stopped) timer = setTimeout(load, 10000);
  };
  ctx.onCleanup(() => {
    stopped = true;
    clearTimeout(timer);
  });
  load();
  return panel;
}
