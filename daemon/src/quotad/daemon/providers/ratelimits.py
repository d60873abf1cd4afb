"""Rate-limit headers of a provider's reply, parsed into :class:`RateLimitInfo`.

Every reply is parsed, success or error, since the broker feeds the figures back to its gates.
Header families understood (names are case-insensitive):

- OpenAI and most OpenAI-compatible servers: ``x-ratelimit-{limit,remaining,reset}-{requests,
  tokens}``, where reset is a duration such as ``1s``, ``6m0s``, ``20ms`` or ``1h2m3.5s``;
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}``, where reset is an RFC 3339 timestamp, turned into seconds from now;
- ``retry-after`` (seconds, or an HTTP date) and ``retry-after-ms``.

A value that cannot be understood (``-1``, junk) is left out as None; nothing here raises. A
wait longer than :data:`MAX_WAIT_S` (a reset or a ``retry-after`` of years, which a broken or
hostile server, or a client's ``Settle``, can send) is taken as that: the gates pause a target
for what these say, so no answer can shut one for longer than a day.
Headers are looked up by name in one dict built per reply, so a reply without rate-limit
headers costs a handful of failed lookups and returns the shared empty :data:`NO_RATE_LIMITS`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import httpx
import msgspec

from quotad.daemon.rate_limit_info import NO_RATE_LIMITS, RateLimitInfo

_MAX_VALUE_LENGTH: Final = 64
"""Longer header values are junk; refusing them bounds the parsing work."""
MAX_WAIT_S: Final = 86_400.0
"""The longest reset or ``retry-after`` taken from a reply (a day: a daily limit's reset)."""

_DURATION: Final = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|m|s|us|µs|μs|ns))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|μs|ns)")
_UNIT_SECONDS: Final = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``20ms``, ``1h2m3.5s``) or a bare number of
    seconds; None for anything else (negative, ``-1``, junk)."""
    text = text.strip()
    if not text or len(text) > _MAX_VALUE_LENGTH:
        return None
    if not _DURATION.fullmatch(text):
        return _non_negative_float(text)
    seconds = 0.0
    for number, unit in _DURATION_PART.findall(text):
        seconds += float(number) * _UNIT_SECONDS[unit]
    return seconds if math.isfinite(seconds) else None


def parse_reset_timestamp(text: str, now: float) -> float | None:
    """Seconds from ``now`` (epoch seconds) until an RFC 3339 timestamp, at least 0; a
    timestamp without a zone is taken as UTC. None when it is not a timestamp."""
    text = text.strip()
    if not text or len(text) > _MAX_VALUE_LENGTH:
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, moment.timestamp() - now)
    except (ValueError, OverflowError, OSError):
        return None


def parse_retry_after(text: str, now: float) -> float | None:
    """Seconds to wait from a ``retry-after`` value: a number of seconds or an HTTP date."""
    text = text.strip()
    if not text or len(text) > _MAX_VALUE_LENGTH:
        return None
    seconds = _non_negative_float(text)
    if seconds is not None:
        return seconds
    try:
        moment = parsedate_to_datetime(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, moment.timestamp() - now)
    except (ValueError, TypeError, IndexError, OverflowError, OSError):
        return None


def _non_negative_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value < math.inf else None


def _count(text: str, now: float) -> int | None:
    """A limit or a remaining count: a non-negative integer (``-1`` and junk are None)."""
    if len(text) > _MAX_VALUE_LENGTH:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _duration(text: str, now: float) -> float | None:
    return parse_duration(text)


def _milliseconds(text: str, now: float) -> float | None:
    value = _non_negative_float(text.strip()) if len(text) <= _MAX_VALUE_LENGTH else None
    return None if value is None else value / 1000.0


_Parse = Callable[[str, float], int | float | None]

_HEADERS: Final[tuple[tuple[bytes, str, _Parse], ...]] = (
    (b"x-ratelimit-limit-requests", "limit_requests", _count),
    (b"x-ratelimit-remaining-requests", "remaining_requests", _count),
    (b"x-ratelimit-reset-requests", "reset_requests_s", _duration),
    (b"x-ratelimit-limit-tokens", "limit_tokens", _count),
    (b"x-ratelimit-remaining-tokens", "remaining_tokens", _count),
    (b"x-ratelimit-reset-tokens", "reset_tokens_s", _duration),
    (b"anthropic-ratelimit-requests-limit", "limit_requests", _count),
    (b"anthropic-ratelimit-requests-remaining", "remaining_requests", _count),
    (b"anthropic-ratelimit-requests-reset", "reset_requests_s", parse_reset_timestamp),
    (b"anthropic-ratelimit-tokens-limit", "limit_tokens", _count),
    (b"anthropic-ratelimit-tokens-remaining", "remaining_tokens", _count),
    (b"anthropic-ratelimit-tokens-reset", "reset_tokens_s", parse_reset_timestamp),
    (b"anthropic-ratelimit-input-tokens-limit", "limit_input_tokens", _count),
    (b"anthropic-ratelimit-input-tokens-remaining", "remaining_input_tokens", _count),
    (b"anthropic-ratelimit-input-tokens-reset", "reset_input_tokens_s", parse_reset_timestamp),
    (b"anthropic-ratelimit-output-tokens-limit", "limit_output_tokens", _count),
    (b"anthropic-ratelimit-output-tokens-remaining", "remaining_output_tokens", _count),
    (b"anthropic-ratelimit-output-tokens-reset", "reset_output_tokens_s", parse_reset_timestamp),
    (b"retry-after", "retry_after_s", parse_retry_after),
    (b"retry-after-ms", "retry_after_s", _milliseconds),  # after retry-after: it wins
)

_HEADER_NAMES: Final = frozenset(name for name, _, _ in _HEADERS)


def parse_rate_limits(
    headers: httpx.Headers | Mapping[str, str] | list[tuple[bytes, bytes]],
    *,
    now: float | None = None,
) -> RateLimitInfo:
    """The rate-limit figures in a reply's headers (either family, see the module docstring).

    ``headers`` is a response's :class:`httpx.Headers`, its raw ``(name, value)`` byte pairs,
    or any mapping of header names to values (such as the headers a client reports in a
    ``Settle``). ``now`` is the current time in epoch seconds, for timestamps; the wall clock
    when None.
    """
    if isinstance(headers, httpx.Headers | list):
        pairs = headers.raw if isinstance(headers, httpx.Headers) else headers
        by_name = {
            lowered: value
            for name, value in pairs
            if (lowered := name.lower()) in _HEADER_NAMES  # most headers are none of ours
        }
        if not by_name:
            return NO_RATE_LIMITS
    else:
        by_name = {
            name.lower().encode("latin-1", "replace"): value.encode("latin-1", "replace")
            for name, value in headers.items()
        }
    found: dict[str, int | float] = {}
    for header, field, parse in _HEADERS:
        raw = by_name.get(header)
        if raw is None:
            continue
        if now is None:
            now = time.time()
        value = parse(raw.decode("latin-1"), now)
        if value is not None:
            found[field] = min(value, MAX_WAIT_S) if field.endswith("_s") else value
    if not found:
        return NO_RATE_LIMITS
    return msgspec.structs.replace(NO_RATE_LIMITS, **found)
