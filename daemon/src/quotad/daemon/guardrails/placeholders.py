"""What a masked value becomes: the placeholder ``[EMAIL_1]``, ``[CREDIT_CARD_2]``…

A placeholder is ``[``, the entity kind in upper case, ``_``, a number from 1 without leading
zeros, ``]``: plain ASCII that models copy exactly and that needs no escaping inside a JSON
string. Numbers count per kind within one request, in the order values first appear; the
same value always gets the same placeholder.

Only placeholders quotad itself assigned are ever restored, and only in their exact form
(a model's ``[email_1]`` or ``[EMAIL 1]`` stays as the model wrote it: the caller sees the
placeholder, never a value put where quotad did not put one). A caller's text that already
holds placeholder-shaped text (a pasted earlier reply, or a document written to collide) keeps
it as literal text: its numbers are *reserved* and never assigned in that request, so that
nothing is restored into it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import msgspec

from quotad.daemon.config import ENTITY_KINDS, EntityKind

LABELS: Final[dict[EntityKind, str]] = {kind: kind.upper() for kind in ENTITY_KINDS}
"""The label of each kind in its placeholders."""

PLACEHOLDER: Final = re.compile(r"\[(?:" + "|".join(LABELS.values()) + r")_[1-9][0-9]{0,8}\]")
"""Any placeholder-shaped text."""

LONGEST: Final = max(len(label) for label in LABELS.values()) + len("[_123456789]")
"""The length of the longest placeholder."""

_PREFIXES: Final = frozenset(
    label_[:length] for label in LABELS.values() for label_ in [label + "_"]
    for length in range(len(label_) + 1)
)  # fmt: skip
_FULL_LABELS: Final = frozenset(label + "_" for label in LABELS.values())
_DIGITS: Final = "0123456789"


def placeholder(kind: EntityKind, number: int) -> str:
    """The placeholder of the ``number``-th value of ``kind``."""
    return f"[{LABELS[kind]}_{number}]"


def placeholders_in(text: str) -> Iterable[str]:
    """The placeholder-shaped pieces of ``text``."""
    if "[" not in text:
        return ()
    return PLACEHOLDER.findall(text)


def could_become_placeholder(tail: str) -> bool:
    """Whether ``tail`` (text from a ``[`` to the end of what has arrived) may be the start
    of a placeholder, so that a stream must wait for more before passing it on."""
    if not tail.startswith("[") or len(tail) >= LONGEST:
        return False
    body = tail[1:]
    name = body.rstrip(_DIGITS)
    if len(name) == len(body):
        return name in _PREFIXES
    digits = body[len(name) :]
    return name in _FULL_LABELS and digits[0] != "0" and len(digits) <= 9


def json_escaped(value: str) -> str:
    """``value`` as it must appear between the quotes of a JSON string."""
    return msgspec.json.encode(value).decode()[1:-1]
