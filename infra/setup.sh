#!/usr/bin/env bash
# Install what the local stack (Kafka, Redis, PostgreSQL, Prometheus) needs on Debian 12,
# idempotently.
#
#   bash infra/setup.sh            (run by `make setup`; as root, or as a user with sudo)
#
# 1. Debian packages: redis-server redis-tools openjdk-17-jre-headless maven python3-venv
#    postgresql prometheus.  Only missing ones are installed (without Recommends, so no
#    node exporter); `apt-get update` runs only if one is missing.
#    Only the binaries are used: infra/postgres_service.py and infra/prometheus_service.py
#    start their own servers on free loopback ports with data in the project's directories.
#    On a machine with a running systemd, installing these packages also starts system
#    services on the ports `dnc up` uses by default (PostgreSQL cluster 15/main on 5432,
#    prometheus.service on 9090; in a container policy-rc.d usually prevents that).  When
#    this script has just installed the package, it stops and disables that service again
#    (it was a side effect, nobody asked for it).  A service that was already installed is
#    left alone with a note: stop it (`systemctl disable --now prometheus postgresql`) or
#    move `dnc up` to other ports (DNC_PROMETHEUS_PORT, DNC_POSTGRES_DSN).
# 2. The Kafka broker jars for ${DNC_KAFKA_VERSION:-3.9.1}, fetched from Maven Central
#    into ~/.cache/dnc/kafka/<version>/libs (see infra/services.py; honours
#    DNC_CACHE_DIR and XDG_CACHE_HOME).  Skipped quickly when already cached.
# 3. The Toxiproxy server (fault injection in the tests, see infra/toxiproxy.py), the
#    release pinned in TOXIPROXY_VERSION below, built from source with `go install` (Go
#    1.23 or newer, on PATH or at /usr/local/go/bin/go) into
#    ~/.cache/dnc/toxiproxy/<version>/server (same cache directory rules as the jars).
#    Skipped quickly when already there.
# 4. Docker Compose (the standalone `docker-compose` binary), the release pinned in
#    COMPOSE_VERSION below, built the same way into ~/.cache/dnc/compose/<version>/docker-compose
#    (Go 1.24 or newer). No Docker engine is needed or installed: the tests run
#    `docker-compose config`, which validates docker-compose.yml without a daemon.
#    Skipped quickly when already there.
#
# The Python virtualenv is not handled here (the Makefile does that).
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${DNC_KAFKA_VERSION:-3.9.1}"
# Pinned; infra/toxiproxy.py's TOXIPROXY_VERSION must be the same (a test checks it).
TOXIPROXY_VERSION="2.12.0"
# Pinned; tests/test_compose.py's COMPOSE_VERSION must be the same (a test checks it). Compose
# v2 became v5 (module github.com/docker/compose/v5); 5.0.2 is the newest release `go install`
# accepts: later ones (and v2 from 2.35.1 on) carry an `exclude` directive in their go.mod, which
# `go install module@version` refuses.
COMPOSE_VERSION="5.0.2"
CACHE_DIR="${DNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dnc}"
PACKAGES=(redis-server redis-tools openjdk-17-jre-headless maven python3-venv postgresql prometheus)

# --- 1. Debian packages --------------------------------------------------------------
is_installed() {
    # `dpkg -s` alone also succeeds for removed-but-configured packages; check the status.
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

missing=()
if command -v dpkg >/dev/null 2>&1; then
    for pkg in "${PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
else
    say "dpkg not found (not a Debian system?); skipping package checks."
fi

if ((${#missing[@]} > 0)); then
    if [[ ${EUID} -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "missing packages (${missing[*]}) and not root, and sudo is not available; run this script as root."
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: ${missing[*]}"
    say "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed; check access to the Debian mirrors."
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
else
    say "Debian packages already installed: ${PACKAGES[*]}"
fi

for cmd in redis-server java mvn; do
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [[ $cmd == redis-server && -x /usr/bin/redis-server ]]; then
        die "'$cmd' is still not on PATH after installing packages."
    fi
done

pg_bindir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n1)"
if [[ -z $pg_bindir || ! -x $pg_bindir/postgres || ! -x $pg_bindir/initdb ]]; then
    die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin after installing packages."
fi
say "PostgreSQL server binaries: ${pg_bindir}"
for cmd in prometheus promtool; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/bin/$cmd ]] \
        || die "'$cmd' is still not on PATH after installing packages."
done
# System services the packages start would hold the ports `dnc up` uses; see the header.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    for unit in prometheus postgresql; do
        systemctl is-active --quiet "$unit" || continue
        if [[ " ${missing[*]} " == *" ${unit} "* ]]; then
            say "stopping and disabling the system service '$unit' the package install started"
            "${SUDO[@]}" systemctl disable --now "$unit" \
                || die "could not stop the system service '$unit'; run: systemctl disable --now $unit"
        else
            say "note: the system service '$unit' is running and may hold the port \`dnc up\` uses;" \
                "stop it (systemctl disable --now $unit) or see infra/setup.sh for other ports."
        fi
    done
fi

java_bin="java"
if [[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME}/bin/java ]]; then
    java_bin="${JAVA_HOME}/bin/java"
fi
java_major="$("$java_bin" -XshowSettings:properties -version 2>&1 \
    | sed -n 's/^ *java\.specification\.version = \([0-9.]*\).*/\1/p' | head -n1)"
java_major="${java_major#1.}"
java_major="${java_major%%.*}"
if [[ -z $java_major ]]; then
    say "warning: could not determine the Java version of '$java_bin'."
elif ((java_major < 17)); then
    die "'$java_bin' is Java ${java_major}; Kafka needs Java 17 or newer (set JAVA_HOME to a JDK/JRE 17+)."
else
    say "Java ${java_major} at $(command -v "$java_bin" || echo "$java_bin")"
fi

# --- 2. Kafka broker jars -------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install python3."
say "ensuring Kafka ${KAFKA_VERSION} broker jars (Maven Central, cached after the first run)"
libs="$(cd "$REPO_ROOT" && "$PYTHON" -c '
import sys
from infra.services import ServiceError, ensure_kafka_jars
try:
    print(ensure_kafka_jars(sys.argv[1]))
except ServiceError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
' "$KAFKA_VERSION")" || die "could not fetch the Kafka ${KAFKA_VERSION} jars (see the message above)."
say "Kafka ${KAFKA_VERSION} jars: ${libs} ($(find "$libs" -name '*.jar' | wc -l) jars)"

# --- 3. Toxiproxy server ---------------------------------------------------------------
# Built into temporary directories and renamed into place: an interrupted build never
# leaves a half-written binary behind.
build_dirs=()
trap 'rm -rf "${build_dirs[@]}"' EXIT

# Sets go_bin and go_version to the first Go 1.<$2>+ of: the one on PATH, /usr/local/go/bin/go
# (the official tarball's); dies naming what it found when none is recent enough to build $1.
find_go() {
    local what="$1" min_minor="$2" candidate go_minor
    local too_old=()
    for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
        [[ -n $candidate && -x $candidate ]] || continue
        go_version="$("$candidate" env GOVERSION 2>/dev/null || true)" # e.g. go1.26.8
        go_minor="$(sed -n 's/^go1\.\([0-9]*\).*/\1/p' <<<"$go_version")"
        if [[ -n $go_minor ]] && ((go_minor >= min_minor)); then
            go_bin="$candidate"
            return 0
        fi
        too_old+=("$candidate (${go_version:-unknown version})")
    done
    ((${#too_old[@]} == 0)) || die "${what} needs Go 1.${min_minor} or newer;" \
        "found only: ${too_old[*]}. Install a newer Go and retry."
    die "Go is needed to build ${what} but was not found on PATH or at /usr/local/go/bin/go;" \
        "install Go 1.${min_minor} or newer and retry."
}

# A fresh temporary directory beside $1 (removed at exit), in build_dir.
new_build_dir() {
    mkdir -p "${1%/*}"
    build_dir="$(mktemp -d "${1%/*}/.build-XXXXXX")"
    build_dirs+=("$build_dir")
}

toxiproxy_dir="${CACHE_DIR}/toxiproxy/${TOXIPROXY_VERSION}"
toxiproxy_bin="${toxiproxy_dir}/server"
toxiproxy_ok() {
    [[ -x $toxiproxy_bin ]] \
        && [[ "$("$toxiproxy_bin" -version 2>/dev/null)" == *"version ${TOXIPROXY_VERSION}" ]]
}
if toxiproxy_ok; then
    say "Toxiproxy ${TOXIPROXY_VERSION} already installed: ${toxiproxy_bin}"
else
    find_go "Toxiproxy ${TOXIPROXY_VERSION}" 23
    say "building Toxiproxy ${TOXIPROXY_VERSION} with ${go_version} (first run only)"
    new_build_dir "$toxiproxy_dir"
    # The version is stamped in so that `server -version` and GET /version report it.
    GOBIN="$build_dir" GOTOOLCHAIN=local "$go_bin" install -trimpath \
        -ldflags "-X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION}" \
        "github.com/Shopify/toxiproxy/v2/cmd/server@v${TOXIPROXY_VERSION}" \
        || die "could not build Toxiproxy ${TOXIPROXY_VERSION} (see the Go output above;" \
            "check access to the Go module proxy)."
    mkdir -p "$toxiproxy_dir"
    mv -f "$build_dir/server" "$toxiproxy_bin"
    toxiproxy_ok || die "${toxiproxy_bin} does not report version ${TOXIPROXY_VERSION}."
    say "Toxiproxy ${TOXIPROXY_VERSION}: ${toxiproxy_bin}"
fi

# --- 4. Docker Compose ------------------------------------------------------------------
compose_dir="${CACHE_DIR}/compose/${COMPOSE_VERSION}"
compose_bin="${compose_dir}/docker-compose"
compose_ok() {
    [[ -x $compose_bin ]] && [[ "$("$compose_bin" version --short 2>/dev/null)" == "${COMPOSE_VERSION}" ]]
}
if compose_ok; then
    say "Docker Compose ${COMPOSE_VERSION} already installed: ${compose_bin}"
else
    find_go "Docker Compose ${COMPOSE_VERSION}" 24
    say "building Docker Compose ${COMPOSE_VERSION} with ${go_version} (first run only, about 2 minutes)"
    new_build_dir "$compose_dir"
    # The main package is ./cmd (upstream's Makefile builds it as docker-compose, stamping the
    # version the same way), so `go install` names the binary `cmd`.
    GOBIN="$build_dir" GOTOOLCHAIN=local "$go_bin" install -trimpath \
        -ldflags "-w -X github.com/docker/compose/v5/internal.Version=v${COMPOSE_VERSION}" \
        "github.com/docker/compose/v5/cmd@v${COMPOSE_VERSION}" \
        || die "could not build Docker Compose ${COMPOSE_VERSION} (see the Go output above;" \
            "check access to the Go module proxy)."
    mkdir -p "$compose_dir"
    mv -f "$build_dir/cmd" "$compose_bin"
    compose_ok || die "${compose_bin} does not report version ${COMPOSE_VERSION}."
    say "Docker Compose ${COMPOSE_VERSION}: ${compose_bin}"
fi
say "done"
