"""Before the local stack starts anything: every port it will bind, each named by the setting
that decides it, must differ from the others and be free.

Without this check a clash showed late and as something else: with the gateway's port one
above Redis's, a Redis Cluster node took it first, the gateway kept exiting, and nothing
said that two of the stack's own settings named the same port.
"""

from __future__ import annotations

import errno
import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.errors import ConfigError


@dataclass(frozen=True)
class PlannedPort:
    """A port the stack will bind, and the setting a person changes to move it."""

    label: str  # e.g. "DNC_GATEWAY_PORT", "DNC_REDIS_URL's port + 1 (Redis Cluster node 2)"
    port: int
    host: str = "127.0.0.1"
    setting: str = ""  # the variable that moves it, when the label is more than its name

    @property
    def moved_by(self) -> str:
        """The setting to change."""
        return self.setting or self.label


class PortClash(ConfigError):
    """Two of the stack's ports are the same, or one is already in use."""


def check_ports(planned: Iterable[PlannedPort], in_use_too: bool = True) -> None:
    """Raise :class:`PortClash` naming the two settings that name one port, or the setting
    whose port another process already holds. Port 0 (picked free) never clashes."""
    by_port: dict[int, list[PlannedPort]] = defaultdict(list)
    for p in planned:
        if p.port:
            by_port[p.port].append(p)
    for port, owners in sorted(by_port.items()):
        if len(owners) > 1:
            first, second = owners[0], owners[1]
            change = sorted({first.moved_by, second.moved_by})
            raise PortClash(
                f"{first.label} and {second.label} are both port {port}: change "
                + " or ".join(change)
            )
    if not in_use_too:
        return
    for port, (owner, *_) in sorted(by_port.items()):
        try:
            taken = port_in_use(owner.host, port)
        except OSError as exc:  # e.g. a privileged port, an address not of this machine
            raise PortClash(
                f"{owner.label} is {owner.host}:{port}, which this user cannot bind "
                f"({exc.strerror}): change {owner.moved_by}"
            ) from None
        if taken:
            raise PortClash(
                f"{owner.label} is port {port}, which another process already listens on "
                f"({owner.host}): stop that process or change {owner.moved_by}"
            )


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` (a bind fails); a port only in TIME_WAIT
    is free, as it is for the servers (they bind with SO_REUSEADDR too)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False
