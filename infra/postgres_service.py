"""Run a real PostgreSQL (Debian's ``postgresql`` package) as a local child process.

Like :mod:`infra.launch` for Kafka and Redis, this needs no Docker and no systemd: the
``postgres`` binary runs in the foreground as a child of the Python process, bound to
``127.0.0.1`` on a free (or given) port.  Typical use::

    from infra.postgres_service import restart_postgres, start_postgres

    pg = start_postgres(tmp_path / "pg", fast=True)
    pg.dsn          # "postgresql://dnc@127.0.0.1:40125/dnc"
    pg.stop()       # fast shutdown; the data stays
    restart_postgres(pg)   # same port, same data, same handle
    pg.destroy()    # stop and delete the cluster

**Binaries** are taken from the newest ``/usr/lib/postgresql/<major>/bin`` (Debian's
layout), else from ``initdb``/``postgres`` on ``PATH``.

**Authentication** is ``trust`` for TCP connections from ``127.0.0.1`` and for the Unix
socket: anybody who can open a connection on this machine is let in without a password.
That is only acceptable for local development and tests, which is all this module is for;
the server never listens on anything but loopback.

**Roles and databases.** ``initdb`` creates the bootstrap superuser ``postgres``
(:attr:`PostgresService.admin_dsn`).  Every start makes sure the role ``dnc`` (LOGIN,
CREATEDB, not a superuser) and the database ``dnc`` owned by it exist
(:attr:`PostgresService.dsn`); starting again on an existing data directory keeps all data.

**Running as root.** PostgreSQL refuses to run as root.  When the effective uid is 0,
``initdb`` and the server run as Debian's ``postgres`` system user (created by the
``postgresql-common`` package), and the cluster directory is owned by that user.  The
``postgres`` user must then be able to reach the directory, which it often cannot: a
``tempfile.mkdtemp()`` directory, pytest's ``/tmp/pytest-of-root`` and ``/root`` are all
mode 0700.  Rather than loosening permissions of directories we do not own (pytest
would even reset them under a running server), the cluster is then placed in a *shadow
directory*:

* ``/var/lib/dnc-postgres/<random id>/data`` holds the cluster (owned by ``postgres``,
  mode 0700; ``/var/lib/dnc-postgres`` and the id directory are root's, mode 0711).
  ``/var/lib``, not ``/var/tmp``: age-based temp cleaners would eat a quiet cluster;
* the requested ``data_dir`` becomes a symbolic link to it, so restarting on the same
  ``data_dir`` finds the same cluster, and deleting ``data_dir`` (the link) forgets it;
* ``/var/lib/dnc-postgres/<id>/origin`` records the link's path.  Every start as root
  deletes the shadow directories of ``fast=True`` (test) clusters whose link is gone
  and whose server is not running, so ``shutil.rmtree`` of a test directory leaks the
  cluster at most until the next start.  :meth:`PostgresService.destroy` deletes the
  shadow directory at once.  Durable clusters (``fast=False``, e.g. ``dnc up``) are
  never collected automatically.

When the requested directory is reachable by ``postgres`` (e.g. below ``/work`` or
``/var/tmp``), or when not running as root, the cluster lives in ``data_dir`` itself.

The server's output is appended to ``postgres.log`` in the parent of ``data_dir`` (the
parent is root's even when the cluster is in a shadow directory, so the log is always
next to where you asked for the data).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypedDict

import psycopg

from infra.launch.process import (
    RunningService,
    ServiceError,
    file_size,
    register,
    service_error,
    spawn,
    start_with_port_retries,
    unregister,
    wait_until_ready,
)

__all__ = [
    "PostgresService",
    "ServiceError",
    "postgres_bindir",
    "restart_postgres",
    "start_postgres",
]

log = logging.getLogger("dnc.infra")

HOST = "127.0.0.1"
APP_ROLE = "dnc"
APP_DATABASE = "dnc"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
SHADOW_ROOT = Path("/var/lib/dnc-postgres")
"""Where clusters go when root runs PostgreSQL for a directory ``postgres`` cannot reach."""

_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_SETUP_HINT = "run `bash infra/setup.sh` (it installs Debian's `postgresql` package)."
_START_TIMEOUT = 30.0
_INITDB_TIMEOUT = 120.0
_STOP_ESCALATION_TIMEOUT = 5.0
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_BIND_ERRORS = ("could not create any TCP/IP sockets", "Address already in use")
_LOG_NAME = "postgres.log"
_HBA = """\
# Written by infra/postgres_service.py for LOCAL DEVELOPMENT AND TESTS ONLY:
# no passwords, the server listens on 127.0.0.1 only.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
"""
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class _Account(NamedTuple):
    """The system account PostgreSQL runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str


# --------------------------------------------------------------------------- binaries


def _version_key(bindir: Path) -> tuple[int, ...]:
    """``(15,)`` for ``/usr/lib/postgresql/15/bin``; ``()`` if the name is not a version."""
    name = bindir.parent.name
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return ()
    return tuple(int(part) for part in name.split("."))


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("postgres", "initdb"))


def postgres_bindir() -> Path:
    """Directory with the ``postgres`` and ``initdb`` binaries of the newest PostgreSQL.

    Looks at ``/usr/lib/postgresql/<major>/bin`` (Debian; highest major wins), then at
    ``initdb`` on ``PATH``.  Raises :class:`ServiceError` if neither has both binaries.
    """
    candidates = [p for p in _DEBIAN_ROOT.glob("*/bin") if _version_key(p) and _has_server(p)]
    if candidates:
        return max(candidates, key=_version_key)
    initdb = shutil.which("initdb")
    if initdb is not None and _has_server(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    raise service_error(
        f"no PostgreSQL server binaries found (looked in {_DEBIAN_ROOT}/*/bin and on PATH).",
        _SETUP_HINT,
    )


def _server_major(bindir: Path) -> str:
    """Major version of the binaries in ``bindir``, e.g. ``"15"``."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if match is None:
        raise service_error(
            f"could not read the version of {bindir / 'postgres'} (it printed {out.strip()!r}).",
            "reinstall PostgreSQL: " + _SETUP_HINT,
        )
    return match.group(1)


# --------------------------------------------------------------------------- accounts


def _postgres_account() -> _Account | None:
    """The ``postgres`` system user when we are root, else ``None`` (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise service_error(
            f"running as root, but there is no `{SYSTEM_USER}` system user to run "
            "PostgreSQL as (PostgreSQL refuses to run as root).",
            _SETUP_HINT + " Its postgresql-common package creates that user.",
        ) from None
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


class _RunAs(TypedDict, total=False):
    """``subprocess`` keyword arguments that switch the child to another account."""

    user: int
    group: int
    extra_groups: list[int]


def _as_account(account: _Account | None) -> _RunAs:
    """``subprocess`` keyword arguments that run the child as ``account``."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": account.groups}


def _child_env(account: _Account | None) -> dict[str, str]:
    """A small, predictable environment: no inherited ``PG*`` variables, C locale."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LC_ALL": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    else:
        env["HOME"] = os.environ.get("HOME", "/")
    return env


def _chown(path: Path, account: _Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _reachable(directory: Path, account: _Account) -> bool:
    """True if ``account`` can traverse every directory down to ``directory`` inclusive.

    Asks the kernel (``test -x`` run as that user) rather than reading mode bits, so
    ACLs and supplementary groups are taken into account.
    """
    test = shutil.which("test") or "/usr/bin/test"
    result = subprocess.run(
        [test, "-x", str(directory)],
        cwd="/",
        env=_child_env(account),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
        **_as_account(account),
    )
    return result.returncode == 0


# --------------------------------------------------------------------------- directories


def _absolute(data_dir: Path) -> Path:
    """Absolute ``data_dir`` with its parent resolved but ``data_dir`` itself not followed."""
    path = Path(data_dir).expanduser().absolute()
    return path.parent.resolve() / path.name


def _shadow_root() -> Path:
    """Create (or check) :data:`SHADOW_ROOT`: a root-owned directory others may only cross."""
    SHADOW_ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
    st = SHADOW_ROOT.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise service_error(
            f"{SHADOW_ROOT} exists but is not a directory owned by root and writable only by "
            "root; refusing to put database files there.",
            f"inspect and remove {SHADOW_ROOT}, then retry.",
        )
    os.chmod(SHADOW_ROOT, 0o711)
    return SHADOW_ROOT


def _postmaster_alive(cluster: Path) -> bool:
    """True if ``cluster/postmaster.pid`` names a process that still exists."""
    try:
        pid = int((cluster / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _links_to(link: Path, target: Path) -> bool:
    try:
        return link.is_symlink() and Path(os.readlink(link)) == target
    except OSError:
        return False


def _collect_orphans() -> None:
    """Delete disposable shadow clusters whose ``data_dir`` link is gone and server is down.

    Only clusters created with ``fast=True`` are collected: their data is disposable by
    definition.  A durable cluster whose link was moved or deleted is left in place.
    """
    if not SHADOW_ROOT.is_dir():
        return
    for shadow in SHADOW_ROOT.iterdir():
        try:
            if not (shadow / "disposable").is_file():
                continue
            origin = Path((shadow / "origin").read_text(encoding="utf-8").strip())
        except OSError:
            continue
        if _links_to(origin, shadow / "data") or _postmaster_alive(shadow / "data"):
            continue
        log.info("removing orphaned PostgreSQL test cluster %s (%s is gone)", shadow, origin)
        shutil.rmtree(shadow, ignore_errors=True)


def _new_shadow(data_dir: Path, account: _Account, disposable: bool) -> Path:
    """Create a shadow cluster directory and make ``data_dir`` a link to it."""
    shadow = _shadow_root() / uuid.uuid4().hex
    shadow.mkdir(mode=0o711)
    cluster = shadow / "data"
    # Link, then origin, then the disposable mark: a concurrent orphan collection only
    # considers directories with the mark, whose link is in place by then.
    data_dir.symlink_to(cluster, target_is_directory=True)
    (shadow / "origin").write_text(f"{data_dir}\n", encoding="utf-8")
    if disposable:
        (shadow / "disposable").write_text("created with fast=True\n", encoding="utf-8")
    cluster.mkdir(mode=0o700)
    _chown(cluster, account)
    log.info(
        "the postgres user cannot reach %s; the cluster lives in %s (linked from there)",
        data_dir.parent,
        cluster,
    )
    return cluster


def _cluster_dir(data_dir: Path, account: _Account | None, disposable: bool) -> Path:
    """The directory holding the cluster for ``data_dir`` (see the module docstring)."""
    if data_dir.is_symlink():
        target = data_dir.parent / os.readlink(data_dir)
        if target.is_dir():
            return target
        log.warning(
            "%s links to %s, which is gone; creating a new, empty cluster", data_dir, target
        )
        data_dir.unlink()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if account is not None:
        _collect_orphans()
    if account is None or _reachable(data_dir.parent, account):
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700)
            _chown(data_dir, account)
        elif not any(data_dir.iterdir()):
            _chown(data_dir, account)
        return data_dir
    if data_dir.is_dir() and any(data_dir.iterdir()):
        raise service_error(
            f"{data_dir} is not empty, and the `{SYSTEM_USER}` user PostgreSQL runs as cannot "
            f"reach it (a parent directory lacks search permission for that user).",
            f"delete {data_dir} to start a new cluster, move it below a directory the "
            f"`{SYSTEM_USER}` user can traverse, or `chmod o+x` its parent directories.",
        )
    if data_dir.is_dir():
        data_dir.rmdir()
    return _new_shadow(data_dir, account, disposable)


# --------------------------------------------------------------------------- initdb


def _check_existing_cluster(cluster: Path, major: str) -> bool:
    """True if ``cluster`` holds a cluster of version ``major``; False if it is empty."""
    version_file = cluster / "PG_VERSION"
    if version_file.is_file():
        found = version_file.read_text(encoding="utf-8").strip()
        if found != major:
            raise service_error(
                f"{cluster} holds a PostgreSQL {found} cluster, but the installed server is "
                f"PostgreSQL {major}.",
                f"delete {cluster} (its data is lost) to start afresh, or upgrade it with "
                "pg_upgrade.",
            )
        return True
    if any(cluster.iterdir()):
        raise service_error(
            f"{cluster} is not empty but holds no PostgreSQL cluster (no PG_VERSION file).",
            f"delete {cluster} or pass another data directory.",
        )
    return False


def _initdb(
    bindir: Path, cluster: Path, account: _Account | None, log_path: Path, fast: bool
) -> None:
    """Create a new cluster in the empty directory ``cluster`` and write its pg_hba.conf."""
    cmd = [
        str(bindir / "initdb"),
        "--pgdata",
        str(cluster),
        f"--username={SUPERUSER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]
    if fast:
        cmd.append("--no-sync")
    offset = file_size(log_path)
    log.info("initialising a PostgreSQL cluster in %s", cluster)
    with log_path.open("ab") as out:
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(cluster),
                env=_child_env(account),
                timeout=_INITDB_TIMEOUT,
                check=False,
                **_as_account(account),
            )
        except subprocess.TimeoutExpired:
            raise service_error(
                f"initdb did not finish within {_INITDB_TIMEOUT:.0f} s for {cluster}.",
                "the disk may be very slow or full; check it, delete the directory and retry.",
                log_path,
                offset,
            ) from None
    if result.returncode != 0:
        raise service_error(
            f"initdb failed with exit code {result.returncode} for {cluster}.",
            "read the log below; delete the directory (initdb needs an empty one) and retry.",
            log_path,
            offset,
        )
    hba = cluster / "pg_hba.conf"
    hba.write_text(_HBA, encoding="utf-8")
    os.chmod(hba, 0o600)
    _chown(hba, account)


# --------------------------------------------------------------------------- server


def _server_command(bindir: Path, cluster: Path, port: int, fast: bool) -> list[str]:
    socket_dir = str(cluster)
    if len(f"{socket_dir}/.s.PGSQL.{port}") > _SOCKET_PATH_MAX:
        log.info("%s is too long for a Unix socket path; TCP only", socket_dir)
        socket_dir = ""
    settings = [
        f"listen_addresses={HOST}",
        f"port={port}",
        f"unix_socket_directories={socket_dir}",
        "unix_socket_permissions=0700",
        *(_FAST_SETTINGS if fast else ()),
    ]
    cmd = [str(bindir / "postgres"), "-D", str(cluster)]
    for setting in settings:
        cmd += ["-c", setting]
    return cmd


def _admin_dsn(port: int) -> str:
    return f"postgresql://{SUPERUSER}@{HOST}:{port}/postgres"


def _accepts_connections(port: int, cluster: Path) -> bool:
    """True if the server on ``port`` accepts connections and serves ``cluster``.

    Checking the data directory makes sure we are not talking to another server that
    grabbed the port first (ours then exits with a bind error).
    """
    try:
        with psycopg.connect(_admin_dsn(port), connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] == str(cluster)


def _start_server_once(
    bindir: Path,
    cluster: Path,
    account: _Account | None,
    log_path: Path,
    port: int,
    fast: bool,
) -> subprocess.Popen[bytes] | str:
    """Start the server on ``port``; return the bind error line if the port was taken."""
    offset = file_size(log_path)
    cmd = _server_command(bindir, cluster, port, fast)
    proc = spawn(cmd, log_path, cluster, _child_env(account), **_as_account(account))
    bind_error = wait_until_ready(
        proc,
        lambda: _accepts_connections(port, cluster),
        what=f"PostgreSQL on {HOST}:{port}",
        log_path=log_path,
        offset=offset,
        timeout=_START_TIMEOUT,
        bind_errors=_BIND_ERRORS,
        exit_hint="read the log below; if another server uses this data directory, stop it first.",
        not_ready="did not accept connections",
        slow_hint="read the log below; crash recovery of a large cluster or an overloaded "
        "machine can be slow.",
        kill=_kill_group,
    )
    return proc if bind_error is None else bind_error


def _start_server(
    bindir: Path,
    cluster: Path,
    account: _Account | None,
    log_path: Path,
    port: int | None,
    fast: bool,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server, retrying with a new port if ``port`` was None and got taken."""
    started = time.monotonic()
    proc, chosen = start_with_port_retries(
        "PostgreSQL",
        HOST,
        port,
        lambda p: _start_server_once(bindir, cluster, account, log_path, p, fast),
        log_path,
    )
    log.info(
        "postgres started at %s:%d in %.2f s (pid %d, data %s, log %s)",
        HOST,
        chosen,
        time.monotonic() - started,
        proc.pid,
        cluster,
        log_path,
    )
    return proc, chosen


def _ensure_role_and_database(port: int) -> None:
    """Create the ``dnc`` role and database if missing (idempotent)."""
    with psycopg.connect(_admin_dsn(port), connect_timeout=10, autocommit=True) as conn:
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
        if role is None:
            conn.execute(f'CREATE ROLE "{APP_ROLE}" LOGIN CREATEDB')
        db = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)
        ).fetchone()
        if db is None:
            conn.execute(f'CREATE DATABASE "{APP_DATABASE}" OWNER "{APP_ROLE}"')


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the postmaster and its backends (its process group) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------------- handle


@dataclass(eq=False, kw_only=True)
class PostgresService(RunningService):
    """A PostgreSQL server started by :func:`start_postgres`.

    ``data_dir`` is the directory that was asked for; ``cluster_dir`` is where the files
    really are (the same, or a shadow directory ``data_dir`` links to when running as
    root).  :meth:`stop` is a *fast* shutdown (SIGINT: open sessions are disconnected,
    committed data is kept); :meth:`kill` simulates a crash.
    """

    cluster_dir: Path
    bindir: Path
    account: _Account | None
    fast: bool = False

    @property
    def dsn(self) -> str:
        """``postgresql://dnc@127.0.0.1:PORT/dnc``: the application role and database."""
        return f"postgresql://{APP_ROLE}@{self.address}/{APP_DATABASE}"

    @property
    def admin_dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``: the bootstrap superuser."""
        return _admin_dsn(self.port)

    def stop(self, timeout: float = 20) -> None:
        """Fast shutdown (SIGINT), then immediate shutdown (SIGQUIT), then SIGKILL.

        Waits up to ``timeout`` seconds for the fast shutdown.  Safe to call any number of
        times, also after :meth:`kill` or a crash.
        """
        try:
            if self.process.poll() is not None:
                return
            log.info("stopping postgres (pid %d) at %s", self.process.pid, self.address)
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, _STOP_ESCALATION_TIMEOUT)):
                try:
                    self.process.send_signal(sig)
                except ProcessLookupError:
                    return
                try:
                    self.process.wait(timeout=wait)
                    return
                except subprocess.TimeoutExpired:
                    log.warning(
                        "postgres (pid %d) ignored %s for %.0f s; escalating",
                        self.process.pid,
                        signal.Signals(sig).name,
                        wait,
                    )
            self.kill()
        finally:
            if self.process.poll() is not None:
                unregister(self)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once (a crash) and reap it.

        The next start runs crash recovery.  Committed transactions survive, except with
        ``fast=True``, where ``synchronous_commit=off`` loses the last fraction of a
        second of commits.
        """
        if self.process.poll() is None:
            log.info("killing postgres (pid %d) with SIGKILL", self.process.pid)
        _kill_group(self.process)
        unregister(self)

    def restart(self, timeout: float = 20) -> None:
        """Stop (if running) and start again on the same port and data, in place.

        This handle is updated (new process), so everybody holding it sees the new
        server.  Raises :class:`ServiceError` if the port is taken meanwhile.
        """
        self.stop(timeout=timeout)
        if not self.cluster_dir.is_dir():
            raise service_error(
                f"the cluster directory {self.cluster_dir} is gone (destroy() was called?).",
                "start a new server with start_postgres().",
            )
        proc, _ = _start_server(
            self.bindir, self.cluster_dir, self.account, self.log_path, self.port, self.fast
        )
        self.process = proc
        register(self)
        try:
            _ensure_role_and_database(self.port)
        except BaseException:
            self.stop()
            raise

    def destroy(self, timeout: float = 20) -> None:
        """Stop the server and delete its cluster (and the ``data_dir`` link, if any).

        The log file in the parent of ``data_dir`` is kept.
        """
        self.stop(timeout=timeout)
        data_dir = self.data_dir
        if data_dir is not None and data_dir.is_symlink():
            data_dir.unlink()
            shadow = self.cluster_dir.parent
            if shadow.parent == SHADOW_ROOT:
                shutil.rmtree(shadow, ignore_errors=True)
        shutil.rmtree(self.cluster_dir, ignore_errors=True)


# --------------------------------------------------------------------------- public API


def start_postgres(
    data_dir: Path, port: int | None = None, *, fast: bool = False
) -> PostgresService:
    """Start PostgreSQL with its cluster in ``data_dir`` (created by ``initdb`` on first use).

    Listens on ``127.0.0.1:port`` (``None`` picks a free port, retried if it is taken
    meanwhile) with trust authentication (local development only).  Returns once the
    server accepts connections and the ``dnc`` role and database exist; raises
    :class:`ServiceError` (with the log tail) after 30 s.  Starting again on the same
    ``data_dir`` keeps the data.

    ``fast=True`` turns off ``fsync``, ``synchronous_commit`` and ``full_page_writes``:
    much quicker for tests, but a machine crash can corrupt the cluster, so never use it
    for data you care about (``dnc up`` does not).

    When running as root, see the module docstring for where the files go.
    """
    bindir = postgres_bindir()
    major = _server_major(bindir)
    account = _postgres_account()
    data_dir = _absolute(data_dir)
    log_path = data_dir.parent / _LOG_NAME
    cluster = _cluster_dir(data_dir, account, disposable=fast)
    if not _check_existing_cluster(cluster, major):
        _initdb(bindir, cluster, account, log_path, fast)
    proc, chosen = _start_server(bindir, cluster, account, log_path, port, fast)
    service = PostgresService(
        "postgres",
        HOST,
        chosen,
        proc,
        log_path,
        data_dir=data_dir,
        cluster_dir=cluster,
        bindir=bindir,
        account=account,
        fast=fast,
    )
    register(service)
    try:
        _ensure_role_and_database(chosen)
    except BaseException:
        service.stop()
        raise
    return service


def restart_postgres(service: PostgresService, timeout: float = 20) -> PostgresService:
    """Stop ``service`` (if running) and start it again on the same port and data.

    The handle is restarted in place and returned, so a fixture holding the same object
    stops the new server at teardown.  See :meth:`PostgresService.restart`.
    """
    service.restart(timeout=timeout)
    return service
