"""The asyncio clients pack commands with hiredis: the same bytes as redis-py's packer."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from consumers.checker import async_checker_client
from infra.redis_packing import hiredis_packed, pack_with_hiredis

COMMANDS = [
    ("EVAL", "return 1", 2, "dnc:{t}:o", "dnc:{t}:r", "fence:0", "w:1:2", 0, 3, "+", 1, 612345670),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # a command name of two words
    (b"HSET", "k", "f", b"\x00\xffbytes", 1.5, -3, "\u00e9t\u00e9"),
    ("SADD", "k", *range(5000)),  # over redis-py's buffer cutoff
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_bytes_are_redis_py_s(command: tuple[Any, ...]) -> None:
    plain, packed = Connection(), hiredis_packed(Connection)()
    assert b"".join(packed.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert b"".join(packed.pack_commands([command, command])) == b"".join(
        plain.pack_commands([command, command])
    )


def test_a_value_redis_py_refuses_is_refused_the_same_way() -> None:
    with pytest.raises(DataError):
        hiredis_packed(Connection)().pack_command("SET", "k", object())


def test_tls_and_unix_socket_connections_keep_their_class() -> None:
    for cls in (SSLConnection, UnixDomainSocketConnection):
        packed = hiredis_packed(cls)
        assert issubclass(packed, cls) and hiredis_packed(packed) is packed


def test_the_worker_s_and_the_gateway_s_clients_pack_with_hiredis() -> None:
    client = pack_with_hiredis(Redis.from_url("rediss://127.0.0.1:1/0"))
    assert issubclass(client.connection_pool.connection_class, SSLConnection)
    gateway = async_checker_client("redis://127.0.0.1:1/0", 1.0)
    assert isinstance(gateway, Redis)
    assert getattr(gateway.connection_pool.connection_class, "packs_with_hiredis", False)
