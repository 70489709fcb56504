"""Session-scoped real services (Kafka KRaft from Maven jars, Redis), unique topics per test.

Markers are enforced: a test that uses the real services without declaring the marker
fails, so the fast unit suite can never silently depend on them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, settings

from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION
from infra.launch.redis_cluster import RedisCluster
from infra.launch.stack import LocalStack
from infra.postgres_service import start_postgres
from infra.toxiproxy import Toxiproxy, start_toxiproxy
from tests.harness import CONSENT_TENANTS_TOML, TENANTS_TOML, Pipeline
from tests.plain_view import PlainView

SERVICE_MARKERS = {"kafka", "redis", "pipeline", "postgres"}

# Hermetic: whatever `dnc up` left in the user's data directory (its view key, its Kafka
# credentials) must not reach the tests or the processes they start.
os.environ["DNC_DATA_DIR"] = tempfile.mkdtemp(prefix="dnc-test-data-")

# The suite shares two cores with Kafka, PostgreSQL and worker processes: generation speed
# and per-example time say nothing about correctness here, so they must not fail a run.
settings.register_profile(
    "shared-machine", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile("shared-machine")


@contextlib.contextmanager
def private_stack(prefix: str, **options: Any) -> Iterator[LocalStack]:
    """Real Kafka and Redis (or their clusters: ``brokers=3``, ``redis_cluster=True``) on
    free loopback ports, in a temporary directory removed at the end."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    version = os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION)
    stack = LocalStack(base, kafka_version=version, partitions=3, **options)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """Real Kafka and Redis on free loopback ports, in a temporary directory."""
    with private_stack("dnc-test-stack-") as stack:
        yield stack


@pytest.fixture(scope="module")
def kafka_cluster_stack() -> Iterator[LocalStack]:
    """A 3-broker KRaft cluster (RF 3, min.insync.replicas 2) and a plain Redis, private to
    one module: its tests kill brokers, which must not disturb the others (about 15 s)."""
    with private_stack("dnc-test-cluster-", brokers=3) as stack:
        yield stack


@pytest.fixture(scope="module")
def redis_cluster_stack() -> Iterator[LocalStack]:
    """Kafka and a Redis Cluster (3 masters, a replica each), private to one module: its
    tests kill Redis masters."""
    with private_stack("dnc-test-rc-stack-", redis_cluster=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster (3 masters, a replica each) private to one module (about 8 s)."""
    base = Path(tempfile.mkdtemp(prefix="dnc-test-redis-cluster-"))
    cluster = RedisCluster(base)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _require_marker(request: pytest.FixtureRequest, marker: str) -> None:
    if (
        request.node.get_closest_marker(marker) is None
        and request.node.get_closest_marker("pipeline") is None
    ):
        pytest.fail(f"this test uses the real {marker} service: mark it @pytest.mark.{marker}")


@pytest.fixture
def redis_client(local_stack: LocalStack, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A client of the real Redis, flushed before the test."""
    _require_marker(request, "redis")
    client = redis.Redis.from_url(local_stack.redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def view(local_stack: LocalStack, redis_client: redis.Redis) -> Iterator[PlainView]:
    """A ready, current view (tests/plain_view.py) on the real Redis, flushed afterwards."""
    plain = PlainView(local_stack.redis_url)
    yield plain
    plain.close()
    redis_client.flushall()
    redis_client.script_flush()


@pytest.fixture
def bootstrap(local_stack: LocalStack, request: pytest.FixtureRequest) -> str:
    """Bootstrap servers of the real Kafka."""
    _require_marker(request, "kafka")
    return local_stack.bootstrap_servers


@pytest.fixture
def pipeline(
    local_stack: LocalStack, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Pipeline]:
    """A pipeline with its own topics, consumer group and worker process (started on demand)."""
    _require_marker(request, "pipeline")
    yield from _fresh_pipeline(local_stack, tmp_path, TENANTS_TOML)


@pytest.fixture
def consent_pipeline(
    local_stack: LocalStack, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Pipeline]:
    """A pipeline whose tenant acme has one consent campaign (``optin-2027``: consent, 4
    attempts in 30 days, no calling hours), its worker running."""
    _require_marker(request, "pipeline")
    for p in _fresh_pipeline(local_stack, tmp_path, CONSENT_TENANTS_TOML):
        p.start_worker()
        yield p


def _fresh_pipeline(stack: LocalStack, tmp_path: Path, tenants_toml: str) -> Iterator[Pipeline]:
    """A pipeline on a Redis flushed first (a tenant's view keys are named alike in every
    test: counts of what a view holds must see this test's alone)."""
    client = redis.Redis.from_url(stack.redis_url)
    client.flushall()
    client.close()
    p = Pipeline(stack, tmp_path, prefix=f"t{uuid.uuid4().hex[:10]}", tenants_toml=tenants_toml)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def running_pipeline(
    local_stack: LocalStack,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    """One pipeline with its worker already running, shared by a module's tests."""
    if request.node.get_closest_marker("pipeline") is None:
        pytest.fail("modules using running_pipeline must set pytestmark = pytest.mark.pipeline")
    client = redis.Redis.from_url(local_stack.redis_url)
    client.flushall()
    client.close()
    p = Pipeline(
        local_stack, tmp_path_factory.mktemp("pipeline"), prefix=f"m{uuid.uuid4().hex[:10]}"
    )
    try:
        p.start_worker()
        yield p
    finally:
        p.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL (Debian's) on a free loopback port, for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="dnc-test-postgres-"))
    server = start_postgres(base / "pg", fast=True)
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def reference_db(postgres_server: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh database of the real PostgreSQL, dropped after the test."""
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail("this test uses the real PostgreSQL: mark it @pytest.mark.postgres")
    name = f"ref_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER dnc')
    dsn = postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
    yield dsn
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- toxiproxy
# Fault injection between a client and the real services (tests/test_toxiproxy.py and the
# fault tests).  One server for the session, started on first use only; each test creates
# its own proxies under unique names and deletes them.  It needs no marker of its own:
# the proxies lead to Kafka or Redis, whose markers the tests carry.


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[Toxiproxy]:
    """A real Toxiproxy server (built by `make setup`) on a free loopback port."""
    base = Path(tempfile.mkdtemp(prefix="dnc-test-toxiproxy-"))
    server = start_toxiproxy(base)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
