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
#
# The Python virtualenv is not handled here (the Makefile does that).
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${DNC_KAFKA_VERSION:-3.9.1}"
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
say "done"
