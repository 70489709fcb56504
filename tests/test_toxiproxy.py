"""Toxiproxy between clients and the real services: a cut, latency or a black hole reaches
the clients behind the proxy, and only them."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Producer
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.launch.kafka_config import server_properties
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION
from infra.launch.process import ServiceError
from infra.launch.stack import LocalStack
from infra.topics import ensure_topics
from infra.toxiproxy import TOXIPROXY_VERSION, Proxy, Toxiproxy
from schemas.topics import TopicSpec
from tests.harness import REPO

MakeProxy = Callable[[str], Proxy]


@pytest.fixture
def make_proxy(toxiproxy: Toxiproxy) -> Iterator[MakeProxy]:
    """Creates proxies with unique names on the session's Toxiproxy; deletes them after."""
    made: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        proxy = toxiproxy.proxy(f"test-{uuid.uuid4().hex[:10]}", upstream)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        with contextlib.suppress(ServiceError):  # cleanup only; the server may be gone
            proxy.delete()


def timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


# --------------------------------------------------------------------------- no services


def test_setup_script_installs_the_version_the_module_runs() -> None:
    script = (REPO / "infra" / "setup.sh").read_text()
    pinned = re.search(r'^TOXIPROXY_VERSION="([^"]+)"$', script, re.MULTILINE)
    assert pinned is not None, "infra/setup.sh no longer pins TOXIPROXY_VERSION"
    assert pinned.group(1) == TOXIPROXY_VERSION


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))


def test_kafka_gets_the_proxied_listener_only_when_asked() -> None:
    plain = _props(server_properties(Path("/d"), "127.0.0.1", 9000, 9001, 3, 3))
    assert plain["listeners"] == "CLIENT://127.0.0.1:9000,CONTROLLER://127.0.0.1:9001"
    assert plain["advertised.listeners"] == "CLIENT://127.0.0.1:9000"
    assert "PROXIED" not in plain["listener.security.protocol.map"]

    proxied = _props(server_properties(Path("/d"), "127.0.0.1", 9000, 9001, 3, 3, 9002, 9003))
    assert proxied["listeners"] == (
        "CLIENT://127.0.0.1:9000,CONTROLLER://127.0.0.1:9001,PROXIED://127.0.0.1:9002"
    )
    assert proxied["advertised.listeners"] == ("CLIENT://127.0.0.1:9000,PROXIED://127.0.0.1:9003")
    assert proxied["listener.security.protocol.map"].endswith(",PROXIED:PLAINTEXT")
    assert proxied["inter.broker.listener.name"] == "CLIENT"


# --------------------------------------------------------------------------- redis


@pytest.mark.redis
def test_redis_behind_a_proxy_is_cut_delayed_and_black_holed(
    local_stack: LocalStack, make_proxy: MakeProxy
) -> None:
    assert local_stack.redis is not None
    proxy = make_proxy(local_stack.redis.address)
    client = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),  # every failure shows at once, none is retried away
    )
    try:
        assert client.ping()

        proxy.disable()  # the open connection is closed, a new one is refused
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert time.monotonic() - started < 1.5

        proxy.enable()
        assert client.ping()

        proxy.add_latency(200)
        assert timed(client.ping) >= 0.2
        proxy.remove_toxics()
        assert timed(client.ping) < 0.2

        proxy.add_timeout()  # black hole: the connection stays open, no answer comes
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert 0.9 <= time.monotonic() - started < 2.0
        proxy.remove_toxics()
        assert client.ping()  # on a new connection: the timed-out one was dropped
    finally:
        client.close()


# --------------------------------------------------------------------------- kafka

# A Kafka of its own rather than the session's `local_stack`: the proxied listener must
# advertise the proxy's port, so the session broker could only have it if every run
# started Toxiproxy before Kafka, making all Kafka tests depend on the Toxiproxy binary
# for the benefit of the few fault tests.  A one-partition broker starts in seconds.


def deliver(
    producer: Producer, topic: str, value: bytes, timeout: float = 15.0
) -> KafkaError | None:
    """Produce one message and wait for its delivery report: the error, or None."""
    reports: list[KafkaError | None] = []
    producer.produce(topic, value, on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(timeout)
    assert reports, f"no delivery report for {value!r} within {timeout} s"
    return reports[0]


def brokers_seen_by(client: Producer) -> set[str]:
    """Addresses the client was told to connect to for the broker(s)."""
    return {f"{b.host}:{b.port}" for b in client.list_topics(timeout=10).brokers.values()}


def consume_one(conf: dict[str, object], topic: str, timeout: float = 20.0) -> bytes | None:
    consumer = Consumer({**conf, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                value: bytes | None = msg.value()
                return value
        return None
    finally:
        consumer.close()


@pytest.mark.kafka
def test_kafka_clients_bootstrapped_at_the_proxy_are_cut_direct_clients_are_not(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy = make_proxy("127.0.0.1:9")  # the upstream is set once Kafka has its proxied port
    version = os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION)
    stack = LocalStack(
        tmp_path / "stack", kafka_version=version, partitions=1,
        kafka_advertised_proxy_port=proxy.port,
    )  # fmt: skip
    with stack:
        assert stack.kafka is not None
        proxy.set_upstream(stack.kafka.proxied_address)
        topic = f"toxi-{uuid.uuid4().hex[:10]}"
        ensure_topics(stack.bootstrap_servers, [TopicSpec(topic, 1, 1)], timeout=15)

        via_proxy: dict[str, object] = {
            "bootstrap.servers": proxy.listen,
            "reconnect.backoff.max.ms": 500,
        }
        producer = Producer({**via_proxy, "message.timeout.ms": 10000})
        direct = Producer({"bootstrap.servers": stack.bootstrap_servers})
        # The broker sends each client the address of the listener it came in through.
        assert brokers_seen_by(producer) == {proxy.listen}
        assert brokers_seen_by(direct) == {stack.bootstrap_servers}
        assert deliver(producer, topic, b"through the proxy") is None
        assert consume_one(via_proxy, topic) == b"through the proxy"

        proxy.disable()
        cut = Producer({**via_proxy, "message.timeout.ms": 3000})
        started = time.monotonic()
        error = deliver(cut, topic, b"lost")
        assert isinstance(error, KafkaError)
        assert error.code() == KafkaError._MSG_TIMED_OUT
        assert time.monotonic() - started < 10
        assert deliver(direct, topic, b"direct") is None

        proxy.enable()  # the first producer reconnects through the proxy
        assert deliver(producer, topic, b"after the cut") is None

        # A restarted broker keeps its ports, the proxied listener included.
        proxied_port = stack.kafka.proxied_port
        stack.restart_kafka()
        assert stack.kafka.proxied_port == proxied_port
        assert stack.kafka.advertised_proxy_port == proxy.port
        assert deliver(producer, topic, b"after a restart") is None
