"""The exit codes of every `dnc` command: the same number means the same thing everywhere."""

from __future__ import annotations

EXIT_OK = 0  # done: callable, recorded, healthy, clean
EXIT_NOT_CALLABLE = 1  # do not call (`check`, `attempt`, `scrub`); differences (`verify`)
EXIT_UNAVAILABLE = 2  # not known or not done now: a service unreachable, the view not ready
EXIT_ERROR = 3  # bad input or configuration: fix the command or the DNC_* settings
EXIT_REFUSED = 4  # Kafka refused the credentials or the permission: retrying will not help

EXIT_CODES_HELP = (
    "Exit codes: 0 done (callable, recorded, healthy); 1 do not call (check, attempt, scrub) "
    "or differences found (verify); 2 unavailable: a service is unreachable or not ready, "
    "nothing was recorded and no answer is known (do NOT call; retry later); 3 bad input or "
    "configuration; 4 refused: Kafka refused the credentials or the permission (fix "
    "DNC_KAFKA_SASL_* or the ACLs; retrying will not help). Problems are said in one "
    "sentence; --verbose also shows the Kafka clients' own log lines."
)
