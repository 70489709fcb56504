"""Free text in the contracts (reason codes, agent ids, justifications, numbers as given).

Free text is one line without control characters: PostgreSQL refuses a NUL in a text column,
and a newline or an escape sequence forges log lines and terminal output. Refused at every
edge (the event model, the gateway's requests), so one bad field never reaches a reference
list, where every later change for that number would carry it and be refused as well.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# C0 controls (tab and newlines included), DEL, C1 controls, Unicode line/paragraph separators.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def single_line(value: str) -> str:
    """``value`` unchanged, or :class:`ValueError` saying which control character is where
    (never the value: it may hold a phone number). The caller's error names the field."""
    found = CONTROL_CHARACTERS.search(value)
    if found is not None:
        raise ValueError(
            "must be a single line of text without control characters (found "
            f"U+{ord(found.group()):04X} at character {found.start() + 1})"
        )
    return value


# For request models and parameters: ``Annotated[str, SINGLE_LINE, Field(...)]``.
SINGLE_LINE = AfterValidator(single_line)
SingleLine = Annotated[str, SINGLE_LINE]
