// Platform overview: GET /api/v1/monitor/platform (every service's health and latest figures, open
// alerts, latest anomalies, the service's own analytics figures), its charts live from the
// built-in platform-overview dashboard's stream, and new anomalies and alert changes from theirs.

import { get, ms } from "../api.js";
import { TimeChart, seriesLines } from "../chart.js";
import { h, replace } from "../dom.js";
import { ago, badge, number, percent, time, zone } from "../format.js";

export const title = "Overview";

const REFRESH_MS = 15000;
const MAX_ANOMALIES = 12;
const FIGURES = [
  ["request_rate", "requests/s", number],
  ["error_rate", "errors", percent],
  ["latency_p95", "p95 ms", number],
  ["cpu_usage", "cpu %", number],
  ["memory_usage", "memory %", number],
];

function entityCard(entity) {
  const metrics = entity.metrics || {};
  const name = entity.kind === "service" ? h("a", { href: `#/service/${encodeURIComponent(entity.name)}` }, entity.name) : entity.name;
  return h(
    "article.card.entity",
    { dataset: { entity: entity.name, status: entity.status } },
    h("div.panel-head", h("h3", name), badge(entity.status)),
    h(
      "dl.kv",
      FIGURES.filter(([key]) => key in metrics).map(([key, label, fmt]) => [h("dt", label), h("dd", { dataset: { metric: key } }, fmt(metrics[key]))]),
      h("dt", "open alerts"), h("dd", String(entity.open_alerts || 0)),
      h("dt", "anomalies"), h("dd", String(entity.recent_anomalies || 0)),
      h("dt", "last seen"), h("dd", ago(ms(entity.last_seen_ms))),
    ),
    (entity.reasons || []).length ? h("p.muted", entity.reasons.join("; ")) : null,
  );
}

export function alertRow(alert) {
  return h(
    "tr",
    h("td", badge(alert.state)),
    h("td", alert.name),
    h("td", badge(alert.severity)),
    h("td", alert.summary),
    h("td", ago(ms(alert.active_since_ms))),
  );
}

export function alertTable(alerts) {
  if (!alerts.length) return h("p.muted", "No open alerts.");
  return h(
    "div.table-wrap",
    h("table.alerts", h("thead", h("tr", ["state", "alert", "severity", "summary", "since"].map((t) => h("th", t)))), h("tbody", alerts.map(alertRow))),
  );
}

export function anomalyRow(anomaly) {
  const labels = Object.entries(anomaly.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const href = `#/anomalies?id=${encodeURIComponent(anomaly.id || "")}&metric=${encodeURIComponent(anomaly.metric)}`;
  return h(
    "tr",
    { dataset: { id: anomaly.id || "" } },
    h("td", time(ms(anomaly.timestamp_ms))),
    h("td", h("a", { href }, anomaly.metric)),
    h("td", labels),
    h("td.num", number(anomaly.value)),
    h("td.num", `${number(anomaly.lower)} – ${number(anomaly.upper)}`),
    h("td.num", number(anomaly.score)),
    h("td", anomaly.reason || anomaly.method || ""),
  );
}

function anomalyTable(body) {
  return h(
    "div.table-wrap",
    h("table.anomalies", h("thead", h("tr", ["at", "metric", "series", "value", "expected range", "score", "why"].map((t) => h("th", t)))), body),
  );
}

export async function render(ctx) {
  const { root, signal, streams, onDispose, errorBox } = ctx;
  const status = h("span");
  const cards = h("div.cards#entities");
  const analytics = h("div");
  const alerts = h("div");
  const anomaliesBody = h("tbody");
  const charts = h("div.grid#charts");
  const refreshed = h("small.muted");
  replace(
    root,
    h("div.panel-head", h("h1", "Platform overview ", status), refreshed),
    h("section", { "aria-labelledby": "h-services" }, h("h2#h-services", "Services"), cards),
    h("section", { "aria-labelledby": "h-alerts" }, h("h2#h-alerts", "Open alerts"), alerts),
    h("section", { "aria-labelledby": "h-anomalies" }, h("h2#h-anomalies", "Latest anomalies"), anomalyTable(anomaliesBody)),
    h("section", { "aria-labelledby": "h-charts" }, h("h2#h-charts", "Last hour ", h("small.muted", `(times in ${zone()})`)), charts),
    h("section", { "aria-labelledby": "h-analytics" }, h("h2#h-analytics", "This service"), analytics),
  );

  async function refresh() {
    const platform = await get("/api/v1/monitor/platform", {}, { signal });
    replace(status, badge(platform.status));
    replace(cards, (platform.entities || []).map(entityCard));
    if (!(platform.entities || []).length) replace(cards, h("p.muted", "No service has sent metrics yet."));
    replace(alerts, alertTable(platform.active_alerts || []));
    if (!anomaliesBody.dataset.live) replace(anomaliesBody, (platform.recent_anomalies || []).slice(0, MAX_ANOMALIES).map(anomalyRow));
    if (platform.analytics) replace(analytics, entityDetails(platform.analytics));
    replace(refreshed, `updated ${time(Date.now())}`);
    return platform;
  }

  await refresh();
  const timer = setInterval(() => refresh().catch((error) => signal.aborted || replace(refreshed, errorBox(error, "refresh"))), REFRESH_MS);
  onDispose(() => clearInterval(timer));

  // Charts: the built-in dashboard's panels, then every refresh it publishes on its stream.
  const panelCharts = new Map();
  function showPanels(panels) {
    for (const panel of panels) {
      let entry = panelCharts.get(panel.title);
      if (!entry) {
        const body = h("div");
        const card = h("article.card.panel", { dataset: { panel: panel.title } }, h("div.panel-head", h("h3", panel.title), h("small.muted", `${panel.aggregation} per ${panel.step}`)), body);
        charts.append(card);
        entry = { chart: new TimeChart(body, { height: 200 }), card };
        panelCharts.set(panel.title, entry);
        onDispose(() => entry.chart.destroy());
      }
      if (panel.warning) entry.card.append(h("p.muted", panel.warning));
      entry.chart.set(seriesLines(panel.series || []));
    }
  }
  try {
    const dashboard = await get("/api/v1/dashboards/builtin:platform-overview", {}, { signal });
    showPanels(dashboard.panels || []);
  } catch (error) {
    if (signal.aborted) return;
    charts.append(errorBox(error, "charts"));
  }
  // The built-in's own id: the type would also match stored dashboards of that type.
  streams.open("dashboard", "builtin:platform-overview", {}, {
    onFrame: (frame) => {
      if (frame.type !== "data" || !frame.panels) return;
      showPanels(frame.panels);
      charts.dataset.frames = String(Number(charts.dataset.frames || 0) + 1);
    },
  });
  streams.open("anomalies", "all", {}, {
    onFrame: (frame) => {
      if (frame.type !== "data" || !frame.anomaly) return;
      anomaliesBody.dataset.live = "1";
      anomaliesBody.prepend(anomalyRow(frame.anomaly));
      while (anomaliesBody.children.length > MAX_ANOMALIES) anomaliesBody.lastElementChild.remove();
    },
  });
}

function entityDetails(entity) {
  const metrics = entity.metrics || {};
  return h(
    "div.card",
    h("div.panel-head", h("h3", entity.name), badge(entity.status)),
    h("dl.kv", Object.entries(metrics).map(([key, value]) => [h("dt", key.replaceAll("_", " ")), h("dd", number(value))])),
  );
}
