"""What the OpenAI and the Anthropic shapes of the front door share: decoding a request body
into a typed Struct with errors that name the field, the fields passed on to the provider as
they are, the HTTP status and headers each error code is answered with (DESIGN §7), the
``x-quotad-*`` response headers, and the model name an answer reports.
"""

from __future__ import annotations

import math
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, Protocol, TypeVar

import anyio.lowlevel
import anyio.to_thread
import msgspec

from quotad.daemon.errors import RequestError
from quotad.daemon.front_door.json_items import field_past_bound, may_hold_too_many
from quotad.daemon.net.http11 import Headers, HttpRequest
from quotad.protocol.framing import MAX_FREE_FORM_ITEMS, describe, field_named, too_many_items

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class BodyDecoder(Protocol[T_co]):
    """What decodes a request body: a ``msgspec.json.Decoder``, or one built on it."""

    def decode(self, buf: bytes, /) -> T_co:
        """The body as a ``T_co``; msgspec's errors when it is not one."""
        ...


CacheState = Literal["hit", "semantic", "miss", "bypass"]

JSON_CONTENT: Final = ("content-type", "application/json")
SSE_HEADERS: Final = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)

STATUS_BY_CODE: Final[dict[str, int]] = {
    "bad_request": 400,
    "bad_frame": 400,
    "blocked": 400,  # a guardrail refused it (DESIGN §12): the same request always will
    "unauthorized": 401,
    "unknown_model": 404,
    "budget_exceeded": 429,
    "rate_limited": 429,
    "internal": 500,
    "upstream_error": 502,
    "overloaded": 503,
    "cancelled": 503,  # only the daemon cancels an HTTP request (shutting down): try again
    "timeout": 504,
}
RETRY_AFTER_CODES: Final = frozenset({"rate_limited", "overloaded", "cancelled"})
"""Codes answered with ``retry-after`` (1 s when the error names no time)."""
DECODE_HEADROOM: Final = 400
"""Stack frames a body's JSON decode leaves unused: the recursion limit is lowered by this
much while it decodes, so that whatever nesting decodes is well within what encoding it again
(for the cache key, the provider, the ledger) can take, deeper in the stack."""
SMALLEST_INT: Final = -(2**63)
LARGEST_INT: Final = 2**64 - 1
"""The integers a body may hold: what MessagePack (the socket's protocol, the cache's keys)
carries, and what converts to a float."""
_DIGITS_AS_ZEROS: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))
_NINETEEN_DIGITS: Final = b"0" * 19
"""A run of 19 digits: every integer beyond :data:`SMALLEST_INT`..:data:`LARGEST_INT` has
one (-9223372036854775809 has 19; and few bodies do, in a string or not)."""
DIGIT_SCAN_BYTES: Final = 1024 * 1024
"""How much of a body is looked through for a run of 19 digits in one turn of the event loop
(about 1 ms)."""
_MISSING_FIELD: Final = re.compile(
    r"Object missing required field `(?P<field>[^`]*)`(?: - at `(?P<path>[^`]*)`)?$"
)


def http_status(error: RequestError) -> int:
    """The HTTP status an error code is answered with."""
    return STATUS_BY_CODE.get(error.code, 500)


def error_headers(error: RequestError) -> Headers:
    """``content-type`` and what tells an SDK whether and when to retry: ``retry-after`` (+
    ``retry-after-ms``, which the official SDKs read first) for rate limits and overload;
    ``x-should-retry: false`` for what no retry can fix: an exhausted budget, and a request
    that exceeds a limit outright (``details["retryable"]`` false)."""
    headers: Headers = [JSON_CONTENT]
    if error.code == "budget_exceeded" or error.details.get("retryable") is False:
        headers.append(("x-should-retry", "false"))
    elif error.code in RETRY_AFTER_CODES or error.retry_after_s is not None:
        seconds = error.retry_after_s if error.retry_after_s is not None else 1.0
        headers.append(("retry-after", str(max(1, math.ceil(seconds)))))
        headers.append(("retry-after-ms", str(max(1, math.ceil(seconds * 1000)))))
    return headers


def bad_request(param: str, message: str) -> RequestError:
    """A ``bad_request`` naming the field (``param``) that is wrong."""
    return RequestError("bad_request", f"{param}: {message}", details={"field": param})


def plain_body(request: HttpRequest) -> bytes:
    """The request's body as sent; ``bad_request`` when it says it is encoded (``content-encoding:
    gzip``): quotad reads JSON as it is sent, and a compressed body was told it was invalid JSON
    at byte 0, not why."""
    encoding = request.header("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise RequestError(
            "bad_request",
            f"content-encoding {encoding[:40]!r} is not supported: send the body uncompressed",
        )
    return request.body


async def decode_body(decoder: BodyDecoder[T], body: bytes) -> T:
    """The request body as a ``T``; ``bad_request`` naming what is wrong when it is not one:
    the field (wrong type, missing, out of range, an integer beyond 64 bits anywhere), invalid
    JSON, a string that is not UTF-8, or nesting deeper than quotad takes
    (:data:`DECODE_HEADROOM`), or more items in a top-level field than quotad takes
    (:mod:`~quotad.daemon.front_door.json_items`, before decoding). A big body
    is looked through for integers a MiB at a time, the event loop serving others in between
    (:func:`_has_nineteen_digits`)."""
    if await may_hold_too_many(body):
        field = await anyio.to_thread.run_sync(field_past_bound, body)
        if field is not None:
            message = too_many_items(field, MAX_FREE_FORM_ITEMS)
            raise RequestError("bad_request", message, details={"field": field})
    decoded = _decoded(decoder.decode, body)
    if await _has_nineteen_digits(body):
        _decoded(_check_integers_of, body)
    return decoded


def _decoded(decode: Callable[[bytes], T], body: bytes) -> T:
    """``decode(body)`` with the recursion limit lowered by :data:`DECODE_HEADROOM`, msgspec's
    errors as ``bad_request`` naming what is wrong."""
    if not body:
        raise RequestError("bad_request", "the request has no body: expected a JSON object")
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(limit - DECODE_HEADROOM)
        try:
            return decode(body)
        finally:
            sys.setrecursionlimit(limit)
    except msgspec.ValidationError as error:
        raise _invalid(error) from None
    except msgspec.DecodeError as error:
        raise RequestError("bad_request", _not_json(body, error)) from None
    except UnicodeDecodeError:
        raise RequestError("bad_request", _not_utf8(body)) from None
    except RecursionError:
        raise RequestError(
            "bad_request",
            f"the body nests JSON arrays or objects deeper than quotad takes (about "
            f"{limit - DECODE_HEADROOM - 100} levels)",
        ) from None


async def _has_nineteen_digits(body: bytes) -> bool:
    """Whether ``body`` holds a run of 19 digits (see :data:`_NINETEEN_DIGITS`), looked for
    :data:`DIGIT_SCAN_BYTES` at a time (pieces overlapping by 18 bytes), with a turn of the
    event loop between pieces: in one go, a 13 MB body held the loop 11 ms."""
    overlap = len(_NINETEEN_DIGITS) - 1
    for start in range(0, len(body), DIGIT_SCAN_BYTES):
        if start:
            await anyio.lowlevel.checkpoint()
        piece = body[start : start + DIGIT_SCAN_BYTES + overlap]  # the body itself, if small
        if piece.translate(_DIGITS_AS_ZEROS).find(_NINETEEN_DIGITS) >= 0:
            return True
    return False


def _check_integers_of(body: bytes) -> None:
    """:func:`_check_integers` of ``body`` decoded as any JSON."""
    _check_integers(msgspec.json.decode(body))


def _check_integers(value: object) -> None:
    """``bad_request`` naming the first integer in ``value`` (a decoded body) beyond
    :data:`SMALLEST_INT`..:data:`LARGEST_INT`, and where it is: looked for first without
    naming where (a path per item made a body of 550,000 parts take 2 s), then named."""
    items: list[object] = [value]
    while items:
        item = items.pop()
        if isinstance(item, dict):
            items.extend(item.values())
        elif isinstance(item, list):
            items.extend(item)
        elif isinstance(item, int) and not SMALLEST_INT <= item <= LARGEST_INT:
            _name_the_integer(value)


_Where = tuple["_Where | None", str | int]
"""Where an item of a decoded body is: the place of what holds it (None: the body) and its
key there (a string) or its index (an integer); spelt out by :func:`_spelt` when needed."""


def _name_the_integer(value: object) -> None:
    """``bad_request`` naming the first integer out of range in ``value``, and where. Each
    item's place is its parent's and one step, spelt out only for the integer named: spelt out
    for every item, a 16 KB key holding 16,000 items made 256 MB of paths."""
    stack: list[tuple[_Where | None, object]] = [(None, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            stack.extend(((where, str(key)), v) for key, v in item.items())
        elif isinstance(item, list):
            stack.extend(((where, index), v) for index, v in enumerate(item))
        elif isinstance(item, int) and not SMALLEST_INT <= item <= LARGEST_INT:
            digits = len(str(abs(item)))
            raise bad_request(
                _spelt(where) or "the body",
                f"an integer of {digits} digits is out of range (64 bits)",
            )


def _spelt(where: _Where | None) -> str:
    """``tools[0].x``: the path of a :data:`_Where` (empty for the body itself)."""
    steps: list[str | int] = []
    while where is not None:
        where, step = where
        steps.append(step)
    path = ""
    for step in reversed(steps):
        if isinstance(step, int):
            path = f"{path}[{step}]"
        else:
            path = f"{path}.{step}" if path else step
    return path


_LONE_SURROGATE: Final = re.compile(
    rb"(?<!\\)\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(?<!\\)\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
"""A ``\\uD800``-``\\uDFFF`` escape that is not half of a pair (what JavaScript's
``JSON.stringify`` writes for a lone surrogate): no character, which msgspec reports as
"Input data was truncated" when the string goes on."""


def _not_json(body: bytes, error: msgspec.DecodeError) -> str:
    """What a body that is not JSON is told: msgspec's words, or, for a lone surrogate, what
    and where it is."""
    lone = _LONE_SURROGATE.search(body)
    if lone is not None:
        escape = lone.group().decode()
        return (
            f"the body is not valid JSON: {escape} at byte {lone.start()} is half of a UTF-16 "
            "surrogate pair, without its other half (no character; send the text as UTF-8)"
        )
    return f"the body is not valid JSON: {error}"


def _not_utf8(body: bytes) -> str:
    """What a body holding a string that is not UTF-8 is told, naming the first bad byte."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = body[error.start : error.start + 4]
        return (
            f"the body is not valid JSON: a string holds bytes that are not UTF-8 "
            f"(byte {error.start}: {bad!r})"
        )
    return "the body is not valid JSON: a string holds bytes that are not UTF-8"


def _invalid(error: msgspec.ValidationError) -> RequestError:
    """``max_tokens: expected int, got str`` (or ``messages: required``), naming the field."""
    text = str(error)
    missing = _MISSING_FIELD.match(text)
    if missing is not None:
        where = (missing["path"] or "").removeprefix("$").removeprefix(".")
        param = f"{where}.{missing['field']}" if where else missing["field"]
        return bad_request(param, "required")
    if " - at `$" not in text:
        return RequestError(
            "bad_request", f"the body: {text[:1].lower()}{text[1:]}".replace("`", "")
        )
    text = describe(error).replace(" | null", "")  # optional fields: the type is what matters
    return RequestError("bad_request", text, details={"field": field_named(text)})


def passthrough(body: object, names: Iterable[str]) -> dict[str, Any]:
    """The fields ``names`` of a request ``body`` that are set (not None), by name: what goes
    to the provider as it is (``Chat.extra``)."""
    extra: dict[str, Any] = {}
    for name in names:
        value = getattr(body, name)
        if value is not None:
            extra[name] = value
    return extra


def answered_model(target: str, requested: str) -> str:
    """The model an answer reports: the provider's name of the model that answered (the
    target without its ``provider/``), so that tools that price or check by model name see
    the name they know; the requested name when no target answered."""
    _, slash, model = target.partition("/")
    return model if slash else requested


def request_id_header(request_id: str) -> tuple[str, str]:
    """``x-quotad-request-id``: on every answer, errors included."""
    return ("x-quotad-request-id", request_id)


def header_safe(text: str) -> str:
    """``text`` as a header value: as it is when it is printable ASCII (a target's name,
    nearly always), else percent-encoded (a model name may hold any character)."""
    if text.isascii() and text.isprintable():
        return text
    return urllib.parse.quote(text, safe="/:@.-_~+=,;!$&'()*")


def quotad_headers(
    request_id: str, target: str, cache: CacheState, wait_s: float, attempts: int
) -> Headers:
    """The ``x-quotad-*`` response headers known when an answer starts."""
    return [
        request_id_header(request_id),
        ("x-quotad-target", header_safe(target)),
        ("x-quotad-cache", cache),
        ("x-quotad-wait-ms", f"{wait_s * 1000:.1f}"),
        ("x-quotad-attempts", str(attempts)),
    ]


COST_HEADER: Final = "x-quotad-cost-usd"


def cost_header(cost_usd: float) -> tuple[str, str]:
    """:data:`COST_HEADER`, known once an answer is complete: a header, or a stream's trailer."""
    return (COST_HEADER, f"{cost_usd:.6f}")
