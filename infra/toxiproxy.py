"""Run Toxiproxy (Shopify's TCP fault-injection proxy) as a local child process.

Like :mod:`infra.launch`: no Docker, the server binary runs in the foreground as a
child of the Python process, bound to ``127.0.0.1`` on a free (or given) port, with its
log in a directory of the caller's.  The binary is built once by ``make setup``
(infra/setup.sh, ``go install``) into ``~/.cache/dnc/toxiproxy/<version>/server`` (same
cache directory rules as the Kafka jars: ``DNC_CACHE_DIR``, ``XDG_CACHE_HOME``).

A proxy sits between a client and a server: the client connects to ``proxy.listen``
instead of the server, and faults are injected there::

    from infra.toxiproxy import start_toxiproxy

    toxiproxy = start_toxiproxy(tmp_path / "toxiproxy")
    proxy = toxiproxy.proxy("redis", "127.0.0.1:6379")
    proxy.listen             # "127.0.0.1:40125": give this address to the client
    proxy.disable()          # refused, and open connections are closed
    proxy.enable()
    proxy.add_latency(200)   # every answer 200 ms late
    proxy.add_timeout()      # black hole: connections stay open, nothing gets through
    proxy.remove_toxics()
    toxiproxy.stop()

Kafka clients connect to the address the broker *advertises*, not to the bootstrap
address only; a broker whose clients can be cut needs the extra ``PROXIED`` listener
advertising the proxy (:func:`infra.launch.kafka_broker.start_kafka`)::

    proxy = toxiproxy.proxy("kafka", "127.0.0.1:9")   # upstream set once Kafka has a port
    kafka = start_kafka(data_dir, advertised_proxy_port=proxy.port)
    proxy.set_upstream(kafka.proxied_address)
    # clients with bootstrap.servers=proxy.listen go through the proxy; kafka.address does not

Importing this module has no side effects; a started server is stopped at interpreter
exit like the other services.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from infra.cache import cache_root
from infra.launch.process import (
    RunningService,
    ServiceError,
    bind_error_or_raise,
    file_size,
    first_line_with,
    read_from,
    register,
    service_error,
    spawn,
    start_with_port_retries,
    terminate_quietly,
)

__all__ = [
    "TOXIPROXY_VERSION",
    "Proxy",
    "ServiceError",
    "Toxiproxy",
    "start_toxiproxy",
    "toxiproxy_path",
]

TOXIPROXY_VERSION = "2.12.0"
"""The Toxiproxy release infra/setup.sh installs (its ``TOXIPROXY_VERSION`` is the same)."""

log = logging.getLogger("dnc.infra")

HOST = "127.0.0.1"
_SETUP_HINT = "run `make setup` (infra/setup.sh builds the Toxiproxy server with Go)."
_START_TIMEOUT = 20.0
_API_TIMEOUT = 5.0
# The server does not exit when its API port is taken: it logs this and keeps running.
_BIND_ERRORS = ("address already in use",)


def toxiproxy_path() -> Path:
    """Path of the Toxiproxy server binary; :class:`ServiceError` if not installed."""
    path = cache_root() / "toxiproxy" / TOXIPROXY_VERSION / "server"
    if not os.access(path, os.X_OK):
        raise service_error(
            f"the Toxiproxy {TOXIPROXY_VERSION} server is not installed (expected {path}).",
            _SETUP_HINT,
        )
    return path


# --------------------------------------------------------------------------- API client


class Toxiproxy:
    """A running Toxiproxy server and a client of its HTTP API; a context manager."""

    def __init__(self, service: RunningService) -> None:
        self.service = service
        # Loopback never goes through an http_proxy from the environment.
        self._http = httpx.Client(
            base_url=f"http://{service.address}", timeout=_API_TIMEOUT, trust_env=False
        )

    @property
    def address(self) -> str:
        """``host:port`` of the HTTP API."""
        return self.service.address

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the API; the decoded JSON answer (``None`` if empty).

        Raises :class:`ServiceError` with Toxiproxy's message on an error status, or if
        the server cannot be reached.
        """
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            running = "running" if self.service.running else "not running"
            raise service_error(
                f"the Toxiproxy API at {self.address} did not answer {method} {path}: {exc} "
                f"(the server is {running}).",
                "read the log below.",
                self.service.log_path,
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServiceError(
                f"Toxiproxy refused {method} {path} ({response.status_code}): "
                f"{str(message).strip()}"
            )
        return response.json() if response.content else None

    def proxy(self, name: str, upstream_host_port: str, listen_port: int | None = None) -> Proxy:
        """Create proxy ``name`` to ``upstream_host_port``, listening on ``127.0.0.1``.

        ``listen_port=None`` lets the server bind a free port itself (no race); the port
        chosen is in :attr:`Proxy.listen`.  The upstream is only dialled when a client
        connects, so it need not be listening yet.  Names are unique per server.
        """
        listen = f"{HOST}:{listen_port if listen_port is not None else 0}"
        body = {"name": name, "listen": listen, "upstream": upstream_host_port, "enabled": True}
        created = self.request("POST", "/proxies", body)
        return Proxy(self, name, created["listen"], created["upstream"])

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (proxies are kept)."""
        self.request("POST", "/reset")

    def stop(self) -> None:
        """Stop the server (its proxies close their connections).  Idempotent."""
        self._http.close()
        self.service.stop()

    def __enter__(self) -> Toxiproxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Proxy:
    """One proxy of a :class:`Toxiproxy` server; faults are injected with its methods."""

    def __init__(self, api: Toxiproxy, name: str, listen: str, upstream: str) -> None:
        self.api = api
        self.name = name
        self.listen = listen  # "127.0.0.1:port": clients connect here instead of upstream
        self.upstream = upstream

    @property
    def port(self) -> int:
        """The listen port."""
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def _path(self) -> str:
        return f"/proxies/{self.name}"

    def _update(self, **fields: Any) -> None:
        # PATCH: the API's POST on a proxy is deprecated since 2.6.
        self.api.request("PATCH", self._path, fields)

    def disable(self) -> None:
        """Cut: new connections are refused and open ones are closed."""
        self._update(enabled=False)

    def enable(self) -> None:
        """Listen again on the same port (fails if something else took it meanwhile)."""
        self._update(enabled=True)

    def set_upstream(self, upstream_host_port: str) -> None:
        """Forward to ``upstream_host_port`` from now on (open connections are closed)."""
        self._update(upstream=upstream_host_port)
        self.upstream = upstream_host_port

    def _toxic(self, kind: str, stream: str, attributes: dict[str, int]) -> None:
        """Add toxic ``<kind>_<stream>``, or change its attributes if it is there already."""
        if stream not in ("downstream", "upstream"):
            raise ValueError(f"stream must be 'downstream' or 'upstream', not {stream!r}")
        name = f"{kind}_{stream}"
        body = {
            "name": name,
            "type": kind,
            "stream": stream,
            "toxicity": 1.0,
            "attributes": attributes,
        }
        if name in self.toxics():
            self.api.request("PATCH", f"{self._path}/toxics/{name}", body)
        else:
            self.api.request("POST", f"{self._path}/toxics", body)

    def add_latency(self, ms: int, jitter: int = 0, stream: str = "downstream") -> None:
        """Delay the data of ``stream`` by ``ms`` ± ``jitter`` milliseconds.

        ``downstream`` (server to client, the default) delays every answer; ``upstream``
        delays every request.
        """
        self._toxic("latency", stream, {"latency": ms, "jitter": jitter})

    def add_timeout(self, ms: int = 0) -> None:
        """Black hole: data stops flowing both ways; connections stay open (``ms=0``) or
        are closed after ``ms`` milliseconds.  What was sent meanwhile is lost, so a
        client must reconnect once the toxics are removed."""
        for stream in ("upstream", "downstream"):
            self._toxic("timeout", stream, {"timeout": ms})

    def toxics(self) -> list[str]:
        """Names of the toxics on this proxy."""
        listed = self.api.request("GET", f"{self._path}/toxics") or []
        return [str(toxic["name"]) for toxic in listed]

    def remove_toxics(self) -> None:
        """Remove every toxic: data flows normally again."""
        for name in self.toxics():
            self.api.request("DELETE", f"{self._path}/toxics/{name}")

    def delete(self) -> None:
        """Remove the proxy from the server (its port is closed)."""
        self.api.request("DELETE", self._path)

    def __repr__(self) -> str:
        return f"Proxy({self.name!r}, listen={self.listen!r}, upstream={self.upstream!r})"


# --------------------------------------------------------------------------- server


def _answers(http: httpx.Client, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _start_once(binary: Path, data_dir: Path, port: int) -> Toxiproxy | str:
    """Start the server on ``port``; if the port is taken, return the server's error line."""
    log_path = data_dir / "toxiproxy.log"
    offset = file_size(log_path)
    # A disabled proxy with a unique name, created from the config file at start: finding
    # it through the API proves the server answering on the port is this one.
    marker = f"dnc-start-{uuid.uuid4().hex[:12]}"
    config = data_dir / "toxiproxy-start.json"
    marker_proxy = {"name": marker, "listen": f"{HOST}:0", "upstream": f"{HOST}:9"}
    config.write_text(json.dumps([{**marker_proxy, "enabled": False}]))
    cmd = [str(binary), "-host", HOST, "-port", str(port), "-config", str(config)]
    proc = spawn(cmd, log_path, data_dir, env={**os.environ, "LOG_LEVEL": "info"})
    deadline = time.monotonic() + _START_TIMEOUT
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=1.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return bind_error_or_raise(
                    proc, log_path, offset, _BIND_ERRORS, f"toxiproxy on {HOST}:{port}",
                    "read the log below; check that the binary runs (`make setup`).",
                )  # fmt: skip
            bind_error = first_line_with(read_from(log_path, offset), *_BIND_ERRORS)
            if bind_error:
                terminate_quietly(proc)
                return bind_error
            if _answers(http, "/version") and _answers(http, f"/proxies/{marker}"):
                service = RunningService("toxiproxy", HOST, port, proc, log_path, data_dir)
                register(service)
                toxiproxy = Toxiproxy(service)
                toxiproxy.request("DELETE", f"/proxies/{marker}")
                return toxiproxy
            time.sleep(0.05)
    terminate_quietly(proc)
    raise service_error(
        f"toxiproxy did not answer on {HOST}:{port} within {_START_TIMEOUT:.0f} s.",
        "read the log below; the machine may be overloaded.",
        log_path,
        offset,
    )


def start_toxiproxy(data_dir: Path, port: int | None = None) -> Toxiproxy:
    """Start the Toxiproxy server with its API on ``127.0.0.1:port`` and its log
    (``toxiproxy.log``) in ``data_dir``.

    ``port=None`` picks a free port (retrying with another one if it was taken
    meanwhile).  Returns once the API answers; raises :class:`ServiceError` if the
    binary is missing (run ``make setup``) or after 20 s.
    """
    binary = toxiproxy_path()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    toxiproxy, _port = start_with_port_retries(
        "toxiproxy",
        HOST,
        port,
        lambda chosen: _start_once(binary, data_dir, chosen),
        data_dir / "toxiproxy.log",
    )
    log.info(
        "toxiproxy %s started at %s in %.2f s (pid %d, log %s)",
        TOXIPROXY_VERSION,
        toxiproxy.address,
        time.monotonic() - started,
        toxiproxy.service.process.pid,
        toxiproxy.service.log_path,
    )
    return toxiproxy
