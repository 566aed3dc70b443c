// What the dashboards pages share: links, the layouts' descriptions, a dashboard's config in words.

export const dashboardHref = (id, ...rest) => `#/dashboards/${[id, ...rest].map(encodeURIComponent).join("/")}`;

/** The built-in layouts (docs/dashboards.md, "Layouts"): what each draws, and which lists it takes. */
export const LAYOUTS = {
  "platform-overview": { about: "one panel per metric, one line per service", services: true, simulations: false },
  "service-metrics": { about: "one panel per service and metric, one line per host", services: true, simulations: false },
  "service-comparison": { about: "one panel per metric, services ranked by mean", services: true, simulations: false },
  "resource-utilization": { about: "per metric: one panel per host and one per simulation resource", services: true, simulations: true },
  simulation: { about: "one panel per simulation and metric, one line per resource", services: false, simulations: true },
};

export const layoutOf = (type) => LAYOUTS[type] || { about: "", services: true, simulations: true };

/** [term, description] pairs of a dashboard's settings, saying what an empty value means. */
export function configTerms(dashboard) {
  const config = dashboard.config || {};
  const list = (values, empty) => (values && values.length ? values.join(", ") : empty);
  const layout = layoutOf(dashboard.type);
  const terms = [
    ["type", dashboard.type],
    ["time range", config.time_range || "1h (default)"],
    ["step", config.step || "chosen by the service"],
    ["aggregation", config.aggregation || "default"],
    ["datasource", config.datasource || "platform_metrics (default)"],
    ["metrics", list(config.metrics, "the layout's defaults")],
  ];
  if (layout.services) terms.push(["services", list(config.services, "all")]);
  if (layout.simulations) terms.push(["simulations", list(config.simulations, "all")]);
  terms.push(["refresh", `every ${dashboard.refresh_interval || 30} s`]);
  return terms;
}
