"""What a name may not hold. Apps, users, models and targets are identifiers that reach log
lines, tables and the operator's terminal, where a control character or a bidirectional
override would be run or would reorder what is read; the daemon refuses such names where they
come in (requests, ``Hello``, headers, the config) and its commands print them as escapes."""

from __future__ import annotations

import re
from typing import Final

CONTROL_CHARACTERS: Final = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""A regular expression's character class (without its brackets): C0 and C1 controls, DEL,
and the marks and overrides of bidirectional text."""
_NOT_IN_NAMES: Final = re.compile(f"[{CONTROL_CHARACTERS}]")


def control_character_in(name: str) -> str | None:
    """``U+001B at 4`` for the first character ``name`` may not hold, else None."""
    if name.isprintable():  # the common case, in C: no Cc or Cf character at all
        return None
    found = _NOT_IN_NAMES.search(name)
    return None if found is None else f"U+{ord(found[0]):04X} at {found.start()}"
