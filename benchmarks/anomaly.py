"""Evaluate every anomaly-detection method on labelled data: SKAB and the demo simulation.

    .venv/bin/python -m benchmarks.anomaly [--quick] [--methods zscore,mad] [--docs]

Each method of `services.ml.detectors` scores every case at one sensitivity (default the service's),
a point is flagged when ``score >= threshold_for(sensitivity)``, and the anomalies reported are
the episode onsets among them (`base.onsets`): the ML API's own path for an inline series. SKAB
runs are 8-channel entities (`detect_entity`); demo series are scored one by one (`detect`). Metrics (benchmarks/anomaly_scoring.py): point-wise precision, recall and F1 pooled
over a data set of the flagged points, detection delay per labelled interval, and the NAB score
(standard profile) of the reported anomalies.
Results go to benchmarks/results/anomaly.json; `--docs` replaces the anomaly section of
docs/benchmarks.md (between `<!-- anomaly:start -->` and `<!-- anomaly:end -->`, appended if absent).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np

from benchmarks.anomaly_data import DEMO_START_MS, Case, DemoParams, demo_cases, skab_anomaly_free, skab_cases
from benchmarks.anomaly_scoring import SeriesResult, Totals, event_delay, intervals, score_series
from benchmarks.procs import REPO_ROOT, RESULTS_DIR
from benchmarks.run import machine_facts
from services.ml.detectors import METHODS, detect, detect_entity
from services.ml.detectors.base import DEFAULT_SENSITIVITY, TooShort, onsets, threshold_for

DOCS = REPO_ROOT / "docs" / "benchmarks.md"
_T0 = time.perf_counter()

# prophet fits a model at each refit point: about 1 min per 4-day demo series (over 30 min for all
# 36), so on the demo it scores 1 series in 7 (a stride prime to the 6 metrics of a host, so the
# subset mixes metrics); all methods' figures on the same series are reported beside it. On SKAB it
# scores every run (about 4 min).
PROPHET_EVERY = {"skab": 1, "demo": 7}


def say(text: str) -> None:
    """Progress on stdout with the elapsed time."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {text}", flush=True)


def run_case(method: str, case: Case, threshold: float) -> tuple[SeriesResult, np.ndarray]:
    """Score one case with one method; returns its metrics and its flags."""
    n = len(case.timestamps_ms)
    error = None
    t0 = time.perf_counter()
    try:
        if case.channels:
            scores = detect_entity(method, case.timestamps_ms, case.values, list(case.channels))
        else:
            scores = detect(method, case.timestamps_ms, case.values)
        flags, warmup = np.asarray(scores.score) >= threshold, int(scores.warmup)
        reported = onsets(scores.score, threshold)[0]
    except TooShort as exc:
        flags, warmup, error = np.zeros(n, dtype=bool), n, f"TooShort: {exc}"
        reported = flags
    except Exception as exc:  # a detector failing on a case is recorded; the rest are scored
        flags, warmup, error = np.zeros(n, dtype=bool), n, f"{type(exc).__name__}: {exc}"
        reported = flags
    seconds = time.perf_counter() - t0
    result = score_series(
        case.name,
        case.timestamps_ms,
        case.labels,
        flags,
        warmup=warmup,
        seconds=seconds,
        values=case.n_values,
        error=error,
        reported=reported,
    )
    return result, flags


def summarise(results: list[SeriesResult]) -> dict[str, Any]:
    """Totals of a method over some cases, with the warm-up spread per case."""
    out = Totals.of(results).summary()
    warmups = [r.warmup for r in results]
    out["warmup_per_case"] = [min(warmups), max(warmups)] if warmups else None
    out["too_short_cases"] = sum(bool(r.error and r.error.startswith("TooShort")) for r in results)
    out["failed_cases"] = sum(bool(r.error) for r in results) - out["too_short_cases"]
    out["errors"] = out["errors"][:3]
    return out


def run_dataset(
    name: str,
    cases: list[Case],
    methods: list[str],
    threshold: float,
    subset_every: dict[str, int],
    extra: Callable[[str, Case, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Every method on every case of a data set (on every n-th case for the methods in `subset_every`)."""
    per_method: dict[str, dict[str, SeriesResult]] = {}
    out: dict[str, Any] = {"methods": {}, "subsets": {}}
    for method in methods:
        every = subset_every.get(method, 1)
        chosen = cases[::every]
        results = {}
        for case in chosen:
            result, flags = run_case(method, case, threshold)
            results[case.name] = result
            if extra:
                extra(method, case, flags)
        per_method[method] = results
        summary = summarise(list(results.values()))
        if every > 1:
            summary["subset"] = f"1 case in {every}: {len(chosen)} of {len(cases)}"
        out["methods"][method] = summary
        say(
            f"{name}: {method}: F1 {_num(summary['f1'])}, NAB {_num(summary['nab_score'])}, "
            f"{summary['seconds']:.1f} s{' (' + summary['subset'] + ')' if every > 1 else ''}"
            f"{', first error: ' + summary['errors'][0] if summary['errors'] else ''}"
        )
    for method in methods:
        every = subset_every.get(method, 1)
        if every > 1:
            names = [c.name for c in cases[::every]]
            out["subsets"][method] = {
                "cases": len(names),
                "methods": {
                    m: summarise([per_method[m][n] for n in names if n in per_method[m]]) for m in methods
                },
            }
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def run_skab(args: argparse.Namespace, methods: list[str], threshold: float) -> dict[str, Any]:
    """SKAB: the labelled runs as entities, then the anomaly-free run for false alarms."""
    cases = skab_cases(per_folder=1 if args.quick else None)
    say(f"skab: {len(cases)} runs, {sum(len(c.timestamps_ms) for c in cases):,} rows of 8 channels")
    out = run_dataset("skab", cases, methods, threshold, {"prophet": args.prophet_every["skab"]})
    out.update(_describe(cases))
    out["folders"] = {g: sum(c.group == g for c in cases) for g in dict.fromkeys(c.group for c in cases)}
    if not args.quick:
        free = skab_anomaly_free()
        out["anomaly_free"] = {"points": len(free.timestamps_ms), "methods": {}}
        for method in methods:
            result, flags = run_case(method, free, threshold)
            scored = result.points - result.warmup
            out["anomaly_free"]["methods"][method] = {
                "flags": int(flags.sum()),
                "scored": scored,
                "flag_rate": flags.sum() / scored if scored else None,
                "seconds": result.seconds,
                "error": result.error,
            }
    return out


def run_demo(args: argparse.Namespace, methods: list[str], threshold: float) -> dict[str, Any]:
    """The demo simulation with its incidents and the injected anomalies, series by series."""
    params = (
        DemoParams(seed=args.seed, days=0.5, hosts=1, simulations=1)
        if args.quick
        else DemoParams(seed=args.seed, days=args.days, hosts=args.hosts, simulations=args.simulations)
    )
    cases, plan = demo_cases(params)
    say(f"demo: {len(cases)} series x {len(cases[0].timestamps_ms):,} points ({params.days:g} days at 10 s)")
    kinds: dict[str, dict[str, dict[str, Any]]] = {}

    def by_kind(method: str, case: Case, flags: np.ndarray) -> None:
        for event in case.events:
            k = kinds.setdefault(method, {}).setdefault(
                event.kind, {"events": 0, "detected": 0, "delays": []}
            )
            k["events"] += 1
            delay = event_delay(case.timestamps_ms, flags, event.start_ms, event.end_ms)
            if delay is not None:
                k["detected"] += 1
                k["delays"].append(delay)

    out = run_dataset("demo", cases, methods, threshold, {"prophet": args.prophet_every["demo"]}, by_kind)
    for method, per_kind in kinds.items():
        out["methods"][method]["by_kind"] = {
            kind: {
                "events": k["events"],
                "detected": k["detected"],
                "mean_delay_s": float(np.mean(k["delays"])) if k["delays"] else None,
            }
            for kind, k in sorted(per_kind.items())
        }
    out.update(_describe(cases))
    out["params"] = {
        **asdict(params),
        "start": datetime.fromtimestamp(params.start_ms / 1000, UTC).isoformat(),
    }
    out["hosts"] = sorted({c.name.split("host=")[1].split(",")[0] for c in cases if c.group == "host"})
    out["injections"] = [asdict(i) for i in plan]
    out["events"] = {k: sum(e.kind == k for c in cases for e in c.events) for k in _kinds(cases)}
    return out


def _kinds(cases: list[Case]) -> list[str]:
    return sorted({e.kind for c in cases for e in c.events})


def _describe(cases: list[Case]) -> dict[str, Any]:
    points = sum(len(c.timestamps_ms) for c in cases)
    labelled = sum(int(c.labels.sum()) for c in cases)
    spans = [
        (c.timestamps_ms[b - 1] - c.timestamps_ms[a]) / 1000 for c in cases for a, b in intervals(c.labels)
    ]
    lead = [
        (c.timestamps_ms[np.argmax(c.labels)] - c.timestamps_ms[0]) / 1000 for c in cases if c.labels.any()
    ]
    return {
        "median_interval_s": float(np.median(spans)) if spans else None,
        "median_normal_lead_s": float(np.median(lead)) if lead else None,
        "cases": len(cases),
        "points": points,
        "values": sum(c.n_values for c in cases),
        "labelled_points": labelled,
        "intervals": sum(len(intervals(c.labels)) for c in cases),
    }


# --- report ---------------------------------------------------------------------------------------

START, END = "<!-- anomaly:start -->", "<!-- anomaly:end -->"
KIND_ORDER = ("spike", "level_shift", "degradation", "variance", "seasonal_break")
COLUMNS = (
    "method",
    "precision",
    "recall",
    "F1",
    "NAB",
    "intervals detected",
    "mean delay s",
    "unscored (warm-up)",
    "wall s",
    "points/s",
)


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}f}"


def _problems(m: dict[str, Any]) -> str:
    parts = []
    if m["failed_cases"]:
        parts.append(f"failed on {m['failed_cases']} of {m['series']} cases")
    if m["too_short_cases"]:
        parts.append(f"{m['too_short_cases']} cases too short to score")
    return f"{', '.join(parts)} (first: `{m['errors'][0]}`)"


def _row(method: str, m: dict[str, Any], points: int) -> list[str]:
    if m["failed_cases"] == m["series"]:
        return [method, "failed", *[""] * (len(COLUMNS) - 2)]
    warm = f"{m['warmup_points'] / points:.1%}" if points else "-"
    if m.get("warmup_per_case"):
        lo, hi = m["warmup_per_case"]
        warm += f" ({lo}" + (f"-{hi})" if hi != lo else ")")
    name = method + (" *" if m.get("subset") else "")
    return [
        name,
        _f(m["precision"]),
        _f(m["recall"]),
        _f(m["f1"]),
        _f(m["nab_score"], 1),
        f"{m['intervals_detected']}/{m['intervals']}",
        _f(m["mean_delay_s"], 1),
        warm,
        _f(m["seconds"], 1),
        _f(m["values_per_s"], 0),
    ]


def _rows(ds: dict[str, Any]) -> list[list[str]]:
    return [_row(method, m, m["points"]) for method, m in ds["methods"].items()]


def print_table(results: dict[str, Any]) -> None:
    """The main figures as plain-text tables on stdout."""
    for name, ds in results["datasets"].items():
        rows = [list(COLUMNS), *_rows(ds)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        print(f"\n{name} ({ds['cases']} cases, {ds['points']:,} points, {ds['intervals']} anomaly intervals)")
        for r in rows:
            print(
                "  ".join(
                    cell.ljust(w) if i == 0 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        for method, m in ds["methods"].items():
            if m.get("subset"):
                print(f"* {method}: {m['subset']}")
            if m["errors"]:
                print(f"! {method}: {_problems(m)}")
    print(f"\nwhole benchmark: {results['meta']['duration_s']:.0f} s")
    if results["meta"].get("warning"):
        print(f"warning: {results['meta']['warning']}")


def _table(ds: dict[str, Any], unit: str) -> list[str]:
    header = [*COLUMNS[:-1], unit]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(r) + " |" for r in _rows(ds)]


def _subset_notes(ds: dict[str, Any]) -> list[str]:
    lines = []
    for method, sub in ds.get("subsets", {}).items():
        lines += [
            f"\\* {method} was scored on {ds['methods'][method]['subset']} (it is far slower than the "
            f"rest). All methods on those {sub['cases']} cases:",
            "",
            "| method | precision | recall | F1 | NAB |",
            "|---|---:|---:|---:|---:|",
            *[
                f"| {m} | {_f(x['precision'])} | {_f(x['recall'])} | {_f(x['f1'])} | {_f(x['nab_score'], 1)} |"
                for m, x in sub["methods"].items()
            ],
            "",
        ]
    for method, m in ds["methods"].items():
        if m["errors"]:
            lines.append(f"- {method}: {_problems(m)}")
    return lines + ([""] if lines and lines[-1] else [])


def _skab(ds: dict[str, Any]) -> list[str]:
    folders = ", ".join(f"{k} {v}" for k, v in ds["folders"].items())
    lines = [
        "### SKAB",
        "",
        f"The {ds['cases']} labelled runs of [SKAB](https://github.com/waico/SKAB) ({folders}): "
        f"{ds['points']:,} rows of 8 sensor channels about 1 s apart, {ds['labelled_points'] / ds['points']:.0%} "
        f"of them labelled anomalous in {ds['intervals']} intervals (median length "
        f"{ds['median_interval_s'] / 60:.1f} min). "
        "Each run is one entity scored with `detect_entity`: isolation_forest scores the 8-channel rows, "
        "the other methods score each channel and a row takes its highest channel score. Each run starts with normal operation (median "
        f"{ds['median_normal_lead_s'] / 60:.1f} min before the first anomaly), which the causal detectors "
        "learn from as they go.",
        "",
        *_table(ds, "values/s"),
        "",
    ]
    free = ds.get("anomaly_free")
    if free:
        rates = ", ".join(
            f"{m} {_f(x['flag_rate'] * 100 if x['flag_rate'] is not None else None)} %"
            for m, x in free["methods"].items()
        )
        lines += [
            f"On SKAB's anomaly-free run ({free['points']:,} rows, no label) the share of scored rows "
            f"flagged, all false alarms: {rates}.",
            "",
        ]
    return lines + _subset_notes(ds)


def _demo(ds: dict[str, Any]) -> list[str]:
    p = ds["params"]
    kinds = sorted(ds["events"], key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 99, k))
    days = f"{p['days']:g} day{'s' if p['days'] != 1 else ''}"
    hosts = f"{len(ds['hosts'])} service host{'s' if len(ds['hosts']) != 1 else ''}"
    sims = f"{p['simulations']} simulation{'s' if p['simulations'] != 1 else ''}"
    lines = [
        "### Demo simulation",
        "",
        f"`SimulatedPlatform(seed={p['seed']}, step_ms=10_000)` from {p['start'][:10]} for {days}: "
        f"{ds['cases']} series ({sims} x 4 series, and all six metrics of the "
        f"{hosts} with the most incidents: {', '.join(ds['hosts'])}), "
        f"{ds['points']:,} points, {ds['labelled_points'] / ds['points']:.1%} labelled. Each series is scored "
        "on its own with `detect`; a point is labelled while an incident or injection affecting its series "
        "is active. Besides the simulation's own incidents the benchmark injects, at fixed times: "
        "variance changes (noise around the 5-minute mean x 3 for 1 h) and seasonal breaks (for the last "
        "day the daily profile shifted by 8 h, or flattened to the day's mean).",
        "",
        *_table(ds, "points/s"),
        "",
        "Incidents detected by kind: detected / incidents (an incident is detected when its series has a "
        "flag while it is active), and the mean delay from its start to that flag. An incident on a whole "
        "service counts once per affected series.",
        "",
        "| method | " + " | ".join(f"{k} ({ds['events'][k]})" for k in kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    for method, m in ds["methods"].items():
        cells = []
        for k in kinds:
            x = m.get("by_kind", {}).get(k)
            if not x:
                cells.append("-")
            elif x["detected"]:
                cells.append(f"{x['detected']}/{x['events']}, {_f(x['mean_delay_s'], 0)} s")
            else:
                cells.append(f"0/{x['events']}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Injected:", ""]
    lines += [
        f"- {i['kind']} ({i['how']}) on `{i['series']}`, {_hours(i['start_ms'])} to {_hours(i['end_ms'])}"
        for i in ds["injections"]
    ]
    return [*lines, "", *_subset_notes(ds)]


def _hours(ms: int) -> str:
    return f"h {(ms - DEMO_START_MS) / 3_600_000:g}"


def markdown(results: dict[str, Any]) -> str:
    """The anomaly section of docs/benchmarks.md (without its delimiting comments)."""
    meta, machine = results["meta"], results["machine"]
    v = results["versions"]
    lines = [
        "## Anomaly detection",
        "",
        f"Run on {meta['date']} ({meta['mode']} run, {meta['duration_s']:.0f} s in all, {machine['nproc']} CPUs "
        f"{machine['cpu_model']}). Generated by `{meta['command']}`; do not edit by hand.",
        "",
        *([f"**Warning:** {meta['warning']}.", ""] if meta.get("warning") else []),
        f"Every method of `services.ml.detectors` at sensitivity {meta['sensitivity']:g}: a point is flagged "
        f"when its score is at least `threshold_for({meta['sensitivity']:g})` = {meta['threshold']:.3f}, "
        "exactly what the ML API does for an inline series. No method is tuned for these data. "
        f"Libraries: numpy {v['numpy']}, scikit-learn {v['scikit-learn']}, pyod {v['pyod']}, river {v['river']}, "
        f"statsmodels {v['statsmodels']}, prophet {v['prophet']}.",
        "",
    ]
    if "skab" in results["datasets"]:
        lines += _skab(results["datasets"]["skab"])
    if "demo" in results["datasets"]:
        lines += _demo(results["datasets"]["demo"])
    lines += [
        "### How to read it",
        "",
        "- Precision, recall, F1: point-wise, pooled over all points of the data set. Unscored warm-up "
        "points are never flagged, so they count as misses where labelled.",
        "- Intervals detected: labelled intervals (contiguous labelled points of one case) with at least one "
        "flag inside; mean delay: from an interval's start to its first flag, over the detected ones.",
        "- NAB: the Numenta Anomaly Benchmark score (Lavin & Ahmad 2015), standard profile (A_tp = 1, "
        "A_fp = -0.11, A_fn = -1), normalised per data set: 100 = one flag at the start of every window, "
        "0 = no flag at all, negative = worse than silence. It scores the anomalies the API reports "
        "(episode onsets), the precision/recall columns every point at or above the threshold. "
        "Windows are the labelled intervals widened to "
        "10 % of the series / number of intervals where shorter; only the first flag in a window counts, "
        "earlier is worth more; flags outside windows cost A_fp each (less just after a window); NAB's "
        "probationary period (first 15 % of each series, at most 750 points) is not scored. "
        "Implemented in `benchmarks/anomaly_scoring.py`.",
        "- Unscored (warm-up): share of points each method leaves unscored while it learns "
        "(per case, min-max, in parentheses).",
        "- Wall s: time inside `detect` / `detect_entity` only, one case after another on one process; "
        "points/s (values/s for SKAB: rows x 8 channels) is points over that time.",
        "",
        f"Reproduce: `{meta['command']}` (results in `benchmarks/results/anomaly.json`).",
    ]
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """`document` with the text between the anomaly markers replaced by `section`, or appended."""
    block = f"{START}\n{section.rstrip()}\n{END}"
    start, end = document.find(START), document.find(END)
    if start >= 0 and end > start:
        return document[:start] + block + document[end + len(END) :]
    return document.rstrip() + ("\n\n" if document.strip() else "") + block + "\n"


def versions() -> dict[str, str]:
    """Versions of the libraries the detectors stand on."""
    out = {"python": sys.version.split()[0]}
    for package in ("numpy", "scikit-learn", "pyod", "river", "statsmodels", "prophet"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "-"
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.anomaly", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default all)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 3 SKAB runs; 12 h of 1 simulation and 1 host"
    )
    p.add_argument("--docs", action="store_true", help="replace the anomaly section of docs/benchmarks.md")
    p.add_argument("--sensitivity", type=float, default=DEFAULT_SENSITIVITY, help="default: the service's")
    # 4 days: the seasonal method tests for a daily period only after 3 whole days of history.
    p.add_argument("--days", type=float, default=4.0, help="days of demo data (default 4)")
    p.add_argument("--hosts", type=int, default=4, help="demo service hosts, 6 series each (default 4)")
    p.add_argument("--simulations", type=int, default=3, help="demo simulations, 4 series each (default 3)")
    p.add_argument("--seed", type=int, default=7, help="seed of the demo simulation")
    p.add_argument(
        "--prophet-every",
        type=int,
        dest="prophet_every_demo",
        help=f"score every n-th demo series with prophet (default {PROPHET_EVERY['demo']}; 1 = all)",
    )
    p.add_argument("--skip-skab", action="store_true", help="leave SKAB out")
    p.add_argument("--skip-demo", action="store_true", help="leave the demo simulation out")
    args = p.parse_args(argv)
    args.prophet_every = dict(PROPHET_EVERY)
    if args.prophet_every_demo:
        args.prophet_every["demo"] = args.prophet_every_demo
    elif args.quick:
        args.prophet_every["demo"] = 5  # 2 of the 10 series: a smoke run, not a measurement
    if args.quick:
        args.prophet_every["skab"] = 3  # 1 of the 3 runs
    args.methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of `python -m benchmarks.anomaly`; returns the results."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)  # prophet's sampler logs every fit
    threshold = threshold_for(args.sensitivity)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([".venv/bin/python -m benchmarks.anomaly", *argv]),
            "sensitivity": args.sensitivity,
            "threshold": threshold,
            "methods": args.methods,
            "prophet_every": args.prophet_every,
        },
        "machine": machine_facts(),
        "versions": versions(),
        "datasets": {},
    }
    if not args.skip_skab:
        results["datasets"]["skab"] = run_skab(args, args.methods, threshold)
    if not args.skip_demo:
        results["datasets"]["demo"] = run_demo(args, args.methods, threshold)
    results["meta"]["duration_s"] = time.perf_counter() - _T0
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    busy = max(results["machine"]["load_avg_start"], results["machine"]["load_avg_end"])
    if busy > 1.0:
        # The benchmark uses one CPU: a 1-minute load above 1 means other processes competed with it.
        results["meta"]["warning"] = (
            f"the machine was busy (1-minute load average up to {busy:.1f} on "
            f"{results['machine']['nproc']} CPUs at the start or end): wall times are noisy"
        )

    print_table(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2, default=float)
    (RESULTS_DIR / f"anomaly-{stamp}{'-quick' if args.quick else ''}.json").write_text(text)
    (RESULTS_DIR / "anomaly.json").write_text(text)
    section = markdown(results)
    (RESULTS_DIR / "anomaly.md").write_text(section)
    say(f"results: {(RESULTS_DIR / 'anomaly.json').relative_to(REPO_ROOT)} and anomaly.md")
    if args.docs:
        if args.quick:
            print("note: --quick results are going to docs/benchmarks.md", file=sys.stderr)
        DOCS.write_text(replace_section(DOCS.read_text() if DOCS.exists() else "", section))
        say(f"section written to {DOCS.relative_to(REPO_ROOT)}")
    return results


if __name__ == "__main__":
    main()
