"""Recorded answers put in the cache (``quotad cache warm``) through the guardrails, so that
a warmed entry is what a live request would have left there: :func:`guarded_entry`.

A live request's cache key is its masked request, and its stored answer is what the provider
returned for it (it never saw the caller's values) with the output rules applied. A warm
file's answer was recorded without guardrails: it may hold the values its request held. So
the request is checked as a live one (its app's input rules; ``block`` refuses the entry),
each of its masked values found in the answer (text, tool-call arguments, stream chunks) is
replaced by its placeholder, and the output rules are applied. A hit then restores the
hitting caller's own values, as for any entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from quotad.daemon.guardrails.placeholders import json_escaped
from quotad.daemon.guardrails.policy import AppGuard
from quotad.daemon.guardrails.screening import ScreenedStream, Screening
from quotad.daemon.guardrails.walk import rewrite_tool_calls
from quotad.daemon.store.warm import WarmEntry
from quotad.protocol.messages import ChatChunk, ChatReply


class _ValuesToPlaceholders:
    """Replaces a request's masked values by their placeholders (a TextRewriter): in text
    as they are, in JSON also as JSON escapes them."""

    def __init__(self, masked: Mapping[str, str]) -> None:
        self._plain = {value: name for name, value in masked.items()}
        self._escaped = {**self._plain}
        for value, name in self._plain.items():
            self._escaped.setdefault(json_escaped(value), name)
        self._plain_pattern = _alternation(self._plain)
        self._escaped_pattern = _alternation(self._escaped)

    def text(self, text: str) -> str:
        if not text:
            return text
        return self._plain_pattern.sub(lambda match: self._plain[match[0]], text)

    def json(self, text: str) -> str:
        if not text:
            return text
        return self._escaped_pattern.sub(lambda match: self._escaped[match[0]], text)

    def value(self, value: Any) -> Any:
        encoded = msgspec.json.encode(value).decode()
        replaced = self.json(encoded)
        return value if replaced == encoded else msgspec.json.decode(replaced)


def _alternation(values: Mapping[str, str]) -> re.Pattern[str]:
    """One expression matching any of ``values``, the longest first."""
    return re.compile("|".join(re.escape(value) for value in sorted(values, key=len, reverse=True)))


def guarded_entry(guard: AppGuard, entry: WarmEntry) -> WarmEntry:
    """``entry`` as a live request through ``guard`` would have left it in the cache: its
    request masked (the cache key), its answer holding placeholders instead of the values
    the request held, the output rules applied;
    :class:`~quotad.daemon.guardrails.blocked.Blocked` when a rule says block."""
    if not guard.active:
        return entry
    checked = guard.check_chat(entry.request)
    screening = Screening(checked.counts, checked.restorer)
    response = entry.response
    content, calls, chunks = response.content, response.tool_calls, response.chunks
    if checked.masked:
        values = _ValuesToPlaceholders(checked.masked)
        content = values.text(content) if content is not None else None
        calls = rewrite_tool_calls(calls, values) if calls is not None else None
        chunks = [values.text(delta) for delta in chunks] if chunks is not None else None
    screened = screening.screen(ChatReply(content=content, tool_calls=calls))
    if chunks is not None and screening.restorer.screens:
        stream = ScreenedStream(screening.restorer, 0, keep=True)
        for index, delta in enumerate(chunks):
            stream.chunk(ChatChunk(delta=delta), first=index == 0)
        stream.flush()
        chunks = [chunk.delta for chunk in stream.sent]
    return msgspec.structs.replace(
        entry,
        request=checked.request,
        response=msgspec.structs.replace(
            response, content=screened.content, tool_calls=screened.tool_calls, chunks=chunks
        ),
    )
