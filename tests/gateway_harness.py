"""A real `dnc gateway` process for a test pipeline, with tokens for every tenant and role."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from schemas.tenants import issue_token
from schemas.tokens import Role
from tests.harness import REPO, Pipeline, stop_process, wait_for

TENANTS = ("acme", "globex")
ROLES = (Role.AGENT, Role.DIALER, Role.ADMIN, Role.CONSENT)
_LISTENING = re.compile(r"gateway listening on (http://\S+)")


def issue_tokens(
    tenants_file: Path, extra: tuple[tuple[str, Role, str], ...] = ()
) -> dict[str, str]:
    """One token per tenant and role (``"acme/agent"`` -> token), plus ``extra`` (id -> token)."""
    tokens = {}
    for tenant in TENANTS:
        for role in ROLES:
            _id, token = issue_token(tenants_file, tenant, role, f"{tenant}-{role.value}")
            tokens[f"{tenant}/{role.value}"] = token
    for tenant, role, token_id in extra:
        tokens[token_id] = issue_token(tenants_file, tenant, role, token_id)[1]
    return tokens


class Gateway:
    """`python -m dnc gateway --port 0` with the pipeline's environment (plus overrides)."""

    def __init__(self, pipeline: Pipeline, name: str, **env: str) -> None:
        self.pipeline = pipeline
        self.name = name
        self.stdout = pipeline.tmp / f"gateway-{name}.out"
        self.log = pipeline.tmp / f"gateway-{name}.log"
        self.env = {**pipeline.env, "COLUMNS": "250", "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, wait_ready: bool = True, timeout: float = 60) -> None:
        """Start the process, read the port it bound, and wait for /readyz (or /healthz)."""
        with self.stdout.open("wb") as out, self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dnc", "gateway", "--port", "0"],
                env=self.env,
                stdout=out,
                stderr=log,
                cwd=REPO,
            )

        def bound() -> str | None:
            assert self.process is not None and self.process.poll() is None, self.tail()
            match = _LISTENING.search(self.stdout.read_text())
            return match.group(1) if match else None

        self.url = wait_for(bound, timeout=timeout, interval=0.1, what="the gateway to listen")
        probe = "/readyz" if wait_ready else "/healthz"
        wait_for(
            lambda: httpx.get(self.url + probe, timeout=5).status_code == 200,
            timeout=timeout,
            interval=0.2,
            what=f"gateway {probe}",
        )

    def client(
        self, token: str | None = None, timeout: float = 15, user_agent: str | None = None
    ) -> httpx.Client:
        """An HTTP client of this gateway, with ``token`` as bearer."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if user_agent:
            headers["User-Agent"] = user_agent
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def tail(self) -> str:
        """The end of the gateway's log, for failure messages."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "(no log)"

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, as an orchestrator would; returns the exit code."""
        return stop_process(self.process, timeout, "the gateway", self.tail)


def wait_answer(
    client: httpx.Client, phone: str, answer: str, campaign: str | None = None, timeout: float = 30
) -> dict[str, Any]:
    """Poll GET /v1/suppressions/{phone} until it answers ``answer``."""
    params = {"campaign_id": campaign} if campaign else {}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = client.get(f"/v1/suppressions/{phone}", params=params).json()
        if last.get("answer") == answer:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{phone} never answered {answer} (last: {last})")
