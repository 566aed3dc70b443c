// The query page (#/query): a metrics query or read-only SQL through POST /api/v1/query, its answer
// as a chart and a table, how it was answered (QueryMetadata) and the Explain plan. The request the
// page sends is exactly what the form shows (its JSON is displayed beside the Run button), and it
// is kept in the hash (?q=<json>), so a link reproduces (and re-runs) the query.

import { get, ms, post } from "../api.js";
import { PALETTE, TimeChart } from "../chart.js";
import { field, h, replace, select } from "../dom.js";
import { duration, number, time, zone } from "../format.js";

export const title = "Query";

const PAGE_ROWS = 100;
const OPS = ["=", "!=", "in", "regex"];
const MODES = ["auto", "batch", "realtime", "cache"];
const FALLBACK_AGGREGATIONS = ["avg", "sum", "min", "max", "count", "p50", "p90", "p95", "p99", "rate", "last", "raw"];
const DEFAULT_SQL =
  "SELECT metric, count(*) AS points, avg(value) AS mean\nFROM metrics\nWHERE ts > epoch_ms(now()) - ?\nGROUP BY 1\nORDER BY 1";
const exact = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 6 });

/** A value as the table shows it: numbers to 6 significant digits, everything else as text. */
export function cellText(value) {
  if (value === "") return "";
  if (value === null || value === undefined) return "NULL";
  if (typeof value === "number") return Number.isFinite(value) ? exact.format(value) : String(value);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** A series' name: its metric (when the answer has several) and its group's labels. */
function seriesName(series, manyMetrics) {
  const entries = Object.entries(series.group || {});
  const labels = entries.map(([k, v]) => (entries.length === 1 ? v || `(no ${k})` : `${k}=${v}`)).join(", ");
  if (!labels) return series.metric;
  return manyMetrics ? `${series.metric} ${labels}` : labels;
}

/** "2026-11-30T06:00:00" (a datetime-local value, viewer's zone) from epoch ms, and back to RFC 3339. */
function localInput(msValue) {
  const d = new Date(msValue - new Date(msValue).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}
const toRfc3339 = (local) => (local ? new Date(local).toISOString().replace(".000Z", "Z") : "");

export async function render(ctx) {
  const { root, signal, query, setQuery, errorBox, onDispose } = ctx;
  let saved = null;
  try {
    saved = query.get("q") ? JSON.parse(query.get("q")) : null;
  } catch {
    saved = null;
  }
  const startMode = query.get("mode") === "sql" || (saved && saved.sql !== undefined) ? "sql" : "metrics";

  // ---- the form ------------------------------------------------------------------------------
  const modeTabs = h("div.q-tabs", { role: "group", "aria-label": "Query kind" });
  const metricsForm = h("form.q-form#q-metrics", { "aria-label": "Metrics query" });
  const sqlForm = h("form.q-form#q-sql", { "aria-label": "SQL query" });
  const preview = h("pre.q-preview#q-request", { "aria-label": "Request body that Run sends" });
  const previewPath = h("code");
  const runButton = h("button.primary#q-run", { type: "button" }, "Run");
  const explainButton = h("button#q-explain-only", { type: "button" }, "Explain only");
  const status = h("span.muted#q-status", { role: "status", "aria-live": "polite" });
  const results = h("div#q-results");
  let kind = startMode;

  // Metrics form controls.
  const datasource = h("input#q-datasource", { value: saved?.datasource || "platform_metrics", autocomplete: "off", spellcheck: "false" });
  const metricList = h("div.q-checks#q-metric-list", { role: "group", "aria-label": "Metrics" });
  const rangeKind = select([["relative", "last …"], ["absolute", "from / to"]], saved?.start ? "absolute" : "relative", { id: "q-range-kind" });
  const timeRange = h("input#q-time-range", { value: saved?.time_range ?? "1h", size: 6, spellcheck: "false" });
  const now = Date.now();
  const start = h("input#q-start", { type: "datetime-local", step: "1", value: saved?.start ? localInput(Date.parse(saved.start)) : localInput(now - 3600000) });
  const end = h("input#q-end", { type: "datetime-local", step: "1", value: saved?.end ? localInput(Date.parse(saved.end)) : localInput(now) });
  const step = h("input#q-step", { value: saved?.step || "", placeholder: "auto", size: 6, spellcheck: "false" });
  const aggregation = select(FALLBACK_AGGREGATIONS, saved?.aggregation || "avg", { id: "q-aggregation" });
  const groupList = h("div.q-checks#q-group-list", { role: "group", "aria-label": "Group by" });
  const filterRows = h("div.q-filters#q-filters");
  const mode = select(MODES, saved?.mode || "auto", { id: "q-mode" });
  const limit = h("input#q-limit", { type: "number", min: "1", value: saved?.limit || "", placeholder: "none", size: 5 });
  const relativeField = field("time range", timeRange, "ending now: 15m, 1h, 7d");
  const startField = field("from", start, `your zone (${zone()}), sent as UTC`);
  const endField = field("to", end);
  let labelKeys = [];
  let chosenMetrics = new Set(saved?.metrics || []);
  let chosenGroups = new Set(saved?.group_by || []);

  function syncRange() {
    const absolute = rangeKind.value === "absolute";
    relativeField.hidden = absolute;
    startField.hidden = !absolute;
    endField.hidden = !absolute;
  }

  function checkbox(name, value, checked, onchange, hint) {
    const input = h("input", { type: "checkbox", name, value, checked, onchange });
    return h("label.q-check", input, " ", value, hint ? h("small.muted", ` ${hint}`) : null);
  }

  function filterRow(filter = {}) {
    const label = select([["", "label…"], ...labelKeys.map((k) => k.key)], filter.label || "", { "aria-label": "filter label", class: "q-filter-label" });
    if (filter.label && !labelKeys.some((k) => k.key === filter.label)) label.append(h("option", { value: filter.label, selected: true }, filter.label));
    const op = select(OPS, filter.op || "=", { "aria-label": "filter operator", class: "q-filter-op" });
    const value = h("input.q-filter-value", {
      "aria-label": "filter value (for in: comma separated)",
      value: filter.op === "in" ? (filter.values || []).join(",") : filter.value || "",
      spellcheck: "false",
    });
    const row = h("div.q-filter", label, op, value);
    row.append(h("button", { type: "button", "aria-label": "remove this filter", onclick: () => { row.remove(); update(); } }, "✕"));
    return row;
  }

  function metricsBody() {
    const body = { metrics: [...metricList.querySelectorAll("input:checked")].map((i) => i.value) };
    if (datasource.value.trim()) body.datasource = datasource.value.trim();
    if (rangeKind.value === "absolute") {
      body.start = toRfc3339(start.value);
      body.end = toRfc3339(end.value);
    } else if (timeRange.value.trim()) {
      body.time_range = timeRange.value.trim();
    }
    if (step.value.trim()) body.step = step.value.trim();
    body.aggregation = aggregation.value;
    const groups = [...groupList.querySelectorAll("input:checked")].map((i) => i.value);
    if (groups.length) body.group_by = groups;
    const filters = [];
    for (const row of filterRows.querySelectorAll(".q-filter")) {
      const label = row.querySelector(".q-filter-label").value;
      const op = row.querySelector(".q-filter-op").value;
      const value = row.querySelector(".q-filter-value").value;
      if (!label) continue;
      if (op === "in") filters.push({ label, op, values: value.split(",").map((v) => v.trim()).filter(Boolean) });
      else filters.push({ label, op, value });
    }
    if (filters.length) body.filters = filters;
    body.mode = mode.value;
    if (limit.value) body.limit = Number(limit.value);
    return body;
  }

  // SQL form controls.
  const sqlText = h("textarea#q-sql-text", { rows: 7, spellcheck: "false", "aria-describedby": "q-sql-hint" });
  sqlText.value = saved?.sql ?? DEFAULT_SQL;
  const params = h("input#q-params", { value: saved?.sql !== undefined ? JSON.stringify(saved.params || []) : "[3600000]", spellcheck: "false" });
  const paramsError = h("small.q-invalid", { role: "alert" });

  function sqlBody() {
    const body = { sql: sqlText.value };
    const text = params.value.trim();
    paramsError.textContent = "";
    if (text && text !== "[]") {
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch (error) {
        paramsError.textContent = `params is not JSON: ${error.message}`;
        return null;
      }
      if (!Array.isArray(parsed)) {
        paramsError.textContent = "params must be a JSON array, such as [\"cpu_usage\", 3600000]";
        return null;
      }
      body.params = parsed;
    }
    return body;
  }

  const currentBody = () => (kind === "sql" ? sqlBody() : metricsBody());

  function update() {
    const body = currentBody();
    previewPath.textContent = "POST /api/v1/query";
    preview.textContent = body ? JSON.stringify(body, null, 1) : "(not sent: fix params)";
  }

  // Tabs: two radio-like buttons.
  const tabButtons = ["metrics", "sql"].map((name) =>
    h("button.q-tab", { type: "button", dataset: { kind: name }, onclick: () => setKind(name) }, name === "sql" ? "SQL" : "Metrics"),
  );
  modeTabs.append(...tabButtons);
  function setKind(name) {
    kind = name;
    for (const b of tabButtons) b.setAttribute("aria-pressed", String(b.dataset.kind === name));
    metricsForm.hidden = name !== "metrics";
    sqlForm.hidden = name !== "sql";
    update();
  }

  append(metricsForm, [
    h("div.toolbar",
      field("datasource", datasource, "metrics and labels listed from its metadata"),
      field("range", rangeKind), relativeField, startField, endField,
      field("step", step, "empty: the service chooses (≤ 300 buckets)"),
      field("aggregation", aggregation),
      field("mode", mode),
      field("limit", limit, "empty: no limit"),
    ),
    h("fieldset.q-fieldset", h("legend", "metrics"), metricList),
    h("fieldset.q-fieldset", h("legend", "group by"), groupList),
    h("fieldset.q-fieldset", h("legend", "filters"), filterRows,
      h("button#q-add-filter", { type: "button", onclick: () => { filterRows.append(filterRow()); update(); } }, "Add filter")),
  ]);
  append(sqlForm, [
    field("SQL (one read-only SELECT over the views metrics, series, points)", sqlText),
    h("p.muted#q-sql-hint", "Columns: metrics(datasource, metric, labels, ts, time, value); series(datasource, series_id, metric, labels); points(datasource, series_id, ts, value). Filter on ts (epoch ms) when you can. ? and $1 are bound from params."),
    field("params (JSON array bound to ? / $1 placeholders)", params, paramsError),
  ]);

  for (const form of [metricsForm, sqlForm]) {
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      run(false);
    });
  }
  rangeKind.addEventListener("change", syncRange);
  root.ownerDocument.addEventListener("keydown", onKey);
  onDispose(() => root.ownerDocument.removeEventListener("keydown", onKey));
  function onKey(event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && root.contains(event.target)) {
      event.preventDefault();
      run(false);
    }
  }
  runButton.addEventListener("click", () => run(false));
  explainButton.addEventListener("click", () => run(true));

  setKind(startMode); // before the page is shown: one form at a time from the start
  replace(
    root,
    h("div.panel-head", h("h1", "Query"), h("small.muted", `times in ${zone()}`)),
    h("section.card.q-editor", modeTabs, metricsForm, sqlForm,
      h("div.q-actions", runButton, explainButton, h("small.muted", "Ctrl+Enter runs"), status),
      h("details.q-request", h("summary", "Request sent: ", previewPath), preview)),
    results,
  );
  syncRange();

  // ---- metadata: metric and label names of the datasource ----------------------------------
  const metaNote = h("small.muted#q-meta-note", { role: "status" });
  metricList.before(metaNote);
  async function loadMetadata() {
    const name = datasource.value.trim();
    if (!name) return;
    chosenMetrics = new Set([...chosenMetrics, ...[...metricList.querySelectorAll("input:checked")].map((i) => i.value)]);
    try {
      const meta = await get(`/api/v1/analytics/metadata/${encodeURIComponent(name)}`, {}, { signal });
      const metrics = meta.metrics || [];
      labelKeys = meta.label_keys || [];
      replace(metricList, metrics.map((m) => checkbox("metric", m.name, chosenMetrics.has(m.name), update, `(${m.series_count || 0} series)`)));
      for (const chosen of chosenMetrics) {
        if (!metrics.some((m) => m.name === chosen)) metricList.append(checkbox("metric", chosen, true, update, "(not in this datasource)"));
      }
      replace(groupList, labelKeys.map((k) => checkbox("group_by", k.key, chosenGroups.has(k.key), update, `(${k.cardinality || 0})`)));
      for (const chosen of chosenGroups) {
        if (!labelKeys.some((k) => k.key === chosen)) groupList.append(checkbox("group_by", chosen, true, update, "(not in this datasource)"));
      }
      if (!labelKeys.length && !chosenGroups.size) replace(groupList, h("small.muted", "this datasource has no labels"));
      metaNote.textContent = `${metrics.length} metrics, ${number(Number(meta.point_count || 0))} points from ${time(Date.parse(meta.start))} to ${time(Date.parse(meta.end))}`;
    } catch (error) {
      if (signal.aborted) return;
      replace(metaNote, errorBox(error, "metadata"));
    }
    update();
  }
  datasource.addEventListener("change", loadMetadata);
  get("/api/v1/analytics/capabilities", {}, { signal })
    .then((caps) => {
      if (!caps.aggregations?.length) return;
      const value = aggregation.value;
      replace(aggregation, caps.aggregations.map((a) => h("option", { value: a, selected: a === value }, a)));
      update();
    })
    .catch(() => {});
  for (const filter of saved?.filters || []) filterRows.append(filterRow(filter));
  await loadMetadata();
  // The filter rows were drawn before the label keys were known: offer them now.
  for (const row of filterRows.querySelectorAll(".q-filter")) {
    const labelSelect = row.querySelector(".q-filter-label");
    const chosen = labelSelect.value;
    replace(labelSelect, h("option", { value: "" }, "label…"), labelKeys.map((k) => h("option", { value: k.key, selected: k.key === chosen }, k.key)));
    if (chosen && !labelKeys.some((k) => k.key === chosen)) labelSelect.append(h("option", { value: chosen, selected: true }, chosen));
  }
  if (!saved && !metricList.querySelector("input:checked")) {
    status.textContent = "Pick one or more metrics, then Run.";
  }

  // ---- running ---------------------------------------------------------------------------------
  let chart = null;
  let runCount = 0;
  onDispose(() => chart?.destroy());

  async function run(explainOnly) {
    const body = currentBody();
    if (!body) return;
    setQuery({ q: JSON.stringify(body) });
    runCount += 1;
    const mine = runCount;
    runButton.disabled = true;
    explainButton.disabled = true;
    status.textContent = explainOnly ? "explaining…" : "running…";
    chart?.destroy();
    chart = null;
    const explainSection = h("section.card.q-explain#q-plan", { "aria-labelledby": "h-plan" }, h("h2#h-plan", "Explain plan"), h("p.muted", "asking…"));
    const began = performance.now();
    const explained = post("/api/v1/query/explain", { query: body }, { signal }).then(
      (answer) => ({ answer }),
      (error) => ({ error }),
    );
    let answer = null;
    let failure = null;
    if (!explainOnly) {
      try {
        answer = await post("/api/v1/query", body, { signal });
      } catch (error) {
        failure = error;
      }
    }
    const plan = await explained;
    if (signal.aborted || mine !== runCount) return;
    runButton.disabled = false;
    explainButton.disabled = false;
    const roundTrip = performance.now() - began;
    if (failure) {
      status.textContent = "the query failed";
      // The plan of a query the API refuses usually fails the same way: say it once.
      const same = plan.error && plan.error.message === failure.message;
      replace(results, errorBox(failure, "query"), same ? null : explainSection);
      if (same) return;
    } else if (explainOnly) {
      status.textContent = "plan only (not run)";
      replace(results, explainSection);
    } else {
      status.textContent = `answered in ${number(roundTrip)} ms`;
      replace(results, ...resultSections(body, answer, roundTrip), explainSection);
    }
    showPlan(explainSection, body, plan, answer);
  }

  function resultSections(body, answer, roundTrip) {
    const sections = [];
    if (body.sql !== undefined) {
      const columns = answer.columns || [];
      const rows = answer.rows || [];
      sections.push(h("section.card#q-result", { "aria-labelledby": "h-result", dataset: { rows: String(rows.length) } },
        h("div.panel-head", h("h2#h-result", "Rows"), h("small.muted", `${number(rows.length)} rows × ${columns.length} columns`)),
        rows.length || columns.length ? pagedTable(columns, rows, "q-sql-table") : h("p.muted", "The query returned no rows."),
      ));
    } else {
      const series = answer.series || [];
      const manyMetrics = new Set(series.map((s) => s.metric)).size > 1;
      const total = series.reduce((n, s) => n + (s.points || []).length, 0);
      const chartBox = h("div#q-chart");
      sections.push(h("section.card#q-result", { "aria-labelledby": "h-result" },
        h("div.panel-head", h("h2#h-result", "Result"), h("small.muted", `${series.length} series, ${number(total)} points`)),
        series.length ? chartBox : h("p.muted", "No series matched: nothing to draw."),
      ));
      if (series.length) {
        chart = new TimeChart(chartBox, { height: 320 });
        chart.set(series.map((s, i) => ({
          id: `${i}`,
          label: seriesName(s, manyMetrics),
          color: PALETTE[i % PALETTE.length],
          points: (s.points || []).map((p) => [ms(p.timestamp_ms), p.value ?? 0]),
        })));
        sections.push(h("section.card", { "aria-labelledby": "h-table" }, h("h2#h-table", "Table"), seriesTable(series, manyMetrics)));
      }
    }
    sections.push(metadataCard(answer.metadata || {}, roundTrip));
    return sections;
  }

  function seriesTable(series, manyMetrics) {
    const times = new Set();
    const values = series.map((s) => {
      const map = new Map();
      for (const p of s.points || []) {
        const t = ms(p.timestamp_ms);
        times.add(t);
        map.set(t, p.value ?? 0);
      }
      return map;
    });
    const sorted = [...times].sort((a, b) => b - a);
    const columns = ["time", ...series.map((s) => seriesName(s, manyMetrics))];
    const rows = sorted.map((t) => [time(t), ...values.map((map) => (map.has(t) ? map.get(t) : ""))]);
    return pagedTable(columns, rows, "q-series-table", sorted, "newest first");
  }

  function pagedTable(columns, rows, id, keys = null, order = "") {
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    let pageNo = 0;
    const tbody = h("tbody");
    const note = h("span.muted", { role: "status", "aria-live": "polite" });
    const prev = h("button", { type: "button", onclick: () => show(pageNo - 1) }, "‹ Previous");
    const next = h("button", { type: "button", onclick: () => show(pageNo + 1) }, "Next ›");
    function show(n) {
      pageNo = Math.min(Math.max(n, 0), pages - 1);
      const first = pageNo * PAGE_ROWS;
      const slice = rows.slice(first, first + PAGE_ROWS);
      replace(tbody, slice.map((row, i) => h("tr", keys ? { dataset: { t: String(keys[first + i]) } } : {},
        row.map((cell, c) => h(typeof cell === "number" ? "td.num" : c === 0 && keys ? "td.q-time" : "td", cellText(cell))))));
      note.textContent = rows.length > PAGE_ROWS
        ? `rows ${number(first + 1)}–${number(first + slice.length)} of ${number(rows.length)}${order ? ` (${order})` : ""}, ${PAGE_ROWS} per page`
        : `${number(rows.length)} rows${order ? ` (${order})` : ""}`;
      prev.disabled = pageNo === 0;
      next.disabled = pageNo >= pages - 1;
    }
    show(0);
    return h("div",
      h("div.table-wrap", h(`table#${id}`, h("thead", h("tr", columns.map((c) => h("th", { scope: "col" }, c)))), tbody)),
      h("div.q-pager", rows.length > PAGE_ROWS ? [prev, next] : null, note),
    );
  }

  function metadataCard(meta, roundTrip) {
    const engineTimes = Object.entries(meta.engine_time_ms || {});
    return h("section.card#q-metadata", { "aria-labelledby": "h-meta" },
      h("h2#h-meta", "How it was answered"),
      h("dl.kv",
        h("dt", "engines"), h("dd", { dataset: { key: "engines" } }, (meta.engines || []).join(", ") || "none"),
        h("dt", "cache hit"), h("dd", { dataset: { key: "cache_hit" } }, meta.cache_hit ? "yes" : "no"),
        h("dt", "time in the service"), h("dd", { dataset: { key: "total_time_ms" } }, `${number(meta.total_time_ms || 0)} ms`),
        engineTimes.map(([engine, t]) => [h("dt", `time in ${engine}`), h("dd", `${number(t)} ms`)]),
        h("dt", "points scanned"), h("dd", { dataset: { key: "points_scanned" } }, number(Number(meta.points_scanned || 0))),
        h("dt", "round trip (browser)"), h("dd", `${number(roundTrip)} ms`),
        meta.plan ? [h("dt", "plan mode"), h("dd", meta.plan.mode || "")] : null,
      ),
      meta.plan?.reason ? h("p.muted", "plan that ran: ", meta.plan.reason) : null,
    );
  }

  function showPlan(section, body, result, answer) {
    const heading = section.firstChild;
    if (result.error) {
      replace(section, heading, errorBox(result.error, "explain"));
      return;
    }
    const plan = result.answer.plan || {};
    const fragments = plan.fragments || [];
    const isSql = body.sql !== undefined;
    const width = bucketWidth(answer);
    replace(section, heading,
      h("dl.kv.q-plan-kv",
        h("dt", "mode"), h("dd", plan.mode || "–"),
        h("dt", "resolution"), h("dd", { dataset: { key: "resolution" } },
          isSql ? "not applicable (SQL)" : body.aggregation === "raw" ? "raw points" : body.step ? `step ${body.step}` : width ? `step chosen by the service: ${duration(width)}` : "step chosen by the service"),
      ),
      h("p.q-reason", plan.reason || ""),
      isSql ? h("p.muted", "For SQL, Explain only says which engine runs it; the time range lives inside the statement.") : null,
      fragments.length
        ? h("ol.q-fragments", fragments.map((f) => {
          const s = ms(f.start_ms);
          const e = ms(f.end_ms);
          const span = s || e ? `${time(s)} → ${time(e)} (${duration(e - s)})` : "no time range";
          return h("li.q-fragment", { dataset: { engine: f.engine || "" } }, h("strong", f.engine || "?"), " ", h("span", span));
        }))
        : h("p.muted", "no fragments"),
    );
  }

  if (saved) run(false);
}

/** The smallest distance between consecutive points of an answer (its bucket width), or null. */
function bucketWidth(answer) {
  let best = null;
  for (const s of answer?.series || []) {
    const pts = s.points || [];
    for (let i = 1; i < pts.length; i++) {
      const d = ms(pts[i].timestamp_ms) - ms(pts[i - 1].timestamp_ms);
      if (d > 0 && (best === null || d < best)) best = d;
    }
  }
  return best;
}

function append(el, children) {
  for (const child of children) el.append(child);
}
