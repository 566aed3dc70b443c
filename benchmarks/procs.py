"""Process helpers shared by the systems under test: free ports, memory sampling, latency summaries."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
BIN_DIR = BENCH_DIR / ".bin"
DATA_DIR = BENCH_DIR / ".data"
RESULTS_DIR = BENCH_DIR / "results"

# Every server the benchmark starts listens here and nowhere else.
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def proc_status_kib(pid: int, key: str) -> int | None:
    """One "<key>: <n> kB" line of /proc/<pid>/status (VmRSS, VmHWM, ...), or None once gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/*/children."""
    kids: list[int] = []
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    return kids


def services_pid(launcher: int) -> int:
    """The process serving the services under an `analytics up` launcher (its child not Envoy)."""
    for pid in children(launcher):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if b"envoy" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise RuntimeError("no services process under the launcher")


def tree_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (or another /proc status figure: RssAnon, say) of pid plus all its descendants (a
    service may fork helpers)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += proc_status_kib(current, field) or 0
        stack.extend(children(current))
    return total


class RssSampler:
    """Samples the resident memory of a process tree on a background thread.

    VmHWM (the kernel's own high-water mark) is exact for the main process but blind to children
    and to phases; the samples give the curve and the tree's peak, at the cost of missing spikes
    shorter than the interval.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - t0, tree_rss_kib(self.pid)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_kib(self) -> int:
        """Largest sampled tree RSS."""
        return max((kib for _, kib in self.samples), default=0)

    @property
    def mean_kib(self) -> float:
        """Mean sampled tree RSS."""
        return float(np.mean([kib for _, kib in self.samples])) if self.samples else 0.0


def mib(kib: float | None) -> float | None:
    """KiB to MiB, keeping None."""
    return None if kib is None else kib / 1024.0


@dataclass(frozen=True)
class Latency:
    """A latency summary in milliseconds."""

    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of_seconds(cls, seconds: Sequence[float]) -> Latency | None:
        """Summarise latencies given in seconds; None when there are none."""
        if not seconds:
            return None
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        # numpy's default linear interpolation: with 30 samples p99 lies between the two slowest.
        return cls(
            n=len(ms),
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            max_ms=float(ms.max()),
        )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float, sig: int = signal.SIGTERM) -> float:
    """Send sig, wait up to timeout_s, SIGKILL after that; returns the seconds it took to exit."""
    t0 = time.perf_counter()
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.perf_counter() - t0


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages, without Envoy's access log (a stack's
    health polls would fill it)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join([line for line in text if "envoy.access" not in line][-lines:])


def launch_stack(
    data_dir: Path, log: Path, gateway_port: int | None = None, **settings: str
) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start `analytics up` (Envoy and `serve all`) on fresh loopback ports with DATA_DIR `data_dir`,
    no demo feed, warnings only, and `settings` on top, its stderr to `log`; returns the process and
    its environment (GATEWAY_PORT, GRPC_PORT, ...). The gateway listens on `gateway_port` when given."""
    env = {
        **os.environ,
        "GATEWAY_PORT": str(gateway_port or free_port()),
        "ENVOY_ADMIN_PORT": str(free_port()),
        "WS_BRIDGE_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
        "DATA_DIR": str(data_dir),
        "DEMO": "0",
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("analytics")), "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )
    return process, env


class NotReady(RuntimeError, TimeoutError):
    """A server under test exited, or did not answer its health check in time."""


def wait_http_ok(url: str, process: subprocess.Popen, log: Path, what: str, timeout_s: float = 90.0) -> None:
    """Poll `url` until it answers 200 while `process` runs; NotReady (with the log's tail) when the
    process exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotReady(f"{what} exited: {log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise NotReady(f"{what} did not become healthy in {timeout_s:g} s: {log_tail(log)}")
