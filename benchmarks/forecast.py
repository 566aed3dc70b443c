"""Forecast accuracy and speed on the M4 hourly series, every method in one run.

    .venv/bin/python -m benchmarks.forecast [--series N] [--arima-series K] [--workers W] [--docs]

Reads ../shared/data/m4/Hourly-train.csv (414 series; never copied into the repo), holds out the
last 48 points of each as the test and forecasts 48 steps (season 24, and 168 for MSTL) with every
method through the service's own worker function (`services.ml.forecasting.backtest.run`, the path a
Forecast request takes), on a process pool of W workers. `auto` runs its rolling-origin backtest
(two windows of 48 on the training part, eight candidates) and picks per series; the single methods fit once.
Reports the mean sMAPE (M4's definition) and MASE (scale: in-sample seasonal naive, m = 24) over the
series and the wall time per method. auto_arima takes ~30 s a series here, so it runs on a random
subset of K series (seed 0), reported with the other methods' scores on the same subset.
Results go to benchmarks/results/forecast.json; `--docs` replaces the forecast section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.procs import REPO_ROOT, RESULTS_DIR
from benchmarks.report import write_docs_section
from benchmarks.run import machine_facts
from services.ml.forecasting.backtest import SeriesJob, mase, run, smape
from services.ml.forecasting.methods import HOUR_MS, season_lengths

DATA = REPO_ROOT.parent / "shared" / "data" / "m4" / "Hourly-train.csv"
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
HEADING = "## Forecasting (M4 hourly)"
HORIZON, SEASON = 48, 24
METHODS = (
    "auto",
    "prophet",
    "auto_ets",
    "auto_theta",
    "mstl",
    "seasonal_naive",
    "seasonal_es",
    "seasonal_window_average",
    "stl_drift",
)
LEVELS = (80.0, 95.0)


def load(path: Path) -> dict[str, np.ndarray]:
    """Series id -> values, from M4's wide CSV (one series a row, trailing cells empty)."""
    with path.open() as f:
        rows = csv.reader(f)
        next(rows)
        return {row[0]: np.array([float(v) for v in row[1:] if v], dtype=np.float64) for row in rows}


def _job(method: str, y: np.ndarray) -> SeriesJob:
    return SeriesJob(
        y[:-HORIZON],
        0,
        HOUR_MS,
        method,
        HORIZON,
        LEVELS,
        season_lengths(HOUR_MS),
        backtest=method == "auto",
    )


def evaluate(pool: ProcessPoolExecutor, method: str, series: dict[str, np.ndarray]) -> dict[str, object]:
    """Forecast every series with `method` on the pool; per-series errors and the wall time."""
    ids = list(series)
    started = time.perf_counter()
    outcomes = list(pool.map(run, [_job(method, series[i]) for i in ids], chunksize=1))
    wall = time.perf_counter() - started
    errors = {}
    for i, o in zip(ids, outcomes, strict=True):
        train, test = series[i][:-HORIZON], series[i][-HORIZON:]
        inside = [
            float(np.mean((test >= o.prediction.lower[lv]) & (test <= o.prediction.upper[lv])))
            for lv in LEVELS
        ]
        errors[i] = (
            smape(test, o.prediction.mean),
            mase(test, o.prediction.mean, train, SEASON),
            o.method,
            inside,
        )
    return {"wall_s": wall, "errors": errors}


def summary(result: dict[str, object], ids: list[str]) -> dict[str, float]:
    """Mean sMAPE and MASE over `ids`."""
    errors = result["errors"]
    return {
        "smape": float(np.mean([errors[i][0] for i in ids])),
        "mase": float(np.mean([errors[i][1] for i in ids])),
        **{f"coverage_{lv:g}": float(np.mean([errors[i][3][k] for i in ids])) for k, lv in enumerate(LEVELS)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.forecast", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--series", type=int, default=0, help="a random subset of N series (seed 0; default all 414)"
    )
    p.add_argument("--arima-series", type=int, default=8, help="series auto_arima runs on (default 8)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--docs", action="store_true", help="replace the forecast section of docs/benchmarks.md")
    args = p.parse_args(argv)
    data = load(DATA)
    rng = np.random.default_rng(0)
    ids = sorted(data)
    if args.series:
        ids = sorted(rng.choice(ids, size=args.series, replace=False).tolist())
    series = {i: data[i] for i in ids}
    arima_ids = sorted(rng.choice(ids, size=min(args.arima_series, len(ids)), replace=False).tolist())
    pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    # Imports (statsforecast, prophet, cmdstan) and numba's compilation of each model happen in every
    # worker before any clock starts.
    warm = next(iter(series.values()))
    list(pool.map(run, [_job(m, warm) for m in METHODS for _ in range(args.workers)]))
    results = {}
    for method in METHODS:
        results[method] = evaluate(pool, method, series)
        print(
            f"{method}: {summary(results[method], ids)} in {results[method]['wall_s']:.1f}s", file=sys.stderr
        )
    arima = evaluate(pool, "auto_arima", {i: series[i] for i in arima_ids}) if arima_ids else None
    pool.shutdown()
    chosen: dict[str, int] = {}
    for _, _, method, _ in results["auto"]["errors"].values():
        chosen[method] = chosen.get(method, 0) + 1
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "series": len(ids),
        "workers": args.workers,
        "methods": {m: {**summary(r, ids), "wall_s": r["wall_s"]} for m, r in results.items()},
        "auto_chose": chosen,
        "arima_subset": {
            "ids": arima_ids,
            "auto_arima": {**summary(arima, arima_ids), "wall_s": arima["wall_s"]} if arima else None,
            **{m: summary(r, arima_ids) for m, r in results.items()},
        },
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "forecast.json").write_text(json.dumps(report, indent=2))
    section = render(report)
    print(section)
    if args.docs:
        write_docs_section(DOCS, HEADING, section)
    return 0


def render(report: dict) -> str:
    """The docs/benchmarks.md section."""
    prophet = report["methods"]["prophet"]["wall_s"]
    lines = [
        HEADING,
        "",
        f"`python -m benchmarks.forecast --docs` ({report['when']}): {report['series']} series of "
        f"`../shared/data/m4/Hourly-train.csv`, the last {HORIZON} points of each held out, {HORIZON} steps "
        f"forecast, season {SEASON} (and 168 for mstl and auto's candidates), {report['workers']} worker processes, "
        "every method through the service's worker function. `auto` includes its rolling-origin backtest (2 windows "
        "of 48 over 8 candidates: seasonal_naive, seasonal_es, seasonal_window_average and stl_drift at seasons 24 "
        "and 168), its choice per series and conformal intervals; single methods fit once. sMAPE as in M4 (percent), MASE scaled by the in-sample "
        "seasonal naive error (m = 24); both are means over the series. Coverage: the share of held-out points "
        "inside the 80% and 95% intervals.",
        "",
        "| method | sMAPE | MASE | 80% covers | 95% covers | wall time (s) | prophet's time / this |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, r in report["methods"].items():
        lines.append(
            f"| {method} | {r['smape']:.2f} | {r['mase']:.3f} | {100 * r['coverage_80']:.1f}% | "
            f"{100 * r['coverage_95']:.1f}% | {r['wall_s']:.1f} | {prophet / r['wall_s']:.1f}x |"
        )
    chose = ", ".join(f"{m} {n}" for m, n in sorted(report["auto_chose"].items(), key=lambda kv: -kv[1]))
    lines += ["", f"`auto` chose: {chose}."]
    subset = report["arima_subset"]
    if subset["auto_arima"]:
        a = subset["auto_arima"]
        lines += [
            "",
            f"auto_arima (about 30 s a series with season 24, fitted on the last 14 days) ran on a random subset of "
            f"{len(subset['ids'])} series (seed 0): sMAPE {a['smape']:.2f}, MASE {a['mase']:.3f}, "
            f"{a['wall_s']:.1f} s. The other methods on the same subset: "
            + ", ".join(f"{m} {subset[m]['smape']:.2f}" for m in report["methods"])
            + " (sMAPE).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
