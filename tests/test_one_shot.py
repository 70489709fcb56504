"""The one-shot check of a shell's `dnc check` (consumers/one_shot.py) against the real Redis:
the library's answers, or none at all (the caller then asks the library)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from consumers.one_shot import OneShotCheck, PlainServer
from consumers.verdicts import Answer, CheckResult
from schemas.vocabulary import GLOBAL_TARGET
from tests.plain_view import TENANTS, PlainView, numbers


def one_shot(view: PlainView, url: str | None = None, **options: float) -> OneShotCheck:
    server = PlainServer.from_url(url or view.url)
    assert server is not None
    return OneShotCheck(server, view.layout, TENANTS, **options)


def same(a: CheckResult | None, b: CheckResult) -> bool:
    """The same answer (the instants judged are two reads of Redis's clock)."""
    assert a is not None
    return (a.phone_e164, a.answer, a.scope, a.why, a.reasons, a.next_allowed_at, a.consent) == (
        b.phone_e164, b.answer, b.scope, b.why, b.reasons, b.next_allowed_at, b.consent
    )  # fmt: skip


@pytest.fixture
def loaded(view: PlainView) -> Iterator[PlainView]:
    """A ready view whose server holds the read script (the library's first check loads it)."""
    view.make_ready()
    view.checker.check(numbers(1, first=900)[0], "acme")
    yield view


@pytest.mark.redis
def test_it_answers_as_the_library_does(loaded: PlainView) -> None:
    opposed, worldwide, in_campaign, free = numbers(4, first=700)
    loaded.suppress([opposed])
    loaded.suppress([worldwide], target=GLOBAL_TARGET)
    loaded.suppress([in_campaign], target="acme/spring")
    quick = one_shot(loaded)
    cases = [
        (free, "acme", None),
        (opposed, "acme", None),
        (worldwide, "acme", None),
        (in_campaign, "acme", "spring"),
        (in_campaign, "acme", None),
        ("06 10 00 07 03", "acme", None),  # national form of `free`
        (free, "demo", "optin-2027"),  # a consent campaign: no consent on record
    ]
    answers = set()
    for phone, tenant, campaign in cases:
        library = loaded.checker.check(phone, tenant, campaign)
        assert same(quick.check(phone, tenant, campaign), library), (phone, campaign)
        answers.add(library.answer)
    assert answers == {Answer.CALLABLE, Answer.SUPPRESSED}


@pytest.mark.redis
def test_a_view_it_cannot_trust_is_unavailable_as_in_the_library(loaded: PlainView) -> None:
    [free] = numbers(1, first=710)
    quick = one_shot(loaded, max_staleness_seconds=0.2)
    time.sleep(0.3)  # past this reader's bound since the last vouch
    answer = quick.check(free, "acme")
    assert answer is not None and answer.answer is Answer.UNAVAILABLE
    assert answer.why is not None and "not current" in answer.why
    loaded.client.delete(*loaded.client.keys("*_meta*"))  # the view's metadata gone
    fresh = one_shot(loaded)
    answer = fresh.check(free, "acme")
    assert answer is not None and answer.answer is Answer.UNAVAILABLE
    assert same(answer, loaded.checker.check(free, "acme"))


@pytest.mark.redis
def test_without_the_script_loaded_it_gives_no_answer_and_the_library_loads_it(
    loaded: PlainView,
) -> None:
    [opposed] = numbers(1, first=720)
    loaded.suppress([opposed])
    loaded.client.script_flush()
    quick = one_shot(loaded)
    assert quick.check(opposed, "acme") is None  # NOSCRIPT: not an answer
    assert loaded.checker.check(opposed, "acme").answer is Answer.SUPPRESSED
    answer = quick.check(opposed, "acme")
    assert answer is not None and answer.answer is Answer.SUPPRESSED


@pytest.mark.redis
def test_an_unreachable_or_refusing_server_gives_no_answer(loaded: PlainView) -> None:
    [free] = numbers(1, first=730)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert one_shot(loaded, f"redis://127.0.0.1:{port}/0").check(free, "acme") is None
    # a password this server does not require: AUTH is refused
    wrong = loaded.url.replace("redis://", "redis://:not-the-password@")
    assert one_shot(loaded, wrong).check(free, "acme") is None
    # another database: nothing there, so the view is not ready (an answer, fail closed)
    other_db = one_shot(loaded, loaded.url.rsplit("/", 1)[0] + "/3").check(free, "acme")
    assert other_db is None or other_db.answer is Answer.UNAVAILABLE


@pytest.mark.redis
def test_a_server_that_stops_answering_gives_no_answer_within_the_timeout(
    loaded: PlainView,
) -> None:
    [free] = numbers(1, first=740)
    with socket.socket() as silent:  # accepts connections (the backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        quick = one_shot(loaded, f"redis://127.0.0.1:{port}/0", timeout_seconds=0.3)
        started = time.monotonic()
        assert quick.check(free, "acme") is None
        assert time.monotonic() - started < 2


@pytest.mark.redis
def test_invalid_input_raises_as_in_the_library(loaded: PlainView) -> None:
    quick = one_shot(loaded)
    for phone, tenant in (("0612", "acme"), (numbers(1)[0], "nobody")):
        with pytest.raises(Exception) as ours:
            quick.check(phone, tenant)
        with pytest.raises(Exception) as theirs:
            loaded.checker.check(phone, tenant)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_only_a_plain_server_url_is_asked_directly() -> None:
    assert PlainServer.from_url("redis://127.0.0.1:6380/2") == PlainServer("127.0.0.1", 6380, 2)
    assert PlainServer.from_url("redis://localhost") == PlainServer("localhost", 6379, 0)
    assert PlainServer.from_url("redis://app:s%40cret@[::1]:7000/0") == PlainServer(
        "::1", 7000, 0, "app", "s@cret"
    )
    assert PlainServer.from_url("redis://:pw@h:1") == PlainServer("h", 1, 0, None, "pw")
    for url in (
        "rediss://h:6379/0",  # TLS: the library's client
        "unix:///run/redis.sock",
        "redis://h:6379/0?socket_timeout=1",  # options: the library's client reads them
        "redis://h:6379/zero",
        "redis://h:notaport/0",
        "redis:///0",
    ):
        assert PlainServer.from_url(url) is None, url


def test_the_commands_authenticate_and_select_before_the_question() -> None:
    server = PlainServer("h", 1, 2, "app", "pw")
    assert server.preludes == 2
    assert server.commands("PING") == (
        b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n"
        b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*1\r\n$4\r\nPING\r\n"
    )
    assert PlainServer("h", 1).commands("PING") == b"*1\r\n$4\r\nPING\r\n"
    assert PlainServer("h", 1).preludes == 0


@pytest.mark.redis
def test_its_script_is_the_one_the_library_loads(loaded: PlainView) -> None:
    from consumers.one_shot import _READ_SHA
    from consumers.readiness import READ_VIEW

    assert loaded.client.script_load(READ_VIEW) == _READ_SHA
    assert loaded.client.script_exists(_READ_SHA) == [True]
