"""The `dnc` command's entry point: a plain `dnc check` answers without the CLI framework.

A dialer script asks "may I call this number now?" once per process: the answer needs the
settings, the tenants, the checker and one Redis round trip, not Typer, rich and every
other command's imports (about half of its wall time). So a `dnc check` whose arguments
are the usual ones (numbers, --tenant, --campaign, --at, --json) is parsed here with
argparse and answered by :mod:`dnc.check_answers`, the very code the Typer command runs.
Anything else (--help, another spelling, a global option, any error: a bad number, an
unknown tenant, invalid settings) goes to the Typer command, which says it as every other
command does; a check is read-only, so answering it there again changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# The only tokens of a lean `dnc check` that start with a dash (and their "--x=value"
# spellings): any other goes to Typer, which knows what it means or says it does not.
_OPTIONS = ("--tenant", "-t", "--campaign", "-c", "--at", "--json")
_VALUED = ("--tenant=", "--campaign=", "--at=")


class _NotLean(Exception):
    """These arguments are not a plain `dnc check`: Typer reads them."""


class _CheckArguments(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _NotLean(message)


def _parser() -> argparse.ArgumentParser:
    parser = _CheckArguments(prog="dnc check", add_help=False, allow_abbrev=False)
    parser.add_argument("phones", nargs="+")
    parser.add_argument("--tenant", "-t", required=True)
    parser.add_argument("--campaign", "-c")
    parser.add_argument("--at")
    parser.add_argument("--json", action="store_true", dest="as_json")
    return parser


def lean_check_arguments(argv: Sequence[str]) -> argparse.Namespace | None:
    """``argv`` (without the program's name) as a plain `dnc check`, or None."""
    if not argv or argv[0] != "check":
        return None
    rest = argv[1:]
    for token in rest:
        if token.startswith("-") and token not in _OPTIONS and not token.startswith(_VALUED):
            return None  # --help, --, a short option with its value glued, a typo...
    try:
        return _parser().parse_intermixed_args(rest)
    except _NotLean:
        return None


def lean_check(argv: Sequence[str]) -> int | None:
    """Answer a plain `dnc check` and return its exit code; None: Typer has to (not a plain
    check, or it failed before any answer was printed)."""
    arguments = lean_check_arguments(argv)
    if arguments is None:
        return None
    from dnc.check_answers import check_numbers, write_answers

    try:
        results = check_numbers(
            arguments.phones, arguments.tenant, arguments.campaign, arguments.at
        )
    except Exception:  # said by the Typer command, the way every command says it
        return None
    return write_answers(arguments.phones, results, arguments.as_json)


def main() -> None:
    """`dnc`: a plain check answered here, everything else by :func:`dnc.cli.main`."""
    code = lean_check(sys.argv[1:])
    if code is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Answered and written: end here. The interpreter's own teardown (freeing every
        # module of pydantic, redis-py...) would cost about a quarter of the process's time
        # again, and nothing is left to do (no log handler, no file, no thread).
        os._exit(code)
    from dnc.cli import main as full_main

    full_main()
