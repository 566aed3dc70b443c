"""VictoriaMetrics as a baseline: start it on 127.0.0.1, load the influx lines, run PromQL."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.procs import (
    LOOPBACK,
    free_port,
    proc_status_kib,
    stop_process,
    wait_http_ok,
)
from benchmarks.tsbs_data import Dataset

BINARY_NAME = "victoria-metrics"


def binary() -> str | None:
    """Path of the victoria-metrics binary (Debian's package installs /usr/bin/victoria-metrics)."""
    return shutil.which(BINARY_NAME)


def version() -> str:
    """VictoriaMetrics' version: its -version output, else the Debian package version."""
    exe = binary()
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip()
    if text:
        return text.splitlines()[0]
    # Debian's build prints nothing for -version (no build info is linked in).
    pkg = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"], capture_output=True, text=True, check=False
    )
    return f"{pkg.stdout.strip()} (Debian package)" if pkg.returncode == 0 else "unknown"


@dataclass
class LoadResult:
    """One load of the data set."""

    points: int
    requests: int
    bytes_sent: int
    send_seconds: float  # first send to last HTTP answer
    flush_seconds: float  # /internal/force_flush after that
    seconds: float  # send + flush: the points are then searchable
    failures: int

    @property
    def points_per_s(self) -> float:
        """Points per second, send and flush included."""
        return self.points / self.seconds if self.seconds else 0.0


class VictoriaMetrics:
    """A single-node VictoriaMetrics process the benchmark owns."""

    def __init__(self, storage: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.storage = storage
        self.log_path = log_path
        self.port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's pid."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the server; wait_ready() waits until it answers."""
        exe = binary()
        if exe is None:
            raise FileNotFoundError("victoria-metrics is not installed: run `bash benchmarks/setup.sh`")
        self.storage.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            f"-storageDataPath={self.storage}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            # The data set's timestamps may lie outside the default 1-month retention.
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll /health until it answers OK."""
        assert self.proc is not None, "start() first"
        await asyncio.to_thread(
            wait_http_ok, f"{self.url}/health", self.proc, self.log_path, "victoria-metrics", timeout_s
        )

    def hwm_kib(self) -> int | None:
        """VmHWM of the server process."""
        return proc_status_kib(self.pid, "VmHWM")

    def stop(self) -> float:
        """SIGTERM and wait; seconds it took."""
        return stop_process(self.proc, timeout_s=60) if self.proc is not None else 0.0


def influx_chunks(path: Path, target_bytes: int = 2 << 20) -> list[bytes]:
    """The influx file cut at line ends into bodies of about target_bytes, read before timing."""
    data = path.read_bytes()
    chunks, pos = [], 0
    while pos < len(data):
        end = min(pos + target_bytes, len(data))
        if end < len(data):
            end = data.index(b"\n", end) + 1
        chunks.append(data[pos:end])
        pos = end
    return chunks


def import_chunks(ds: Dataset, series_per_body: int = 100) -> list[bytes]:
    """The data set as /api/v1/import JSON lines, one line per whole series, built before timing.

    This is VictoriaMetrics' own columnar import format: a line carries one series' labels once
    and all its values and timestamps, where the influx format repeats the tag set on every row.
    """
    lines = []
    for i, (name, labels) in enumerate(zip(ds.names, ds.labels, strict=True)):
        ts, vals = ds.series(i)
        metric = {"__name__": name, **labels}
        # TSBS's values are whole numbers: writing them as ints keeps the body as small as influx's.
        values = vals.astype(np.int64).tolist() if np.all(vals == np.floor(vals)) else vals.tolist()
        lines.append(
            json.dumps({"metric": metric, "values": values, "timestamps": ts.tolist()}, separators=(",", ":"))
        )
    return [
        ("\n".join(lines[i : i + series_per_body]) + "\n").encode()
        for i in range(0, len(lines), series_per_body)
    ]


async def load(
    url: str, chunks: list[bytes], points: int, concurrency: int = 4, path: str = "/write"
) -> LoadResult:
    """POST the chunks to `path` over `concurrency` connections, then /internal/force_flush."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)
    failures = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(f"{url}{path}", data=body) as resp:
                    await resp.read()
                    if resp.status >= 300:
                        failures += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        t1 = time.perf_counter()
        async with session.get(f"{url}/internal/force_flush") as resp:
            await resp.read()
        t2 = time.perf_counter()
    return LoadResult(
        points=points,
        requests=len(chunks),
        bytes_sent=sum(len(c) for c in chunks),
        send_seconds=t1 - t0,
        flush_seconds=t2 - t1,
        seconds=t2 - t0,
        failures=failures,
    )


async def count_points(url: str, end_s: float, span_s: float) -> int:
    """How many cpu_* samples VictoriaMetrics returns for the data span (checks the load)."""
    query = f'sum(count_over_time({{__name__=~"cpu_.*"}}[{int(span_s) + 60}s]))'
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/api/v1/query", params={"query": query, "time": str(end_s), "nocache": "1"}
        ) as resp,
    ):
        body = await resp.json()
    result = body.get("data", {}).get("result", [])
    return int(float(result[0]["value"][1])) if result else 0


class PromQuerier:
    """Runs query_range requests on one keep-alive connection, timing each round trip."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PromQuerier:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=120)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def query_range(self, query: str, start_s: float, end_s: float, step_s: int) -> tuple[float, dict]:
        """(seconds, JSON answer); nocache=1 so VictoriaMetrics' rollup cache cannot answer."""
        assert self.session is not None
        params = {
            "query": query,
            "start": f"{start_s:.3f}",
            "end": f"{end_s:.3f}",
            "step": str(step_s),
            "nocache": "1",
        }
        t0 = time.perf_counter()
        async with self.session.get(f"{self.url}/api/v1/query_range", params=params) as resp:
            body = await resp.json()
        seconds = time.perf_counter() - t0
        if body.get("status") != "success":
            raise RuntimeError(f"VictoriaMetrics query failed: {body}")
        return seconds, body
