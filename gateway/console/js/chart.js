// Time-series charts on uPlot (vendored, gateway/console/vendor/; scripts/vendor-ui). uPlot draws on
// a canvas, handles tens of thousands of points per chart, and labels its time axis in the
// viewer's own time zone. TimeChart adds what the pages need on top: series given as the API's
// points, live appends (redrawn at most once per animation frame), bands (an expected range or a
// forecast interval) and markers (anomalies) on the same axes.

import { h } from "./dom.js";
import { ms } from "./api.js";

export const PALETTE = [
  "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df",
  "#bf3989", "#0a7ea4", "#bc4c00", "#57606a", "#116329",
];

/** A series' name in a legend: its one label's value ("auth-service"), "host=h1, region=eu" for
 * several labels, or its metric when it has none. */
export function seriesLabel(series) {
  const entries = Object.entries(series.group || series.labels || {});
  if (entries.length === 1) return entries[0][1];
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : series.metric || "value";
}

/** [[ms, value], ...] from the API's points ({timestamp_ms: "…", value}; value 0 is left out). */
export function pointsOf(series) {
  return (series.points || []).map((p) => [ms(p.timestamp_ms), p.value ?? 0]);
}

export class TimeChart {
  /**
   * @param {HTMLElement} container
   * @param {{height?: number, yLabel?: string, maxAgeMs?: number, maxPoints?: number}} options
   * maxAgeMs: when set, live appends drop points older than this behind the newest one.
   */
  constructor(container, options = {}) {
    this.container = container;
    this.options = options;
    this.lines = []; // {id, label, color, dash, points: Map(ms -> value), kind: "line"|"band"|"marker"}
    this.bands = []; // {lower: id, upper: id, fill}
    this.plot = null;
    this.pending = false;
    this.canvasHost = h("div.chart-canvas");
    this.empty = h("p.chart-empty.muted", "no points in this range");
    container.append(this.canvasHost, this.empty);
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(container);
  }

  /** Replace every line. lines: [{id, label, points: [[ms, v], ...], color?, dash?, kind?, width?}] */
  set(lines, bands = []) {
    this.lines = lines.map((line, i) => ({
      kind: "line",
      color: PALETTE[i % PALETTE.length],
      ...line,
      points: new Map(line.points),
    }));
    this.bands = bands;
    this.rebuild();
  }

  /** Add live points to the line `id` (created with `label` when new); redraws on the next frame. */
  append(id, label, points) {
    let line = this.lines.find((l) => l.id === id);
    if (!line) {
      line = { id, label, kind: "line", color: PALETTE[this.lines.length % PALETTE.length], points: new Map() };
      this.lines.push(line);
      this.plot?.destroy();
      this.plot = null;
    }
    for (const [t, v] of points) line.points.set(t, v);
    this.schedule();
  }

  /** The newest timestamp (ms) of any line, or null. */
  newest() {
    let newest = null;
    for (const line of this.lines) for (const t of line.points.keys()) if (newest === null || t > newest) newest = t;
    return newest;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.trim();
      this.rebuild();
    });
  }

  trim() {
    const { maxAgeMs } = this.options;
    if (!maxAgeMs) return;
    const newest = this.newest();
    if (newest === null) return;
    for (const line of this.lines) for (const t of line.points.keys()) if (t < newest - maxAgeMs) line.points.delete(t);
  }

  data() {
    const times = new Set();
    for (const line of this.lines) for (const t of line.points.keys()) times.add(t);
    const xs = Float64Array.from(times).sort();
    const columns = [Array.from(xs, (t) => t / 1000)];
    for (const line of this.lines) columns.push(Array.from(xs, (t) => (line.points.has(t) ? line.points.get(t) : null)));
    return columns;
  }

  uplotOptions() {
    const series = [{}];
    for (const line of this.lines) {
      const base = { label: line.label, stroke: line.color, width: line.width ?? 1.5, spanGaps: false };
      if (line.dash) base.dash = [6, 4];
      if (line.kind === "band") Object.assign(base, { width: 0.5, points: { show: false } });
      if (line.kind === "marker") {
        Object.assign(base, {
          width: 0,
          paths: () => null,
          points: { show: true, size: 9, stroke: line.color, fill: line.color, width: 1 },
        });
      }
      series.push(base);
    }
    const index = (id) => this.lines.findIndex((l) => l.id === id) + 1;
    const bands = this.bands
      .map((band) => ({ series: [index(band.upper), index(band.lower)], fill: band.fill || "rgba(31,111,235,0.12)" }))
      .filter((band) => band.series[0] > 0 && band.series[1] > 0);
    return {
      width: Math.max(this.container.clientWidth, 200),
      height: this.options.height || 220,
      series,
      bands,
      scales: { x: { time: true } },
      axes: [{}, { label: this.options.yLabel, size: 56 }],
      legend: { live: true },
      cursor: { focus: { prox: 16 } },
    };
  }

  rebuild() {
    const data = this.data();
    const hasPoints = data[0].length > 0;
    // What the chart holds, for people reading the DOM and for the browser tests.
    this.container.dataset.points = String(data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null).length, 0));
    this.container.dataset.newest = hasPoints ? String(data[0][data[0].length - 1] * 1000) : "";
    this.container.dataset.lines = String(this.lines.length);
    this.empty.hidden = hasPoints;
    this.canvasHost.hidden = !hasPoints;
    if (!hasPoints) return;
    if (this.plot && this.plot.series.length === this.lines.length + 1) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    this.plot = new window.uPlot(this.uplotOptions(), data, this.canvasHost);
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(this.container.clientWidth, 200);
    if (width !== this.plot.width) this.plot.setSize({ width, height: this.plot.height });
  }

  destroy() {
    this.resizer.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}

/** Chart of the API's series list ({metric, group, points}), one line per series. */
export function seriesLines(seriesList, prefix = "") {
  return seriesList.map((series) => ({
    id: `${prefix}${series.metric}|${seriesLabel(series)}`,
    label: seriesList.length > 1 || !prefix ? seriesLabel(series) : series.metric,
    points: pointsOf(series),
  }));
}
