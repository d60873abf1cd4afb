"""The reply side of one request: output rules, then restoring. :class:`Restorer` for whole
replies, :class:`StreamRestorer` for streams.

Order matters. What the provider returns is first *screened* by the output rules (a new
secret the model wrote is masked, counted or refused), and only then are the request's own
placeholders *restored* to the caller's values: so a caller's value put back is never
screened again, and the screened text (what the cache may keep) holds placeholders, never
the caller's values. Output placeholders are numbered after the request's own and are never
restored.

Streams hold text back only as long as they must:

- screening holds the last word (a key or an address may still be growing), grouped digits
  before it (``+44 20 7946`` may become a phone number, ``4111 1111`` a card), an open PEM
  block until its end line, and any entity the next piece could still extend; at most
  :data:`MAX_HOLD` characters, past which the text goes on as it is (a hostile stream cannot
  make the daemon buffer without bound);
- restoring holds a possible placeholder start (``[EMA``) until it can decide.

Tool-call arguments are JSON: values restored into them are JSON-escaped. In a stream with
output rules, a call's arguments are held whole and sent, screened, when the stream ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, TypeVar

import msgspec

from quotad.daemon.config import EntityKind, GuardrailAction
from quotad.daemon.guardrails.blocked import Blocked
from quotad.daemon.guardrails.detectors import (
    ascii_view,
    find_entities,
    in_text,
    left_out,
    may_hold_entity,
)
from quotad.daemon.guardrails.masking import Masker
from quotad.daemon.guardrails.placeholders import (
    LONGEST,
    PLACEHOLDER,
    could_become_placeholder,
    json_escaped,
)
from quotad.daemon.guardrails.walk import rewrite_tool_calls
from quotad.protocol.messages import ChatChunk, ChatReply

MAX_HOLD: Final = 64 * 1024
"""The most text a stream's screening holds back, in characters."""
_CONTEXT: Final = 160
"""Characters of already screened text kept as context for the next piece: look-behinds,
and a secret's label or access key id (an AWS secret key within 120 characters of it)."""
_GROUP_CHARS: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ()+-./")
_GROUPS_REACH: Final = 48
_GROUP: Final = 8
_PEM_BEGIN: Final = "-----BEGIN "
_PEM_END_LINE: Final = re.compile(r"-----END (?:[A-Z0-9]++ )*?PRIVATE KEY(?: BLOCK)?-----")
_PEM_TAIL: Final = 80

ReplyT = TypeVar("ReplyT", bound=ChatReply)
ToolCalls = list[dict[str, Any]]


class Restorer:
    """What a reply goes through: ``output`` rules, then ``originals`` (placeholder → the
    caller's value) put back when ``restore``. ``reserved``: placeholder-shaped text of the
    request, never used for output placeholders. ``json_content``: the reply's content is
    JSON (the request asked for it), so values go back JSON-escaped there too."""

    def __init__(
        self,
        originals: Mapping[str, str],
        *,
        restore: bool,
        output: Mapping[EntityKind, GuardrailAction],
        reserved: Collection[str] = (),
        json_content: bool = False,
    ) -> None:
        self.originals: dict[str, str] = dict(originals) if restore else {}
        self.restore_content = self.restore_json if json_content else self.restore
        """How placeholders in the reply's content are put back."""
        self._screen = Masker(output, reserved={*reserved, *originals})
        self.screens = bool(self._screen.kinds)
        """Whether output rules apply."""
        self.active = self.screens or bool(self.originals)
        """Whether a reply can change at all (else every method returns what it gets)."""

    @property
    def counts(self) -> dict[EntityKind, int]:
        """Entities the output rules found so far, by kind."""
        return self._screen.counts

    # ------------------------------------------------------------------ whole replies

    def text(self, text: str) -> str:
        """Reply content screened, then restored."""
        return self.restore_content(self.screen(text))

    def tool_calls(self, calls: ToolCalls) -> ToolCalls:
        """Whole tool calls, their arguments screened, then restored."""
        return self.restore_tool_calls(self.screen_tool_calls(calls))

    def reply(self, reply: ReplyT) -> ReplyT:
        """A :class:`ChatReply` (or ``ChatEnd``) with its content and tool calls screened and
        restored; the same object when nothing changed."""
        if not self.active:
            return reply
        content = reply.content if reply.content is None else self.text(reply.content)
        calls = reply.tool_calls if reply.tool_calls is None else self.tool_calls(reply.tool_calls)
        if content is reply.content and calls is reply.tool_calls:
            return reply
        return msgspec.structs.replace(reply, content=content, tool_calls=calls)

    # ------------------------------------------------------------------ the two steps

    def screen(self, text: str) -> str:
        """``text`` with the output rules applied; :class:`Blocked` if one says block."""
        screened = self._screen.text(text)
        self.check_blocked()
        return screened

    def screen_tool_calls(self, calls: ToolCalls) -> ToolCalls:
        """Tool calls with the output rules applied to their arguments."""
        if not self.screens:
            return calls
        screened = rewrite_tool_calls(calls, self._screen)
        self.check_blocked()
        return screened

    def check_blocked(self) -> None:
        """Raise :class:`Blocked` if the output rules found something to block."""
        if self._screen.blocked:
            raise Blocked("output", self._screen.blocked, self._screen.counts)

    def restore(self, text: str) -> str:
        """``text`` with this request's placeholders put back."""
        if not self.originals or "[" not in text:
            return text
        originals = self.originals
        return PLACEHOLDER.sub(lambda match: originals.get(match[0], match[0]), text)

    def restore_json(self, text: str) -> str:
        """JSON text (or a piece of it) with placeholders put back, JSON-escaped."""
        if not self.originals or "[" not in text:
            return text
        originals = self.originals

        def value(match: Any) -> str:
            original = originals.get(match[0])
            return match[0] if original is None else json_escaped(original)

        return PLACEHOLDER.sub(value, text)

    def restore_tool_calls(self, calls: ToolCalls) -> ToolCalls:
        """Tool calls with placeholders in their arguments put back."""
        if not self.originals:
            return calls
        return rewrite_tool_calls(calls, _JsonRestore(self))

    def stream(self) -> StreamRestorer:
        """A restorer for one streamed reply."""
        return StreamRestorer(self)

    # ------------------------------------------------------------------ for streams

    def screen_entities(self, text: str, start: int = 0) -> list[tuple[int, int, EntityKind]]:
        """The entities the output rules look for in ``text`` (from ``start`` on)."""
        return find_entities(text, self._screen.kinds, start, self._screen.severity)

    def screen_span(self, text: str, entities: list[tuple[int, int, EntityKind]]) -> str:
        """``text`` with ``entities`` (found in it) acted on, as :meth:`screen` would."""
        if not entities:
            return text
        screened = self._screen.act_on(text, entities)
        self.check_blocked()
        return screened

    def screen_json(self, text: str) -> str:
        """JSON text (a whole tool call's arguments) with the output rules applied."""
        screened = self._screen.json(text)
        self.check_blocked()
        return screened


class _JsonRestore:
    """Restores placeholders in tool-call arguments (a TextRewriter for the walk)."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer

    def text(self, text: str) -> str:
        return self._restorer.restore(text)

    def json(self, text: str) -> str:
        return self._restorer.restore_json(text)

    def value(self, value: Any) -> Any:
        encoded = msgspec.json.encode(value).decode()
        restored = self._restorer.restore_json(encoded)
        return value if restored is encoded else msgspec.json.decode(restored)


# --------------------------------------------------------------------------- streams


def _is_boundary(char: str) -> bool:
    """Whether no entity runs across ``char``: white space, and the scripts written without
    spaces (CJK, kana, Hangul and beyond U+3000), so that their text is not held."""
    return char.isspace() or char >= "\u3000"


_BOUNDARY = re.compile(r"[\s\u3000-\U0010ffff]")


def settled_end(text: str) -> int:
    """How much of ``text`` no later text can turn into (part of) an entity: all but the
    last word, the digit groups before it, and an open PEM block; read as the detectors read
    it (:func:`~quotad.daemon.guardrails.detectors.ascii_view`: fullwidth digits are digits,
    an ideographic space a space, a zero-width space nothing)."""
    written, text = text, ascii_view(text)
    index = len(text)
    while index and not _is_boundary(text[index - 1]):
        index -= 1
    # groups before the last word, one space apart, may be the start of a phone number, a
    # card number or an IBAN ("+44 20 7946 ", "4111 1111 ", "GB82 WEST "), even glued to
    # what precedes them ("(+44 20 ", "号+44 20 ")
    reach = max(0, index - _GROUPS_REACH)
    while index - 1 > reach and text[index - 1] == " ":
        start = index - 1
        while start > reach and text[start - 1] in _GROUP_CHARS and index - 1 - start < _GROUP:
            start -= 1
        group = text[start : index - 1]
        whole_word = not start or _is_boundary(text[start - 1])
        has_digit = any(char.isdigit() for char in group)
        if not group or not (has_digit or (whole_word and len(group) <= 4)):
            break  # "+44", "(555)", "4111", or a whole word like an IBAN's "WEST"
        index = start
        if not whole_word:
            break  # glued to something else ("号+44"): nothing before it joins
    begin = text.rfind(_PEM_BEGIN, 0, index)
    if begin != -1 and not _PEM_END_LINE.search(text, begin):
        index = begin
    if len(text) != len(written):  # the view left invisible characters out
        return in_text(index, left_out(written))
    return index


class StreamScreen:
    """A stream's output rules: :meth:`feed` each provider delta, :meth:`flush` at the end;
    what comes out is screened (what the cache may keep) and needs restoring.

    A delta with no word boundary only makes the last word longer: it is held without
    looking at the rest (so a long token streamed in small pieces costs linear time), and
    so is everything after an open PEM header until its end line arrives."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._pieces: list[str] = []
        self._length = 0
        self._context = ""
        self._open_pem = False
        self._pem_tail = ""
        self._arguments: dict[int, list[str]] = {}

    def feed(self, delta: str) -> str:
        """Screened text that is settled, perhaps empty (the rest is held)."""
        if not self._restorer.screens:
            return delta
        if not delta:
            return ""
        self._pieces.append(delta)
        self._length += len(delta)
        if self._length > MAX_HOLD:
            return self._emit(final=True)
        if self._open_pem:
            seen = self._pem_tail + delta
            if not _PEM_END_LINE.search(seen):
                self._pem_tail = seen[-_PEM_TAIL:]
                return ""
            self._open_pem = False
        elif _BOUNDARY.search(ascii_view(delta)) is None:
            return ""
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is still held, screened."""
        return self._emit(final=True) if self._length else ""

    def _emit(self, *, final: bool) -> str:
        pending = "".join(self._pieces)
        buffer = self._context + pending
        offset = len(self._context)
        cut = len(buffer) if final else offset + settled_end(pending)
        if not final and cut == offset:
            self._pieces, self._length = [pending], len(pending)
            self._note_open_pem(pending)
            return ""
        entities = (
            self._restorer.screen_entities(buffer, offset) if may_hold_entity(pending) else []
        )
        if not final:
            for start, end, _kind in entities:
                if start < cut and (end > cut or end == len(buffer)):
                    cut = start  # it may still grow: hold it whole
                    break
        inside = [
            (start - offset, end - offset, kind) for start, end, kind in entities if end <= cut
        ]
        text = pending[: cut - offset]
        held = buffer[cut:]
        self._pieces, self._length = ([held], len(held)) if held else ([], 0)
        self._context = buffer[max(0, cut - _CONTEXT) : cut]
        self._note_open_pem(held)
        return self._restorer.screen_span(text, inside)

    def _note_open_pem(self, held: str) -> None:
        """Hold everything after an open PEM header, unread, until its end line comes."""
        if held.startswith(_PEM_BEGIN) and not _PEM_END_LINE.search(held):
            self._open_pem = True
            self._pem_tail = held[-_PEM_TAIL:]

    def feed_tool_calls(self, fragments: ToolCalls) -> ToolCalls:
        """Tool-call fragments with their arguments held back (:meth:`flush_tool_calls` sends
        them, screened)."""
        if not self._restorer.screens:
            return fragments
        return _with_arguments(fragments, self._hold_arguments)

    def _hold_arguments(self, index: int, arguments: str) -> str:
        self._arguments.setdefault(index, []).append(arguments)
        return ""

    def flush_tool_calls(self) -> ToolCalls:
        """One fragment per tool call with its whole arguments, screened."""
        fragments = [
            {"index": index, "function": {"arguments": self._restorer.screen_json("".join(parts))}}
            for index, parts in sorted(self._arguments.items())
        ]
        self._arguments.clear()
        return fragments


def _with_arguments(fragments: ToolCalls, rewrite: Callable[[int, str], str]) -> ToolCalls:
    """Tool-call fragments with each one's arguments (text, when it has some) replaced by
    ``rewrite(its index, its arguments)``."""
    rewritten: ToolCalls = []
    for fragment in fragments:
        function = fragment.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            arguments = rewrite(fragment.get("index", 0), function["arguments"])
            fragment = {**fragment, "function": {**function, "arguments": arguments}}
        rewritten.append(fragment)
    return rewritten


class StreamRestore:
    """A stream's restoring: :meth:`feed` screened text, :meth:`flush` at the end."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._held = ""
        self._held_arguments: dict[int, str] = {}

    def feed(self, text: str) -> str:
        """``text`` with placeholders restored, less a possible placeholder start at its end."""
        if not self._restorer.originals:
            return text
        text, self._held = _hold_placeholder_start(self._held + text)
        return self._restorer.restore_content(text)

    def flush(self) -> str:
        """What is still held, restored."""
        held, self._held = self._held, ""
        return self._restorer.restore_content(held)

    def feed_tool_calls(self, fragments: ToolCalls) -> ToolCalls:
        """Tool-call fragments with placeholders in their arguments restored (JSON-escaped)."""
        if not self._restorer.originals:
            return fragments
        return _with_arguments(fragments, self._restore_arguments)

    def _restore_arguments(self, index: int, arguments: str) -> str:
        held = self._held_arguments.get(index, "")
        text, self._held_arguments[index] = _hold_placeholder_start(held + arguments)
        return self._restorer.restore_json(text)

    def flush_tool_calls(self) -> ToolCalls:
        """One fragment per tool call whose arguments still held something."""
        fragments = [
            {"index": index, "function": {"arguments": self._restorer.restore_json(held)}}
            for index, held in sorted(self._held_arguments.items())
            if held
        ]
        self._held_arguments.clear()
        return fragments


def _hold_placeholder_start(text: str) -> tuple[str, str]:
    """``text`` split into what can go on and a trailing possible placeholder start."""
    bracket = text.rfind("[", max(0, len(text) - LONGEST))
    if bracket != -1 and could_become_placeholder(text[bracket:]):
        return text[:bracket], text[bracket:]
    return text, ""


class StreamRestorer:
    """One streamed reply: :meth:`feed` deltas (and :meth:`feed_tool_calls` fragments) as
    they come, :meth:`flush` at the end. ``screen`` and ``restore`` are the two steps, for a
    caller that keeps the screened text (the cache)."""

    def __init__(self, restorer: Restorer) -> None:
        self.screen = StreamScreen(restorer)
        self.restore = StreamRestore(restorer)

    def feed(self, delta: str) -> str:
        """What the caller may see of the reply so far, beyond what it already got."""
        return self.restore.feed(self.screen.feed(delta))

    def feed_tool_calls(self, fragments: ToolCalls | None) -> ToolCalls | None:
        """Tool-call fragments as the caller may see them."""
        if not fragments:
            return fragments
        return self.restore.feed_tool_calls(self.screen.feed_tool_calls(fragments))

    def flush(self) -> tuple[str, ToolCalls | None]:
        """The rest of the reply's text, and the rest of its tool calls' arguments."""
        text = self.restore.feed(self.screen.flush()) + self.restore.flush()
        calls = self.restore.feed_tool_calls(self.screen.flush_tool_calls())
        calls += self.restore.flush_tool_calls()
        return text, calls or None

    def chunk(self, chunk: ChatChunk) -> ChatChunk:
        """A provider's :class:`ChatChunk` as the caller may see it (perhaps with an empty
        delta: a stream's first chunk still says who answers)."""
        delta = self.feed(chunk.delta)
        calls = self.feed_tool_calls(chunk.tool_calls)
        if delta is chunk.delta and calls is chunk.tool_calls:
            return chunk
        return msgspec.structs.replace(chunk, delta=delta, tool_calls=calls)
