"""The Kafka broker's jars: fetched once per version by Maven, cached, checked.

The jars come from Maven Central through ``infra/kafka/pom.xml``
(``mvn dependency:copy-dependencies``) and are cached per version under
``~/.cache/dnc/kafka/<version>/libs`` (see :func:`kafka_cache_dir`).  Kafka 3.9.x and 4.x
are both supported (the logging backend differs: reload4j for 3.x, Log4j 2 for 4.x).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from infra.cache import cache_root
from infra.launch.process import ServiceError, service_error

__all__ = ["KAFKA_DEFAULT_VERSION", "ensure_kafka_jars", "kafka_cache_dir", "kafka_major"]

KAFKA_DEFAULT_VERSION = "3.9.1"
"""Kafka release used when none is given (override per call or with ``DNC_KAFKA_VERSION``
in the callers that read it)."""

log = logging.getLogger("dnc.infra")

_POM_PATH = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
_MVN_TIMEOUT = 900.0
_LOG_TAIL_LINES = 40


def kafka_cache_dir(version: str) -> Path:
    """Directory holding the broker jars of Kafka ``version``.

    ``$DNC_CACHE_DIR/kafka/<version>/libs`` if ``DNC_CACHE_DIR`` is set, else
    ``$XDG_CACHE_HOME/dnc/kafka/<version>/libs``, else ``~/.cache/dnc/kafka/<version>/libs``.
    """
    return cache_root() / "kafka" / version / "libs"


def kafka_major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        raise service_error(
            f"{version!r} is not a Kafka version.",
            "pass a release number such as 3.9.1 or 4.1.1.",
        ) from None


def _kafka_jar(libs: Path, version: str) -> Path:
    return libs / f"kafka_2.13-{version}.jar"


def ensure_kafka_jars(version: str = KAFKA_DEFAULT_VERSION) -> Path:
    """Return the directory with every jar the Kafka ``version`` broker needs.

    Idempotent and cheap when the cache is populated.  Otherwise runs Maven on
    ``infra/kafka/pom.xml`` into a temporary sibling directory and renames it into place,
    so a concurrent or interrupted run never leaves a half-filled cache.
    """
    libs = kafka_cache_dir(version)
    if _kafka_jar(libs, version).is_file():
        return libs
    major = kafka_major(version)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise service_error(
            "Maven (mvn) is needed to download the Kafka broker jars but is not installed.",
            "run `make setup` (infra/setup.sh) or `apt-get install maven`.",
        )
    if not _POM_PATH.is_file():
        raise service_error(
            f"the Kafka POM is missing at {_POM_PATH}.",
            "restore infra/kafka/pom.xml from the repository.",
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(_POM_PATH),
        f"-Dkafka.version={version}",
        f"-Dkafka.logging={'log4j2' if major >= 4 else 'reload4j'}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
    ]
    log.info("downloading Kafka %s jars with Maven into %s", version, libs)
    started = time.monotonic()
    try:
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_MVN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise service_error(
                f"Maven did not finish downloading Kafka {version} within {_MVN_TIMEOUT:.0f} s.",
                "check access to Maven Central and run `make setup` again.",
            ) from None
        if result.returncode != 0 or not _kafka_jar(tmp, version).is_file():
            output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
            tail = "\n".join(output.strip().splitlines()[-_LOG_TAIL_LINES:])
            raise ServiceError(
                f"Maven could not fetch Kafka {version} (exit code {result.returncode}).\n"
                "  What to do: check that the version exists on Maven Central and that "
                "Maven Central is reachable, then retry.\n"
                f"  Command: {' '.join(cmd)}\n  --- last lines of Maven's output ---\n{tail}"
            )
        try:
            tmp.rename(libs)
        except OSError:
            # Someone else finished first; theirs is as good as ours.
            if not _kafka_jar(libs, version).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            libs.parent.rmdir()  # only succeeds if a failed download left it empty
    log.info("Kafka %s jars ready in %s (%.1f s)", version, libs, time.monotonic() - started)
    return libs
