"""The view's contract with its readers: same layout or "unavailable", a secret key, no
evicting Redis, lost keys rebuilt, and `dnc verify` finding what is not as the log says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from consumers.checker import SuppressionChecker
from schemas.events import Kind, OppositionEvent
from schemas.settings import VIEW_KEY_FILE, Settings
from schemas.view import FAMILY_OF_KIND, ViewLayout, view_layout
from tests.harness import REPO, Pipeline, wait_for


def test_layout_fingerprint_changes_with_the_key_and_buckets_and_hides_the_key() -> None:
    base = ViewLayout(b"secret-one", 1024)
    assert base.fingerprint == ViewLayout(b"secret-one", 1024).fingerprint
    assert base.fingerprint != ViewLayout(b"secret-two", 1024).fingerprint
    assert base.fingerprint != ViewLayout(b"secret-one", 2048).fingerprint
    assert base.fingerprint != ViewLayout(b"secret-one", 1024, {"acme": 64}).fingerprint
    assert "secret" not in base.fingerprint and len(base.fingerprint) == 16


def test_settings_use_the_key_dnc_up_generated_for_its_data_directory(tmp_path: Path) -> None:
    (tmp_path / VIEW_KEY_FILE).write_text("a-generated-secret\n")
    env = {k: v for k, v in os.environ.items() if k != "DNC_VIEW_KEY"}
    settings = Settings.model_validate({"data_dir": tmp_path})
    assert settings.view_key.get_secret_value() == "a-generated-secret"
    assert not settings.uses_default_view_key
    explicit = Settings.model_validate({"data_dir": tmp_path, "view_key": "mine"})
    assert explicit.view_key.get_secret_value() == "mine"
    assert env is not None


def test_the_worker_refuses_the_public_development_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")}
    env["DNC_DATA_DIR"] = str(tmp_path)  # no generated key there
    run = subprocess.run([sys.executable, "-m", "dnc", "worker"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 3, run.stdout + run.stderr
    assert "DNC_VIEW_KEY is the public development default" in run.stderr


def _suppress(p: Pipeline, phones: list[str]) -> None:
    for outcome in p.publisher.publish_many(
        [OppositionEvent.record(tenant="acme", phone=n, kind=Kind.OPPOSITION) for n in phones]
    ):
        assert not isinstance(outcome, Exception), outcome
    wait_for(
        lambda: all(r.answer.value == "suppressed" for r in p.checker.check_many(phones, "acme")),
        timeout=30,
        what="the numbers suppressed",
    )


@pytest.mark.pipeline
def test_a_reader_with_another_key_or_bucket_count_answers_unavailable_and_says_why(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    _suppress(pipeline, ["+33611000001"])
    client = redis.Redis.from_url(pipeline.stack.redis_url)
    for wrong in (
        pipeline.settings.model_copy(update={"view_key": SecretStr("another-key")}),
        pipeline.settings.model_copy(update={"view_buckets": 2048}),
    ):
        checker = SuppressionChecker.from_settings(wrong, pipeline.tenants, client)
        result = checker.check("+33611000001", "acme")
        assert result.answer.value == "unavailable", result
        assert "layout mismatch" in (result.why or "") and "DNC_VIEW_KEY" in (result.why or "")
    status = pipeline.cli("status", "--json")
    assert json.loads(status.stdout)["layout_mismatch"] is False  # the right key: no mismatch
    wrong_env = {**pipeline.env, "DNC_VIEW_KEY": "another-key"}
    mismatch = subprocess.run([sys.executable, "-m", "dnc", "status", "--json"], env=wrong_env,
                              cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert mismatch.returncode == 2
    assert json.loads(mismatch.stdout)["layout_mismatch"] is True


@pytest.mark.pipeline
def test_an_evicting_redis_is_refused_until_fixed(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    _suppress(pipeline, ["+33611000002"])
    try:
        pipeline.redis.config_set("maxmemory-policy", "allkeys-lru")
        wait_for(
            lambda: pipeline.check("+33611000002", "acme").answer.value == "unavailable",
            timeout=15,
            what="checks to fail closed on an evicting Redis",
        )
        wait_for(lambda: "maxmemory-policy is allkeys-lru" in pipeline.worker_log(tail=None),
                 timeout=15, what="the worker to say what to fix")  # fmt: skip
    finally:
        pipeline.redis.config_set("maxmemory-policy", "noeviction")
    pipeline.wait_answer("+33611000002", "acme", "suppressed", timeout=30)


@pytest.mark.pipeline
def test_a_lost_view_key_is_found_and_rebuilt(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    phones = [f"+3361100{i:04d}" for i in range(100, 160)]
    _suppress(pipeline, phones)
    layout = view_layout(pipeline.settings, pipeline.tenants)
    lost = layout.slot("acme", phones[0])
    opposed = lost.key + FAMILY_OF_KIND["opposition"]  # the bucket's set of oppositions
    assert pipeline.redis.delete(opposed) == 1  # eviction, or an operator's mistake
    pipeline.wait_answer(phones[0], "acme", "suppressed", timeout=30)
    # (the counter moves just after the view is marked ready, which a check may see first)
    wait_for(lambda: 'dnc_view_rebuilds_total{trigger="keys_lost"}' in pipeline.metrics(),
             timeout=10, what="the rebuild counted as keys_lost")  # fmt: skip


@pytest.mark.pipeline
def test_verify_finds_a_missing_and_an_unexplained_member_then_is_clean(
    pipeline: Pipeline,
) -> None:
    # The worker's own reconciliation would repair the member before verify reads it: this
    # is about what verify sees (tests/test_fencing.py covers the reconciliation).
    pipeline.env["DNC_AUDIT_STATES_PER_SECOND"] = "0"
    pipeline.start_worker()
    phones = [f"+3361100{i:04d}" for i in range(200, 220)]
    _suppress(pipeline, phones)
    clean = pipeline.cli("verify", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["differences"] == 0

    layout = view_layout(pipeline.settings, pipeline.tenants)
    slot = layout.slot("acme", phones[3])
    opposed = slot.key + FAMILY_OF_KIND["opposition"]  # the bucket's set of oppositions
    pipeline.redis.sadd(opposed, 12345)  # a stray member (it also keeps the key in place)
    pipeline.redis.srem(opposed, slot.member)  # a member lost: a check would say "callable"
    found = pipeline.cli("verify", "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    rows = [t for t in report["tallies"] if t["tenant"] == "acme" and t["kind"] == "opposition"]
    assert rows[0]["view_missing"] == 1 and rows[0]["states"] == len(phones)
    assert report["unexplained_view_members"] == {"acme": 1}
    human = pipeline.cli("verify")
    assert human.returncode == 1 and "2 differences" in human.stdout  # (the table is for humans)

    pipeline.redis.flushall()  # the worker rebuilds the whole view from its table
    pipeline.wait_answer(phones[3], "acme", "suppressed", timeout=30)
    assert pipeline.cli("verify").returncode == 0


@pytest.mark.pipeline
def test_verify_is_clean_while_traffic_flows(pipeline: Pipeline) -> None:
    """Ops run it on a live pipeline: changes in flight are not differences."""
    import threading

    pipeline.start_worker()
    stop = threading.Event()

    def agents() -> None:
        i = 0
        while not stop.is_set():
            batch = [OppositionEvent.record(tenant="acme", phone=f"+3361200{i + k:04d}",
                                            kind=Kind.OPPOSITION if (i + k) % 3 else Kind.REFUSAL)
                     for k in range(20)]  # fmt: skip
            pipeline.publisher.publish_many(batch)
            i += 20
            stop.wait(0.05)

    thread = threading.Thread(target=agents, daemon=True)
    thread.start()
    try:
        wait_for(lambda: pipeline.check("+33612000000", "acme").answer.value == "suppressed",
                 timeout=30, what="traffic flowing")  # fmt: skip
        live = pipeline.cli("verify", "--json", timeout=120)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert live.returncode == 0, live.stdout[-3000:] + live.stderr[-2000:]
    assert json.loads(live.stdout)["differences"] == 0
