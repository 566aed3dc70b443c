// Forecast view: POST /api/v1/ml/forecast for the series the form picks (a stored selection of one
// metric, its label filters and optionally group_by), then the history of the same series on the
// forecast's step (POST /api/v1/query), drawn with the forecast and its interval bands on one chart;
// the method chosen, its weights, backtest sMAPE/MASE, model_version and the time until a threshold.

import { get, ms, post } from "../api.js";
import { TimeChart } from "../chart.js";
import { field, h, replace, select } from "../dom.js";
import { ago, duration, number, percent, time, zone } from "../format.js";
import { durationText, equalityFilters, labelText, parseLabelText } from "./ml/common.js";

export const title = "Forecast";

const METHODS = ["auto", "prophet", "auto_ets", "auto_arima", "auto_theta", "mstl", "seasonal_naive", "seasonal_es", "seasonal_window_average", "stl_drift"];
const HISTORY = [
  ["1h", "last hour"],
  ["6h", "last 6 hours"],
  ["24h", "last 24 hours"],
  ["7d", "last 7 days"],
  ["30d", "last 30 days"],
];
// What the form shows when the page opens without a query of its own.
const DEFAULTS = {
  metric: "cpu_usage",
  datasource: "platform_metrics",
  labels: "service_name=auth-service",
  group_by: "",
  history: "7d",
  horizon: "60",
  step: "1m",
  method: "auto",
  levels: "80, 95",
  threshold: "",
  direction: "above",
};
const KEYS = Object.keys(DEFAULTS);
const COLORS = { history: "#1f6feb", forecast: "#8250df", wide: "rgba(130,80,223,0.12)", narrow: "rgba(130,80,223,0.22)", threshold: "#d1242f" };

/** The request body for the form's values; throws an Error naming a field the UI cannot send. */
export function forecastBody(v) {
  const labels = {};
  for (const [key, value] of parseLabelText(v.labels)) {
    if (value === null || !key) throw new Error(`labels: '${key}' is not key=value`);
    labels[key] = value;
  }
  const selection = { metrics: [v.metric] };
  if (v.datasource.trim()) selection.datasource = v.datasource.trim();
  if (Object.keys(labels).length) selection.labels = labels;
  if (v.history) selection.time_range = v.history;
  const body = { selection };
  if (v.group_by) body.group_by = [v.group_by];
  body.horizon = v.horizon.trim() === "" ? 0 : Number(v.horizon);
  if (v.step.trim()) body.step = v.step.trim();
  body.method = v.method;
  const levels = v.levels.split(",").map((s) => s.trim()).filter(Boolean);
  if (levels.length) body.levels = levels.map(Number);
  if (v.threshold.trim() !== "") {
    body.threshold = Number(v.threshold);
    body.direction = v.direction;
  }
  return body;
}

function crossingText(crossing) {
  if (!crossing) return null;
  const when = (value) => (value === undefined || value === null ? "not within the horizon" : `${time(ms(value))} (${ago(ms(value))})`);
  return [
    ["forecast crosses", when(crossing.forecast_ms)],
    [crossing.direction === "below" ? "lower bound crosses" : "upper bound crosses", when(crossing.direction === "below" ? crossing.lower_ms : crossing.upper_ms)],
    ["probability", percent(crossing.probability ?? 0)],
  ];
}

export async function render(ctx) {
  const { root, signal, onDispose, errorBox } = ctx;
  const values = Object.fromEntries(KEYS.map((k) => [k, ctx.query.get(k) ?? DEFAULTS[k]]));

  let meta = null;
  let metaError = null;
  try {
    meta = await get(`/api/v1/analytics/metadata/${encodeURIComponent(values.datasource || "platform_metrics")}`, {}, { signal });
  } catch (error) {
    if (signal.aborted) return;
    metaError = errorBox(error, "metrics and label keys (GET /api/v1/analytics/metadata)");
  }
  const metricNames = (meta?.metrics || []).map((m) => m.name);
  if (values.metric && !metricNames.includes(values.metric)) metricNames.unshift(values.metric);
  const labelKeys = (meta?.label_keys || []).map((k) => k.key);
  if (values.group_by && !labelKeys.includes(values.group_by)) labelKeys.push(values.group_by);

  const inputs = {
    metric: select(metricNames, values.metric, { name: "metric", required: true }),
    datasource: h("input", { type: "text", name: "datasource", value: values.datasource, placeholder: "platform_metrics (server default)" }),
    labels: h("input", { type: "text", name: "labels", value: values.labels, placeholder: "none: every series of the metric" }),
    group_by: select([["", "none: one forecast per series"], ...labelKeys], values.group_by, { name: "group_by" }),
    history: select(HISTORY, values.history, { name: "history" }),
    horizon: h("input", { type: "number", name: "horizon", value: values.horizon, step: "1" }),
    step: h("input", { type: "text", name: "step", value: values.step, placeholder: "the series' own interval" }),
    method: select(METHODS, values.method, { name: "method" }),
    levels: h("input", { type: "text", name: "levels", value: values.levels, placeholder: "server default (80, 95)" }),
    threshold: h("input", { type: "number", name: "threshold", value: values.threshold, step: "any", placeholder: "none" }),
    direction: select(["above", "below"], values.direction, { name: "direction" }),
  };
  const syncDirection = () => {
    inputs.direction.disabled = inputs.threshold.value.trim() === "";
  };
  inputs.threshold.addEventListener("input", syncDirection);
  syncDirection();

  const runButton = h("button.primary", { type: "submit" }, "Forecast");
  const form = h(
    "form.toolbar.forecast-form",
    { "aria-label": "Series and forecast settings" },
    field("metric", inputs.metric),
    field("datasource", inputs.datasource),
    field("labels (k=v, …)", inputs.labels),
    field("group by", inputs.group_by),
    field("history", inputs.history),
    field("horizon (steps)", inputs.horizon),
    field("step", inputs.step),
    field("method", inputs.method),
    field("levels %", inputs.levels),
    field("threshold", inputs.threshold),
    field("direction", inputs.direction, "sent with a threshold"),
    h("div.field.actions", runButton),
  );
  const run = h("div.forecast-run", { role: "status", "aria-live": "polite" });
  const errors = h("div#forecast-error");
  const result = h("div#forecast-result");
  const sent = h("details.request", h("summary", "Request sent"), h("pre"));
  sent.hidden = true;
  replace(root, h("div.panel-head", h("h1", "Forecast"), h("small.muted", `times in ${zone()}`)), metaError, form, run, errors, sent, result);

  let chart = null;
  let current = null; // AbortController of the running forecast
  onDispose(() => {
    chart?.destroy();
    current?.abort();
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const key of KEYS) values[key] = inputs[key].value;
    const query = {};
    for (const key of KEYS) if (values[key] !== DEFAULTS[key]) query[key] = values[key];
    ctx.setQuery(query);
    forecast();
  });

  async function forecast() {
    current?.abort();
    replace(errors);
    let body;
    try {
      body = forecastBody(values);
    } catch (error) {
      replace(errors, h("div.error", { role: "alert" }, error.message));
      return;
    }
    replace(sent.querySelector("pre"), `POST /api/v1/ml/forecast\n${JSON.stringify(body, null, 2)}`);
    sent.hidden = false;
    const controller = new AbortController();
    current = controller;
    const stop = () => controller.abort();
    signal.addEventListener("abort", stop, { once: true });
    const started = Date.now();
    const elapsed = h("span", "0 s");
    const timer = setInterval(() => replace(elapsed, duration(Date.now() - started)), 1000);
    const cancel = h("button", { type: "button", onclick: stop }, "Cancel");
    replace(run, h("span.spinner", { "aria-hidden": "true" }), h("span", "Forecasting (fitting and backtesting the models takes seconds)… "), elapsed, cancel);
    runButton.disabled = true;
    result.setAttribute("aria-busy", "true");
    try {
      const answer = await post("/api/v1/ml/forecast", body, { signal: controller.signal });
      replace(run, h("span.muted", `Forecast ready in ${duration(Date.now() - started)}${answer.cached ? " (cached answer)" : ""}.`));
      await show(answer, body, controller.signal);
    } catch (error) {
      if (error.name === "AbortError") {
        if (!signal.aborted) replace(run, h("span.muted", "Cancelled."));
        return;
      }
      replace(run);
      replace(errors, errorBox(error, "forecast"));
    } finally {
      clearInterval(timer);
      signal.removeEventListener("abort", stop);
      if (current === controller) {
        current = null;
        runButton.disabled = false;
        result.removeAttribute("aria-busy");
      }
    }
  }

  async function show(answer, body, fetchSignal) {
    chart?.destroy();
    chart = null;
    const list = answer.series || [];
    if (!list.length) {
      replace(result, h("p.notice", answer.message || "The selection matched no series."));
      return;
    }
    // History of the same series on the forecast's step, one group per forecast series.
    const stepMs = ms(list[0].step_ms || answer.step_ms);
    const keys = body.group_by || [...new Set(list.flatMap((s) => Object.keys(s.labels || {})))];
    const historyNote = h("p.muted.chart-state", { role: "status" });
    let history = [];
    try {
      const query = {
        metrics: body.selection.metrics,
        datasource: body.selection.datasource || "",
        filters: equalityFilters(body.selection.labels),
        time_range: body.selection.time_range || "7d",
        aggregation: "avg",
        group_by: keys,
      };
      if (stepMs) query.step = durationText(stepMs);
      const answerQ = await post("/api/v1/query", query, { signal: fetchSignal });
      history = answerQ.series || [];
      replace(historyNote, `history: POST /api/v1/query, avg per ${query.step || "step"} of ${query.time_range}${body.group_by ? ` grouped by ${keys.join(", ")}` : ""}`);
    } catch (error) {
      if (fetchSignal.aborted) return;
      replace(historyNote, errorBox(error, "history"));
    }
    const historyOf = (series) => history.find((hs) => keys.every((k) => ((hs.group || {})[k] ?? "") === ((series.labels || {})[k] ?? "")));

    const chartBox = h("div.forecast-chart#forecast-chart");
    const chartTitle = h("h2#h-forecast-chart");
    const details = h("div.forecast-details");
    const tbody = h("tbody");
    replace(
      result,
      h(
        "section.card",
        { "aria-labelledby": "h-forecast-chart" },
        h("div.panel-head", chartTitle, h("small.muted", `model ${answer.model_version || list[0].model_version || "–"}`)),
        h("div.forecast-summary", h("div", chartBox, historyNote), details),
      ),
      h(
        "section",
        { "aria-labelledby": "h-forecast-series" },
        h("h2#h-forecast-series", `Series (${list.length})`),
        h(
          "div.table-wrap",
          h(
            "table.forecast-series",
            h("thead", h("tr", ["series", "method", "sMAPE %", "MASE", "history points", body.threshold !== undefined ? "forecast crosses" : null].filter(Boolean).map((t) => h("th", { scope: "col" }, t)))),
            tbody,
          ),
        ),
      ),
    );
    chart = new TimeChart(chartBox, { height: 300, yLabel: list[0].metric });

    function pick(index) {
      const series = list[index];
      for (const [i, tr] of [...tbody.children].entries()) tr.classList.toggle("selected", i === index);
      replace(chartTitle, `${series.metric} `, h("span.muted", labelText(series.labels)));
      const past = historyOf(series);
      const historyPoints = past ? (past.points || []).map((p) => [ms(p.timestamp_ms), p.value ?? 0]) : [];
      const points = series.points || [];
      const at = (p) => ms(p.timestamp_ms);
      const lines = [
        { id: "history", label: "history", points: historyPoints, color: COLORS.history },
        { id: "forecast", label: `forecast (${series.method})`, points: points.map((p) => [at(p), p.value ?? 0]), color: COLORS.forecast, dash: true, width: 2 },
      ];
      const bands = [];
      const levels = [...(answer.levels || [])].sort((a, b) => b - a);
      levels.forEach((level, i) => {
        const bound = (p, side) => {
          const interval = (p.intervals || []).find((iv) => iv.level === level);
          return interval ? interval[side] ?? 0 : null;
        };
        const upper = points.map((p) => [at(p), bound(p, "upper")]).filter(([, v]) => v !== null);
        const lower = points.map((p) => [at(p), bound(p, "lower")]).filter(([, v]) => v !== null);
        if (!upper.length) return;
        lines.push({ id: `upper${level}`, label: `upper ${level}%`, points: upper, color: COLORS.forecast, kind: "band" });
        lines.push({ id: `lower${level}`, label: `lower ${level}%`, points: lower, color: COLORS.forecast, kind: "band" });
        bands.push({ upper: `upper${level}`, lower: `lower${level}`, fill: i === 0 ? COLORS.wide : COLORS.narrow });
      });
      if (body.threshold !== undefined) {
        const times = [...historyPoints.map(([t]) => t), ...points.map(at)];
        lines.push({ id: "threshold", label: `threshold ${number(body.threshold)}`, points: times.map((t) => [t, body.threshold]), color: COLORS.threshold, dash: true, width: 1 });
      }
      chart.set(lines, bands);
      const weights = Object.entries(series.weights || {});
      const candidates = Object.entries(series.candidates || {}).sort((a, b) => a[1] - b[1]);
      replace(
        details,
        h(
          "dl.kv#forecast-facts",
          h("dt", "method"), h("dd", { dataset: { field: "method" } }, series.method || "–"),
          weights.length ? [h("dt", "weights"), h("dd", weights.map(([m, w]) => `${m} ${number(w)}`).join(", "))] : null,
          h("dt", "backtest sMAPE"), h("dd", { dataset: { field: "smape" } }, series.backtest_smape === undefined ? "– (no backtest)" : `${number(series.backtest_smape)} %`),
          h("dt", "backtest MASE"), h("dd", { dataset: { field: "mase" } }, series.backtest_mase === undefined ? "– (no backtest)" : number(series.backtest_mase)),
          h("dt", "backtest windows"), h("dd", String(series.backtest_windows || 0)),
          h("dt", "model version"), h("dd", series.model_version || "–"),
          h("dt", "step"), h("dd", series.step_ms ? durationText(ms(series.step_ms)) : "–"),
          h("dt", "horizon"), h("dd", `${answer.horizon ?? points.length} steps (to ${time(points.length ? at(points[points.length - 1]) : null)})`),
          h("dt", "levels"), h("dd", (answer.levels || []).map((l) => `${l}%`).join(", ") || "–"),
          h("dt", "history points"), h("dd", String(series.history_points || 0)),
          h("dt", "seasons (steps)"), h("dd", (series.season_lengths || []).join(", ") || "none"),
          series.crossing ? [h("dt", "threshold"), h("dd", `${series.crossing.direction || "above"} ${number(series.crossing.threshold)}`)] : null,
          series.crossing ? crossingText(series.crossing).map(([k, v]) => [h("dt", k), h("dd", { dataset: { field: k.replaceAll(" ", "-") } }, v)]) : null,
        ),
        candidates.length
          ? h("details", h("summary", "backtest sMAPE of every candidate"), h("dl.kv", candidates.map(([m, s]) => [h("dt", m), h("dd", `${number(s)} %`)])))
          : null,
        answer.message ? h("p.notice", answer.message) : null,
      );
    }

    list.forEach((series, index) => {
      const crossing = series.crossing;
      tbody.append(
        h(
          "tr",
          h("td", h("button.linkish", { type: "button", onclick: () => pick(index) }, labelText(series.labels))),
          h("td", series.method || "–"),
          h("td.num", series.backtest_smape === undefined ? "–" : number(series.backtest_smape)),
          h("td.num", series.backtest_mase === undefined ? "–" : number(series.backtest_mase)),
          h("td.num", String(series.history_points || 0)),
          body.threshold !== undefined ? h("td", crossing?.forecast_ms ? ago(ms(crossing.forecast_ms)) : "not within the horizon") : null,
        ),
      );
    });
    pick(0);
  }

  forecast();
}
