// The service view (#/service/<name>?range=1h): GET /api/v1/monitor/service (status, reasons, its
// hosts, its figures, its series and the `comparison` with its peers), one chart per metric with
// the service's series and the live raw points of its hosts (metrics/<metric>?service_name=<name>
// streams, appended without reloading), and beside it the same metric for every service (the
// platform scope's series; /api/v1/query for metrics the platform scope does not carry), this
// service highlighted.

import { get, ms, post } from "../api.js";
import { TimeChart } from "../chart.js";
import { h, replace } from "../dom.js";
import { ago, badge, number, percent, time, zone } from "../format.js";
import { alertTable, anomalyRow } from "./overview.js";

export const title = "Service";

const RANGES = ["15m", "1h", "6h", "24h"];
const RANGE_MS = { "15m": 900000, "1h": 3600000, "6h": 21600000, "24h": 86400000 };
const REFRESH_MS = 30000;
const THIS_COLOR = "#1f6feb";
const PEER_COLOR = "#b4bcc6";
const LIVE_COLORS = ["#d1242f", "#9a6700", "#8250df", "#1a7f37", "#bf3989", "#0a7ea4"];

const fmt = (metric, value) => (metric === "error_rate" ? percent(value) : number(value));

/** The bucket width of a list of series (ms), or null. */
function stepOf(seriesList) {
  for (const s of seriesList) {
    const pts = s.points || [];
    if (pts.length > 1) return ms(pts[1].timestamp_ms) - ms(pts[0].timestamp_ms);
  }
  return null;
}

const pointsOf = (series) => (series.points || []).map((p) => [ms(p.timestamp_ms), p.value ?? 0]);

export async function render(ctx) {
  const { root, args, query, signal, streams, onDispose, setQuery, errorBox } = ctx;
  const name = args[0];
  if (!name) {
    const list = h("ul");
    replace(root, h("h1", "Services"), h("p.muted", "Pick a service:"), list);
    const platform = await get("/api/v1/monitor/platform", {}, { signal });
    replace(list, (platform.entities || []).filter((e) => e.kind === "service").map((e) => h("li", h("a", { href: `#/service/${encodeURIComponent(e.name)}` }, e.name), " ", badge(e.status))));
    return;
  }
  let range = RANGES.includes(query.get("range")) ? query.get("range") : "1h";

  const status = h("span#svc-status");
  const updated = h("small.muted#svc-updated", { "aria-live": "polite" });
  const rangeButtons = RANGES.map((r) =>
    h("button", { type: "button", "aria-pressed": String(r === range), dataset: { range: r }, onclick: () => setRange(r) }, r),
  );
  const summary = h("div#svc-summary");
  const hosts = h("div#svc-hosts");
  const compare = h("div#svc-compare");
  const metricsBox = h("div.svc-metrics#svc-charts");
  const alerts = h("div#svc-alerts");
  const anomalies = h("div#svc-anomalies");
  replace(
    root,
    h("div.svc",
      h("div.svc-head",
        h("h1", h("a", { href: "#/overview" }, "Overview"), " / ", name, " ", status),
        h("div.svc-ranges", { role: "group", "aria-label": "Time range" }, rangeButtons),
        updated),
      summary,
      h("section", { "aria-labelledby": "h-compare" }, h("h2#h-compare", "Against its peers"), compare),
      h("section", { "aria-labelledby": "h-svc-charts" },
        h("h2#h-svc-charts", "Metrics ", h("small.muted", `(per metric: this service with its hosts' live points, then every service with this one in blue; times in ${zone()})`)),
        metricsBox),
      h("section", { "aria-labelledby": "h-hosts" }, h("h2#h-hosts", "Service and hosts"), hosts),
      h("section", { "aria-labelledby": "h-svc-alerts" }, h("h2#h-svc-alerts", "Open alerts"), alerts),
      h("section", { "aria-labelledby": "h-svc-anomalies" }, h("h2#h-svc-anomalies", "Recent anomalies"), anomalies),
    ),
  );

  const panels = new Map(); // metric -> {chart, peerChart, state, card}
  const liveStreams = new Map(); // metric -> {stream, state, detail}
  onDispose(() => {
    for (const panel of panels.values()) {
      panel.chart.destroy();
      panel.peerChart.destroy();
    }
  });

  function showTables(svc) {
    replace(status, badge(svc.status));
    const entities = svc.entities || [];
    const self = entities.find((e) => e.kind === "service") || {};
    replace(summary,
      (self.reasons || []).length ? h("ul.svc-reasons", self.reasons.map((r) => h("li", r))) : null,
      (svc.warnings || []).map((w) => h("p.notice", w)),
    );
    replace(hosts, entityTable(entities));
    replace(compare, comparisonTable(svc.comparison || [], name));
    replace(alerts, alertTable(svc.active_alerts || []));
    const recent = svc.recent_anomalies || [];
    replace(anomalies, recent.length
      ? h("div.table-wrap", h("table.anomalies", h("thead", h("tr", ["at", "metric", "series", "value", "expected range", "score", "why"].map((t) => h("th", t)))), h("tbody", recent.map(anomalyRow))))
      : h("p.muted", `No anomaly in the last ${svc.time_range || range}.`));
    replace(updated, `updated ${time(Date.now())}`);
  }

  async function peerSeries(svc, platform) {
    // The platform scope carries every service's key metrics, combined over hosts as the service
    // scope combines them; other metrics come from a query (avg per service, same step).
    const metrics = [...new Set((svc.series || []).map((s) => s.metric))];
    const byMetric = new Map(metrics.map((m) => [m, { series: [], source: "" }]));
    for (const s of platform?.series || []) {
      if (!byMetric.has(s.metric)) continue;
      byMetric.get(s.metric).series.push(s);
      byMetric.get(s.metric).source = "the platform scope";
    }
    const missing = metrics.filter((m) => !byMetric.get(m).series.length);
    const stepMs = stepOf(svc.series || []);
    if (missing.length && stepMs) {
      const body = {
        metrics: missing, time_range: range, step: `${Math.round(stepMs / 1000)}s`, aggregation: "avg",
        group_by: ["service_name"], filters: [{ label: "service_name", op: "!=", value: "" }],
      };
      try {
        const answer = await post("/api/v1/query", body, { signal });
        for (const s of answer.series || []) {
          byMetric.get(s.metric)?.series.push(s);
          byMetric.get(s.metric).source = `/api/v1/query: avg per service per ${body.step}`;
        }
      } catch (error) {
        if (signal.aborted) throw error;
        for (const m of missing) byMetric.get(m).error = error;
      }
    }
    return byMetric;
  }

  function ensurePanel(metric) {
    let panel = panels.get(metric);
    if (panel) return panel;
    const state = h("span.panel-state", { role: "status", "aria-live": "polite", dataset: { state: "connecting" } }, "connecting");
    const own = h("div.svc-chart", { dataset: { metric } });
    const peers = h("div.svc-peer-chart", { dataset: { metric } });
    const aggregationNote = h("small.muted");
    const peerNote = h("small.muted");
    const peerError = h("div");
    const card = h("div.svc-metric", { dataset: { metric } },
      h("article.card", h("div.panel-head", h("h3", metric, " ", aggregationNote), state), own),
      h("article.card", h("div.panel-head", h("h3", metric, " vs peers"), peerNote), peerError, peers),
    );
    metricsBox.append(card);
    panel = {
      card, state, aggregationNote, peerNote, peerError,
      chart: new TimeChart(own, { height: 200, maxAgeMs: RANGE_MS[range] }),
      peerChart: new TimeChart(peers, { height: 200 }),
    };
    panels.set(metric, panel);
    return panel;
  }

  function openStream(metric) {
    if (liveStreams.has(metric)) return;
    const entry = { state: "connecting", detail: "" };
    liveStreams.set(metric, entry);
    entry.stream = streams.open("metrics", metric, { service_name: name }, {
      onState: (state, detail) => {
        entry.state = state;
        entry.detail = detail;
        showState(metric);
      },
      onFrame: (frame) => {
        if (frame.type !== "data") return;
        const panel = panels.get(metric);
        if (!panel) return;
        for (const s of frame.series || []) {
          const host = s.group?.host || Object.values(s.group || {}).join(",") || name;
          panel.chart.append(`live|${host}`, `${host} live (raw)`, pointsOf(s));
        }
        panel.lastFrame = Date.now();
        showState(metric);
      },
    });
  }

  function showState(metric) {
    const panel = panels.get(metric);
    const entry = liveStreams.get(metric);
    if (!panel || !entry) return;
    panel.state.dataset.state = entry.state;
    const last = panel.lastFrame ? `, last frame ${time(panel.lastFrame)}` : "";
    panel.state.textContent = entry.state === "live" ? `live${last}` : `${entry.state}${entry.detail ? `: ${entry.detail}` : ""}`;
  }

  let generation = 0;
  async function load() {
    const mine = ++generation;
    const [svc, platform] = await Promise.all([
      get("/api/v1/monitor/service", { id: name, time_range: range }, { signal }),
      get("/api/v1/monitor/platform", { time_range: range }, { signal }).catch((error) => {
        if (signal.aborted) throw error;
        return { error };
      }),
    ]);
    if (mine !== generation) return;
    showTables(svc);
    const peers = await peerSeries(svc, platform.error ? null : platform);
    if (mine !== generation) return;
    const hostNames = (svc.entities || []).filter((e) => e.kind === "host").map((e) => e.name);
    const metrics = [...new Set((svc.series || []).map((s) => s.metric))].sort();
    if (!metrics.length) replace(metricsBox, h("p.muted", `No series for ${name} in the last ${range}.`));
    for (const metric of metrics) {
      const panel = ensurePanel(metric);
      const own = svc.series.filter((s) => s.metric === metric);
      panel.aggregationNote.textContent = `(${own.map((s) => s.aggregation).join(", ")} per ${stepText(stepOf(own))})`;
      panel.chart.options.maxAgeMs = RANGE_MS[range];
      // Live points already received stay on the chart across refreshes and range changes.
      const kept = new Map(panel.chart.lines.filter((l) => l.id.startsWith("live|")).map((l) => [l.id, l]));
      const liveHosts = [...new Set([...hostNames, ...[...kept.keys()].map((id) => id.slice(5))])];
      panel.chart.set([
        ...own.map((s) => ({ id: `api|${metric}`, label: `${name} (${s.aggregation})`, points: pointsOf(s), color: THIS_COLOR, width: 2 })),
        // Live raw points are dots: they fall between the buckets, where a line would not show them.
        ...liveHosts.map((host, i) => ({
          id: `live|${host}`, label: `${host} live (raw)`, points: [...(kept.get(`live|${host}`)?.points || [])],
          color: LIVE_COLORS[i % LIVE_COLORS.length], kind: "marker",
        })),
      ]);
      const peer = peers.get(metric);
      if (peer.error) replace(panel.peerError, errorBox(peer.error, "peers"));
      else replace(panel.peerError);
      panel.peerNote.textContent = peer.series.length ? `${peer.series.length} services, from ${peer.source}` : "";
      const sorted = [...peer.series].sort((a, b) => Number(a.group?.service_name === name) - Number(b.group?.service_name === name));
      panel.peerChart.set(sorted.map((s) => {
        const self = s.group?.service_name === name;
        const service = s.group?.service_name || "(no service_name)";
        return { id: `peer|${service}`, label: service, points: pointsOf(s), color: self ? THIS_COLOR : PEER_COLOR, width: self ? 2.5 : 1 };
      }));
      panel.peerChart.container.dataset.highlight = name;
      openStream(metric);
      showState(metric);
    }
    if (platform.error) metricsBox.prepend(errorBox(platform.error, "peers (platform scope)"));
  }

  async function refresh() {
    try {
      await load();
    } catch (error) {
      if (!signal.aborted) replace(updated, errorBox(error, "refresh"));
    }
  }

  async function setRange(r) {
    range = r;
    setQuery({ range: r });
    for (const b of rangeButtons) b.setAttribute("aria-pressed", String(b.dataset.range === r));
    replace(updated, "loading…");
    try {
      await load();
    } catch (error) {
      if (!signal.aborted) replace(summary, errorBox(error, name));
    }
  }

  try {
    await load();
  } catch (error) {
    if (signal.aborted) return;
    replace(summary, errorBox(error, name));
    return;
  }
  const timer = setInterval(refresh, REFRESH_MS);
  onDispose(() => clearInterval(timer));
}

function stepText(stepMs) {
  if (!stepMs) return "step";
  const s = stepMs / 1000;
  if (s % 3600 === 0) return `${s / 3600} h`;
  if (s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}

function entityTable(entities) {
  const keys = [...new Set(entities.flatMap((e) => Object.keys(e.metrics || {})))].sort();
  return h("div.table-wrap", h("table.svc-entities",
    h("thead", h("tr", ["name", "kind", "status", ...keys.map((k) => k.replaceAll("_", " ")), "alerts", "anomalies", "last seen", "why"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", entities.map((e) => h("tr", { dataset: { entity: e.name, kind: e.kind } },
      h("td", e.name), h("td", e.kind), h("td", badge(e.status)),
      keys.map((k) => h("td.num", { dataset: { metric: k } }, k in (e.metrics || {}) ? fmt(k, e.metrics[k]) : "–")),
      h("td.num", String(e.open_alerts || 0)), h("td.num", String(e.recent_anomalies || 0)),
      h("td", ago(ms(e.last_seen_ms))), h("td", (e.reasons || []).join("; ")),
    ))),
  ));
}

/** value vs peer median/min/max, the rank, and where the value sits in the peers' range. */
function comparisonTable(rows, name) {
  if (!rows.length) return h("p.muted", "No peer has these metrics: nothing to compare.");
  return h("div.table-wrap", h("table.svc-compare",
    h("thead", h("tr", ["metric", name, "peer median", "peer min", "peer max", "rank", "within the peers' range"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", rows.map((row) => {
      const lo = Math.min(row.peer_min ?? 0, row.value ?? 0);
      const hi = Math.max(row.peer_max ?? 0, row.value ?? 0);
      const at = (v) => `${hi > lo ? ((v - lo) / (hi - lo)) * 100 : 50}%`;
      const dot = h("span.svc-value");
      const median = h("span.svc-median");
      dot.style.left = at(row.value ?? 0);
      median.style.left = at(row.peer_median ?? 0);
      const bar = h("div.svc-range-bar", { role: "img", "aria-label": `${row.metric}: ${fmt(row.metric, row.value ?? 0)} against peers from ${fmt(row.metric, row.peer_min ?? 0)} to ${fmt(row.metric, row.peer_max ?? 0)}` }, median, dot);
      return h("tr", { dataset: { metric: row.metric } },
        h("td", row.metric),
        h("td.num", { dataset: { key: "value" } }, fmt(row.metric, row.value ?? 0)),
        h("td.num", fmt(row.metric, row.peer_median ?? 0)),
        h("td.num", fmt(row.metric, row.peer_min ?? 0)),
        h("td.num", fmt(row.metric, row.peer_max ?? 0)),
        h("td.num", { dataset: { key: "rank" } }, `${row.rank ?? "–"} of ${row.peers ?? "–"}`),
        h("td", bar),
      );
    })),
  ));
}
