"""The web console's speed in a real browser (Debian's chromium, headless, through Playwright).

    .venv/bin/python -m benchmarks.console [--docs] [--runs 7]

The stack is started as `make up` starts it (`analytics up`, demo feed on). Measured:

- **Page load**: from navigation to the overview showing its service cards, and to its first chart
  drawn; with an empty browser cache (a new browser context each run) and with a warm one (the same
  context reloading: the console's files answer 304, the vendored library comes from the cache).
  Bytes are the transfer sizes the browser reports for the page's own files.
- **Drawing**: the console's TimeChart (`gateway/console/js/chart.js`: points as the API gives
  them, aligned on one time axis, then uPlot) against uPlot alone given the same data already in
  its column form (the floor: the library's own cost), in the same page, at 10 x 1,000, 50 x 2,000
  and 20 x 10,000 points.
- **Live**: a chart of 20 series x 2,000 points receiving one point per series every 16 ms for
  5 s (TimeChart.append, redrawn at most once per animation frame), against the same chart idle:
  frame intervals from requestAnimationFrame, p50/p99 and frames over 50 ms (a visible stutter).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import launch_stack, stop_process, wait_http_ok
from benchmarks.report import add_docs_flag, machine, publish

SECTION = "## Web console"
SIZES = [(10, 1_000), (50, 2_000), (20, 10_000)]
CHROMIUM = "/usr/bin/chromium"

# Runs in the page: draws `series` x `points` through TimeChart and through uPlot alone; returns
# the milliseconds of each (median of `repeat`).
DRAW_JS = """
async ([series, points, repeat]) => {
  const { TimeChart } = await import('/ui/js/chart.js');
  const host = document.createElement('div');
  host.style.width = '1200px';
  document.body.append(host);
  const start = Date.now() - points * 10000;
  const lines = [];
  for (let s = 0; s < series; s++) {
    const pts = [];
    let v = 50;
    for (let i = 0; i < points; i++) { v += Math.random() - 0.5; pts.push([start + i * 10000, v]); }
    lines.push({ id: 's' + s, label: 'series ' + s, points: pts });
  }
  const columns = [lines[0].points.map(p => p[0] / 1000), ...lines.map(l => l.points.map(p => p[1]))];
  const median = xs => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  // uPlot draws in a microtask after it is made: wait for it before reading the clock.
  const drawn = async () => { await null; await null; };
  const ours = [], floor = [];
  for (let r = 0; r < repeat; r++) {
    const box = document.createElement('div'); host.append(box);
    let t = performance.now();
    const chart = new TimeChart(box, { height: 300 });
    chart.set(lines);
    await drawn();
    ours.push(performance.now() - t);
    chart.destroy(); box.remove();
    const box2 = document.createElement('div'); host.append(box2);
    t = performance.now();
    const plot = new uPlot({ width: 1200, height: 300, series: [{}, ...lines.map(l => ({ label: l.label, stroke: '#1f6feb' }))],
                             scales: { x: { time: true } } }, columns, box2);
    await drawn();
    floor.push(performance.now() - t);
    plot.destroy(); box2.remove();
  }
  host.remove();
  return { ours: median(ours), floor: median(floor) };
}
"""

# Runs in the page: frame intervals over `seconds` with a 20 x 2,000 chart. mode "idle": nothing
# arrives; "ours": TimeChart.append of one point per series every 16 ms; "floor": uPlot alone, its
# columns shifted by one point per series and setData called on every animation frame.
LIVE_JS = """
async ([mode, seconds]) => {
  const { TimeChart } = await import('/ui/js/chart.js');
  const box = document.createElement('div');
  box.style.width = '1200px';
  document.body.append(box);
  const now = Date.now();
  const lines = [];
  for (let s = 0; s < 20; s++) {
    const pts = [];
    for (let i = 0; i < 2000; i++) pts.push([now - (2000 - i) * 1000, 50 + Math.sin(i / 50 + s)]);
    lines.push({ id: 's' + s, label: 'series ' + s, points: pts });
  }
  let t = now, chart = null, plot = null, timer = null, onFrame = () => {};
  if (mode === 'floor') {
    const columns = [lines[0].points.map(p => p[0] / 1000), ...lines.map(l => l.points.map(p => p[1]))];
    plot = new uPlot({ width: 1200, height: 300, series: [{}, ...lines.map(l => ({ label: l.label, stroke: '#1f6feb' }))],
                       scales: { x: { time: true } } }, columns, box);
    onFrame = () => {
      t += 1000;
      columns[0].push(t / 1000); columns[0].shift();
      for (let s = 1; s <= 20; s++) { columns[s].push(50 + Math.random()); columns[s].shift(); }
      plot.setData(columns);
    };
  } else {
    chart = new TimeChart(box, { height: 300, maxAgeMs: 2000 * 1000 });
    chart.set(lines);
    if (mode === 'ours') timer = setInterval(() => {
      t += 1000;
      for (let s = 0; s < 20; s++) chart.append('s' + s, 'series ' + s, [[t, 50 + Math.random()]]);
    }, 16);
  }
  const intervals = [];
  await new Promise(resolve => {
    let last = performance.now();
    const end = last + seconds * 1000;
    const frame = (stamp) => {
      intervals.push(stamp - last); last = stamp;
      onFrame();
      if (stamp < end) requestAnimationFrame(frame); else resolve();
    };
    requestAnimationFrame(frame);
  });
  clearInterval(timer);
  chart?.destroy(); plot?.destroy(); box.remove();
  intervals.sort((a, b) => a - b);
  const q = p => intervals[Math.min(intervals.length - 1, Math.floor(p * intervals.length))];
  return { frames: intervals.length, p50: q(0.5), p99: q(0.99), over50: intervals.filter(x => x > 50).length };
}
"""


def _load(context, base: str) -> dict[str, float]:
    page = context.new_page()
    started = time.perf_counter()
    page.goto(base + "/#/overview")
    page.wait_for_selector("#entities .entity", timeout=30_000)
    cards_ms = (time.perf_counter() - started) * 1000
    page.wait_for_selector("#charts .panel canvas", timeout=30_000)
    chart_ms = (time.perf_counter() - started) * 1000
    transferred = page.evaluate(
        "performance.getEntriesByType('resource').filter(e => e.name.includes('/ui/'))"
        ".reduce((n, e) => n + e.transferSize, 0) + performance.getEntriesByType('navigation')[0].transferSize"
    )
    page.close()
    return {"cards_ms": cards_ms, "chart_ms": chart_ms, "bytes": transferred}


def measure(base: str, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {"runs": runs}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        cold = []
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            cold.append(_load(context, base))
            context.close()
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        _load(context, base)
        warm = [_load(context, base) for _ in range(runs)]
        page = context.new_page()
        page.goto(base + "/#/query")
        page.wait_for_function("window.uPlot !== undefined")
        results["draw"] = [{"series": s, "points": p, **page.evaluate(DRAW_JS, [s, p, 5])} for s, p in SIZES]
        results["live"] = {mode: page.evaluate(LIVE_JS, [mode, 5]) for mode in ("idle", "ours", "floor")}
        context.close()
        browser.close()
    for name, rows in (("cold", cold), ("warm", warm)):
        results[name] = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    return results


def render(r: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.console --docs` ({machine()}; Debian's chromium, headless; the stack as "
        f"`make up` runs it, demo feed on; medians of {r['runs']} runs). The console is the gateway's own "
        "static files: no server besides Envoy and the ws bridge.",
        "",
        "| overview page load | service cards shown | first chart drawn | bytes transferred |",
        "|---|---|---|---|",
    ]
    for name, label in (("cold", "empty browser cache"), ("warm", "warm cache (304s)")):
        x = r[name]
        lines.append(
            f"| {label} | {x['cards_ms']:.0f} ms | {x['chart_ms']:.0f} ms | {x['bytes'] / 1024:.1f} KiB |"
        )
    lines += [
        "",
        "Drawing one chart, TimeChart (the console's: API points aligned on one axis, then uPlot) beside "
        "uPlot alone on data already in its column form (the floor), in the same page:",
        "",
        "| series x points | TimeChart | uPlot alone | ratio |",
        "|---|---|---|---|",
    ]
    for d in r["draw"]:
        ratio = d["ours"] / d["floor"] if d["floor"] else float("nan")
        lines.append(
            f"| {d['series']} x {d['points']:,} | {d['ours']:.1f} ms | {d['floor']:.1f} ms | {ratio:.2f}x |"
        )
    live = r["live"]
    lines += [
        "",
        "Live: 20 series x 2,000 points, one new point per series every 16 ms for 5 s (TimeChart redraws "
        "at most once per animation frame), beside the same chart idle and beside uPlot alone shifting its "
        "columns and redrawing on every frame (the floor):",
        "",
        "| chart | frames | frame interval p50 | p99 | frames over 50 ms |",
        "|---|---|---|---|---|",
    ]
    for mode, label in (
        ("idle", "idle"),
        ("ours", "TimeChart receiving points"),
        ("floor", "uPlot alone, redrawn every frame"),
    ):
        x = live[mode]
        lines.append(f"| {label} | {x['frames']} | {x['p50']:.1f} ms | {x['p99']:.1f} ms | {x['over50']} |")
    lines += [
        "",
        "Headless chromium draws without a display's vsync, so frame intervals show the work a frame "
        "costs rather than a 60 Hz screen's pace.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    add_docs_flag(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "stack.log"
        process, env = launch_stack(Path(folder) / "data", log, DEMO="1")
        try:
            base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
            wait_http_ok(base + "/health", process, log, "the stack")
            results = measure(base, args.runs)
        finally:
            stop_process(process, 30)
    publish(SECTION, render(results), args.docs, results, "console")


if __name__ == "__main__":
    main()
