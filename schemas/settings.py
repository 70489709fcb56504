"""The one settings model (pydantic-settings, ``DNC_`` prefix) with safe local defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VIEW_KEY = "local-development-view-key-change-me"
VIEW_KEY_FILE = "view.key"  # in the data directory: the key `dnc up` generated for its stack
AUTHORITY_KEY_FILE = "authority.key"  # `dnc up`'s key for its workers (read by nothing else)
KAFKA_CREDENTIALS_FILE = "kafka-credentials.json"  # `dnc up`'s SASL/SCRAM passwords
REDIS_CLUSTER_FILE = "redis-cluster.json"  # `dnc up --redis-cluster`: the seed node's address
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
# librdkafka's own log lines (every client of this project) go to this Python logger, never
# to stderr in librdkafka's raw format; the CLI shows them only with --verbose.
KAFKA_LOGGER = "dnc.kafka"
BUNDLED_TENANTS_FILE = Path(__file__).resolve().parent.parent / "infra" / "tenants.toml"


def default_data_dir() -> Path:
    """Where `dnc up` keeps its services' data unless DNC_DATA_DIR says otherwise."""
    return Path.home() / ".local" / "state" / "dnc"


class Settings(BaseSettings):
    """Every knob of the pipeline; read from ``DNC_*`` environment variables.

    The defaults point at the stack ``dnc up`` starts on loopback, so every command
    finds it with no configuration.
    """

    model_config = SettingsConfigDict(env_prefix="DNC_", frozen=True, extra="ignore")

    # Where the services are.
    kafka_bootstrap: str = Field(DEFAULT_KAFKA_BOOTSTRAP, description="Kafka bootstrap servers")
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Redis URL (may carry a password)"
    )
    redis_cluster: bool = Field(
        False,
        description="DNC_REDIS_URL is one node of a Redis Cluster (the clients discover the "
        "others); the view is then written in DNC_VIEW_SHARDS hash-tagged shards",
    )
    kafka_version: str = Field("3.9.1", description="Kafka version `dnc up` runs")
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="where `dnc up` keeps service data",
    )

    # Contracts.
    tenants_file: Path = Field(BUNDLED_TENANTS_FILE, description="TOML file declaring tenants")
    oppositions_topic: str = "dnc.oppositions.v1"
    admin_topic: str = Field(
        "dnc.admin.v1",
        description="admin actions (lifts): only the admin principal may write it (Kafka ACLs)",
    )
    consents_topic: str = Field(
        "dnc.consents.v1",
        description="consents to prospecting calls: only the consent recorder principal may "
        "write it (Kafka ACLs)",
    )
    suppressions_topic: str = "dnc.suppressions.v1"
    dead_letter_topic: str = "dnc.dead-letter.v1"
    partitions: int = Field(3, ge=1, description="partitions of the oppositions topic")
    replication_factor: int = Field(1, ge=1)
    max_event_bytes: int = Field(16 * 1024, ge=512, description="largest accepted event")

    # The Redis view.
    view_key: SecretStr = Field(
        SecretStr(DEFAULT_VIEW_KEY),
        description="secret key of the view's keyed hash; rotating it means a rebuild. Unset: "
        "the key `dnc up` generated in DATA_DIR/view.key, else a public development key that "
        "the worker refuses unless DNC_ALLOW_DEVELOPMENT_VIEW_KEY=true",
    )
    authority_key: SecretStr | None = Field(
        None,
        min_length=16,
        description="secret of the workers alone: they sign the lifts they forward from the "
        "admin topic, and the cutoffs of dead-lettered admin actions, with it. Unset: the "
        "worker refuses to start (unless DNC_ALLOW_DEVELOPMENT_AUTHORITY_KEY=true); `dnc up` "
        "generates one in DATA_DIR/authority.key",
    )
    allow_development_view_key: bool = Field(
        False, description="let the worker run with the public development view key (tests, demos)"
    )
    allow_development_authority_key: bool = Field(
        False,
        description="let the worker run without DNC_AUTHORITY_KEY, on a key derived from the "
        "view key, which every holder of the view key could sign lifts with (tests, demos)",
    )
    max_staleness_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="a check answers callable only if every partition is applied up to at most "
        "this many seconds ago (Redis's clock); otherwise unavailable",
    )
    view_buckets: int = Field(
        1024, ge=1, le=1 << 20, description="default buckets per scope; changing it means a rebuild"
    )
    view_shards: int | None = Field(
        None,
        ge=0,
        le=16384,
        description="hash-tagged shards of the view (each with its own copy of the view's "
        "metadata, so a check is one round trip to one node); 0: untagged keys (one Redis "
        "server only: refused with DNC_REDIS_CLUSTER=true); unset: 0, or 48 on a Redis "
        "Cluster. Changing it means a rebuild",
    )

    # The worker.
    worker_group: str = Field("dnc-worker", description="Faust app id and consumer group")
    worker_instance_id: str | None = Field(
        None,
        description="static group membership (Kafka's group.instance.id): a worker restarted "
        "with the same id takes its partitions back at once instead of after the session "
        "timeout. Give each worker its own stable id (e.g. a StatefulSet pod name); unset: "
        "dynamic membership",
    )
    table_dir: Path | None = Field(
        None,
        description="where the worker keeps its table (RocksDB, one database per partition: "
        "a restart replays only the changelog after what it holds). Default: DATA_DIR/tables/"
        "<group>/<instance id or worker id>. Keep it on a persistent volume of its own per "
        "worker (a StatefulSet's volume claim); losing it only makes the next start replay "
        "the whole changelog",
    )
    table_standby_replicas: int = Field(
        1,
        ge=0,
        description="other workers keeping a standby copy of each partition's table, fed "
        "from its changelog, so that a failover replays only a short tail",
    )
    worker_metrics_port: int = Field(9310, ge=0, le=65535, description="0 picks a free port")
    metrics_host: str = Field("127.0.0.1", description="address the /metrics endpoints bind")
    batch_max_events: int = Field(
        2000, ge=1, description="most events applied in one batch (a batch is what was fetched)"
    )
    commit_interval_seconds: float = Field(1.0, gt=0)
    session_timeout_seconds: float = Field(
        10.0, ge=6, description="a crashed worker's partitions move after this long"
    )
    heartbeat_interval_seconds: float = Field(
        1.0, gt=0, description="view maintenance: rebuild checks, loss detection"
    )
    freshness_interval_seconds: float = Field(
        0.25, gt=0, description="how often the worker reads the log's end and vouches for the view"
    )
    expiry_interval_seconds: float = Field(1.0, gt=0, description="cooldown expiry resolution")
    retry_backoff_max_seconds: float = Field(5.0, gt=0)
    shutdown_timeout_seconds: float = Field(
        30.0, gt=0, description="a graceful stop taking longer exits anyway (nothing is lost)"
    )
    stall_after_seconds: float = Field(
        30.0, gt=0, description="input waiting this long without progress is logged as a stall"
    )
    stall_exit_after_seconds: float = Field(
        120.0, ge=0, description="stalled this long: exit for the supervisor to restart (0: never)"
    )
    rebalance_give_up_seconds: float = Field(
        20.0,
        gt=0,
        description="a rebalance waiting this long for a batch the worker cannot finish (Redis "
        "or Kafka unreachable): the worker exits for its supervisor to restart it, rather than "
        "finish that batch after another member took its partitions",
    )
    audit_states_per_second: float = Field(
        5000.0,
        ge=0,
        description="the worker's continuous reconciliation: states compared with the view per "
        "second (a full pass over N states takes N / this seconds); 0: off",
    )

    # The dialer check.
    check_timeout_seconds: float = Field(0.5, gt=0, description="Redis socket timeout for checks")
    bulk_chunk_size: int = Field(1000, ge=1, description="members per SMISMEMBER")

    # Producers.
    publish_timeout_seconds: float = Field(15.0, gt=0)

    log_level: str = "INFO"

    # Kafka security (librdkafka names; the local stack runs PLAINTEXT). Redis AUTH/ACL and
    # TLS need no setting: put them in DNC_REDIS_URL (redis://user:password@host:6379/0,
    # rediss://... for TLS).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="security.protocol of every Kafka client"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="sasl.mechanism when the protocol is SASL_*"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle that signs the brokers' certificates (SSL, SASL_SSL)"
    )

    # The HTTP gateway (`dnc gateway`).
    gateway_host: str = Field("127.0.0.1", description="address the gateway binds")
    gateway_port: int = Field(8080, ge=0, le=65535, description="gateway port (0 picks a free one)")
    audit_topic: str = Field(
        "dnc.audit.v1", description="topic of the gateway's audit records (who did what, when)"
    )
    audit_timeout_seconds: float = Field(
        5.0, gt=0, description="longest wait for Kafka to acknowledge an audit record (then 503)"
    )
    gateway_bulk_check_limit: int = Field(
        1000, ge=1, le=100_000, description="most numbers in one POST /v1/checks"
    )
    gateway_max_body_bytes: int = Field(
        256 * 1024, ge=1024, description="largest request body the gateway reads (413 beyond)"
    )
    gateway_request_timeout_seconds: float = Field(
        30.0, gt=0, description="longest a request may take: 408 for a slow body, 503 otherwise"
    )
    gateway_rate_limit_per_second: float = Field(
        200.0, gt=0, description="sustained requests per second per token, per gateway process"
    )
    gateway_rate_limit_burst: int = Field(
        400, ge=1, description="requests a token may send at once before the rate applies"
    )
    gateway_subject_scan_seconds: float = Field(
        10.0, gt=0, description="longest a subject access request reads the event log"
    )
    gateway_subject_scan_max_messages: int = Field(
        5_000_000, ge=1, description="most log messages one subject access request reads"
    )
    gateway_subject_scan_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="subject access requests served at once, on threads of their own (never "
        "the ones that serve dialers' checks)",
    )
    gateway_subject_scan_queue: int = Field(
        4, ge=0, le=1024, description="subject access requests waiting beyond those; then 503"
    )
    gateway_cors_origins: list[str] = Field(
        default_factory=list,
        description="web origins of agent desktops allowed to call the gateway (JSON list, e.g. "
        '["https://desk.example"]); empty: no CORS',
    )

    # The reference-list sync (`dnc sync`) and the local PostgreSQL it writes to.
    postgres_dsn: SecretStr = Field(
        SecretStr("postgresql://dnc@127.0.0.1:5432/dnc"),
        description="PostgreSQL of the reference list (sinks without a dsn of their own)",
    )
    sync_group_prefix: str = Field(
        "dnc-sync", description="consumer group of a tenant's sync lane: PREFIX-TENANT"
    )
    sync_metrics_port: int = Field(9311, ge=0, le=65535, description="0 picks a free port")
    sync_batch_max: int = Field(500, ge=1, description="most changes handed to a sink at once")
    sync_max_buffered: int = Field(
        50_000, ge=1, description="changes read ahead per tenant while its sink is behind or down"
    )
    sync_retry_initial_seconds: float = Field(0.2, gt=0, description="first retry delay")
    sync_retry_max_seconds: float = Field(30.0, gt=0, description="longest retry delay")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="one webhook request")
    webhook_max_in_flight: int = Field(
        16, ge=1, le=1024, description="most webhook requests in flight per tenant"
    )
    reference_dead_letter_topic: str = Field(
        "dnc.reference-list.dead-letter.v1",
        description="changes a sink refused (4xx) or that cannot be read, with the reason",
    )

    # Observability of the local stack.
    prometheus_port: int = Field(9090, ge=0, le=65535, description="Prometheus `dnc up` runs")
    demo_metrics_port: int = Field(9312, ge=0, le=65535, description="/metrics of `dnc up --demo`")

    @model_validator(mode="before")
    @classmethod
    def _view_key_of_the_local_stack(cls, data: Any) -> Any:
        """No DNC_VIEW_KEY: use the key `dnc up` generated in the data directory, if any."""
        if isinstance(data, dict) and not data.get("view_key"):
            key_file = Path(data.get("data_dir") or default_data_dir()) / VIEW_KEY_FILE
            if key_file.is_file():
                data = {**data, "view_key": key_file.read_text().strip()}
        return data

    @model_validator(mode="before")
    @classmethod
    def _kafka_credentials_of_the_local_stack(cls, data: Any) -> Any:
        """No DNC_KAFKA_SECURITY_PROTOCOL: for the stack `dnc up` runs (same bootstrap), use
        the superuser it generated in the data directory (a local operator's shell)."""
        if not isinstance(data, dict) or data.get("kafka_security_protocol"):
            return data
        path = Path(data.get("data_dir") or default_data_dir()) / KAFKA_CREDENTIALS_FILE
        if not path.is_file():
            return data
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            return data
        bootstrap = data.get("kafka_bootstrap") or DEFAULT_KAFKA_BOOTSTRAP
        if found.get("bootstrap") != bootstrap or not found.get("superuser"):
            return data
        return {
            **data,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": "dnc-superuser",
            "kafka_sasl_password": found["superuser"],
        }

    @model_validator(mode="before")
    @classmethod
    def _redis_cluster_of_the_local_stack(cls, data: Any) -> Any:
        """No DNC_REDIS_CLUSTER: the Redis `dnc up --redis-cluster` runs at this address (the
        data directory says so) is a Redis Cluster, so a local operator's shell reads it
        as one."""
        if not isinstance(data, dict) or "redis_cluster" in data:
            return data
        path = Path(data.get("data_dir") or default_data_dir()) / REDIS_CLUSTER_FILE
        if not path.is_file():
            return data
        try:
            seed = json.loads(path.read_text()).get("seed")
        except (OSError, ValueError, AttributeError):
            return data
        url = data.get("redis_url") or "redis://127.0.0.1:6379/0"
        url = url.get_secret_value() if isinstance(url, SecretStr) else str(url)
        parts = urlsplit(url)
        if f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}" != seed:
            return data
        return {**data, "redis_cluster": True}

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "DNC_KAFKA_SECURITY_PROTOCOL=SASL_* needs DNC_KAFKA_SASL_MECHANISM, "
                "DNC_KAFKA_SASL_USERNAME and DNC_KAFKA_SASL_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _a_redis_cluster_has_a_sharded_view(self) -> Settings:
        # A check reads the view's metadata and the number's members in one script, which
        # needs them in one slot: only the sharded layout's hash tags put them there.
        if self.redis_cluster and self.view_shards == 0:
            raise ValueError(
                "DNC_REDIS_CLUSTER=true with DNC_VIEW_SHARDS=0: on a Redis Cluster the view's "
                "metadata and its members would live on different nodes, and no check could "
                "read them together; unset DNC_VIEW_SHARDS (48 shards on a Redis Cluster) or "
                "set it above 0, or set DNC_REDIS_CLUSTER=false for one Redis server"
            )
        return self

    def worker_table_dir(self, worker_id: str) -> Path:
        """The worker's table directory (DNC_TABLE_DIR, else one per worker under the data
        directory, named by its static membership id, else by ``worker_id``)."""
        if self.table_dir is not None:
            return self.table_dir
        instance = self.worker_instance_id or worker_id
        return self.data_dir / "tables" / self.worker_group / instance

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka options for every Kafka client: its log lines into Python logging
        (:data:`KAFKA_LOGGER`), and the security options (none for PLAINTEXT)."""
        config: dict[str, Any] = {"logger": logging.getLogger(KAFKA_LOGGER)}
        if self.kafka_security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.kafka_security_protocol.lower()
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # checked by the validator
            config["sasl.mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile is not None:
            config["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        return config

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        """Host and port of the first bootstrap server (what `dnc up` binds)."""
        first = self.kafka_bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def shards(self) -> int:
        """The view's shard count (DNC_VIEW_SHARDS, or its default for the kind of Redis)."""
        if self.view_shards is not None:
            return self.view_shards
        return 48 if self.redis_cluster else 0

    @property
    def redis_host_port(self) -> tuple[str, int]:
        """Host and port of the Redis URL (what `dnc up` binds)."""
        parts = urlsplit(self.redis_url.get_secret_value())
        return parts.hostname or "127.0.0.1", parts.port or 6379

    @property
    def uses_default_view_key(self) -> bool:
        """True while the view key is the public development default."""
        return self.view_key.get_secret_value() == DEFAULT_VIEW_KEY
