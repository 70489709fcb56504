"""One number asked once from a shell (`dnc check`): one socket, no redis-py.

A dialer script that runs `dnc check` before each call pays for a new process every time,
and redis-py's package was the largest part of it (it imports asyncio and its observability
layer even for a synchronous client). For one number on one Redis server reached by a plain
``redis://`` URL (no TLS, no cluster, no URL options), the question is asked here: the
:data:`consumers.readiness.READ_VIEW` script by its SHA1 on a socket of its own, the
commands packed and the reply parsed by hiredis (the C library redis-py itself parses
with), then decided by :class:`consumers.verdicts.ViewVerdicts`, as every checker decides.

Anything this path does not do, and any trouble on it (refused, timed out, an error reply:
the script not loaded, authentication refused), answers None: the caller asks again through
:class:`consumers.checker.SuppressionChecker` (its retries, its script loading, its way of
saying what failed). So nothing is answered here that the library would answer otherwise.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from consumers.readiness import READ_VIEW
from consumers.verdicts import CheckResult, ViewVerdicts
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import ViewLayout, view_layout

_READ_SHA = hashlib.sha1(READ_VIEW.encode()).hexdigest()  # what SCRIPT LOAD names it
_DEFAULT_PORT = 6379


@dataclass(frozen=True)
class PlainServer:
    """A Redis server as a plain ``redis://`` URL names it."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> PlainServer | None:
        """``url`` as a plain server, or None when it asks for more (another scheme, TLS,
        options in its query, a path that is not a database number)."""
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORT
        except ValueError:
            return None
        if parts.scheme != "redis" or parts.query or parts.fragment or not parts.hostname:
            return None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            return None
        return cls(
            parts.hostname,
            port,
            int(path or 0),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password is not None else None,
        )

    def commands(self, *command: Any) -> bytes:
        """``command`` packed, after the AUTH and SELECT a new connection needs."""
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *auth))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(command)
        return b"".join(hiredis.pack_command(c) for c in commands)

    @property
    def preludes(self) -> int:
        """Replies before the command's own (AUTH, SELECT)."""
        return (self.password is not None) + bool(self.db)


class OneShotCheck(ViewVerdicts):
    """Answers one number in one round trip on a socket of its own, or says it cannot."""

    def __init__(
        self,
        server: PlainServer,
        layout: ViewLayout,
        tenants: TenantDirectory,
        *,
        max_staleness_seconds: float = 5.0,
        timeout_seconds: float = 0.5,
    ) -> None:
        super().__init__(layout, tenants, max_staleness_seconds)
        self._server = server
        self._timeout = timeout_seconds

    @classmethod
    def from_settings(cls, settings: Settings, tenants: TenantDirectory) -> OneShotCheck | None:
        """A one-shot check of this deployment's view, or None if it is not on one plain
        server (a Redis Cluster, TLS, URL options: the library's checker asks)."""
        if settings.redis_cluster:
            return None
        server = PlainServer.from_url(settings.redis_url.get_secret_value())
        if server is None:
            return None
        return cls(
            server,
            view_layout(settings, tenants),
            tenants,
            max_staleness_seconds=settings.max_staleness_seconds,
            timeout_seconds=settings.check_timeout_seconds,
        )

    def check(
        self, phone: str, tenant: str, campaign: str | None = None, at: datetime | None = None
    ) -> CheckResult | None:
        """The answer for ``phone`` (invalid input or an unknown tenant raise, as the
        library's check does), or None: ask the library's checker."""
        started = time.perf_counter()
        e164, plan, keys, args = self._single(phone, tenant, campaign, at)
        reply = self._read(keys, args)
        if reply is None:
            return None
        return self._answer(e164, plan, reply, at, started)

    def _read(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply, or None on any trouble (nothing half-read is ever used: the
        socket is closed after this one question)."""
        server = self._server
        request = server.commands("EVALSHA", _READ_SHA, len(keys), *keys, *args)
        try:
            with socket.create_connection((server.host, server.port), self._timeout) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(request)
                replies = _replies(sock, server.preludes + 1)
        except (OSError, hiredis.ProtocolError):
            return None
        if any(_has_error(reply) for reply in replies):
            return None  # NOSCRIPT, NOAUTH, WRONGPASS...: the library's checker says it
        return replies[-1]


def _replies(sock: socket.socket, count: int) -> list[Any]:
    reader = hiredis.Reader()
    replies: list[Any] = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:  # (hiredis: not a whole reply yet)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection before its reply")
            reader.feed(data)
        else:
            replies.append(reply)
    return replies


def _has_error(reply: Any) -> bool:
    if isinstance(reply, hiredis.ReplyError):
        return True
    return isinstance(reply, list) and any(_has_error(item) for item in reply)
