"""The anomaly benchmark's labelled data: SKAB runs, and the demo simulation with extra injected anomalies.

SKAB (Skoltech Anomaly Benchmark, GPL-3) is read where it lies, `/work/shared/data/skab/`, and
never copied into the repository. Each run file is one entity of 8 sensor channels sampled about
once a second; its `anomaly` column is the label. The anomaly-free run has no labels and is kept
apart: it only measures false alarms.

The demo data are `services.demo.simulation.SimulatedPlatform` series with their built-in
incidents (spikes, level shifts, slow memory leaks) plus anomalies injected here at known times:
variance changes (the noise around a 5-minute mean x3 for an hour) and seasonal breaks (for the
last day, the daily profile shifted by some hours, or flattened to the day's mean). A point is
labelled when some incident or injection affecting its series is active.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from benchmarks.anomaly_scoring import BoolArray, IntArray
from services.demo.simulation import DAY_MS, HOUR_MS, MINUTE_MS, SIMULATIONS, SeriesBatch, SimulatedPlatform

FloatArray = npt.NDArray[np.float64]

SKAB_DIR = Path("/work/shared/data/skab")
SKAB_FOLDERS = ("valve1", "valve2", "other")
SKAB_CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)

DEMO_START_MS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
DEMO_STEP_MS = 10_000


@dataclass(frozen=True)
class Event:
    """One ground-truth anomaly of a series: what kind, and when (ms, end exclusive)."""

    kind: str
    start_ms: int
    end_ms: int


@dataclass
class Case:
    """One thing to score: a series (values of shape (n,)) or an entity ((n, k) with `channels`)."""

    name: str
    group: str
    timestamps_ms: IntArray
    values: FloatArray
    labels: BoolArray
    channels: tuple[str, ...] = ()
    events: list[Event] = field(default_factory=list)

    @property
    def n_values(self) -> int:
        """Values a detector reads: points x channels."""
        return int(self.values.size)


# --- SKAB -----------------------------------------------------------------------------------------


def _skab_frame(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=";", parse_dates=["datetime"])
    return frame.sort_values("datetime", kind="stable").reset_index(drop=True)


def _skab_case(path: Path, root: Path) -> Case:
    frame = _skab_frame(path)
    ts = frame["datetime"].to_numpy("datetime64[ms]").astype(np.int64)
    labels = frame["anomaly"].to_numpy() > 0 if "anomaly" in frame else np.zeros(len(frame), dtype=bool)
    rel = path.relative_to(root)
    return Case(
        name=str(rel.with_suffix("")),
        group=rel.parts[0],
        timestamps_ms=ts,
        values=frame[list(SKAB_CHANNELS)].to_numpy(np.float64),
        labels=labels,
        channels=SKAB_CHANNELS,
    )


def skab_cases(root: Path = SKAB_DIR, per_folder: int | None = None) -> list[Case]:
    """The labelled SKAB runs (valve1, valve2, other), in folder then numeric order."""
    cases = []
    for folder in SKAB_FOLDERS:
        paths = sorted((root / folder).glob("*.csv"), key=lambda p: int(p.stem))
        cases += [_skab_case(p, root) for p in paths[:per_folder]]
    return cases


def skab_anomaly_free(root: Path = SKAB_DIR) -> Case:
    """SKAB's anomaly-free run: every point normal."""
    return _skab_case(root / "anomaly-free" / "anomaly-free.csv", root)


# --- demo simulation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoParams:
    """Which part of the simulated platform to score."""

    seed: int = 7
    days: float = 4.0
    """4 days: the seasonal method tests for a daily period only after 3 whole days of history."""
    hosts: int = 4
    """Service hosts (all six metrics each): the ones with the most incidents in the span."""
    simulations: int = 3
    """Simulations (four series each), the first ones of `SIMULATIONS`."""

    @property
    def start_ms(self) -> int:
        return DEMO_START_MS

    @property
    def end_ms(self) -> int:
        return DEMO_START_MS + int(self.days * DAY_MS)


@dataclass(frozen=True)
class Injection:
    """An anomaly the benchmark adds to one series (see `inject`)."""

    kind: str  # "variance" or "seasonal_break"
    series: str
    start_ms: int
    end_ms: int
    how: str
    """x3 noise, shift:<hours>, or flatten."""


def series_name(batch: SeriesBatch) -> str:
    """metric{label=value,...}, the labels in the simulation's order."""
    return f"{batch.name}{{{','.join(f'{k}={v}' for k, v in batch.labels.items())}}}"


def _pick_hosts(platform: SimulatedPlatform, params: DemoParams) -> list[str]:
    incidents = platform.incidents_between(params.start_ms, params.end_ms)
    hosts = [labels["host"] for metric, labels in platform.series_keys() if metric == "request_rate"]

    def hits(host: str) -> int:
        labels = next(lb for m, lb in platform.series_keys() if lb.get("host") == host)
        return sum(i.matches(labels) for i in incidents)

    return sorted(hosts, key=lambda h: (-hits(h), hosts.index(h)))[: params.hosts]


def plan_injections(params: DemoParams, hosts: list[str], names: list[str]) -> list[Injection]:
    """Where the benchmark injects its own anomalies: a fixed plan, scaled to the span."""

    def host_series(metric: str, host: str) -> str:
        return next(n for n in names if n.startswith(f"{metric}{{") and f"host={host}," in n)

    span = params.end_ms - params.start_ms
    sims = SIMULATIONS[: params.simulations]
    # Variance changes: one hour each, spread evenly after the first quarter of the span.
    targets = [
        f"cpu_usage{{simulation_id={sims[0]},resource=cpu}}",
        f"disk_io{{simulation_id={sims[1 % len(sims)]},resource=disk}}",
        f"cpu_usage{{simulation_id={sims[2 % len(sims)]},resource=gpu}}",
    ]
    if hosts:
        targets += [host_series("memory_usage", hosts[0]), host_series("latency_p95", hosts[-1])]
    first = params.start_ms + span // 4
    gap = (params.end_ms - HOUR_MS - first) // max(len(targets) - 1, 1)
    plan = []
    for i, target in enumerate(targets):
        start = (first + i * gap) // MINUTE_MS * MINUTE_MS
        plan.append(Injection("variance", target, start, start + HOUR_MS, "x3 noise"))
    # Seasonal breaks: the last day (at most half the span), on series with a daily profile.
    start = params.end_ms - min(DAY_MS, span // 2) // HOUR_MS * HOUR_MS
    for i, (metric, how) in enumerate((("request_rate", "shift:8"), ("cpu_usage", "flatten"))):
        if hosts:
            host = hosts[min(i + 1, len(hosts) - 1)]
            plan.append(Injection("seasonal_break", host_series(metric, host), start, params.end_ms, how))
    return plan


def _smooth(values: FloatArray, points: int) -> FloatArray:
    """Centred moving mean (edges use what is there): only for building data, never for detecting."""
    return pd.Series(values).rolling(points, center=True, min_periods=1).mean().to_numpy()


def inject(
    values: FloatArray, ts: IntArray, injection: Injection, clean: FloatArray, shifted: FloatArray | None
) -> FloatArray:
    """The series with one injection applied; `clean` is it without incidents, `shifted` the clean
    series `shift` hours earlier (only for a shift)."""
    out = values.copy()
    inside = (ts >= injection.start_ms) & (ts < injection.end_ms)
    if injection.kind == "variance":
        level = _smooth(values, 5 * MINUTE_MS // DEMO_STEP_MS + 1)
        out[inside] = level[inside] + 3.0 * (values[inside] - level[inside])
    elif injection.how == "flatten":
        # Remove the slow (1-hour) shape of the clean series, keep noise and incidents.
        slow = _smooth(clean, HOUR_MS // DEMO_STEP_MS + 1)
        out[inside] = values[inside] - slow[inside] + slow[inside].mean()
    else:
        assert shifted is not None
        out[inside] = values[inside] - clean[inside] + shifted[inside]
    return np.maximum(out, 0.0)


def demo_cases(params: DemoParams) -> tuple[list[Case], list[Injection]]:
    """The chosen demo series with labels, and the injections applied to them."""
    platform = SimulatedPlatform(seed=params.seed, step_ms=DEMO_STEP_MS, start_ms=params.start_ms)
    hosts = _pick_hosts(platform, params)
    sims = set(SIMULATIONS[: params.simulations])

    def chosen(batch: SeriesBatch) -> bool:
        return batch.labels.get("host") in hosts or batch.labels.get("simulation_id") in sims

    batches = [b for b in platform.window(params.start_ms, params.end_ms) if chosen(b)]
    clean = {
        series_name(b): b.values
        for b in platform.window(params.start_ms, params.end_ms, include_incidents=False)
        if chosen(b)
    }
    incidents = platform.incidents_between(params.start_ms, params.end_ms)
    plan = plan_injections(params, hosts, [series_name(b) for b in batches])
    shifted_cache: dict[int, dict[str, FloatArray]] = {}

    cases = []
    for batch in batches:
        name = series_name(batch)
        ts = np.asarray(batch.timestamps_ms)
        values = np.array(batch.values, dtype=np.float64)
        events = [
            Event(i.kind, i.start_ms, i.end_ms) for i in incidents if i.affects(batch.name, batch.labels)
        ]
        for inj in plan:
            if name != inj.series:
                continue
            shifted = None
            if inj.how.startswith("shift:"):
                hours = int(inj.how.split(":")[1])
                if hours not in shifted_cache:
                    lag = hours * HOUR_MS
                    shifted_cache[hours] = {
                        series_name(b): b.values
                        for b in platform.window(
                            params.start_ms - lag, params.end_ms - lag, include_incidents=False
                        )
                        if chosen(b)
                    }
                shifted = shifted_cache[hours][name]
            values = inject(values, ts, inj, clean[name], shifted)
            events.append(Event(inj.kind, inj.start_ms, inj.end_ms))
        labels = np.zeros(len(ts), dtype=bool)
        for e in events:
            labels |= (ts >= e.start_ms) & (ts < e.end_ms)
        group = "host" if "host" in batch.labels else "simulation"
        cases.append(Case(name, group, ts, values, labels, events=events))
    return cases, plan
