#!/usr/bin/env bash
# Installs what `make bench` needs, quietly and only when missing:
#   - the TSBS data generator into benchmarks/.bin/ (upstream tsbs_generate_data from the Go module
#     proxy; where the proxy refuses that module, benchmarks/tsbsgen, a port of its cpu-only
#     generator built with the local Go toolchain and no downloads);
#   - benchmarks/rpcfloor, a Go gRPC health server (grpc-go from the Go module proxy), into .bin/;
#   - VictoriaMetrics from Debian's victoria-metrics package (/usr/bin/victoria-metrics).
# Run from anywhere; paths are relative to the repository root.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN="$PWD/benchmarks/.bin"
mkdir -p "$BIN" benchmarks/.data

# Upstream module and version. The proxy answered 403 "This module version is not available" for
# every version of github.com/timescale/tsbs when this was written, so the attempt is made once and
# its answer kept in .bin/; delete that file (or set TSBS_VERSION) to ask again.
TSBS_MODULE="github.com/timescale/tsbs"
TSBS_VERSION_GIVEN="${TSBS_VERSION:+yes}"
TSBS_VERSION="${TSBS_VERSION:-latest}"
REFUSED="$BIN/.tsbs_go_install_failed"

need_go() {
    if ! command -v go >/dev/null 2>&1; then
        echo "setup.sh: the Go toolchain is needed to build the TSBS generator and the rpcfloor server" >&2
        exit 1
    fi
}

if [[ ! -x "$BIN/tsbs_generate_data" ]]; then
    if [[ ! -e "$REFUSED" || -n "$TSBS_VERSION_GIVEN" ]]; then
        need_go
        log="$(mktemp)"
        if GOBIN="$BIN" GOFLAGS=-mod=mod go install "$TSBS_MODULE/cmd/tsbs_generate_data@$TSBS_VERSION" >"$log" 2>&1; then
            echo "setup.sh: installed tsbs_generate_data@$TSBS_VERSION"
            go version -m "$BIN/tsbs_generate_data" | awk '$1 == "mod" {print $3}' >"$BIN/.tsbs_version"
            rm -f "$REFUSED"
        else
            { echo "go install $TSBS_MODULE/cmd/tsbs_generate_data@$TSBS_VERSION failed on $(date -u +%FT%TZ):"; cat "$log"; } >"$REFUSED"
            echo "setup.sh: upstream TSBS not available ($(tail -n 1 "$log")); using the benchmarks/tsbsgen port" >&2
        fi
        rm -f "$log"
    fi
fi

# The port is rebuilt when its source is newer than the binary.
if [[ ! -x "$BIN/tsbs_generate_data" ]]; then
    port="$BIN/tsbsgen"
    if [[ ! -x "$port" || -n "$(find benchmarks/tsbsgen -name '*.go' -newer "$port" -print -quit)" ]]; then
        need_go
        (cd benchmarks/tsbsgen && GOFLAGS=-mod=mod go build -o "$port" .)
        echo "setup.sh: built $port"
    fi
fi

# The Go health server of benchmarks/rpc_floor.py (the floor of a gRPC call answered by a compiled
# server), rebuilt when its source is newer than the binary.
floor="$BIN/rpcfloor"
if [[ ! -x "$floor" || -n "$(find benchmarks/rpcfloor -name '*.go' -newer "$floor" -print -quit)" ]]; then
    need_go
    (cd benchmarks/rpcfloor && GOFLAGS=-mod=mod go build -o "$floor" .)
    echo "setup.sh: built $floor"
fi

if ! command -v victoria-metrics >/dev/null 2>&1; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "setup.sh: victoria-metrics is missing; run as root or: sudo apt-get install -y victoria-metrics" >&2
        exit 1
    fi
    # The package's postinst tries to start a systemd unit; policy-rc.d usually denies that in
    # containers, which is harmless: the benchmark starts its own instance on 127.0.0.1.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q victoria-metrics >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q victoria-metrics >/dev/null; }
    echo "setup.sh: installed $(command -v victoria-metrics)"
fi
