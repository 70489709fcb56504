"""The promise under real faults: never "callable" for an opposition acknowledged longer ago
than the staleness bound, nothing lost, `dnc verify` clean after each fault.

One private stack for the module (the faults kill brokers and restart Redis, which must not
disturb the other tests): Kafka with a listener behind Toxiproxy, Redis behind Toxiproxy,
PostgreSQL, a supervised `dnc worker` and `dnc sync` (and a second worker for the fault that
needs two). Each fault runs once, with its own numbers, while agents publish 100 events/s
and a dialer checks every acknowledged number; the rebuild faults preload 200,000
oppositions (once), and every preloaded number must still be suppressed after each fault.
The figures are printed (`pytest -s`, or `dnc bench-faults` for the table).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dnc.fault_drill import FAULTS, FaultDrill, FaultResult

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
def drill() -> Iterator[FaultDrill]:
    stack = FaultDrill()
    try:
        stack.start()
        yield stack
    finally:
        stack.close()


def _report(result: FaultResult) -> str:
    return (
        f"{result.fault}: {result.answers} answers, {100 * result.unavailable_share:.0f}% "
        f"unavailable, {result.callable_past_bound} callable past the bound, oldest ack "
        f"answered callable {result.max_callable_age:.2f}s, outage {result.outage_seconds}, "
        f"recovery {result.recovery_seconds}, published {result.published}, lost "
        f"{result.lost}, verify differences {result.verify_differences} {result.notes}"
    )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.timeout(f.timeout)) for n, f in FAULTS.items()]
)
def test_fault_never_answers_callable_past_the_bound_and_loses_nothing(
    drill: FaultDrill, name: str
) -> None:
    index = list(FAULTS).index(name)
    result = drill.run(FAULTS[name], first_number=(index + 1) * 1_000_000)
    print(_report(result))
    assert result.published > 0 and result.answers > 0, _report(result)
    assert result.callable_past_bound == 0, _report(result)
    assert result.max_callable_age <= drill.max_staleness, _report(result)
    assert result.lost == 0, _report(result)
    assert result.verify is not None and result.verify.differences == 0, (
        _report(result),
        result.verify,
    )
    assert not result.notes, _report(result)
