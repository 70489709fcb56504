"""What a person sees when Kafka is away or refuses them: one sentence (what, where, what
to do) and an exit code that says it; never librdkafka's raw log lines (``%3|...``),
which only --verbose shows (through Python logging)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.launch.kafka_config import KafkaSecurity
from infra.launch.stack import LocalStack
from tests.conftest import private_stack
from tests.harness import REPO, TENANTS_TOML

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SUPERUSER = "dnc-superuser"
PHONE = "06 12 34 56 78"


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[LocalStack, KafkaSecurity]]:
    """A broker with SASL/SCRAM on (as `dnc up` runs it), and a Redis."""
    security = KafkaSecurity(SUPERUSER, secrets.token_urlsafe(16))
    with private_stack("dnc-test-cli-", kafka_security=security) as stack:
        yield stack, security


def free_port() -> int:
    """A loopback port nothing listens on (bound, read back, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dnc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real `dnc` command, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "dnc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )


def base_env(tmp_path: Path, bootstrap: str, redis_url: str) -> dict[str, str]:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(TENANTS_TOML)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DNC_DATA_DIR": str(tmp_path / "data"),
        "DNC_TENANTS_FILE": str(tenants),
        "DNC_KAFKA_BOOTSTRAP": bootstrap,
        "DNC_REDIS_URL": redis_url,
        "DNC_PUBLISH_TIMEOUT_SECONDS": "3",
    }


def assert_no_raw_client_lines(run: subprocess.CompletedProcess[str]) -> None:
    lines = (run.stdout + run.stderr).splitlines()
    raw = [line for line in lines if line.startswith("%")]
    assert not raw, f"raw librdkafka lines: {raw[:3]}"
    assert "KafkaError{" not in run.stdout + run.stderr


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.timeout(120)
def test_a_stopped_broker_is_one_sentence_and_exit_2(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path
) -> None:
    stack, _ = secured
    port = free_port()
    env = base_env(tmp_path, f"127.0.0.1:{port}", stack.redis_url)
    sentence = f"Kafka is unreachable at 127.0.0.1:{port}: start it (`dnc up`"

    status = dnc(env, "status")
    assert_no_raw_client_lines(status)
    assert status.returncode == 2, status.stdout + status.stderr
    assert status.stdout.count(sentence) == 1, status.stdout
    assert status.stdout.splitlines()[0].startswith(sentence)
    assert status.stderr == ""

    oppose = dnc(env, "oppose", PHONE, "--tenant", "acme")
    assert_no_raw_client_lines(oppose)
    assert oppose.returncode == 2, oppose.stdout + oppose.stderr
    assert one_line(oppose.stderr).startswith(f"not recorded: {sentence}")
    assert oppose.stdout == ""  # no event id: nothing was recorded

    check = dnc(env, "check", PHONE, "--tenant", "acme")  # the view alone: Kafka not asked
    assert_no_raw_client_lines(check)
    assert check.returncode == 2
    assert one_line(check.stdout).startswith("unavailable: view not ready")
    assert check.stderr == ""

    # --verbose shows what librdkafka said, through Python logging (never its raw format).
    verbose = dnc(env, "--verbose", "oppose", PHONE, "--tenant", "acme")
    assert_no_raw_client_lines(verbose)
    assert verbose.returncode == 2
    assert "Connection refused" in verbose.stderr and sentence in verbose.stderr


@pytest.mark.timeout(120)
def test_a_wrong_password_is_one_sentence_and_exit_4(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path
) -> None:
    stack, security = secured
    env = base_env(tmp_path, stack.bootstrap_servers, stack.redis_url) | {
        "DNC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DNC_KAFKA_SASL_MECHANISM": security.mechanism,
        "DNC_KAFKA_SASL_USERNAME": SUPERUSER,
        "DNC_KAFKA_SASL_PASSWORD": "not-" + security.password,
    }
    sentence = (
        f"Kafka at {stack.bootstrap_servers} refused the credentials of {SUPERUSER} "
        f"({security.mechanism}): check DNC_KAFKA_SASL_USERNAME and DNC_KAFKA_SASL_PASSWORD"
    )

    status = dnc(env, "status")
    assert_no_raw_client_lines(status)
    assert status.returncode == 4, status.stdout + status.stderr
    assert status.stdout.count(sentence) == 1, status.stdout
    assert status.stderr == ""

    oppose = dnc(env, "oppose", PHONE, "--tenant", "acme")
    assert_no_raw_client_lines(oppose)
    assert oppose.returncode == 4, oppose.stdout + oppose.stderr
    assert one_line(oppose.stderr).startswith(f"not recorded: {sentence}")

    check = dnc(env, "check", PHONE, "--tenant", "acme")
    assert_no_raw_client_lines(check)
    assert check.returncode == 2
    assert one_line(check.stdout).startswith("unavailable: view not ready")

    # The right password: status says Kafka is reachable, and still prints no raw line.
    right = dnc(env | {"DNC_KAFKA_SASL_PASSWORD": security.password}, "status", "--probe")
    assert_no_raw_client_lines(right)
    assert right.returncode == 2  # no pipeline on it yet: not healthy, and says why
    assert "refused" not in right.stdout
    no_topic = f"Kafka at {stack.bootstrap_servers}: no topic dnc.oppositions.v1 yet: the worker"
    assert right.stdout.startswith(no_topic), right.stdout


def test_the_exit_codes_are_in_the_help() -> None:
    shown = dnc({"PATH": "/usr/bin:/bin", "DNC_DATA_DIR": "/nonexistent"}, "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for code in ("0 done", "1 do not call", "2 unavailable", "3 bad input", "4 refused"):
        assert code in text, text
    assert "--verbose" in text
