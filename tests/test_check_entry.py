"""`dnc check` has two entry points: the lean one (dnc/entry.py: argparse, no Typer or rich)
for the usual arguments, and the Typer command for everything else. On the same view, for
the same arguments, they must print the same lines and exit with the same code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnc.entry import lean_check_arguments
from schemas.vocabulary import GLOBAL_TARGET
from tests.harness import REPO
from tests.plain_view import VIEW_KEY, PlainView, numbers

DNC = str(Path(sys.executable).parent / "dnc")  # the console script, as a dialer runs it
# The Typer command, as `dnc` ran it before the lean entry point existed.
TYPER = "import sys; sys.argv[0] = 'dnc'; from dnc.cli import main; main()"
# Imported only by the Typer path (or, from the fourth, by what a check does not need: the
# event models, the reference phone library, redis-py and the metrics of a long-lived process).
NOT_LEAN = (
    "typer",
    "rich",
    "click",
    "schemas.events",
    "phonenumbers",
    "redis",
    "prometheus_client",
)


def env(view: PlainView, tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")}
    return keep | {
        "DNC_REDIS_URL": view.url,
        "DNC_VIEW_KEY": VIEW_KEY,
        "DNC_VIEW_BUCKETS": "1024",
        "DNC_DATA_DIR": str(tmp_path / "data"),
        # both processes of a pair read the view vouched just before them
        "DNC_MAX_STALENESS_SECONDS": "60",
    }


def run(command: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=90, cwd=REPO
    )


def comparable(stdout: str) -> str:
    """The output without the instants read from Redis's clock (two processes, two reads)."""
    lines = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            answer = json.loads(line)
            answer["at"] = "(the instant judged)" if answer["at"] else None
            line = json.dumps(answer)
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.redis
@pytest.mark.timeout(400)  # 34 processes, half of them on the slow path, on a shared machine
def test_the_lean_and_the_typer_check_give_the_same_answers(
    view: PlainView, tmp_path: Path
) -> None:
    opposed, worldwide, in_campaign, free = numbers(4, first=500)
    view.suppress([opposed])
    view.suppress([worldwide], target=GLOBAL_TARGET)
    view.suppress([in_campaign], target="acme/spring")
    environment = env(view, tmp_path)
    cases = [
        [free, "--tenant", "acme"],
        [opposed, "--tenant", "acme"],
        [worldwide, "-t", "acme", "--json"],
        [in_campaign, "--tenant=acme", "--campaign", "spring"],
        ["--tenant", "acme", "-c", "spring", in_campaign, free, "0612", opposed],
        ["06 10 00 05 03", "--tenant", "acme", "--json"],  # national form: `free`
        [free, opposed, "--tenant", "acme", "--json"],
        [free, "-t", "demo", "--campaign", "optin-2027", "--at=2027-03-15T10:30:00+01:00"],
        [free, "--tenant", "demo", "-c", "optin-2027", "--at=2027-03-14T22:00:00Z", "--json"],
        # errors and other spellings: the lean entry hands them to Typer
        ["0612", "--tenant", "acme"],
        [free, "--tenant", "nobody"],
        [free, "--tenant", "acme", "--at", "tomorrow"],
        [free, "--tenant", "acme", "--at", "2027-03-15T10:30:00"],
        [free],
        ["--tenant", "acme"],
        [free, "--tenant", "acme", "--bogus"],
        ["--help"],
    ]
    codes, said = set(), []
    for args in cases:
        view.make_ready()
        lean = run([DNC, "check", *args], environment)
        typer = run([sys.executable, "-c", TYPER, "check", *args], environment)
        assert (lean.returncode, comparable(lean.stdout), lean.stderr) == (
            typer.returncode, comparable(typer.stdout), typer.stderr
        ), args  # fmt: skip
        codes.add(lean.returncode)
        said.append(lean.stdout)
        assert "view not" not in lean.stdout, args  # the view was read and trusted
    assert said[0] == "callable\n"
    assert said[1].startswith("suppressed: ") and "(tenant" in said[1]
    assert json.loads(said[2])["scope"] == "global"
    assert said[3].startswith("suppressed: ") and "(campaign" in said[3]
    assert codes == {0, 1, 2, 3}  # callable, do not call, unavailable (a bad number), error


@pytest.mark.redis
def test_a_plain_check_imports_no_cli_framework_nor_redis_py_and_an_error_falls_back(
    view: PlainView, tmp_path: Path
) -> None:
    environment = env(view, tmp_path)
    view.make_ready()
    [free] = numbers(1, first=600)

    def imported(*args: str) -> tuple[int, set[str]]:
        command = [sys.executable, "-X", "importtime", DNC, "check", *args]
        done = run(command, environment)
        names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
        return done.returncode, names & set(NOT_LEAN)

    # The server lost the read script (restarted, SCRIPT FLUSH): the library's checker asks
    # and loads it; after that, a plain check is asked without redis-py.
    code, names = imported(free, "--tenant", "acme")
    assert code == 0 and {"redis"} <= names <= {"redis", "prometheus_client"}
    assert imported(free, "--tenant", "acme") == (0, set())
    code, names = imported("0612", "--tenant", "acme")
    assert code == 3 and {"typer", "rich"} <= names  # said by the Typer command


def test_only_the_usual_arguments_of_check_take_the_lean_entry() -> None:
    lean = lean_check_arguments(["check", "+33612345678", "-t", "acme", "--at=2027-01-01Z"])
    assert lean is not None
    assert (lean.phones, lean.tenant, lean.campaign, lean.at, lean.as_json) == (
        ["+33612345678"], "acme", None, "2027-01-01Z", False
    )  # fmt: skip
    mixed = lean_check_arguments(["check", "a", "--tenant", "t", "b", "--json", "-c", "x"])
    assert mixed is not None and (mixed.phones, mixed.campaign, mixed.as_json) == (
        ["a", "b"], "x", True
    )  # fmt: skip
    for argv in (
        [],
        ["status"],
        ["-v", "check", "a", "--tenant", "t"],  # a global option: Typer's
        ["check", "a", "--tenant", "t", "--help"],
        ["check", "a", "-tacme"],  # glued short option
        ["check", "a", "--ten", "t"],  # click takes no abbreviation
        ["check", "a", "--tenant", "t", "--", "-1"],
        ["check", "-1", "--tenant", "t"],
        ["check", "a", "--json=yes", "--tenant", "t"],
        ["check", "a"],  # no tenant
        ["check", "--tenant", "t"],  # no number
        ["check", "a", "--tenant"],
    ):
        assert lean_check_arguments(argv) is None, argv
