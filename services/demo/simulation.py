"""A simulated platform: deterministic metric series with daily seasonality, noise and incidents.

Pure generation, no I/O. Every value is a function of (seed, series, timestamp) alone: noise comes
from a counter-based hash of the timestamp, incidents from a generator seeded per 6-hour block of
the epoch, and only exactly rounded arithmetic touches per-point values. So any split of the
timeline into windows (a backfill, then a live feed) yields bit-identical points.

Series (140)
------------
Services: 10 services x 2 hosts; each host emits all six metrics, labelled

- ``service_name``: ``auth-service``, ``api-gateway``, ... (`SERVICES`);
- ``host``: ``<service_name>-1`` and ``<service_name>-2``;
- ``region``: host 1 runs in the service's home region, ``REGIONS[i % 3]`` for the i-th service,
  host 2 in the next one, so every service spans two regions.

Simulations: ``sim-001`` .. ``sim-005``, each emitting four series labelled ``simulation_id`` and
``resource`` (what the series measures; the monitor scope "resource" filters on it):

=============  ========  ==============================================
metric         resource  meaning
=============  ========  ==============================================
cpu_usage      cpu       CPU utilisation of the simulation's workers, %
cpu_usage      gpu       accelerator (GPU) utilisation, %
memory_usage   memory    RAM in use, %
disk_io        disk      checkpoint and result I/O, ops/s
=============  ========  ==============================================

Simulations serve no requests, so they have no request_rate, error_rate or latency_p95.

Model
-----
A service host's request_rate is its peak rate times a daily profile (a raised cosine peaking near
15:00 UTC, night floor 20-32 % of peak) times slow wander and jitter. Its *load* (request_rate over
peak) drives the rest: cpu_usage is idle + span x load, latency_p95 grows with load squared,
error_rate with load, disk_io with load; memory_usage is a level with a faint daily swing.
Simulations run around the clock: a shared slow "work phase" moves cpu, gpu and disk together.
Noise is bounded (Irwin-Hall of four uniforms, |z| <= 3.5 standard deviations); rates are
non-negative, error_rate is clipped to 0..1 and percentages to 0..100.

Incidents
---------
Each 6-hour block of the epoch gets, from its own generator seeded by (seed, block):

- 2-4 ``spike`` on a service (a whole service or one host), 2-10 min: latency_p95 x (1 + m)
  with m in 3..8, and error_rate + 0.04 m together;
- with probability 1/2 a ``spike`` on a simulation's cpu or gpu: cpu_usage + m points, m in 30..45;
- one ``level_shift`` on a whole service, 1-3 h: either a bad deploy (latency_p95 x (1 + m),
  m in 0.5..1.2, error_rate + 0.04 m) or a traffic shift (request_rate x (1 + m), m in 0.4..0.9 or
  -0.6..-0.3, with cpu_usage and disk_io following the load);
- one ``degradation`` (a memory leak), 2-5 h: memory_usage + m x ramp (m in 25..45 points, the ramp
  rising from 0 to 1 over the incident, back to 0 at its end: the restart); on a service host the
  latency_p95 rises too, up to x 1.6 at the end.

Incidents never cross their block, so any 24 h span contains every kind. `SimulatedPlatform.incidents`
lists them as ground truth for tests and anomaly detection.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
BLOCK_MS = 6 * HOUR_MS
"""Incidents are scheduled per block of this length, aligned to the epoch."""
INCIDENT_HORIZON_MS = DAY_MS
"""`SimulatedPlatform.incidents` covers this much of the timeline from its start."""

METRICS = ("request_rate", "error_rate", "latency_p95", "cpu_usage", "memory_usage", "disk_io")
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
HOSTS_PER_SERVICE = 2

# Peak request rate of the whole service (req/s, split over its hosts) and its typical p95 (ms).
SERVICES: dict[str, tuple[float, float]] = {
    "api-gateway": (900.0, 45.0),
    "auth-service": (350.0, 30.0),
    "user-service": (250.0, 40.0),
    "catalog-service": (300.0, 60.0),
    "search-service": (200.0, 120.0),
    "checkout-service": (60.0, 180.0),
    "billing-service": (40.0, 220.0),
    "notification-service": (80.0, 90.0),
    "analytics-service": (30.0, 450.0),
    "simulation-engine": (15.0, 900.0),
}
SIMULATIONS = ("sim-001", "sim-002", "sim-003", "sim-004", "sim-005")
SIMULATION_SERIES = (
    ("cpu_usage", "cpu"),
    ("cpu_usage", "gpu"),
    ("memory_usage", "memory"),
    ("disk_io", "disk"),
)

PEAK_HOUR_UTC = 15.0
ERROR_PER_LATENCY = 0.04
"""error_rate added per unit of a latency incident's magnitude: latency and errors rise together."""
LEAK_LATENCY = 0.6
"""Relative latency_p95 increase at the end of a memory leak on a service host."""

IncidentKind = Literal["spike", "level_shift", "degradation"]
INCIDENT_KINDS: tuple[IncidentKind, ...] = ("spike", "level_shift", "degradation")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Generator streams under one seed: per-series parameters, and incidents (with the block index).
_PARAMS_STREAM = 0
_INCIDENT_STREAM = 1
_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# The daily profile is tabulated once per minute and interpolated linearly: transcendental ufuncs
# may round differently in SIMD and scalar loops, and window splits must not change any value.
_DAILY_TABLE: FloatArray = 0.5 + 0.5 * np.cos(2 * np.pi * np.arange(24 * 60 + 1) / (24 * 60))


@dataclass(frozen=True)
class Incident:
    """One injected incident, the ground truth for anomaly detection.

    A series is affected when its metric is in `metrics` and its labels contain every item of
    `target`. `magnitude` is in the unit of the first metric's effect: a relative factor for
    latency_p95 and request_rate (value x (1 + magnitude)), percentage points for memory_usage and
    cpu_usage. Incidents are active for `start_ms <= t < end_ms`.
    """

    kind: IncidentKind
    # Excluded from the hash (a dict is unhashable) so incidents can go in sets.
    target: dict[str, str] = field(hash=False)
    metrics: tuple[str, ...]
    start_ms: int
    end_ms: int
    magnitude: float

    def affects(self, metric: str, labels: Mapping[str, str]) -> bool:
        """True when the series (metric, labels) is one this incident changes."""
        return metric in self.metrics and self.matches(labels)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when `labels` contain every item of the target."""
        return all(labels.get(key) == value for key, value in self.target.items())

    def shape(self, timestamps_ms: IntArray) -> FloatArray:
        """The incident's intensity at each timestamp: 0 outside, 1 inside, a 0-to-1 ramp for degradation."""
        inside = (timestamps_ms >= self.start_ms) & (timestamps_ms < self.end_ms)
        if self.kind == "degradation":
            ramp = (timestamps_ms - self.start_ms) / (self.end_ms - self.start_ms)
            return np.where(inside, ramp, 0.0)
        return inside.astype(np.float64)


@dataclass(frozen=True, eq=False)
class SeriesBatch:
    """The points of one series in a window, columnar: aligned int64 timestamps and float64 values."""

    name: str
    labels: dict[str, str]
    timestamps_ms: IntArray
    values: FloatArray

    def __len__(self) -> int:
        return len(self.timestamps_ms)


@dataclass(frozen=True)
class _Host:
    labels: dict[str, str]
    rr_peak: float
    night_floor: float
    peak_offset_ms: int
    cpu_idle: float
    cpu_span: float
    latency_ms: float
    error_base: float
    memory_base: float
    disk_base: float
    keys: tuple[int, ...]


@dataclass(frozen=True)
class _Simulation:
    simulation_id: str
    bases: dict[str, float]
    keys: tuple[int, ...]


def _splitmix(key: int, counter: IntArray) -> npt.NDArray[np.uint64]:
    """splitmix64's output number `counter` for seed `key`, elementwise (uint64 arithmetic wraps)."""
    x = counter.astype(np.uint64) * _GOLDEN + np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _jitter(key: int, counter: IntArray) -> FloatArray:
    """Bounded noise with mean 0 and standard deviation 1, a pure function of (key, counter).

    An Irwin-Hall sum of the hash's four 16-bit lanes: near-normal, but never beyond +-3.47.
    """
    h = _splitmix(key, counter)
    lanes = sum((h >> np.uint64(16 * i)) & np.uint64(0xFFFF) for i in range(4))
    return (lanes.astype(np.float64) / 65536.0 - 2.0) * np.sqrt(3.0)


def _wander(key: int, timestamps_ms: IntArray, period_ms: int) -> FloatArray:
    """Smooth noise: bounded random knots every `period_ms`, joined by smoothstep."""
    knot = timestamps_ms // period_ms
    frac = (timestamps_ms - knot * period_ms) / period_ms
    left = _jitter(key, knot)
    right = _jitter(key, knot + 1)
    return left + (right - left) * (frac * frac * (3.0 - 2.0 * frac))


def _daily(timestamps_ms: IntArray, offset_ms: int) -> FloatArray:
    """Daily profile in 0..1, highest at (midnight + offset_ms) UTC, sharpened so nights are flat."""
    minutes = ((timestamps_ms - offset_ms) % DAY_MS) / MINUTE_MS
    index = minutes.astype(np.int64)
    frac = minutes - index
    cosine = _DAILY_TABLE[index] + (_DAILY_TABLE[index + 1] - _DAILY_TABLE[index]) * frac
    return cosine * np.sqrt(cosine)


class SimulatedPlatform:
    """A deterministic simulated platform of services and simulations.

    `seed` fixes every value and incident; `step_ms` is the sampling period (timestamps are
    multiples of it); `start_ms` starts the timeline that `incidents` covers (default: midnight UTC
    today). Values do not depend on `start_ms`: two platforms with the same seed agree everywhere.
    """

    def __init__(self, seed: int = 7, step_ms: int = 10_000, start_ms: int | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must not be negative, got {seed}")
        if step_ms <= 0:
            raise ValueError(f"step_ms must be positive, got {step_ms}")
        if start_ms is None:
            start_ms = int(time.time() * 1000) // DAY_MS * DAY_MS
        if start_ms < 0:
            raise ValueError(f"start_ms must not be negative, got {start_ms}")
        self.seed = seed
        self.step_ms = step_ms
        self.start_ms = start_ms
        rng = np.random.default_rng([seed, _PARAMS_STREAM])
        self._hosts = self._draw_hosts(rng)
        self._simulations = self._draw_simulations(rng)

    @staticmethod
    def _keys(rng: np.random.Generator, count: int) -> tuple[int, ...]:
        return tuple(int(k) for k in rng.integers(0, _MASK64, size=count, dtype=np.uint64, endpoint=True))

    def _draw_hosts(self, rng: np.random.Generator) -> list[_Host]:
        hosts = []
        for i, (service, (peak_rps, latency_ms)) in enumerate(SERVICES.items()):
            peak_hour = PEAK_HOUR_UTC + rng.uniform(-1.0, 1.0)
            night_floor = rng.uniform(0.20, 0.32)
            for h in range(HOSTS_PER_SERVICE):
                hosts.append(
                    _Host(
                        labels={
                            "service_name": service,
                            "host": f"{service}-{h + 1}",
                            "region": REGIONS[(i + h) % len(REGIONS)],
                        },
                        rr_peak=peak_rps / HOSTS_PER_SERVICE * rng.uniform(0.85, 1.15),
                        night_floor=night_floor,
                        peak_offset_ms=round(peak_hour * HOUR_MS),
                        cpu_idle=rng.uniform(4.0, 10.0),
                        cpu_span=rng.uniform(40.0, 60.0),
                        latency_ms=latency_ms * rng.uniform(0.9, 1.1),
                        error_base=rng.uniform(0.002, 0.008),
                        memory_base=rng.uniform(30.0, 50.0),
                        disk_base=rng.uniform(40.0, 400.0),
                        keys=self._keys(rng, 12),
                    )
                )
        return hosts

    def _draw_simulations(self, rng: np.random.Generator) -> list[_Simulation]:
        return [
            _Simulation(
                simulation_id=sim,
                bases={
                    "cpu": rng.uniform(40.0, 60.0),
                    "gpu": rng.uniform(55.0, 75.0),
                    "memory": rng.uniform(35.0, 55.0),
                    "disk": rng.uniform(150.0, 600.0),
                },
                keys=self._keys(rng, 8),
            )
            for sim in SIMULATIONS
        ]

    @property
    def incidents(self) -> list[Incident]:
        """Incidents overlapping the first `INCIDENT_HORIZON_MS` (24 h) from `start_ms`, by start."""
        return self.incidents_between(self.start_ms, self.start_ms + INCIDENT_HORIZON_MS)

    def incidents_between(self, start_ms: int, end_ms: int) -> list[Incident]:
        """Incidents active at some t with start_ms <= t < end_ms, ordered by start."""
        if end_ms <= start_ms:
            return []
        found = [
            incident
            for block in range(max(start_ms, 0) // BLOCK_MS, (end_ms - 1) // BLOCK_MS + 1)
            for incident in self._block_incidents(block)
            if incident.start_ms < end_ms and incident.end_ms > start_ms
        ]
        return sorted(found, key=lambda incident: (incident.start_ms, incident.end_ms))

    def series_keys(self) -> list[tuple[str, dict[str, str]]]:
        """(metric, labels) of every series, in the order `window` returns them."""
        keys = [(metric, dict(host.labels)) for host in self._hosts for metric in METRICS]
        keys += [
            (metric, {"simulation_id": sim.simulation_id, "resource": resource})
            for sim in self._simulations
            for metric, resource in SIMULATION_SERIES
        ]
        return keys

    def window(self, start_ms: int, end_ms: int, *, include_incidents: bool = True) -> list[SeriesBatch]:
        """Every series' points at the multiples t of step_ms with start_ms <= t < end_ms.

        One batch per series in `series_keys` order, all sharing one read-only timestamp array; an
        empty list when no multiple of step_ms falls in the window. `include_incidents=False` gives
        the same series without incidents (what the platform would have done).
        """
        if start_ms < 0:
            raise ValueError(f"start_ms must not be negative, got {start_ms}")
        first = -(-start_ms // self.step_ms) * self.step_ms
        if first >= end_ms:
            return []
        ts = np.arange(first, end_ms, self.step_ms, dtype=np.int64)
        ts.flags.writeable = False
        incidents = self.incidents_between(first, int(ts[-1]) + 1) if include_incidents else []
        batches = []
        for host in self._hosts:
            values = self._host_values(host, ts, [i for i in incidents if i.matches(host.labels)])
            batches += [SeriesBatch(metric, dict(host.labels), ts, values[metric]) for metric in METRICS]
        for sim in self._simulations:
            batches += self._simulation_batches(sim, ts, incidents)
        return batches

    def _host_values(self, host: _Host, ts: IntArray, incidents: list[Incident]) -> dict[str, FloatArray]:
        traffic = np.ones(len(ts))
        latency_factor = np.ones(len(ts))
        error_add = np.zeros(len(ts))
        memory_add = np.zeros(len(ts))
        for incident in incidents:
            effect = incident.magnitude * incident.shape(ts)
            primary = incident.metrics[0]
            if primary == "latency_p95":
                latency_factor *= 1.0 + effect
                error_add += ERROR_PER_LATENCY * effect
            elif primary == "request_rate":
                traffic *= 1.0 + effect
            elif primary == "memory_usage":
                memory_add += effect
                if "latency_p95" in incident.metrics:
                    ramp = incident.shape(ts)
                    latency_factor *= 1.0 + LEAK_LATENCY * ramp * ramp

        k = host.keys
        profile = _daily(ts, host.peak_offset_ms)
        seasonal = host.night_floor + (1.0 - host.night_floor) * profile
        request_rate = (
            host.rr_peak
            * seasonal
            * (1.0 + 0.05 * _wander(k[0], ts, 20 * MINUTE_MS))
            * (1.0 + 0.02 * _jitter(k[1], ts))
            * traffic
        )
        load = request_rate / host.rr_peak
        cpu = (
            host.cpu_idle + host.cpu_span * load + 1.5 * _wander(k[2], ts, 15 * MINUTE_MS) + _jitter(k[3], ts)
        )
        latency = (
            host.latency_ms
            * (1.0 + 0.35 * load * load)
            * (1.0 + 0.04 * _wander(k[4], ts, 10 * MINUTE_MS))
            * (1.0 + 0.03 * _jitter(k[5], ts))
            * latency_factor
        )
        errors = host.error_base * (0.6 + 0.8 * load) * (1.0 + 0.25 * _jitter(k[6], ts)) + error_add
        memory = (
            host.memory_base
            + 3.0 * profile
            + 1.2 * _wander(k[7], ts, 30 * MINUTE_MS)
            + 0.3 * _jitter(k[8], ts)
            + memory_add
        )
        disk = (
            host.disk_base
            * (0.4 + 0.6 * load)
            * (1.0 + 0.08 * _wander(k[9], ts, 15 * MINUTE_MS))
            * (1.0 + 0.04 * _jitter(k[10], ts))
        )
        return {
            "request_rate": np.maximum(request_rate, 0.0),
            "error_rate": np.clip(errors, 0.0, 1.0),
            "latency_p95": np.maximum(latency, 0.0),
            "cpu_usage": np.clip(cpu, 0.0, 100.0),
            "memory_usage": np.clip(memory, 0.0, 100.0),
            "disk_io": np.maximum(disk, 0.0),
        }

    def _simulation_batches(
        self, sim: _Simulation, ts: IntArray, incidents: list[Incident]
    ) -> list[SeriesBatch]:
        k = sim.keys
        # One slow work phase moves cpu, gpu and disk together: a simulation's stages are shared.
        phase = _wander(k[0], ts, 45 * MINUTE_MS)
        raw = {
            "cpu": sim.bases["cpu"] + 4.0 * phase + 1.5 * _jitter(k[1], ts),
            "gpu": sim.bases["gpu"] + 5.0 * phase + 1.5 * _jitter(k[2], ts),
            "memory": sim.bases["memory"] + 2.0 * _wander(k[3], ts, 60 * MINUTE_MS) + 0.3 * _jitter(k[4], ts),
            "disk": sim.bases["disk"] * (1.0 + 0.1 * phase) * (1.0 + 0.05 * _jitter(k[5], ts)),
        }
        batches = []
        for metric, resource in SIMULATION_SERIES:
            labels = {"simulation_id": sim.simulation_id, "resource": resource}
            values = raw[resource]
            for incident in incidents:
                if incident.affects(metric, labels):
                    # Simulation incidents add percentage points (cpu/gpu spikes, memory leaks).
                    values = values + incident.magnitude * incident.shape(ts)
            values = np.maximum(values, 0.0) if metric == "disk_io" else np.clip(values, 0.0, 100.0)
            batches.append(SeriesBatch(metric, labels, ts, values))
        return batches

    def _block_incidents(self, block: int) -> list[Incident]:
        """The incidents of one 6-hour block: a pure function of (seed, block)."""
        rng = np.random.default_rng([self.seed, _INCIDENT_STREAM, block])
        block_start = block * BLOCK_MS
        block_minutes = BLOCK_MS // MINUTE_MS
        services = list(SERVICES)

        def place(low_min: int, high_min: int) -> tuple[int, int]:
            duration = int(rng.integers(low_min, high_min, endpoint=True))
            start = block_start + int(rng.integers(0, block_minutes - duration, endpoint=True)) * MINUTE_MS
            return start, start + duration * MINUTE_MS

        def service_target(host_level: bool) -> dict[str, str]:
            service = services[int(rng.integers(len(services)))]
            if not host_level:
                return {"service_name": service}
            return {"service_name": service, "host": f"{service}-{int(rng.integers(HOSTS_PER_SERVICE)) + 1}"}

        def magnitude(low: float, high: float) -> float:
            return round(float(rng.uniform(low, high)), 3)

        found = []
        for _ in range(int(rng.integers(2, 4, endpoint=True))):
            target = service_target(host_level=bool(rng.random() < 0.5))
            start, end = place(2, 10)
            found.append(
                Incident("spike", target, ("latency_p95", "error_rate"), start, end, magnitude(3.0, 8.0))
            )
        if rng.random() < 0.5:
            sim = SIMULATIONS[int(rng.integers(len(SIMULATIONS)))]
            resource = "cpu" if rng.random() < 0.5 else "gpu"
            start, end = place(2, 10)
            target = {"simulation_id": sim, "resource": resource}
            found.append(Incident("spike", target, ("cpu_usage",), start, end, magnitude(30.0, 45.0)))

        target = service_target(host_level=False)
        start, end = place(60, 180)
        if rng.random() < 0.5:
            found.append(
                Incident(
                    "level_shift", target, ("latency_p95", "error_rate"), start, end, magnitude(0.5, 1.2)
                )
            )
        else:
            size = magnitude(0.4, 0.9) if rng.random() < 0.6 else -magnitude(0.3, 0.6)
            found.append(
                Incident("level_shift", target, ("request_rate", "cpu_usage", "disk_io"), start, end, size)
            )

        start, end = place(120, 300)
        if rng.random() < 0.7:
            target, metrics = service_target(host_level=True), ("memory_usage", "latency_p95")
        else:
            sim = SIMULATIONS[int(rng.integers(len(SIMULATIONS)))]
            target, metrics = {"simulation_id": sim, "resource": "memory"}, ("memory_usage",)
        found.append(Incident("degradation", target, metrics, start, end, magnitude(25.0, 45.0)))
        return sorted(found, key=lambda incident: incident.start_ms)
