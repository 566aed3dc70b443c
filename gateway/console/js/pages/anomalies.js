// Anomaly explorer: GET /api/v1/ml/anomalies with the filters the form shows (kept in the hash, so a
// link reproduces the view), paged with next_cursor; new anomalies from the anomalies stream on top
// as they are found; one anomaly on its series (POST /api/v1/query, raw points of exactly its
// series) with the detector's expected band over the window (POST /api/v1/ml/detect-anomalies on those
// points inline, with include_points: scored, not stored) and its explanation; verdicts through POST /api/v1/ml/anomalies/{id}/feedback;
// precision per method from GET /api/v1/ml/anomalies/stats.

import { ApiError, get, ms, post } from "../api.js";
import { TimeChart, value } from "../chart.js";
import { field, h, replace, select } from "../dom.js";
import { badge, number, percent, time, zone } from "../format.js";
import { equalityFilters, labelText, parseLabelText, rfc3339, sameLabels } from "./ml/common.js";

export const title = "Anomalies";

const METHODS = ["auto", "zscore", "mad", "seasonal", "isolation_forest", "holt_winters", "prophet", "online"];
const RANGES = [
  ["", "any time"],
  ["15m", "last 15 minutes"],
  ["1h", "last hour"],
  ["6h", "last 6 hours"],
  ["24h", "last 24 hours"],
  ["7d", "last 7 days"],
  ["30d", "last 30 days"],
];
// The stored series shown around a selected anomaly: this much before and after its timestamp.
const WINDOWS = [
  ["15m", "±15 minutes", 15 * 60e3],
  ["30m", "±30 minutes", 30 * 60e3],
  ["1h", "±1 hour", 3600e3],
  ["6h", "±6 hours", 6 * 3600e3],
];
const FILTERS = ["metric", "datasource", "simulation_id", "labels", "method", "min_score", "time_range", "limit"];
const DEFAULT_LIMIT = "100";
const REASONS = {
  value: "the value left its expected band",
  level_shift: "the level shifted (auto's drift part decided)",
  variance: "the noise changed (auto's variance part decided)",
};

/** The query parameters of GET /api/v1/ml/anomalies for the form's filters: only what is filled in. */
function listParams(filters) {
  const params = {};
  for (const key of FILTERS) {
    const value = (filters[key] || "").trim();
    if (!value) continue;
    params[key] = key === "labels" ? parseLabelText(value).map(([k, v]) => (v === null ? k : `${k}=${v}`)) : value;
  }
  return params;
}

/** Whether a streamed anomaly passes the filters (the stream is narrowed by id only). */
function matches(anomaly, filters) {
  const labels = anomaly.labels || {};
  if (filters.metric && anomaly.metric !== filters.metric.trim()) return false;
  if (filters.datasource && anomaly.datasource && anomaly.datasource !== filters.datasource.trim()) return false;
  if (filters.simulation_id && labels.simulation_id !== filters.simulation_id.trim()) return false;
  for (const [k, v] of parseLabelText(filters.labels)) if (labels[k] !== v) return false;
  if (filters.method && (anomaly.method || "auto") !== filters.method) return false;
  if (filters.min_score && (anomaly.score || 0) < Number(filters.min_score)) return false;
  return true;
}

function feedbackCell(anomaly) {
  return anomaly.feedback ? badge(anomaly.feedback) : h("span.muted", "–");
}

/** A promise's outcome as Promise.allSettled gives it, for one promise. */
async function settle(promise) {
  try {
    return { status: "fulfilled", value: await promise };
  } catch (reason) {
    if (reason.name === "AbortError") throw reason;
    return { status: "rejected", reason };
  }
}

export async function render(ctx) {
  const { root, signal, streams, onDispose, errorBox } = ctx;
  const filters = Object.fromEntries(FILTERS.map((key) => [key, ctx.query.get(key) ?? (key === "limit" ? DEFAULT_LIMIT : "")]));
  let selectedId = ctx.query.get("id") || "";
  let windowKey = WINDOWS.some(([key]) => key === ctx.query.get("window")) ? ctx.query.get("window") : "30m";
  const rows = new Map(); // id -> {anomaly, tr}
  let nextCursor = "";

  // ---- layout -------------------------------------------------------------------------------
  const inputs = {
    metric: h("input", { type: "text", name: "metric", value: filters.metric, placeholder: "any", list: "anomaly-metrics", autocomplete: "off" }),
    datasource: h("input", { type: "text", name: "datasource", value: filters.datasource, placeholder: "any" }),
    simulation_id: h("input", { type: "text", name: "simulation_id", value: filters.simulation_id, placeholder: "any" }),
    labels: h("input", { type: "text", name: "labels", value: filters.labels, placeholder: "host=h1, region=eu" }),
    method: select([["", "any"], ...METHODS], filters.method, { name: "method" }),
    min_score: h("input", { type: "number", name: "min_score", value: filters.min_score, min: "0", max: "1", step: "0.01", placeholder: "any" }),
    time_range: select(RANGES, filters.time_range, { name: "time_range" }),
    limit: h("input", { type: "number", name: "limit", value: filters.limit, min: "1", step: "1", placeholder: "server default (100)" }),
  };
  const metricList = h("datalist#anomaly-metrics");
  const form = h(
    "form.toolbar.anomaly-filters",
    { "aria-label": "Filters" },
    field("metric", inputs.metric),
    field("datasource", inputs.datasource),
    field("simulation id", inputs.simulation_id),
    field("labels (k=v, …)", inputs.labels),
    field("method", inputs.method),
    field("min score", inputs.min_score),
    field("found", inputs.time_range),
    field("limit", inputs.limit),
    h("div.field.actions", h("button.primary", { type: "submit" }, "Apply"), h("button", { type: "button", onclick: clearFilters }, "Clear")),
    metricList,
  );
  const listState = h("p.list-state.muted", { role: "status", "aria-live": "polite" });
  const liveState = h("span.panel-state", { "aria-live": "polite" }, "connecting…");
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true, onclick: () => load(true) }, "Load more");
  const listError = h("div");
  const detail = h("section.card.anomaly-detail#anomaly-detail", { "aria-labelledby": "h-detail", hidden: true });
  const stats = h("div#anomaly-stats");
  let statsTimer = null; // a stats reload after live anomalies (statsSoon)
  onDispose(() => clearTimeout(statsTimer));
  replace(
    root,
    h("div.panel-head", h("h1", "Anomalies"), h("small.muted", `times in ${zone()}`)),
    form,
    h(
      "section",
      { "aria-labelledby": "h-found" },
      h("div.panel-head", h("h2#h-found", "Found"), liveState),
      listState,
      listError,
      h(
        "div.table-wrap",
        h(
          "table.anomalies#anomaly-list",
          h(
            "thead",
            h("tr", ["at", "metric", "series", "value", "expected range", "score", "method", "reason", "feedback"].map((t) => h("th", { scope: "col" }, t))),
          ),
          tbody,
        ),
      ),
      h("div.list-more", more),
    ),
    detail,
    h("section", { "aria-labelledby": "h-stats" }, h("h2#h-stats", "Precision per method ", h("small.muted", "(from feedback)")), stats),
  );

  // ---- list ---------------------------------------------------------------------------------
  function row(anomaly, fresh = false) {
    const open = h(
      "button.linkish",
      { type: "button", "aria-label": `Show the ${anomaly.metric} anomaly at ${time(ms(anomaly.timestamp_ms))}`, onclick: () => choose(anomaly.id) },
      time(ms(anomaly.timestamp_ms)),
    );
    const tr = h(
      "tr",
      { dataset: { id: anomaly.id || "" }, class: fresh ? "fresh" : null },
      h("td", open),
      h("td", anomaly.metric),
      h("td.series", labelText(anomaly.labels)),
      h("td.num", number(anomaly.value)),
      h("td.num", `${number(anomaly.lower)} – ${number(anomaly.upper)}`),
      h("td.num", number(anomaly.score)),
      h("td", anomaly.method || ""),
      h("td", anomaly.reason || ""),
      h("td.feedback", feedbackCell(anomaly)),
    );
    if (anomaly.id === selectedId) tr.classList.add("selected");
    return tr;
  }

  function add(anomaly, { top = false, fresh = false } = {}) {
    if (!anomaly.id || rows.has(anomaly.id)) return false;
    const tr = row(anomaly, fresh);
    rows.set(anomaly.id, { anomaly, tr });
    if (top) tbody.prepend(tr);
    else tbody.append(tr);
    return true;
  }

  function countText() {
    return rows.size ? `${rows.size} shown${nextCursor ? "; more match" : ""}` : "No anomaly matches these filters.";
  }

  async function load(append = false) {
    const params = listParams(filters);
    if (append && nextCursor) params.cursor = nextCursor;
    replace(listError);
    more.disabled = true;
    replace(listState, append ? "Loading more…" : "Loading…");
    try {
      const answer = await get("/api/v1/ml/anomalies", params, { signal });
      if (!append) {
        rows.clear();
        replace(tbody);
      }
      for (const anomaly of answer.anomalies || []) add(anomaly);
      nextCursor = answer.next_cursor || "";
      more.hidden = !nextCursor;
      replace(listState, countText());
    } catch (error) {
      if (signal.aborted) return;
      replace(listState, "");
      replace(listError, errorBox(error, "anomalies"));
    } finally {
      more.disabled = false;
    }
  }

  function readForm() {
    for (const key of FILTERS) filters[key] = inputs[key].value;
  }

  function writeQuery() {
    const query = {};
    for (const key of FILTERS) if (filters[key] !== "" && !(key === "limit" && filters[key] === DEFAULT_LIMIT)) query[key] = filters[key];
    // The limit box starts at the server's default; an emptied box is kept as such.
    if (filters.limit === "") query.limit = "";
    if (selectedId) query.id = selectedId;
    if (selectedId && windowKey !== "30m") query.window = windowKey;
    ctx.setQuery(query);
  }

  function clearFilters() {
    for (const key of FILTERS) inputs[key].value = key === "limit" ? DEFAULT_LIMIT : "";
    form.requestSubmit();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    readForm();
    writeQuery();
    openStream();
    load();
  });

  // ---- live ---------------------------------------------------------------------------------
  let stream = null;
  let liveCount = 0;
  function openStream() {
    stream?.close();
    const id = filters.simulation_id.trim() || filters.datasource.trim() || "all";
    stream = streams.open("anomalies", id, {}, {
      onState: (state) => {
        liveState.dataset.state = state;
        liveState.textContent = state === "live" ? `live: new anomalies appear on top (stream anomalies/${id})` : state;
      },
      onFrame: (frame) => {
        if (frame.type !== "data" || !frame.anomaly || !matches(frame.anomaly, filters)) return;
        if (add(frame.anomaly, { top: true, fresh: true })) {
          liveCount += 1;
          replace(listState, `${countText()} · ${liveCount} new since the page opened`);
          statsSoon();
        }
      },
    });
  }

  // ---- one anomaly --------------------------------------------------------------------------
  let chart = null;
  let detailController = null;
  onDispose(() => {
    chart?.destroy();
    detailController?.abort();
  });

  function choose(id) {
    selectedId = id;
    for (const { anomaly, tr } of rows.values()) tr.classList.toggle("selected", anomaly.id === id);
    writeQuery();
    showDetail();
    detail.scrollIntoView({ block: "nearest" });
  }

  async function showDetail() {
    detailController?.abort();
    chart?.destroy();
    chart = null;
    const entry = rows.get(selectedId);
    if (!selectedId) {
      detail.hidden = true;
      return;
    }
    detail.hidden = false;
    if (!entry) {
      replace(
        detail,
        h("h2#h-detail", "Anomaly ", selectedId),
        h("p.notice", { role: "status" }, `Anomaly ${selectedId} is not among the anomalies listed with these filters (the list API has no search by id); widen the filters or load more.`),
      );
      return;
    }
    const anomaly = entry.anomaly;
    const controller = new AbortController();
    detailController = controller;
    signal.addEventListener("abort", () => controller.abort(), { once: true });

    const chartBox = h("div.anomaly-chart#anomaly-chart");
    const chartState = h("p.muted.chart-state", { role: "status", "aria-live": "polite" }, "Loading the series…");
    const windowSelect = select(WINDOWS.map(([key, text]) => [key, text]), windowKey, {});
    windowSelect.addEventListener("change", () => {
      windowKey = windowSelect.value;
      writeQuery();
      showDetail();
    });
    replace(
      detail,
      h(
        "div.panel-head",
        h("h2#h-detail", `${anomaly.metric} `, h("span.muted", labelText(anomaly.labels))),
        h("a", { href: `#/anomalies?${new URLSearchParams({ id: anomaly.id, metric: anomaly.metric })}` }, "link"),
      ),
      h(
        "div.detail-grid",
        h(
          "div.detail-chart",
          h("div.toolbar", field("window around it", windowSelect)),
          chartBox,
          chartState,
        ),
        h("div.detail-side", explanation(anomaly), feedbackForm(anomaly)),
      ),
    );
    chart = new TimeChart(chartBox, { height: 260, yLabel: anomaly.metric });
    await drawSeries(anomaly, chartState, controller.signal);
  }

  async function drawSeries(anomaly, state, fetchSignal) {
    const at = ms(anomaly.timestamp_ms);
    const half = WINDOWS.find(([key]) => key === windowKey)[2];
    const start = rfc3339(at - half);
    const end = rfc3339(at + half);
    const datasource = anomaly.datasource || "";
    const query = {
      metrics: [anomaly.metric],
      datasource,
      filters: equalityFilters(anomaly.labels),
      start,
      end,
      aggregation: "raw",
    };
    // The band: the same detector re-scoring these very points, sent inline (inline series are
    // scored and answered, never stored: looking at an anomaly writes nothing).
    const series = await settle(post("/api/v1/query", query, { signal: fetchSignal }));
    const found = series.status === "fulfilled" ? (series.value.series || []).find((s) => sameLabels(s.group, anomaly.labels)) : null;
    const stored = found ? (found.points || []).map((p) => [ms(p.timestamp_ms), value(p.value)]).filter(([, v]) => v !== null) : [];
    const detect = {
      series: [{ name: anomaly.metric, labels: anomaly.labels || {}, timestamps_ms: stored.map(([t]) => t), values: stored.map(([, v]) => v) }],
      include_points: true,
      config: { method: anomaly.method || "auto" },
    };
    const band = stored.length
      ? await settle(post("/api/v1/ml/detect-anomalies", detect, { signal: fetchSignal }))
      : { status: "rejected", reason: new Error("no stored points in this window to score") };
    if (fetchSignal.aborted) return;
    const notes = [];
    const lines = [];
    const bands = [];
    if (series.status === "fulfilled") {
      lines.push({ id: "value", label: anomaly.metric, points: stored, color: "#1f6feb", width: 2 });
      notes.push(`${stored.length} stored points of this series (POST /api/v1/query, raw)`);
    } else {
      state.before(errorBox(series.reason, "series"));
    }
    let bandShown = false;
    if (band.status === "fulfilled") {
      const scored = (band.value.series || []).find((s) => sameLabels(s.labels, anomaly.labels));
      if (scored && (scored.timestamps_ms || []).length && (scored.lower || []).length) {
        const t = scored.timestamps_ms.map(ms);
        // Warm-up points have no band: proto JSON writes those doubles as "NaN"; they are left out.
        const pick = (values) => t.map((ts, i) => [ts, Number(values[i])]).filter(([, v]) => Number.isFinite(v));
        lines.push({ id: "upper", label: "upper", points: pick(scored.upper), color: "#57606a", kind: "band" });
        lines.push({ id: "lower", label: "lower", points: pick(scored.lower), color: "#57606a", kind: "band" });
        lines.push({ id: "expected", label: "expected", points: pick(scored.expected || []), color: "#57606a", dash: true, width: 1 });
        bands.push({ lower: "lower", upper: "upper", fill: "rgba(87,96,110,0.15)" });
        bandShown = true;
        notes.push(
          `band: ${band.value.method || anomaly.method} detector re-scoring this window (POST /api/v1/ml/detect-anomalies; ${scored.warmup_points || 0} warm-up points, ${scored.anomaly_count || 0} flagged; scored inline, nothing stored)`,
        );
      } else if (band.value.message) {
        notes.push(`band: ${band.value.message}`);
      }
    } else {
      state.before(errorBox(band.reason, "expected band"));
    }
    if (!bandShown) {
      // The anomaly's own expected range, at its timestamp only.
      lines.push({ id: "upper", label: "upper (at the anomaly)", points: [[at, anomaly.upper ?? 0]], color: "#57606a", kind: "marker" });
      lines.push({ id: "lower", label: "lower (at the anomaly)", points: [[at, anomaly.lower ?? 0]], color: "#57606a", kind: "marker" });
      notes.push("band: only the anomaly's own expected range (at its timestamp)");
    }
    lines.push({ id: "anomaly", label: "anomaly", points: [[at, anomaly.value ?? 0]], color: "#d1242f", kind: "marker" });
    chart.set(lines, bands);
    chart.container.dataset.band = bandShown ? "window" : "own";
    replace(state, notes.join(" · "));
  }

  function explanation(anomaly) {
    const contributions = Object.entries(anomaly.contributions || {}).sort((a, b) => b[1] - a[1]);
    const reason = anomaly.reason || "";
    return h(
      "div.explanation#anomaly-explanation",
      h("h3", "Why it is an anomaly"),
      h(
        "p.why",
        `${REASONS[reason] || reason || "–"}: value ${number(anomaly.value)} against an expected ${number(anomaly.expected)} (band ${number(anomaly.lower)} – ${number(anomaly.upper)}), ${number(anomaly.deviation)} band half-widths off.`,
      ),
      h(
        "dl.kv",
        h("dt", "at"), h("dd", time(ms(anomaly.timestamp_ms))),
        h("dt", "value"), h("dd", number(anomaly.value)),
        h("dt", "expected"), h("dd", number(anomaly.expected)),
        h("dt", "band"), h("dd", `${number(anomaly.lower)} – ${number(anomaly.upper)}`),
        h("dt", "deviation"), h("dd", `${number(anomaly.deviation)} half-widths`),
        h("dt", "score"), h("dd", number(anomaly.score)),
        h("dt", "threshold"), h("dd", number(anomaly.threshold)),
        h("dt", "reason"), h("dd", reason || "–"),
        h("dt", "method"), h("dd", anomaly.method || "–"),
        h("dt", "model version"), h("dd", anomaly.model_version || "–"),
        h("dt", "peers"), h("dd", `${anomaly.peers || 0} of ${anomaly.peer_series || 0} sibling series in the same minute`),
        h("dt", "datasource"), h("dd", anomaly.datasource || "–"),
        h("dt", "source"), h("dd", anomaly.source || "–"),
        h("dt", "detected"), h("dd", time(ms(anomaly.detected_at_ms))),
        h("dt", "id"), h("dd", anomaly.id || "–"),
      ),
      contributions.length
        ? h("div", h("h3", "Contributions"), h("dl.kv", contributions.map(([k, v]) => [h("dt", k), h("dd", percent(v))])))
        : null,
      h(
        "p.muted.peers-note",
        (anomaly.peers || 0) > 0 ? "Other series of this metric had an anomaly in the same minute: likely a wider incident." : "No sibling series had an anomaly in the same minute: local to this series.",
      ),
    );
  }

  function feedbackForm(anomaly) {
    const current = h("span.current-feedback", feedbackCell(anomaly));
    const comment = h("input", { type: "text", name: "comment", placeholder: "optional; sent only when filled in" });
    const result = h("div", { role: "status", "aria-live": "polite" });
    const buttons = [
      ["true_positive", "True positive"],
      ["false_positive", "False positive"],
    ].map(([verdict, text]) => h("button", { type: "button", dataset: { verdict }, onclick: () => judge(verdict) }, text));
    async function judge(verdict) {
      const body = { feedback: verdict };
      if (comment.value.trim()) body.comment = comment.value.trim();
      for (const b of buttons) b.disabled = true;
      replace(result, h("span.muted", "Saving…"));
      try {
        const answer = await post(`/api/v1/ml/anomalies/${encodeURIComponent(anomaly.id)}/feedback`, body, { signal });
        const updated = { ...anomaly, ...(answer.anomaly || {}), feedback: answer.anomaly?.feedback || verdict };
        Object.assign(anomaly, updated);
        const entry = rows.get(anomaly.id);
        if (entry) replace(entry.tr.querySelector("td.feedback"), feedbackCell(anomaly));
        replace(current, feedbackCell(anomaly));
        replace(result, h("p.muted", `Saved. Future points of this series are judged against a threshold of ${number(answer.series_threshold)}.`));
        loadStats();
      } catch (error) {
        if (!signal.aborted) replace(result, errorBox(error, "feedback"));
      } finally {
        for (const b of buttons) b.disabled = false;
      }
    }
    return h(
      "div.feedback-form",
      h("h3", "Your verdict ", current),
      field("comment", comment),
      h("div.toolbar", buttons),
      result,
    );
  }

  // ---- stats --------------------------------------------------------------------------------
  // New anomalies change the counts: reload once a burst of live frames has passed.
  function statsSoon() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(loadStats, 1000);
  }

  async function loadStats() {
    try {
      const answer = await get("/api/v1/ml/anomalies/stats", {}, { signal });
      const methods = Object.entries(answer.methods || {});
      if (!methods.length) {
        replace(stats, h("p.muted", "No anomaly stored yet."));
        return;
      }
      replace(
        stats,
        h(
          "div.table-wrap",
          h(
            "table.stats",
            h("thead", h("tr", ["method", "anomalies", "true positives", "false positives", "precision"].map((t) => h("th", { scope: "col" }, t)))),
            h(
              "tbody",
              methods.map(([method, m]) =>
                h(
                  "tr",
                  { dataset: { method } },
                  h("td", method),
                  h("td.num", String(m.anomalies || 0)),
                  h("td.num", String(m.true_positive || 0)),
                  h("td.num", String(m.false_positive || 0)),
                  h("td.num", m.precision === undefined ? "– (no feedback yet)" : percent(m.precision)),
                ),
              ),
            ),
          ),
        ),
      );
    } catch (error) {
      if (!signal.aborted) replace(stats, errorBox(error, "stats"));
    }
  }

  async function loadMetricNames() {
    try {
      const meta = await get(`/api/v1/analytics/metadata/${encodeURIComponent(filters.datasource.trim() || "platform_metrics")}`, {}, { signal });
      replace(metricList, (meta.metrics || []).map((m) => h("option", { value: m.name })));
    } catch (error) {
      if (error instanceof ApiError) return; // the box still takes any name
      throw error;
    }
  }

  openStream();
  loadStats();
  loadMetricNames().catch(() => {});
  await load();
  if (selectedId) showDetail();
}
