"""What a front-door request's headers ask of quotad: the key, and the ``x-quotad-*``
options (app, priority, cache mode, longest wait), gathered in one pass and read once the
key is checked, each bad value a ``bad_request`` naming its header; and those options put
onto the protocol request."""

from __future__ import annotations

import math
from typing import Final, get_args

from quotad.daemon.caller import Caller
from quotad.daemon.errors import RequestError
from quotad.daemon.net.http11 import HttpRequest
from quotad.daemon.request_limits import check_name
from quotad.protocol.messages import MAX_WAIT_S, PRIORITIES, CacheMode, Chat, Embed, Priority

MAX_APP_LENGTH: Final = 256
CACHE_MODES: Final[tuple[CacheMode, ...]] = get_args(CacheMode)
_CACHE_MODES: Final[frozenset[CacheMode]] = frozenset(CACHE_MODES)
_PRIORITIES: Final[frozenset[Priority]] = frozenset(PRIORITIES)


class RequestHeaders:
    """What a request's headers say to quotad, read in one pass (and who calls, once
    known)."""

    __slots__ = ("app", "cache", "caller", "key", "max_wait_s", "priority", "sent_options")

    def __init__(self) -> None:
        self.key = ""
        self.sent_options: list[tuple[str, bytes]] = []
        """The ``x-quotad-*`` headers as sent, until :meth:`read_options` reads them."""
        self.app = ""
        self.priority: Priority | None = None
        self.cache: CacheMode | None = None
        self.max_wait_s: float | None = None
        self.caller: Caller | None = None

    def read_options(self, *, app: bool) -> None:
        """Read the ``x-quotad-*`` options sent (``x-quotad-app`` only when ``app``: a key
        names its app, and the header is ignored), once whoever sent them may call: an
        unknown key with a bad option was told of the option (400), not of the key (401)."""
        for name, raw in self.sent_options:
            if app or name != "x-quotad-app":
                _read_quotad_header(self, name, raw)
        self.sent_options = []


def read_headers(request: HttpRequest) -> RequestHeaders:
    """The key, and the ``x-quotad-*`` headers as sent, in one pass over the headers."""
    found = RequestHeaders()
    for name, value in request.headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                found.key = token.strip().decode("latin-1")
        elif name == b"x-api-key":
            if not found.key:
                found.key = value.strip().decode("latin-1")
        elif name.startswith(b"x-quotad-"):
            found.sent_options.append((name.decode("latin-1"), value))
    return found


def _read_quotad_header(found: RequestHeaders, name: str, raw: bytes) -> None:
    """One ``x-quotad-*`` request header into ``found``; a bad value is a ``bad_request``
    naming the header. Unknown ``x-quotad-*`` headers are ignored. An app's name is read as
    UTF-8, as the socket's ``Hello`` spells it ("日報" is one app); the other values, ASCII
    words and numbers, as Latin-1 (any byte reads, and a wrong one is named in the error)."""
    if name == "x-quotad-app":
        try:
            value = raw.decode().strip()
        except UnicodeDecodeError:
            raise _bad_header(name, "an app's name is UTF-8") from None
        if len(value) > MAX_APP_LENGTH:
            raise _bad_header(name, f"longer than {MAX_APP_LENGTH} characters")
        check_name(name, value)  # a tab is the one control character a header may hold
        found.app = value
        return
    value = raw.decode("latin-1").strip()
    if name == "x-quotad-priority":
        if value not in _PRIORITIES:
            raise _bad_header(name, f"expected one of {', '.join(PRIORITIES)}, got {value!r}")
        found.priority = value
    elif name == "x-quotad-cache":
        if value not in _CACHE_MODES:
            raise _bad_header(name, f"expected one of {', '.join(CACHE_MODES)}, got {value!r}")
        found.cache = value
    elif name == "x-quotad-max-wait":
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= MAX_WAIT_S:
            raise _bad_header(name, f"expected seconds from 0 to {MAX_WAIT_S:g}, got {value!r}")
        found.max_wait_s = seconds


def _bad_header(name: str, message: str) -> RequestError:
    return RequestError("bad_request", f"header {name}: {message}", details={"field": name})


def apply_options(request: Chat | Embed, headers: RequestHeaders) -> None:
    """The ``x-quotad-*`` options onto a protocol request."""
    if headers.priority is not None:
        request.priority = headers.priority
    if headers.cache is not None:
        request.cache = headers.cache
    if headers.max_wait_s is not None:
        request.max_wait_s = headers.max_wait_s
