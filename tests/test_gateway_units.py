"""Unit tests of the gateway's pure pieces: tokens, roles, rate limit, audit hash, partitions."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from dnc.gateway_access import RateLimiter
from schemas.audit import AuditRecord, subject_ref
from schemas.errors import ConfigError
from schemas.partitioning import key_partition, murmur2
from schemas.settings import KAFKA_LOGGER, Settings
from schemas.tenants import TenantDirectory, issue_token
from schemas.tokens import ROLE_PERMISSIONS, Permission, Role, token_digest
from tests.harness import REPO, TENANTS_TOML


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS_TOML)
    return path


def test_issued_token_is_only_appended_hashed_and_authenticates(tenants_file: Path) -> None:
    before = tenants_file.read_text()
    _id, token = issue_token(tenants_file, "acme", Role.DIALER, "dialer-1")
    after = tenants_file.read_text()
    assert after.startswith(before)  # appended, never rewritten
    assert token not in after and token_digest(token) in after
    assert token.startswith("dnc_") and len(token) >= 40
    tenants = TenantDirectory.load(tenants_file)
    principal = tenants.authenticate(token)
    assert principal is not None
    assert (principal.tenant, principal.token_id, principal.role) == (
        "acme",
        "dialer-1",
        Role.DIALER,
    )
    assert tenants.authenticate(token + "x") is None
    assert tenants.authenticate("") is None
    assert tenants.authenticate("x" * 10_000) is None


def test_tokens_of_two_tenants_and_errors(tenants_file: Path) -> None:
    _a, acme = issue_token(tenants_file, "acme", Role.ADMIN)
    _g, globex = issue_token(tenants_file, "globex", Role.ADMIN)
    tenants = TenantDirectory.load(tenants_file)
    assert tenants.authenticate(acme).tenant == "acme"  # type: ignore[union-attr]
    assert tenants.authenticate(globex).tenant == "globex"  # type: ignore[union-attr]
    issue_token(tenants_file, "acme", Role.AGENT, "desk")
    with pytest.raises(ConfigError, match="already has a token"):
        issue_token(tenants_file, "acme", Role.AGENT, "desk")
    with pytest.raises(ConfigError, match="must match"):
        issue_token(tenants_file, "acme", Role.AGENT, "bad id!")
    with pytest.raises(Exception, match="unknown tenant"):
        issue_token(tenants_file, "initech", Role.AGENT)


def test_a_file_that_would_not_load_after_appending_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.acme]\ndefault_region = "FR"\ntokens = []\n')  # inline array
    before = path.read_text()
    with pytest.raises(ConfigError):
        issue_token(path, "acme", Role.AGENT)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tenants.toml"]


def test_token_create_command_prints_the_token_once(tenants_file: Path) -> None:
    env = {"DNC_TENANTS_FILE": str(tenants_file), "PATH": "/usr/bin:/bin"}
    made = subprocess.run(
        [sys.executable, "-m", "dnc", "token", "create", "--tenant", "globex", "--role", "agent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("dnc_") and token not in tenants_file.read_text()
    principal = TenantDirectory.load(tenants_file).authenticate(token)
    assert principal is not None and principal.role is Role.AGENT
    bad = subprocess.run(
        [sys.executable, "-m", "dnc", "token", "create", "--tenant", "globex", "--role", "root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert bad.returncode == 3 and "unknown role" in bad.stderr
    assert "agent, dialer, admin, consent" in bad.stderr
    recorder = subprocess.run(
        [sys.executable, "-m", "dnc", "token", "create", "--tenant", "acme", "--role", "consent",
         "--id", "consent-platform"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )  # fmt: skip
    assert recorder.returncode == 0, recorder.stderr
    principal = TenantDirectory.load(tenants_file).authenticate(recorder.stdout.strip())
    assert principal is not None
    assert (principal.role, principal.token_id) == (Role.CONSENT, "consent-platform")
    assert principal.may(Permission.RECORD_CONSENTS) and not principal.may(Permission.CHECK)


def test_role_permissions_are_the_documented_matrix() -> None:
    assert ROLE_PERMISSIONS[Role.AGENT] == {Permission.RECORD, Permission.READ_SCHEMA}
    assert ROLE_PERMISSIONS[Role.DIALER] == {
        Permission.CHECK,
        Permission.ATTEMPT,
        Permission.READ_SCHEMA,
    }
    assert ROLE_PERMISSIONS[Role.CONSENT] == {Permission.RECORD_CONSENTS, Permission.READ_SCHEMA}
    # A grant makes numbers callable: only a consent recorder grants, not even an admin.
    assert ROLE_PERMISSIONS[Role.ADMIN] == set(Permission) - {Permission.RECORD_CONSENTS}
    granting = {
        role for role, allowed in ROLE_PERMISSIONS.items() if Permission.RECORD_CONSENTS in allowed
    }
    assert granting == {Role.CONSENT}
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("t") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("t") == pytest.approx(0.5)
    assert limiter.take("other") == 0.0  # per token
    now[0] = 0.5
    assert limiter.take("t") == 0.0
    assert limiter.take("t") > 0


def test_subject_ref_is_keyed_and_never_the_number() -> None:
    a = subject_ref(b"key-1", "+33612345678")
    assert a == subject_ref(b"key-1", "+33612345678")
    assert a != subject_ref(b"key-2", "+33612345678")
    assert "612345678" not in a and len(a) == 32
    assert AuditRecord.outcome_of(202) == "succeeded"
    assert AuditRecord.outcome_of(403) == "refused"
    assert AuditRecord.outcome_of(503) == "failed"


def test_murmur2_matches_the_java_client() -> None:
    # Vectors from Apache Kafka's UtilsTest.testMurmur2.
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"abc": 479470107,
    }
    for data, signed in vectors.items():
        assert murmur2(data) == signed & 0xFFFFFFFF
    assert all(0 <= key_partition(f"acme:+3361234{i:04d}".encode(), 3) < 3 for i in range(100))


def test_kafka_security_settings() -> None:
    # librdkafka's log lines go to Python logging, never raw to stderr (shown with --verbose).
    quiet = {"logger": logging.getLogger(KAFKA_LOGGER)}
    assert Settings().kafka_client_config() == quiet
    sasl = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="dnc",
        kafka_sasl_password="s3cret",  # type: ignore[arg-type]
        kafka_ssl_cafile=Path("/etc/ssl/ca.pem"),
    )
    assert sasl.kafka_client_config() == {
        **quiet,
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "dnc",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ssl/ca.pem",
    }
    assert "s3cret" not in repr(sasl) and "s3cret" not in str(sasl.model_dump())
    with pytest.raises(ValidationError, match="DNC_KAFKA_SASL_MECHANISM"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT")


def test_subject_scans_run_on_a_bounded_pool_of_their_own() -> None:
    import asyncio
    import threading

    from consumers.subjects import SubjectScanPool, SubjectScansBusy

    pool = SubjectScanPool(workers=1, queue=1)
    release = threading.Event()
    threads: list[str] = []

    def scan(name: str) -> str:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return name

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(pool.run(scan, "first"))
        queued = asyncio.ensure_future(pool.run(scan, "queued"))
        await asyncio.sleep(0.1)
        with pytest.raises(SubjectScansBusy, match="2 subject access requests"):
            await pool.run(scan, "third")  # one running, one waiting: no more
        release.set()
        done = list(await asyncio.gather(first, queued))
        done.append(await pool.run(scan, "later"))  # places come back once scans end
        return done

    try:
        assert asyncio.run(scenario()) == ["first", "queued", "later"]
    finally:
        pool.close()
    assert all(name.startswith("subject-scan") for name in threads)
