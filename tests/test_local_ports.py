"""`dnc up` checks every port it will bind before it starts anything: two settings naming
one port are named, a port another process holds is named; and when it gives up on a process
that keeps exiting, it exits non-zero (a wrapper or a service manager sees the failure)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import dnc.local as local_module
from dnc.local import Child, LocalPipeline, run_local_stack
from infra.launch.process import free_port
from infra.ports import PlannedPort, PortClash, check_ports
from schemas.settings import Settings
from tests.harness import REPO
from tests.test_local_stack import stack_env as free_ports_env


def stack_env(tmp_path: Path) -> dict[str, str]:
    """`dnc up`'s settings on free ports (Redis's: 6 free in a row, for a Redis Cluster)."""
    env, _ports = free_ports_env(tmp_path)
    return {**env, "DNC_REDIS_URL": f"redis://127.0.0.1:{free_run(6)}/0"}


def free_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (and their cluster bus ports)."""
    for _ in range(50):
        first = free_port()
        ports = [first + i for i in range(count)] + [first + 10000 + i for i in range(count)]
        if all(p < 65536 and not _taken(p) for p in ports):
            return first
    raise AssertionError("no run of free ports found")


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def dnc_up(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnc", "up", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_two_settings_naming_one_port_are_both_named() -> None:
    with pytest.raises(PortClash) as clash:
        check_ports([PlannedPort("DNC_PROMETHEUS_PORT", 9090),
                     PlannedPort("DNC_GATEWAY_PORT", 8080),
                     PlannedPort("DNC_SYNC_METRICS_PORT", 9090)])  # fmt: skip
    assert str(clash.value) == (
        "DNC_PROMETHEUS_PORT and DNC_SYNC_METRICS_PORT are both port 9090: change "
        "DNC_PROMETHEUS_PORT or DNC_SYNC_METRICS_PORT"
    )
    # Port 0 is picked free by each process: never a clash.
    check_ports([PlannedPort("DNC_GATEWAY_PORT", 0), PlannedPort("DNC_SYNC_METRICS_PORT", 0)])


def test_a_port_another_process_listens_on_is_named() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortClash, match=f"DNC_GATEWAY_PORT is port {port}, which another"):
            check_ports([PlannedPort("DNC_GATEWAY_PORT", port)])
    check_ports([PlannedPort("DNC_GATEWAY_PORT", port)])  # released: free again


def test_dnc_up_refuses_a_gateway_port_on_a_redis_cluster_node_before_starting_anything(
    tmp_path: Path,
) -> None:
    env = stack_env(tmp_path)
    redis = int(env["DNC_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    env["DNC_GATEWAY_PORT"] = str(redis + 1)  # the case: one above Redis's port
    up = dnc_up(env, "--brokers", "3", "--workers", "2", "--redis-cluster")
    assert up.returncode == 3, up.stdout + up.stderr
    assert (
        f"DNC_REDIS_URL's port + 1 (Redis Cluster node 2) and DNC_GATEWAY_PORT are both port "
        f"{redis + 1}: change DNC_GATEWAY_PORT or DNC_REDIS_URL; nothing was started"
    ) in " ".join(up.stdout.split())
    assert "starting" not in up.stdout
    # Two metrics servers on one port: the same, whatever the profile.
    same_metrics = {**env, "DNC_WORKER_METRICS_PORT": env["DNC_SYNC_METRICS_PORT"]}
    up = dnc_up(same_metrics)
    assert up.returncode == 3, up.stdout + up.stderr
    assert "DNC_WORKER_METRICS_PORT and DNC_SYNC_METRICS_PORT are both port" in up.stdout


def test_dnc_up_refuses_a_port_already_in_use_before_starting_anything(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env["DNC_PROMETHEUS_PORT"] = str(port)
        up = dnc_up(env)
    assert up.returncode == 3, up.stdout + up.stderr
    text = " ".join(up.stdout.split())
    assert f"DNC_PROMETHEUS_PORT is port {port}, which another process already listens on" in text
    assert "change DNC_PROMETHEUS_PORT; nothing was started" in text
    assert "starting" not in up.stdout


@pytest.mark.timeout(120)
def test_dnc_up_exits_non_zero_when_it_gives_up_on_a_process_that_keeps_exiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervision alone: no service is started, one real process keeps exiting."""
    monkeypatch.setattr(local_module, "MAX_RESTARTS", 2)

    def a_process_that_keeps_exiting(self: LocalPipeline) -> None:
        env = {**os.environ, "DNC_DATA_DIR": str(self.settings.data_dir)}
        broken = Child("gateway", ["no-such-command"], tmp_path / "gateway.log", env,
                       self.run_dir)  # fmt: skip
        broken.start()
        self.children = [broken]

    monkeypatch.setattr(LocalPipeline, "start_services", lambda self: None)
    monkeypatch.setattr(LocalPipeline, "start_processes", a_process_that_keeps_exiting)
    env = stack_env(tmp_path)
    settings = Settings.model_validate(
        {k[4:].lower(): v for k, v in env.items() if k.startswith("DNC_")}
    )
    output = tmp_path / "up.out"
    with output.open("w") as handle:
        code = run_local_stack(settings, "3.9.1", Console(file=handle, soft_wrap=True))
    text = output.read_text()
    assert code == 2, text
    assert "the gateway exited (2); restarting it (2/2)" in text
    assert f"the gateway keeps exiting (status 2); see {tmp_path / 'gateway.log'}" in text
    assert "stopped (exit status 2)." in text
