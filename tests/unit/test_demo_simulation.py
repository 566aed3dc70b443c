"""The demo platform is deterministic, realistic and honest about its incidents; the feed delivers it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict

import grpc
import numpy as np
import pytest
from grpc import aio

from platformq.analytics.v1 import realtime_service_pb2, realtime_service_pb2_grpc
from services.demo import feed
from services.demo.feed import run_feed, to_request
from services.demo.simulation import (
    BLOCK_MS,
    DAY_MS,
    HOUR_MS,
    INCIDENT_KINDS,
    METRICS,
    MINUTE_MS,
    REGIONS,
    Incident,
    SeriesBatch,
    SimulatedPlatform,
)
from tests.helpers import free_port

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PERCENT_METRICS = ("cpu_usage", "memory_usage")
RATE_METRICS = ("request_rate", "disk_io", "latency_p95")


def by_key(batches: list[SeriesBatch]) -> dict[tuple[str, frozenset[tuple[str, str]]], SeriesBatch]:
    return {(b.name, frozenset(b.labels.items())): b for b in batches}


def day(seed: int = 7, step_ms: int = MINUTE_MS) -> tuple[SimulatedPlatform, list[SeriesBatch]]:
    platform = SimulatedPlatform(seed=seed, step_ms=step_ms, start_ms=START)
    return platform, platform.window(START, START + DAY_MS)


def around(platform: SimulatedPlatform, incident: Incident, margin_ms: int, with_baseline: bool = False):
    """The series an incident affects, with margin_ms either side: (batch, inside mask, baseline).

    The baseline is the same series without any incident (None unless asked for).
    """
    start, end = incident.start_ms - margin_ms, incident.end_ms + margin_ms
    batches = platform.window(start, end)
    clean = platform.window(start, end, include_incidents=False) if with_baseline else [None] * len(batches)
    for batch, baseline in zip(batches, clean, strict=True):
        if incident.affects(batch.name, batch.labels):
            t = batch.timestamps_ms
            yield batch, (t >= incident.start_ms) & (t < incident.end_ms), baseline


def others(platform: SimulatedPlatform, incident: Incident, batch: SeriesBatch) -> list[Incident]:
    """Other incidents that change this series while `incident` runs."""
    return [
        i
        for i in platform.incidents_between(incident.start_ms, incident.end_ms)
        if i != incident and i.matches(batch.labels)
    ]


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_values_and_incidents():
    (p1, a), (p2, b) = day(seed=7), day(seed=7)
    assert p1.incidents == p2.incidents
    for x, y in zip(a, b, strict=True):
        assert (x.name, x.labels) == (y.name, y.labels)
        assert np.array_equal(x.timestamps_ms, y.timestamps_ms)
        assert np.array_equal(x.values, y.values)


def test_values_do_not_depend_on_the_timeline_start():
    _, a = day(seed=7)
    other = SimulatedPlatform(seed=7, step_ms=MINUTE_MS, start_ms=START - 5 * DAY_MS)
    for x, y in zip(a, other.window(START, START + DAY_MS), strict=True):
        assert np.array_equal(x.values, y.values)


def test_different_seed_different_values_and_incidents():
    (p1, a), (p2, b) = day(seed=7), day(seed=8)
    assert p1.incidents != p2.incidents
    for x, y in zip(a, b, strict=True):
        assert not np.array_equal(x.values, y.values), (x.name, x.labels)


def test_windows_split_anywhere_give_identical_points():
    platform = SimulatedPlatform(seed=7, step_ms=10_000, start_ms=START)
    a, c = START + 3_333, START + BLOCK_MS + HOUR_MS
    leak = next(i for i in platform.incidents_between(a, c) if i.kind == "degradation")
    whole = platform.window(a, c)
    # Cut inside a leak, on a 6-hour block boundary, and on a step-aligned time.
    cuts = [a, START + HOUR_MS, (leak.start_ms + leak.end_ms) // 2 + 7_777, START + BLOCK_MS, c]
    parts = [platform.window(lo, hi) for lo, hi in itertools.pairwise(cuts)]
    for i, batch in enumerate(whole):
        assert np.array_equal(batch.timestamps_ms, np.concatenate([p[i].timestamps_ms for p in parts]))
        assert np.array_equal(batch.values, np.concatenate([p[i].values for p in parts]))


def test_window_is_half_open_and_aligned_to_the_step():
    platform = SimulatedPlatform(seed=7, step_ms=10_000, start_ms=START)
    batches = platform.window(START + 1, START + 60_000)
    t = batches[0].timestamps_ms
    assert t.dtype == np.int64 and batches[0].values.dtype == np.float64
    assert t.tolist() == list(range(START + 10_000, START + 60_000, 10_000))
    assert platform.window(START + 1, START + 9_999) == []
    assert [(b.name, b.labels) for b in batches] == platform.series_keys()


# --- realism -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 11])
def test_values_stay_in_their_ranges(seed):
    _, batches = day(seed=seed, step_ms=30_000)
    for b in batches:
        assert np.isfinite(b.values).all(), (b.name, b.labels)
        if b.name in PERCENT_METRICS:
            assert ((b.values >= 0) & (b.values <= 100)).all(), (b.name, b.labels)
        elif b.name == "error_rate":
            assert ((b.values >= 0) & (b.values <= 1)).all(), b.labels
        else:
            assert b.name in RATE_METRICS
            assert (b.values >= 0).all(), (b.name, b.labels)


def test_request_rate_and_cpu_follow_the_day():
    _, batches = day()
    hours = (batches[0].timestamps_ms - START) / HOUR_MS
    afternoon, night = (hours >= 12) & (hours < 18), hours < 6
    total = sum(b.values for b in batches if b.name == "request_rate")
    assert total[afternoon].mean() > 2.0 * total[night].mean()
    for b in batches:
        if b.name == "cpu_usage" and "service_name" in b.labels:
            assert b.values[afternoon].mean() > 1.3 * b.values[night].mean(), b.labels


def test_labels_are_as_documented():
    platform = SimulatedPlatform(seed=7, start_ms=START)
    keys = platform.series_keys()
    assert len(keys) == len({(m, frozenset(labels.items())) for m, labels in keys}) == 140
    services = [labels for _, labels in keys if "service_name" in labels]
    simulations = [labels for _, labels in keys if "simulation_id" in labels]
    assert len(services) + len(simulations) == len(keys)
    assert all(set(labels) == {"service_name", "host", "region"} for labels in services)
    assert all(set(labels) == {"simulation_id", "resource"} for labels in simulations)
    names = {labels["service_name"] for labels in services}
    assert len(names) == 10 and {"auth-service", "analytics-service", "api-gateway"} <= names
    hosts = defaultdict(set)
    for labels in services:
        hosts[labels["service_name"]].add((labels["host"], labels["region"]))
    assert all(len(h) == 2 and len({region for _, region in h}) == 2 for h in hosts.values())
    assert {labels["region"] for labels in services} == set(REGIONS)
    assert {labels["simulation_id"] for labels in simulations} == {f"sim-00{i}" for i in range(1, 6)}
    assert {labels["resource"] for labels in simulations} == {"cpu", "gpu", "memory", "disk"}
    assert {m for m, labels in keys if "service_name" in labels} == set(METRICS)
    assert {m for m, labels in keys if "simulation_id" in labels} == {"cpu_usage", "memory_usage", "disk_io"}


# --- incidents ---------------------------------------------------------------------------------


def test_every_incident_kind_is_scheduled_in_a_day():
    platform = SimulatedPlatform(seed=7, start_ms=START + 5 * HOUR_MS)  # not aligned to a block
    incidents = platform.incidents
    assert {i.kind for i in incidents} == set(INCIDENT_KINDS)
    keys = platform.series_keys()
    for i in incidents:
        assert i.start_ms < platform.start_ms + DAY_MS and i.end_ms > platform.start_ms
        assert set(i.metrics) <= set(METRICS)
        assert any(i.affects(metric, labels) for metric, labels in keys), i
        shortest, longest = {"spike": (2, 10), "level_shift": (60, 180), "degradation": (120, 300)}[i.kind]
        assert shortest <= (i.end_ms - i.start_ms) / MINUTE_MS <= longest, i
    assert incidents == sorted(incidents, key=lambda i: i.start_ms)


@pytest.mark.parametrize("seed", [7, 3])
def test_spikes_stand_far_above_their_surroundings(seed):
    platform = SimulatedPlatform(seed=seed, step_ms=10_000, start_ms=START)
    spikes = [i for i in platform.incidents if i.kind == "spike"]
    assert spikes
    for spike in spikes:
        seen = set()
        for batch, inside, _ in around(platform, spike, margin_ms=30 * MINUTE_MS):
            median, peak = np.median(batch.values[~inside]), batch.values[inside].max()
            if batch.name == "latency_p95":
                assert peak > 3 * median, (spike, batch.labels)
            elif batch.name == "error_rate":
                assert peak > median + 0.1, (spike, batch.labels)
            else:
                assert peak > median + 20 or peak > 99.5, (spike, batch.labels)
            seen.add(batch.name)
        # A service incident moves latency and errors together.
        assert seen == set(spike.metrics)


def test_level_shifts_persist_and_move_correlated_metrics():
    shifts = []
    for seed in (7, 3, 5):
        platform = SimulatedPlatform(seed=seed, step_ms=30_000, start_ms=START)
        shifts += [(platform, i) for i in platform.incidents if i.kind == "level_shift"]
    assert {i.metrics[0] for _, i in shifts} == {"latency_p95", "request_rate"}
    for platform, shift in shifts:
        for batch, inside, baseline in around(platform, shift, margin_ms=0, with_baseline=True):
            if any(i.kind != "spike" for i in others(platform, shift, batch)):
                continue  # another long incident on the same series muddles the comparison
            # The median of the ratio to the incident-free series ignores short spikes on top.
            change = np.median(batch.values[inside] / baseline.values[inside]) - 1
            if batch.name == shift.metrics[0]:
                assert change == pytest.approx(shift.magnitude, rel=0.1), (shift, batch.labels)
            elif batch.name == "error_rate":
                assert change > 2, (shift, batch.labels)
            else:  # cpu and disk follow the load, in the same direction
                assert np.sign(change) == np.sign(shift.magnitude), (shift, batch.name, batch.labels)
                assert abs(change) > 0.2 * abs(shift.magnitude), (shift, batch.name, batch.labels)


def test_memory_leaks_ramp_up_then_reset():
    leaks = []
    for seed in (7, 3, 5):
        platform = SimulatedPlatform(seed=seed, step_ms=30_000, start_ms=START)
        leaks += [(platform, i) for i in platform.incidents if i.kind == "degradation"]
    assert any("simulation_id" in i.target for _, i in leaks)
    assert any("host" in i.target for _, i in leaks)
    for platform, leak in leaks:
        for batch, inside, baseline in around(platform, leak, margin_ms=10 * MINUTE_MS, with_baseline=True):
            if any(i.kind != "spike" for i in others(platform, leak, batch)):
                continue
            during = batch.values[inside]
            tenth = len(during) // 10
            if batch.name == "memory_usage":
                after = batch.values[batch.timestamps_ms >= leak.end_ms][:10].mean()
                assert during[-tenth:].mean() - during[:tenth].mean() > 0.5 * leak.magnitude, leak
                assert during[-tenth:].mean() - after > 0.5 * leak.magnitude, leak
            else:
                assert batch.name == "latency_p95"
                ratio = during[-tenth:] / baseline.values[inside][-tenth:]
                assert ratio.mean() > 1.4, leak


# --- request -----------------------------------------------------------------------------------


def test_to_request_is_columnar_and_complete():
    platform = SimulatedPlatform(seed=7, step_ms=10_000, start_ms=START)
    batches = platform.window(START, START + 5 * MINUTE_MS)
    empty = SeriesBatch("cpu_usage", {"service_name": "x"}, np.array([], np.int64), np.array([], np.float64))
    request = to_request([*batches, empty], datasource="demo")
    parsed = realtime_service_pb2.IngestMetricsRequest.FromString(request.SerializeToString())
    assert parsed.datasource == "demo" and not parsed.points
    assert len(parsed.series) == len(batches) == 140
    for series, batch in zip(parsed.series, batches, strict=True):
        assert series.name == batch.name and dict(series.labels) == batch.labels
        assert len(series.timestamps_ms) == len(series.values) == 30
        assert list(series.timestamps_ms) == batch.timestamps_ms.tolist()
        assert list(series.values) == batch.values.tolist()
    assert to_request([]).datasource == "platform_metrics"


# --- feed --------------------------------------------------------------------------------------


class RecordingRealtimeDouble(realtime_service_pb2_grpc.RealtimeServiceServicer):
    """Test double of RealtimeService: records every IngestMetrics request and accepts it.

    `unimplemented` answers UNIMPLEMENTED (ingest not built); `unavailable` fails that many calls
    first with UNAVAILABLE.
    """

    def __init__(self, unimplemented: bool = False, unavailable: int = 0) -> None:
        self.unimplemented = unimplemented
        self.unavailable = unavailable
        self.calls = 0
        self.requests: list[realtime_service_pb2.IngestMetricsRequest] = []

    async def IngestMetrics(self, request, context):
        self.calls += 1
        if self.unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "metric ingest is not built yet")
        if self.unavailable:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        self.requests.append(request)
        points = sum(len(s.values) for s in request.series)
        return realtime_service_pb2.IngestMetricsResponse(accepted=points)

    def points_by_series(self) -> dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]]:
        found = defaultdict(list)
        for request in self.requests:
            for s in request.series:
                found[(s.name, frozenset(s.labels.items()))] += zip(s.timestamps_ms, s.values, strict=True)
        return found


async def serve(double: RecordingRealtimeDouble) -> tuple[aio.Server, str]:
    server = aio.server()
    realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(double, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


STEP_MS = 200
BACKFILL_HOURS = 0.005  # 18 s: 90 steps x 140 series
BACKFILL_MS = round(BACKFILL_HOURS * HOUR_MS)


def assert_contiguous(found: dict[object, list[tuple[int, float]]]) -> tuple[int, int]:
    """Every series has the same timestamps, in order, one step apart, none twice; their span."""
    spans = set()
    for key, points in found.items():
        t = np.array([timestamp for timestamp, _ in points])
        assert (np.diff(t) == STEP_MS).all(), key
        spans.add((int(t[0]), int(t[-1])))
    assert len(spans) == 1
    return spans.pop()


async def test_feed_backfills_in_chunks_then_streams_until_stopped():
    double = RecordingRealtimeDouble()
    server, target = await serve(double)
    stop = asyncio.Event()
    t0 = int(time.time() * 1000)
    task = asyncio.create_task(
        run_feed(
            target,
            backfill_hours=BACKFILL_HOURS,
            interval_s=0.05,
            step_ms=STEP_MS,
            stop=stop,
            max_points_per_request=3_000,
        )
    )
    try:
        # Wait for live points: ones stamped after the feed started.
        await until(lambda: any(min(r.series[0].timestamps_ms) > t0 + 2 * STEP_MS for r in double.requests))
        stop.set()
        await asyncio.wait_for(task, 2)
    finally:
        stop.set()
        await server.stop(0)

    backfill = [r for r in double.requests if min(r.series[0].timestamps_ms) <= t0]
    assert len(backfill) >= 4  # 12,600 points in requests of at most 3,000
    assert all(sum(len(s.values) for s in r.series) <= 3_000 for r in double.requests)
    assert all(r.datasource == "platform_metrics" for r in double.requests)

    found = double.points_by_series()
    expected = SimulatedPlatform(seed=7, step_ms=STEP_MS, start_ms=t0)
    assert set(found) == {(m, frozenset(labels.items())) for m, labels in expected.series_keys()}
    first, last = assert_contiguous(found)
    # The backfill starts backfill_hours before the feed started (give or take its start-up).
    assert t0 - BACKFILL_MS <= first <= t0 - BACKFILL_MS + 1_000
    assert last > t0
    # The feed sends exactly the platform's values.
    truth = by_key(expected.window(first, last + 1))
    for key, points in found.items():
        assert np.array_equal(np.array([value for _, value in points]), truth[key].values), key


async def test_feed_stops_with_one_warning_when_ingest_is_unimplemented(caplog):
    double = RecordingRealtimeDouble(unimplemented=True)
    server, target = await serve(double)
    caplog.set_level(logging.DEBUG, logger=feed.__name__)
    try:
        await asyncio.wait_for(run_feed(target, backfill_hours=BACKFILL_HOURS, step_ms=STEP_MS), 3)
    finally:
        await server.stop(0)
    assert double.calls == 1
    warnings = [r for r in caplog.records if r.name == feed.__name__ and r.levelno >= logging.WARNING]
    assert [r.levelno for r in warnings] == [logging.WARNING]


async def test_feed_retries_unavailable_without_losing_points(monkeypatch):
    monkeypatch.setattr(feed, "RETRY_FIRST_DELAY_S", 0.01)
    double = RecordingRealtimeDouble(unavailable=2)
    server, target = await serve(double)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_feed(target, backfill_hours=BACKFILL_HOURS, interval_s=60, step_ms=STEP_MS, stop=stop)
    )
    try:
        await until(lambda: len(double.requests) >= 1)
        stop.set()
        await asyncio.wait_for(task, 2)
    finally:
        stop.set()
        await server.stop(0)
    assert double.calls == 3
    first, last = assert_contiguous(double.points_by_series())
    assert last - first >= BACKFILL_MS - STEP_MS


async def test_feed_gives_up_on_an_unreachable_target(monkeypatch, caplog):
    monkeypatch.setattr(feed, "READY_ATTEMPTS", 2)
    monkeypatch.setattr(feed, "READY_FIRST_WAIT_S", 0.05)
    caplog.set_level(logging.INFO, logger=feed.__name__)
    await asyncio.wait_for(run_feed(f"127.0.0.1:{free_port()}", backfill_hours=BACKFILL_HOURS), 3)
    assert [r.levelno for r in caplog.records if r.name == feed.__name__][-1] == logging.ERROR
