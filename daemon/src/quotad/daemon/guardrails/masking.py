"""Applying actions to what is found, for one request (or one reply): :class:`Masker`.

A masker looks for the kinds its actions name, counts every entity it finds, replaces those
whose action is ``mask`` by their placeholder, notes the kinds whose action is ``block`` and
leaves ``log`` ones as they are. It keeps the value → placeholder assignment of its request,
so the same value gets the same placeholder in every message, part and tool call, and
:attr:`Masker.originals` maps each placeholder back for restoring.

JSON text (tool-call arguments) is decoded, its string keys and values (and integers of
13 to 19 digits: card numbers) are rewritten, and it is encoded again only if something
changed. JSON no decoder takes (numbers out of range, nesting too deep) is masked as text
in a way that keeps it JSON; text that is not JSON at all is masked as plain text. A
member whose name labels an AWS secret key (``"SecretAccessKey": "…"``) counts as a secret
though the value alone would not. :class:`LiteralPlaceholders` is the pass before masking
that reserves the placeholder-shaped text a caller sent.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Mapping
from typing import Any, Final

import msgspec

from quotad.daemon.config import EntityKind, GuardrailAction
from quotad.daemon.guardrails.detectors import Entity, find_entities
from quotad.daemon.guardrails.placeholders import placeholder, placeholders_in
from quotad.daemon.guardrails.secret_formats import is_labelled_aws_secret

_MAX_JSON_DEPTH: Final = 64
"""Deeper JSON is masked as plain text (a hostile nesting costs its own fidelity only)."""
_CARD_SIZED: Final = range(10**12, 10**19)
"""Integers of 13 to 19 digits are looked at (card numbers written as JSON numbers)."""


SEVERITY: Final[Mapping[GuardrailAction, int]] = {"block": 3, "mask": 2, "log": 1, "off": 0}
"""How much each action does: what two kinds found in the same characters are settled by."""

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL)


class _TooDeep(Exception):
    """JSON nested past :data:`_MAX_JSON_DEPTH`."""


class Masker:
    """Finds, counts and masks the kinds of ``actions`` in one request's (or reply's) text.

    ``reserved`` placeholders are never assigned (a caller's literal ones, or, for a reply,
    the request's own); ``counts`` says how many entities of each kind were found, whatever
    their action; ``blocked`` the kinds found whose action is ``block``.
    """

    def __init__(
        self, actions: Mapping[EntityKind, GuardrailAction], reserved: Collection[str] = ()
    ) -> None:
        self.actions = {kind: action for kind, action in actions.items() if action != "off"}
        self.kinds = frozenset(self.actions)
        self.severity = {kind: SEVERITY[action] for kind, action in self.actions.items()}
        """Of two kinds found in the same characters, the one whose action does more wins."""
        self.counts: dict[EntityKind, int] = {}
        self.blocked: set[EntityKind] = set()
        self.originals: dict[str, str] = {}
        """Placeholder → the value it replaced."""
        self._assigned: dict[tuple[EntityKind, str], str] = {}
        self._next: dict[EntityKind, int] = {}
        self._reserved = set(reserved)

    # ------------------------------------------------------------------ TextRewriter

    def text(self, text: str) -> str:
        """``text`` with the entities to mask replaced by placeholders."""
        if not self.kinds or not text:
            return text
        entities = find_entities(text, self.kinds, severity=self.severity)
        if not entities:
            return text
        return self.act_on(text, entities)

    def json(self, text: str) -> str:
        """JSON ``text`` with the entities in its strings masked, still valid JSON."""
        if not self.kinds or not text:
            return text
        if "\\u" not in text and not find_entities(text, self.kinds, severity=self.severity):
            return text  # its strings hold nothing: the text has them as a decoder reads them
        try:
            decoded = msgspec.json.decode(text)
        except (msgspec.ValidationError, RecursionError):  # JSON, but numbers out of range
            return self._json_as_text(text)  # or nested too deep for a decoder
        except msgspec.DecodeError:
            return self.text(text)  # not JSON at all
        found = sum(self.counts.values())
        try:
            rewritten = self._value(decoded, 0)
        except _TooDeep:
            return self._json_as_text(text)
        if rewritten is decoded:  # nothing found in what the decoder kept: the text may hold
            if sum(self.counts.values()) == found:  # more (a duplicate key's first value)
                return self._json_as_text(text)
            return text
        return msgspec.json.encode(rewritten).decode()

    def value(self, value: Any) -> Any:
        """A decoded JSON value with the entities in its strings masked."""
        if not self.kinds:
            return value
        try:
            return self._value(value, 0)
        except _TooDeep:
            encoded = _encoded(value)
            masked = self._json_as_text(encoded)
            if masked is encoded:
                return value
            try:
                return msgspec.json.decode(masked)
            except (msgspec.DecodeError, RecursionError):
                return masked  # masked as text: the value's shape is lost, not its secret

    # ------------------------------------------------------------------ the work

    def _json_as_text(self, text: str) -> str:
        """JSON that cannot be decoded (not JSON, nested too deep, numbers out of range)
        masked as text, keeping what JSON it is valid: a placeholder outside a string (a
        number) is quoted, and one inside a string starts after an escape, not inside it."""
        entities = find_entities(text, self.kinds, severity=self.severity)
        if not entities:
            return text
        strings = [match.span() for match in _JSON_STRING.finditer(text)]
        starts = [start for start, _ in strings]
        shaped: list[Entity] = []
        quoted: set[int] = set()
        for start, end, kind in entities:
            index = bisect.bisect_right(starts, start) - 1
            if index >= 0 and start < strings[index][1]:  # inside a string
                backslashes = 0
                while text[start - backslashes - 1] == "\\":
                    backslashes += 1
                if backslashes % 2:  # it starts with an escaped character: skip it
                    start += 5 if text[start] == "u" else 1
                if start >= end:
                    continue
            else:
                quoted.add(start)
            shaped.append((start, end, kind))
        return self.act_on(text, shaped, quoted)

    def act_on(self, text: str, entities: list[Entity], quoted: Collection[int] = ()) -> str:
        """``text`` with ``entities`` (found in it, in order) counted and acted on; those
        starting at a ``quoted`` position get their placeholder as a JSON string."""
        pieces: list[str] = []
        last = 0
        for start, end, kind in entities:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            action = self.actions[kind]
            if action == "mask":
                pieces.append(text[last:start])
                name = self.placeholder_of(kind, text[start:end])
                pieces.append(f'"{name}"' if start in quoted else name)
                last = end
            elif action == "block":
                self.blocked.add(kind)
        if not pieces:
            return text
        pieces.append(text[last:])
        return "".join(pieces)

    def placeholder_of(self, kind: EntityKind, value: str) -> str:
        """The placeholder of ``value`` in this request: its own if it has one, else the
        next free number of ``kind``."""
        key = (kind, value)
        found = self._assigned.get(key)
        if found is not None:
            return found
        number = self._next.get(kind, 1)
        name = placeholder(kind, number)
        while name in self._reserved:
            number += 1
            name = placeholder(kind, number)
        self._next[kind] = number + 1
        self._assigned[key] = name
        self.originals[name] = value
        return name

    def _value(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if depth > _MAX_JSON_DEPTH:
            raise _TooDeep
        if isinstance(value, dict):
            changed = False
            items: list[tuple[Any, Any]] = []
            for name, member in value.items():
                new_name = self.text(name) if isinstance(name, str) else name
                if (
                    isinstance(name, str)
                    and isinstance(member, str)
                    and "secret" in self.kinds
                    and is_labelled_aws_secret(name, member)
                ):
                    new_member: Any = self.act_on(member, [(0, len(member), "secret")])
                else:
                    new_member = self._value(member, depth + 1)
                changed = changed or new_name is not name or new_member is not member
                items.append((new_name, new_member))
            return dict(items) if changed else value
        if isinstance(value, list):
            rewritten = [self._value(item, depth + 1) for item in value]
            if all(new is old for new, old in zip(rewritten, value, strict=True)):
                return value
            return rewritten
        if isinstance(value, int) and not isinstance(value, bool) and value in _CARD_SIZED:
            digits = str(value)
            entities = find_entities(digits, self.kinds, severity=self.severity)
            if len(entities) == 1 and entities[0][:2] == (0, len(digits)):
                masked = self.act_on(digits, entities)
                return masked if masked is not digits else value
        return value


def _encoded(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class LiteralPlaceholders:
    """The pass before masking: collects the placeholder-shaped text a request already
    holds (a :class:`~quotad.daemon.guardrails.walk.TextRewriter` that changes nothing)."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def text(self, text: str) -> str:
        self.found.update(placeholders_in(text))
        return text

    def json(self, text: str) -> str:
        return self.text(text)  # a placeholder has nothing JSON would escape

    def value(self, value: Any) -> Any:
        self.text(_encoded(value))
        return value
