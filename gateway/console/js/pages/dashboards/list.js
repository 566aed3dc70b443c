// #/dashboards: every dashboard (GET /api/v1/dashboards: built-ins first, then stored ones, oldest
// first), a type filter, "New dashboard", and delete (after an inline confirmation) for stored ones.

import { del, get, ms } from "../../api.js";
import { h, replace, field, select } from "../../dom.js";
import { time } from "../../format.js";
import { LAYOUTS, dashboardHref } from "./common.js";

export async function renderList(ctx) {
  const { root, signal, query, setQuery, errorBox } = ctx;
  const status = h("div.dash-status", { role: "status", "aria-live": "polite" });
  const body = h("div");
  const typeFilter = select([["", "all types"], ...Object.keys(LAYOUTS)], query.get("type") || "", { name: "type" });
  typeFilter.addEventListener("change", () => {
    setQuery(typeFilter.value ? { type: typeFilter.value } : {});
    load().catch(show);
  });
  replace(
    root,
    h("div.panel-head", h("h1", "Dashboards"), h("a.button.primary#new-dashboard", { href: "#/dashboards/new" }, "New dashboard")),
    h("p.muted", "Built-in dashboards first (they cannot be changed: save a copy to adjust one), then your own, oldest first."),
    h("div.toolbar", field("Type", typeFilter)),
    status,
    body,
  );

  function show(error) {
    if (signal.aborted) return;
    replace(body, errorBox(error, "dashboards"));
  }

  async function load() {
    const answer = await get("/api/v1/dashboards", { type: typeFilter.value }, { signal });
    const dashboards = answer.dashboards || [];
    if (!dashboards.length) {
      replace(body, h("p.muted", typeFilter.value ? `No dashboard of type ${typeFilter.value}.` : "No dashboards."));
      return;
    }
    replace(
      body,
      h(
        "div.table-wrap",
        h(
          "table.dash-list",
          h("thead", h("tr", ["name", "type", "time range", "refresh", "updated", h("span.dash-sr", "actions")].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", dashboards.map(row)),
        ),
      ),
    );
  }

  function row(dashboard) {
    const actions = h("td.dash-actions");
    const tr = h(
      "tr",
      { dataset: { id: dashboard.id, builtin: dashboard.builtin ? "true" : "false" } },
      h("td", h("a.dash-open", { href: dashboardHref(dashboard.id) }, dashboard.name), dashboard.builtin ? [" ", h("span.badge", "built-in")] : null),
      h("td", dashboard.type),
      h("td", dashboard.config?.time_range || "1h"),
      h("td.num", `${dashboard.refresh_interval || 30} s`),
      h("td", dashboard.builtin ? "–" : time(ms(dashboard.updated_at_ms))),
      actions,
    );
    showActions();
    return tr;

    function showActions() {
      if (dashboard.builtin) {
        replace(actions, h("a.button", { href: `#/dashboards/new?from=${encodeURIComponent(dashboard.id)}` }, "Save a copy"));
        return;
      }
      replace(
        actions,
        h("a.button", { href: dashboardHref(dashboard.id, "edit") }, "Edit"),
        " ",
        h("button.danger", { type: "button", onclick: confirmDelete, "aria-label": `Delete ${dashboard.name}` }, "Delete"),
      );
    }

    function confirmDelete() {
      const yes = h("button.danger.dash-confirm-yes", { type: "button", onclick: remove }, "Yes, delete");
      replace(
        actions,
        h("span.dash-confirm", `Delete “${dashboard.name}”?`),
        " ",
        yes,
        " ",
        h("button", { type: "button", onclick: showActions }, "Cancel"),
      );
      yes.focus();
    }

    async function remove() {
      for (const button of actions.querySelectorAll("button")) button.disabled = true;
      try {
        await del(`/api/v1/dashboards/${encodeURIComponent(dashboard.id)}`, { signal });
        tr.remove();
        replace(status, h("p.notice", `Deleted “${dashboard.name}”.`));
      } catch (error) {
        if (signal.aborted) return;
        replace(status, errorBox(error, `delete ${dashboard.name}`));
        showActions();
      }
    }
  }

  await load().catch(show);
}
