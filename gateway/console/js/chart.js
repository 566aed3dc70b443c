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

/** A point's value for a chart: proto JSON leaves out 0 and writes NaN and infinities as strings
 * ("NaN", "Infinity"), which a chart cannot draw: those become gaps (null). */
export function value(v) {
  if (v === undefined || v === null) return 0;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

/** [[ms, value], ...] from the API's points ({timestamp_ms: "…", value}). */
export function pointsOf(series) {
  return (series.points || []).map((p) => [ms(p.timestamp_ms), value(p.value)]);
}

/** Index of the first element of the sorted array `xs` that is >= t. */
function lowerBound(xs, t) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid] < t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class TimeChart {
  /**
   * @param {HTMLElement} container
   * @param {{height?: number, yLabel?: string, maxAgeMs?: number}} options
   * maxAgeMs: when set, live appends drop points older than this behind the newest one.
   *
   * The data is kept in uPlot's own form, one shared time axis and a column per line, so a live
   * point newer than all others (the usual case) costs an array push, not a re-alignment.
   */
  constructor(container, options = {}) {
    this.container = container;
    this.options = options;
    this.lines = []; // {id, label, color, dash, kind: "line"|"band"|"marker", width}
    this.xs = []; // sorted times in ms
    this.columns = []; // per line, its values at xs (null where it has none)
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
    const times = new Set();
    for (const line of lines) for (const [t] of line.points) times.add(t);
    this.xs = Float64Array.from(times).sort();
    const position = new Map();
    this.xs.forEach((t, i) => position.set(t, i));
    this.xs = Array.from(this.xs);
    this.columns = lines.map((line) => {
      const column = new Array(this.xs.length).fill(null);
      for (const [t, v] of line.points) column[position.get(t)] = v;
      return column;
    });
    this.lines = lines.map((line, i) => {
      const { points, ...rest } = line;
      return { kind: "line", color: PALETTE[i % PALETTE.length], ...rest };
    });
    this.bands = bands;
    this.rebuild();
  }

  /** Add live points to the line `id` (created with `label` when new); redraws on the next frame. */
  append(id, label, points) {
    let index = this.lines.findIndex((l) => l.id === id);
    if (index < 0) {
      index = this.lines.length;
      this.lines.push({ id, label, kind: "line", color: PALETTE[index % PALETTE.length] });
      this.columns.push(new Array(this.xs.length).fill(null));
    }
    for (const [t, v] of points) this.put(index, t, v);
    this.schedule();
  }

  put(index, t, v) {
    const { xs, columns } = this;
    if (!xs.length || t > xs[xs.length - 1]) {
      xs.push(t);
      for (const column of columns) column.push(null);
      columns[index][xs.length - 1] = v;
      return;
    }
    const at = lowerBound(xs, t);
    if (xs[at] !== t) {
      xs.splice(at, 0, t);
      for (const column of columns) column.splice(at, 0, null);
    }
    columns[index][at] = v;
  }

  /** The newest timestamp (ms) of any line, or null. */
  newest() {
    return this.xs.length ? this.xs[this.xs.length - 1] : null;
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
    const newest = this.newest();
    if (!maxAgeMs || newest === null) return;
    const cut = lowerBound(this.xs, newest - maxAgeMs);
    if (cut === 0) return;
    this.xs.splice(0, cut);
    for (const column of this.columns) column.splice(0, cut);
  }

  data() {
    return [this.xs.map((t) => t / 1000), ...this.columns];
  }

  /** What uPlot's options depend on: a plot made for another shape is made anew. */
  shape() {
    const lines = this.lines.map((l) => [l.id, l.label, l.kind, l.color, l.width, l.dash]);
    return JSON.stringify([lines, this.bands, this.options.height]);
  }

  uplotOptions() {
    const series = [{}];
    for (const line of this.lines) {
      // Whole-pixel widths: a fractional one (1.5) makes chromium's canvas draw 5x slower.
      const base = { label: line.label, stroke: line.color, width: line.width ?? 1, spanGaps: false };
      if (line.dash) base.dash = [6, 4];
      if (line.kind === "band") Object.assign(base, { width: 1, dash: [2, 3], points: { show: false } });
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
    let count = 0;
    for (const column of this.columns) for (const v of column) if (v !== null) count += 1;
    this.container.dataset.points = String(count);
    this.container.dataset.newest = hasPoints ? String(this.newest()) : "";
    this.container.dataset.lines = String(this.lines.length);
    this.empty.hidden = hasPoints;
    this.canvasHost.hidden = !hasPoints;
    if (!hasPoints) return;
    const shape = this.shape();
    if (this.plot && this.plotShape === shape) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    this.plot = new window.uPlot(this.uplotOptions(), data, this.canvasHost);
    this.plotShape = shape;
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
