// #/dashboards/<id>: one dashboard (GET /api/v1/dashboards/{id}), a chart per panel with its warning,
// kept live by the `dashboard/<id>` WebSocket stream (each data frame carries every panel).

import { get, ms } from "../../api.js";
import { TimeChart, seriesLines } from "../../chart.js";
import { h, replace } from "../../dom.js";
import { number, time, zone } from "../../format.js";
import { configTerms, dashboardHref } from "./common.js";

const STATE_TEXT = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  failed: "live updates refused",
  closed: "not live",
};

export async function renderView(ctx, id) {
  const { root, signal, streams, onDispose, errorBox } = ctx;
  let answer;
  try {
    answer = await get(`/api/v1/dashboards/${encodeURIComponent(id)}`, {}, { signal });
  } catch (error) {
    if (signal.aborted) return;
    replace(root, h("h1", "Dashboard"), errorBox(error, `dashboard ${id}`), h("p", h("a", { href: "#/dashboards" }, "All dashboards")));
    return;
  }
  const dashboard = answer.dashboard;
  const liveState = h("span.panel-state#dash-live", { role: "status", "aria-live": "polite", dataset: { state: "connecting" } }, STATE_TEXT.connecting);
  const updated = h("span#dash-updated", time(ms(answer.computed_at_ms)));
  const panelsEl = h("div.grid.dash-panels#dash-panels");
  const actions = dashboard.builtin
    ? h("a.button#dash-copy", { href: `#/dashboards/new?from=${encodeURIComponent(dashboard.id)}` }, "Save a copy")
    : h("a.button#dash-edit", { href: dashboardHref(dashboard.id, "edit") }, "Edit");
  replace(
    root,
    h("p.dash-crumb", h("a", { href: "#/dashboards" }, "Dashboards"), " / "),
    h(
      "div.panel-head.dash-head",
      h("h1", dashboard.name, dashboard.builtin ? [" ", h("span.badge", "built-in")] : null),
      h("div.dash-head-actions", actions),
    ),
    h(
      "dl.dash-settings",
      configTerms(dashboard).map(([term, value]) => h("div", h("dt", term), h("dd", value))),
      h("div", h("dt", "updated"), h("dd", updated)),
      h("div", h("dt", "stream"), h("dd", liveState)),
    ),
    dashboard.builtin ? h("p.muted", "A built-in dashboard cannot be changed; “Save a copy” starts a new one from its settings.") : null,
    h("p.muted.dash-zone", `Times in ${zone()}.`),
    panelsEl,
  );

  const panels = new Map(); // title -> {card, chart, head, warning}
  function showPanels(list) {
    const seen = new Set();
    for (const panel of list) {
      seen.add(panel.title);
      let entry = panels.get(panel.title);
      if (!entry) {
        const chartEl = h("div.dash-chart");
        const meta = h("small.muted");
        const warning = h("p.notice.dash-warning", { role: "note" });
        const card = h("article.card.panel", { dataset: { panel: panel.title } }, h("div.panel-head", h("h3", panel.title), meta), warning, chartEl);
        entry = { card, meta, warning, chartEl, chart: new TimeChart(chartEl, { height: 200 }) };
        panels.set(panel.title, entry);
      }
      panelsEl.append(entry.card); // keeps the answer's order
      const series = panel.series || [];
      replace(entry.meta, [panel.aggregation, panel.step && `per ${panel.step}`, `${series.length} series`].filter(Boolean).join(" · "));
      entry.warning.hidden = !panel.warning;
      replace(entry.warning, panel.warning || "");
      entry.chart.set(seriesLines(series));
    }
    for (const [title, entry] of panels) {
      if (seen.has(title)) continue;
      entry.chart.destroy();
      entry.card.remove();
      panels.delete(title);
    }
    if (!list.length) replace(panelsEl, h("p.muted", "This dashboard has no panels."));
  }
  onDispose(() => {
    for (const entry of panels.values()) entry.chart.destroy();
  });
  showPanels(answer.panels || []);

  streams.open("dashboard", dashboard.id, {}, {
    onFrame: (frame) => {
      if (frame.type === "data" && frame.panels) {
        showPanels(frame.panels);
        replace(updated, time(ms(frame.timestamp_ms)));
        panelsEl.dataset.frames = String(Number(panelsEl.dataset.frames || 0) + 1);
      } else if (frame.type === "gap") {
        replace(updated, `${time(ms(frame.timestamp_ms))} (some updates were missed: ${frame.reason})`);
      } else if (frame.type === "lagged") {
        replace(updated, `${time(ms(frame.timestamp_ms))} (${number(Number(frame.dropped))} updates dropped: too slow)`);
      }
    },
    onState: (state, detail) => {
      liveState.dataset.state = state;
      replace(liveState, `${STATE_TEXT[state] || state}${detail && state !== "live" ? ` (${detail})` : ""}`);
    },
  });
}
