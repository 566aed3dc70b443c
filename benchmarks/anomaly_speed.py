"""Speed of anomaly detection: the live `auto` scorer in points/s on one core (with its state bytes
per series), and a stored 100,000-point series scored through the gRPC API, beside the time pyod's
IForest and river's HalfSpaceTrees take alone on the same data.

    .venv/bin/python -m benchmarks.anomaly_speed [--docs]

Single-threaded figures: the kernel runs in the calling thread, as the service runs it in one
worker thread. The first call compiles the numba kernel (cached on disk afterwards); it is made
before any timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from grpc import aio

from benchmarks.procs import free_port
from benchmarks.report import add_docs_flag, publish
from libs.bus import Envelope, InProcessBus
from libs.config import SERVICE_NAMES, load_settings
from libs.timeparse import format_time_ms
from platformq.analytics.v1 import (
    events_pb2,
    ml_service_pb2,
    ml_service_pb2_grpc,
    realtime_service_pb2,
    realtime_service_pb2_grpc,
)
from services.ml.anomaly_store import AnomalyStore
from services.ml.detectors import auto
from services.ml.history import HistoryClient
from services.ml.stream import StreamConfig, StreamScorer
from services.runner import start_services

SECTION = "## Anomaly detection speed"
STEP_MS = 10_000
SERIES = 1000
CHUNK = 100
LONG_POINTS = 100_000


def _series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy daily curve with a few spikes, 10 s apart, ending now."""
    rng = np.random.default_rng(seed)
    end = int(time.time() * 1000) // STEP_MS * STEP_MS
    ts = end - STEP_MS * np.arange(n, 0, -1, dtype=np.int64)
    values = 50 + 10 * np.sin(2 * np.pi * ts / 86_400_000) + rng.normal(0, 1.5, n)
    values[rng.choice(n, max(1, n // 2000), replace=False)] += 20
    return ts, values


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def kernel_speed() -> dict:
    """score_chunk over SERIES warmed series: chunks of CHUNK points, and of one point."""
    ts, values = _series(SERIES * (auto.MEMORY_POINTS + CHUNK + 100), 1)
    per = auto.MEMORY_POINTS + CHUNK + 100
    states = []
    for i in range(SERIES):
        state = auto.AutoState.new()
        auto.score_chunk(
            state, ts[i * per : i * per + auto.MEMORY_POINTS], values[i * per : i * per + auto.MEMORY_POINTS]
        )
        states.append(state)
    snapshot = [s.to_bytes() for s in states]

    def chunks() -> None:
        for i, state in enumerate(states):
            lo = i * per + auto.MEMORY_POINTS
            auto.score_chunk(state, ts[lo : lo + CHUNK], values[lo : lo + CHUNK])

    def singles() -> None:
        for k in range(100):
            for i, state in enumerate(states):
                j = i * per + auto.MEMORY_POINTS + CHUNK + k
                auto.score_chunk(state, ts[j : j + 1], values[j : j + 1])

    chunk_s = float("inf")
    for _ in range(3):
        for state, saved in zip(states, snapshot, strict=True):  # back to the warmed state, untimed
            state.buf[:] = auto.AutoState.from_bytes(saved).buf
        t0 = time.perf_counter()
        chunks()
        chunk_s = min(chunk_s, time.perf_counter() - t0)
    single_s = _best(singles, repeat=1)
    return {
        "series": SERIES,
        "chunk_points": CHUNK,
        "chunked_points_per_s": SERIES * CHUNK / chunk_s,
        "single_points_per_s": SERIES * 100 / single_s,
        "state_bytes": states[0].nbytes,
    }


class _NoHistory(HistoryClient):
    """Stands in for the query-router here: these series have no stored history to warm from."""

    def __init__(self) -> None:
        super().__init__(lambda: "unused", 0)

    async def raw(self, *args, **kwargs) -> list:
        return []


async def consumer_speed() -> dict:
    """The live scorer's bus handler end to end (decode, per-series state, score, store, publish)
    on MetricsBatchEvents of SERIES series x CHUNK points."""
    with tempfile.TemporaryDirectory() as tmp:
        store = AnomalyStore(Path(tmp) / "a.sqlite3")
        store.open()
        bus = InProcessBus()
        scorer = StreamScorer(bus, store, _NoHistory(), StreamConfig(data_dir=Path(tmp)))
        rounds = 8
        ts, values = _series(rounds * CHUNK, 2)
        events = []
        for r in range(rounds):
            event = events_pb2.MetricsBatchEvent(tenant="default", datasource="bench", batch_id=str(r))
            for i in range(SERIES):
                s = event.series.add(name="cpu", labels={"host": f"h{i}"})
                s.timestamps_ms.extend(ts[r * CHUNK : (r + 1) * CHUNK].tolist())
                s.values.extend((values[r * CHUNK : (r + 1) * CHUNK] + i % 7).tolist())
            events.append(events_pb2.MetricsBatchEvent.SerializeToString(event))
        envelopes = [Envelope("simulation.metrics.bench", "bench", p, "x", 0) for p in events]
        await scorer.handle(envelopes[0])  # creates the states
        t0 = time.perf_counter()
        for envelope in envelopes[1:]:
            await scorer.handle(envelope)
        seconds = time.perf_counter() - t0
        store.close()
        await bus.close()
        return {
            "points_per_s": SERIES * CHUNK * (rounds - 1) / seconds,
            "anomalies": scorer.stats["anomalies"],
            "state_bytes_total": scorer.state_bytes,
        }


def baselines(ts: np.ndarray, values: np.ndarray) -> dict:
    """auto alone, pyod IForest and river HalfSpaceTrees alone on the same series."""
    from pyod.models.iforest import IForest
    from river import anomaly, compose, preprocessing

    out = {"auto_detect_s": _best(lambda: auto.detect(ts, values))}
    features = np.column_stack([values, np.diff(values, prepend=values[0])])

    def iforest() -> None:
        model = IForest(random_state=0)
        model.fit(features[: len(features) // 3])
        model.decision_function(features)

    out["pyod_iforest_s"] = _best(iforest, repeat=1)

    def hst() -> None:
        model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=0))
        previous = values[0]
        for x in values:
            sample = {"x": x, "dx": x - previous}
            model.score_one(sample)
            model.learn_one(sample)
            previous = x

    out["river_hst_s"] = _best(hst, repeat=1)
    return out


async def api_speed(ts: np.ndarray, values: np.ndarray) -> dict:
    """A stored series of LONG_POINTS points scored through DetectAnomalies (selection, auto)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            data_dir=Path(tmp), ml_cache_ttl_seconds=0, anomaly_stream=False, retention_days=3650
        )
        server = await start_services(list(SERVICE_NAMES), settings, free_port())
        try:
            async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                ingest = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
                request = realtime_service_pb2.IngestMetricsRequest(datasource="bench")
                request.series.add(
                    name="lat", labels={"host": "a"}, timestamps_ms=ts.tolist(), values=values.tolist()
                )
                await ingest.IngestMetrics(request)
                ml = ml_service_pb2_grpc.MLServiceStub(channel)
                detect = ml_service_pb2.DetectAnomaliesRequest(
                    selection={
                        "datasource": "bench",
                        "metrics": ["lat"],
                        "start": format_time_ms(int(ts[0])),
                        "end": format_time_ms(int(ts[-1]) + 1),
                    },
                )
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    reply = await ml.DetectAnomalies(detect)
                    times.append(time.perf_counter() - t0)
                return {
                    "p50_s": float(np.median(times)),
                    "points_scored": int(reply.series[0].points_scored),
                    "anomalies": len(reply.anomalies),
                }
        finally:
            await server.stop(0)


async def run() -> dict:
    auto.detect(*_series(200, 0))  # compile (or load) the kernel before timing
    ts, values = _series(LONG_POINTS, 3)
    return {
        "kernel": kernel_speed(),
        "consumer": await consumer_speed(),
        "baselines": baselines(ts, values),
        "api": await api_speed(ts, values),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def render(r: dict) -> str:
    k, c, b, a = r["kernel"], r["consumer"], r["baselines"], r["api"]
    return "\n".join(
        [
            SECTION,
            "",
            f"`python -m benchmarks.anomaly_speed` ({r['machine']}; one thread). The live scorer runs the "
            "`auto` kernel per series; its state is the same size for every series.",
            "",
            "| what | figure |",
            "|---|---|",
            f"| `auto` kernel, {k['series']} series x {k['chunk_points']}-point chunks | {k['chunked_points_per_s']:,.0f} points/s |",
            f"| `auto` kernel, {k['series']} series, one point per call | {k['single_points_per_s']:,.0f} points/s |",
            f"| live scorer's bus handler (decode, state, score, store, publish), {SERIES} series x {CHUNK} points per event | {c['points_per_s']:,.0f} points/s |",
            f"| state per series | {k['state_bytes']:,} bytes |",
            f"| stored {LONG_POINTS:,}-point series, DetectAnomalies (selection, auto) at the gRPC client, p50 of 5 | {a['p50_s'] * 1000:,.0f} ms ({a['points_scored']:,} points scored) |",
            f"| `auto` alone on that series (`detect`) | {b['auto_detect_s'] * 1000:,.0f} ms |",
            f"| pyod IForest alone (fit on a third, score all; 2 features) | {b['pyod_iforest_s'] * 1000:,.0f} ms |",
            f"| river HalfSpaceTrees alone (score_one + learn_one per point) | {b['river_hst_s'] * 1000:,.0f} ms |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.anomaly_speed", description=__doc__.split("\n\n")[0]
    )
    add_docs_flag(parser)
    args = parser.parse_args(argv)
    publish(SECTION, render(asyncio.run(run())), args.docs)


if __name__ == "__main__":
    main()
