// #/dashboards/new (?from=<id>: start from a copy of that dashboard) and #/dashboards/<id>/edit:
// name, type, datasource, metrics, services, simulations, time range, step, aggregation and refresh
// interval, saved with POST /api/v1/dashboards or PUT /api/v1/dashboards/{id} (the whole dashboard).
// The request is built from what the form shows and nothing else, and shown below the form as it
// will be sent; an empty field is left out of the request (its hint says what the service does then).

import { get, post, put } from "../../api.js";
import { h, replace, field, select } from "../../dom.js";
import { LAYOUTS, dashboardHref, layoutOf } from "./common.js";

const AGGREGATIONS = ["avg", "sum", "min", "max", "count", "p50", "p90", "p95", "p99", "rate", "last"];
const NEW_DEFAULTS = { name: "", type: "platform-overview", config: { time_range: "1h", datasource: "platform_metrics" }, refresh_interval: 30 };

/** "a, b ,c" -> ["a", "b", "c"] (empty items dropped). */
const splitList = (text) => text.split(",").map((item) => item.trim()).filter(Boolean);

/**
 * A list field: a text input (comma-separated, the value that is sent, in its order) and a
 * checkbox per known value that adds it to or removes it from the text. Free text is allowed.
 */
function listField(name, label, hint) {
  const input = h("input.dash-list-input", { type: "text", name, autocomplete: "off", spellcheck: "false" });
  const choices = h("div.dash-choices", { role: "group", "aria-label": `${label}: known values` });
  const note = h("small.dash-choices-note.muted");
  const off = h("strong.dash-off-note", { hidden: true }, `This type shows no ${name}: the list is not sent.`);
  const wrap = h("div.dash-listfield", { dataset: { field: name } }, field(label, input, hint), off, choices, note);
  const boxes = new Map();

  function sync() {
    const chosen = new Set(splitList(input.value));
    for (const [value, box] of boxes) box.checked = chosen.has(value);
  }
  input.addEventListener("input", sync);

  return {
    el: wrap,
    input,
    offNote: off,
    get values() {
      return splitList(input.value);
    },
    set values(list) {
      input.value = (list || []).join(", ");
      sync();
    },
    set disabled(off) {
      input.disabled = off;
      for (const box of boxes.values()) box.disabled = off;
      wrap.classList.toggle("dash-off", off);
      this.offNote.hidden = !off;
    },
    /** Known values as checkboxes, or a note saying why there are none. */
    setChoices(values, message = "") {
      boxes.clear();
      replace(
        choices,
        values.map((value) => {
          const box = h("input", { type: "checkbox", value });
          box.disabled = input.disabled;
          box.addEventListener("change", () => {
            const current = splitList(input.value);
            const next = box.checked ? (current.includes(value) ? current : [...current, value]) : current.filter((v) => v !== value);
            input.value = next.join(", ");
            input.dispatchEvent(new Event("input", { bubbles: true }));
          });
          boxes.set(value, box);
          return h("label.dash-choice", box, " ", value);
        }),
      );
      replace(note, message);
      sync();
    },
  };
}

export async function renderForm(ctx, id) {
  const { root, signal, query, errorBox } = ctx;
  const from = query.get("from");
  let source = null; // the dashboard being edited or copied
  if (id || from) {
    try {
      const answer = await get(`/api/v1/dashboards/${encodeURIComponent(id || from)}`, {}, { signal });
      source = answer.dashboard;
    } catch (error) {
      if (signal.aborted) return;
      replace(root, h("h1", id ? "Edit dashboard" : "New dashboard"), errorBox(error, `dashboard ${id || from}`), h("p", h("a", { href: "#/dashboards" }, "All dashboards")));
      return;
    }
  }
  // A built-in cannot be changed (the API answers 400): its edit page saves a copy instead.
  let editing = id && source && !source.builtin ? source.id : null;
  const start = source ? { ...source, name: editing ? source.name : `Copy of ${source.name}` } : NEW_DEFAULTS;
  const config = start.config || {};

  // Controls.
  const name = h("input", { type: "text", name: "name", required: true, autocomplete: "off" });
  const type = select(Object.keys(LAYOUTS), start.type, { name: "type" });
  const typeAbout = h("span");
  const datasource = h("input", { type: "text", name: "datasource", autocomplete: "off", spellcheck: "false" });
  const metrics = listField("metrics", "Metrics", "comma-separated, in panel order; empty: the layout's default metrics (those with data)");
  const services = listField("services", "Services", "comma-separated; empty: all services");
  const simulations = listField("simulations", "Simulations", "comma-separated; empty: all simulations");
  const timeRange = h("input", { type: "text", name: "time_range", autocomplete: "off", placeholder: "e.g. 15m, 24h, 7d" });
  const step = h("input", { type: "text", name: "step", autocomplete: "off", placeholder: "the service chooses" });
  const aggregation = select([["", "default (not sent)"], ...AGGREGATIONS], config.aggregation || "", { name: "aggregation" });
  const refresh = h("input", { type: "number", name: "refresh_interval", min: "0", max: "86400", step: "1" });
  name.value = start.name || "";
  datasource.value = config.datasource || "";
  metrics.values = config.metrics;
  services.values = config.services;
  simulations.values = config.simulations;
  timeRange.value = config.time_range || "";
  step.value = config.step || "";
  refresh.value = start.refresh_interval === undefined || start.refresh_interval === null ? "" : String(start.refresh_interval);

  const heading = h("h1");
  const method = h("code#dash-method");
  const preview = h("pre#dash-request", { "aria-label": "The request that Save sends" });
  const result = h("div#dash-result", { role: "status", "aria-live": "polite" });
  const saveButton = h("button.primary#dash-save", { type: "submit" }, "Save");
  const openLink = h("a.button#dash-open", { hidden: true }, "Open dashboard");
  const form = h(
    "form.dash-form#dash-form",
    { novalidate: true },
    h(
      "div.dash-form-layout",
      h(
      "div.dash-form-grid",
      field("Name", name),
      field("Type", type, typeAbout),
      field("Datasource", datasource, "where the metrics are; empty: platform_metrics"),
      metrics.el,
      services.el,
      simulations.el,
      field("Time range", timeRange, "the lookback: a number and unit (s, m, h, d, w); empty: 1h"),
      field("Step", step, "bucket width, e.g. 30s, 5m; empty: the service chooses (the smallest round step giving at most 120 points)"),
      field("Aggregation", aggregation, "default: avg; in platform-overview and service-comparison hosts are combined (rates summed, worst latency)"),
      field("Refresh interval (s)", refresh, "seconds between live updates, 0 to 86400; 0 or empty: 30; never more often than the service's minimum (5 s by default)"),
      ),
      h(
        "aside.dash-request-box",
        { "aria-labelledby": "dash-request-h" },
        h("h2#dash-request-h", "Request"),
        h("p.muted", "Save sends exactly this; an empty field is left out."),
        h("p", method),
        preview,
      ),
    ),
    h("div.toolbar.dash-form-actions", saveButton, openLink, h("a.button", { href: "#/dashboards" }, "Back to dashboards")),
    result,
  );
  replace(root, h("p.dash-crumb", h("a", { href: "#/dashboards" }, "Dashboards"), " / "), heading, source?.builtin ? h("p.notice", `“${source.name}” is built in and cannot be changed: this form saves a new dashboard from its settings.`) : null, form);

  function body() {
    const layout = layoutOf(type.value);
    const cfg = {};
    if (services.values.length && layout.services) cfg.services = services.values;
    if (metrics.values.length) cfg.metrics = metrics.values;
    if (timeRange.value.trim()) cfg.time_range = timeRange.value.trim();
    if (simulations.values.length && layout.simulations) cfg.simulations = simulations.values;
    if (datasource.value.trim()) cfg.datasource = datasource.value.trim();
    if (step.value.trim()) cfg.step = step.value.trim();
    if (aggregation.value) cfg.aggregation = aggregation.value;
    const request = { name: name.value, type: type.value, config: cfg };
    if (refresh.value.trim() !== "") request.refresh_interval = Number(refresh.value);
    return request;
  }

  function update() {
    const layout = layoutOf(type.value);
    replace(typeAbout, layout.about);
    services.disabled = !layout.services;
    simulations.disabled = !layout.simulations;
    replace(heading, editing ? `Edit “${name.value || start.name}”` : "New dashboard");
    replace(method, editing ? `PUT /api/v1/dashboards/${editing}` : "POST /api/v1/dashboards");
    replace(preview, JSON.stringify(body(), null, 2));
    const unused = [!layout.services && services.values.length && "services", !layout.simulations && simulations.values.length && "simulations"].filter(Boolean);
    form.dataset.unused = unused.join(",");
  }
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();

  // Known values to pick from: the datasource's metrics, the monitor's services, the simulations.
  async function loadMetrics() {
    const ds = datasource.value.trim() || "platform_metrics";
    try {
      const meta = await get(`/api/v1/analytics/metadata/${encodeURIComponent(ds)}`, {}, { signal });
      const names = (meta.metrics || []).map((m) => m.name);
      metrics.setChoices(names, names.length ? `known metrics of ${ds}` : `${ds} has no metrics yet`);
    } catch (error) {
      if (!signal.aborted) metrics.setChoices([], `metrics of ${ds}: ${error.message}`);
    }
  }
  async function loadServices() {
    try {
      const platform = await get("/api/v1/monitor/platform", {}, { signal });
      const names = (platform.entities || []).filter((e) => e.kind === "service").map((e) => e.name);
      services.setChoices(names, names.length ? "services the monitor knows" : "the monitor knows no service yet");
    } catch (error) {
      if (!signal.aborted) services.setChoices([], `services: ${error.message}`);
    }
  }
  async function loadSimulations() {
    // The simulations with data in the last hour: their simulation_id values in the datasource.
    const ds = datasource.value.trim() || "platform_metrics";
    try {
      const meta = await get(`/api/v1/analytics/metadata/${encodeURIComponent(ds)}`, {}, { signal });
      const first = (meta.metrics || []).map((m) => m.name)[0];
      if (!first || !(meta.label_keys || []).some((k) => k.key === "simulation_id")) {
        simulations.setChoices([], `no series of ${ds} carry a simulation_id`);
        return;
      }
      const answer = await post("/api/v1/query", { datasource: ds, metrics: (meta.metrics || []).map((m) => m.name), time_range: "1h", step: "1h", group_by: ["simulation_id"] }, { signal });
      const ids = [...new Set((answer.series || []).map((s) => s.group?.simulation_id).filter(Boolean))].sort();
      simulations.setChoices(ids, ids.length ? `simulations with data in ${ds} over the last hour` : `no simulation has data in ${ds} over the last hour`);
    } catch (error) {
      if (!signal.aborted) simulations.setChoices([], `simulations: ${error.message}`);
    }
  }
  datasource.addEventListener("change", () => {
    loadMetrics();
    loadSimulations();
  });
  loadMetrics();
  loadServices();
  loadSimulations();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const request = body();
    saveButton.disabled = true;
    replace(result, h("p.muted", "Saving…"));
    try {
      const path = editing ? `/api/v1/dashboards/${encodeURIComponent(editing)}` : "/api/v1/dashboards";
      const answer = editing ? await put(path, request, { signal }) : await post(path, request, { signal });
      const saved = answer.dashboard;
      const warnings = answer.warnings || [];
      if (!editing) {
        // From now on this form edits the dashboard it created (PUT), and the address says so.
        editing = saved.id;
        history.replaceState(null, "", dashboardHref(saved.id, "edit"));
      }
      openLink.href = dashboardHref(saved.id);
      openLink.hidden = false;
      replace(
        result,
        h("p.dash-saved", { dataset: { id: saved.id } }, `Saved “${saved.name}” (id ${saved.id}).`),
        warnings.length
          ? h("div.notice.dash-warnings", h("p", `The service stored it with ${warnings.length === 1 ? "a warning" : `${warnings.length} warnings`}:`), h("ul", warnings.map((w) => h("li", w))))
          : h("p.muted", "No warnings."),
      );
      update();
    } catch (error) {
      if (signal.aborted) return;
      replace(result, errorBox(error, "not saved"));
    } finally {
      saveButton.disabled = false;
    }
  });
}
