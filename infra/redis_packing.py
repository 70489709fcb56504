"""Asyncio Redis clients that pack their commands with hiredis, as redis-py's sync ones do.

redis-py's synchronous connections pack a command in C (``hiredis.pack_command``) when
hiredis is installed; its asyncio connections always pack in Python, an argument at a time
(an encode, a length, three joins). The worker's view writes carry thousands of arguments
per batch (members, keys, fence fields): that Python packing was about a tenth of the
worker's time under a burst (py-spy). :func:`pack_with_hiredis` gives an asyncio client's
connections hiredis's packer; the bytes on the wire are the same.
"""

from __future__ import annotations

from typing import Any, TypeVar

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

_PACKED: dict[type[Any], type[Any]] = {}


def hiredis_packed(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (plain, TLS or Unix socket) packing commands with hiredis."""
    if getattr(connection_class, "packs_with_hiredis", False):
        return connection_class
    packed = _PACKED.get(connection_class)
    if packed is None:
        packed = _PACKED[connection_class] = _subclass(connection_class)
    return packed


def _subclass(connection_class: type[Any]) -> type[Any]:

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        # As redis-py's own packers: a command name with a space ("CLIENT SETINFO") is
        # several arguments.
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # (redis-py's encoder raises DataError for these)
            raise DataError(str(exc)) from None

    return type(
        f"Hiredis{connection_class.__name__}",
        (connection_class,),
        {"pack_command": pack_command, "packs_with_hiredis": True},
    )


C = TypeVar("C", Redis, RedisCluster)


def pack_with_hiredis(client: C) -> C:
    """Make ``client``'s connections (those it has and those it will open) pack with hiredis."""
    if isinstance(client, RedisCluster):
        manager = client.nodes_manager
        kwargs = manager.connection_kwargs
        kwargs["connection_class"] = hiredis_packed(kwargs.get("connection_class") or Connection)
        node: Any
        for node in manager.startup_nodes.values():
            node.connection_class = hiredis_packed(node.connection_class)
    else:
        pool = client.connection_pool
        pool.connection_class = hiredis_packed(pool.connection_class)
    return client
