"""Smoke check of infra.launch: start Kafka + Redis, use them, stop them, print timings.

Not a test; a quick manual proof that the local stack works on this machine::

    python -m infra.check_services                  # Kafka 3.9.1 (default)
    python -m infra.check_services --kafka 4.1.1    # another Kafka release
    python infra/check_services.py --keep-dir       # keep the temp dir for the logs

Checks Redis with a raw ``PING``/``SET``/``GET`` (no redis-py needed).  The Kafka round
trip (create topic, produce, consume) needs the ``confluent-kafka`` package; without it
only the broker's readiness is checked.  Exits 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `infra` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION, ensure_kafka_jars, kafka_cache_dir
from infra.launch.stack import LocalStack


def _redis_command(host: str, port: int, *args: str) -> bytes:
    """Send one RESP command and return the raw first reply line (plus bulk payload)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"".join(parts))
        time.sleep(0.05)
        return sock.recv(4096)


def _check_redis(stack: LocalStack) -> None:
    assert stack.redis is not None
    host, port = stack.redis.host, stack.redis.port
    assert _redis_command(host, port, "PING") == b"+PONG\r\n", "PING failed"
    assert _redis_command(host, port, "SET", "dnc:check", "ok") == b"+OK\r\n", "SET failed"
    assert _redis_command(host, port, "GET", "dnc:check") == b"$2\r\nok\r\n", "GET failed"
    stack.restart_redis()
    assert stack.redis.port == port, "restart_redis changed the port"
    assert _redis_command(host, port, "GET", "dnc:check") == b"$-1\r\n", "data survived restart"
    print("  redis PING/SET/GET ok; restart_redis on same port ok (data gone as expected)")


def _check_kafka(bootstrap: str, partitions: int) -> None:
    try:
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import (  # type: ignore[attr-defined,unused-ignore]
            AdminClient,
            NewTopic,
        )
    except ImportError:
        print("  confluent-kafka not importable: skipped the produce/consume round trip")
        return
    topic = f"dnc-check-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    t0 = time.monotonic()
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
    futures[topic].result(timeout=30)
    print(f"  created topic {topic} ({partitions} partitions) in {time.monotonic() - t0:.2f} s")

    t0 = time.monotonic()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    delivered: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        delivered.append("ok" if err is None else f"error {err}")

    producer.produce(topic, key=b"+33123456789", value=b"opt-out", on_delivery=on_delivery)
    remaining = producer.flush(30)
    assert remaining == 0 and delivered == ["ok"], f"produce failed: {delivered}"
    print(f"  produced 1 message in {time.monotonic() - t0:.2f} s")

    t0 = time.monotonic()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dnc-check-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, f"consume error: {msg.error()}"
            assert msg.value() == b"opt-out" and msg.key() == b"+33123456789"
            consumer.commit(message=msg, asynchronous=False)
            break
        else:
            raise AssertionError("no message consumed within 60 s")
    finally:
        consumer.close()
    print(f"  consumed + committed 1 message (consumer group) in {time.monotonic() - t0:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kafka", default=os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION)
    )
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--keep-dir", action="store_true", help="do not delete the temp dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    t_all = time.monotonic()
    had_cache = (kafka_cache_dir(args.kafka) / f"kafka_2.13-{args.kafka}.jar").is_file()
    t0 = time.monotonic()
    libs = ensure_kafka_jars(args.kafka)
    t_jars = time.monotonic() - t0
    print(
        f"Kafka {args.kafka} jars: {libs} ({'cached' if had_cache else 'downloaded'}, "
        f"{t_jars:.2f} s)"
    )

    base = Path(tempfile.mkdtemp(prefix="dnc-check-"))
    ok = False
    stack = LocalStack(base, kafka_version=args.kafka, partitions=args.partitions)
    try:
        t0 = time.monotonic()
        stack.start()
        t_start = time.monotonic() - t0
        print(f"stack started in {t_start:.2f} s")
        print(f"  kafka bootstrap_servers = {stack.bootstrap_servers}")
        print(f"  redis_url              = {stack.redis_url}")
        _check_redis(stack)
        _check_kafka(stack.bootstrap_servers, args.partitions)
        ok = True
    finally:
        t0 = time.monotonic()
        stack.stop()
        stack.stop()  # idempotent
        print(f"stack stopped in {time.monotonic() - t0:.2f} s")
        if args.keep_dir or not ok:
            print(f"files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'OK' if ok else 'FAILED'}: Kafka {args.kafka}, total {time.monotonic() - t_all:.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
