"""The authority key and its signatures: a secret of the workers alone, over the event and
its cutoff, one purpose per signature; `dnc up` generates it for its workers only."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from dnc.local import LocalPipeline
from schemas.authority import (
    APPENDED_AT_HEADER,
    AUTHORITY_HEADER,
    authority_key,
    carried_cutoff,
    carried_headers,
    forward_headers,
    forwarded_cutoff,
    signed_before_cutoffs,
    verifying_key,
)
from schemas.errors import ConfigError
from schemas.settings import AUTHORITY_KEY_FILE, Settings
from tests.harness import REPO

KEY, VALUE, CUTOFF = b"k" * 32, b'{"kind": "lift"}', 1_796_000_000_123


def test_the_signature_covers_the_event_and_its_cutoff() -> None:
    headers = forward_headers(KEY, VALUE, CUTOFF)
    assert forwarded_cutoff(KEY, VALUE, headers) == CUTOFF
    stripped = [(k, v) for k, v in headers if k != APPENDED_AT_HEADER]
    later = [(k, str(CUTOFF + 60_000).encode() if k == APPENDED_AT_HEADER else v)
             for k, v in headers]  # fmt: skip
    for forged in (stripped, later, [(APPENDED_AT_HEADER, b"1")]):
        assert forwarded_cutoff(KEY, VALUE, forged) is None, forged
    assert forwarded_cutoff(KEY, VALUE + b" ", headers) is None
    assert forwarded_cutoff(b"another-key-of-32-bytes-at-least", VALUE, headers) is None
    assert forwarded_cutoff(None, VALUE, headers) is None  # a reader without the key


def test_a_signature_serves_one_purpose_only() -> None:
    """A dead letter's carried cutoff is not a forwarded record's signature, nor the reverse."""
    carried = carried_headers(KEY, VALUE, CUTOFF)
    assert carried_cutoff(KEY, VALUE, carried) == CUTOFF
    as_forward = [(APPENDED_AT_HEADER, carried[0][1]), (AUTHORITY_HEADER, carried[1][1])]
    assert forwarded_cutoff(KEY, VALUE, as_forward) is None
    forward = dict(forward_headers(KEY, VALUE, CUTOFF))
    as_carried = [("dnc.cutoff", forward[APPENDED_AT_HEADER]),
                  ("dnc.cutoff.authority", forward[AUTHORITY_HEADER])]  # fmt: skip
    assert carried_cutoff(KEY, VALUE, as_carried) is None


def test_a_first_version_signature_is_recognised_and_refused() -> None:
    """Lifts forwarded before the cutoff was signed (bytes only): in flight during an upgrade."""
    v1 = hmac.new(KEY, b"dnc-authority-v1\x1f" + VALUE, hashlib.sha256).hexdigest().encode()
    headers = [(AUTHORITY_HEADER, v1), (APPENDED_AT_HEADER, str(CUTOFF).encode())]
    assert forwarded_cutoff(KEY, VALUE, headers) is None
    assert signed_before_cutoffs(headers)
    assert not signed_before_cutoffs(forward_headers(KEY, VALUE, CUTOFF))


def test_the_authority_key_is_required_and_never_the_view_key() -> None:
    with pytest.raises(ConfigError, match="DNC_AUTHORITY_KEY is not set"):
        authority_key(Settings(view_key="v" * 32))
    assert verifying_key(Settings(view_key="v" * 32)) is None
    with pytest.raises(ConfigError, match="equals DNC_VIEW_KEY"):
        authority_key(Settings(view_key="v" * 32, authority_key="v" * 32))
    assert authority_key(Settings(view_key="v" * 32, authority_key="a" * 32)) == b"a" * 32
    development = Settings(view_key="v" * 32, allow_development_authority_key=True)
    derived = authority_key(development)
    assert derived not in (b"v" * 32, b"") and derived == verifying_key(development)


def test_the_worker_refuses_to_start_without_its_authority_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")}
    env |= {"DNC_DATA_DIR": str(tmp_path), "DNC_VIEW_KEY": "a-view-key-of-the-stack"}
    run = subprocess.run([sys.executable, "-m", "dnc", "worker"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 3, run.stdout + run.stderr
    assert "DNC_AUTHORITY_KEY is not set" in run.stderr
    assert "DNC_ALLOW_DEVELOPMENT_AUTHORITY_KEY" in run.stderr


def test_dnc_up_generates_the_authority_key_once_and_gives_it_to_the_workers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DNC_AUTHORITY_KEY", raising=False)
    settings = Settings(data_dir=tmp_path, view_key="k" * 32)
    local = LocalPipeline(settings, "3.9.1", False, Console(file=None), workers=2)
    workers = local.worker_children()
    path = tmp_path / AUTHORITY_KEY_FILE
    key = path.read_text().strip()
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {w.env["DNC_AUTHORITY_KEY"] for w in workers} == {key}
    again = LocalPipeline(settings, "3.9.1", False, Console(file=None)).worker_children()
    assert again[0].env["DNC_AUTHORITY_KEY"] == key  # generated once
    assert key != local.settings.view_key.get_secret_value()
    # Not even one exported in the shell that runs `dnc up`.
    monkeypatch.setenv("DNC_AUTHORITY_KEY", "exported-in-the-shell-of-dnc-up")
    for role in ("gateway", "sync"):
        assert "DNC_AUTHORITY_KEY" not in local._env_of(role), role
